"""A deployment's placement explained in sentences for its customer.

Reads the explanation that the scheduler stored with the current applied plan (see
``placements.scheduler.explain``) and words it for the customer: one sentence per cluster that runs
replicas, and one per group of unused clusters with the same reason. It names clusters, regions,
providers and the customer's own locks, and nothing about other customers or internal ids.
"""

import re
from datetime import UTC

from rest_framework import serializers

from fleet.models import Cluster
from placements.models import Deployment, DeploymentOutcome
from placements.scheduler import explain as scheduler_explain
from placements.services import current_plan

LOCK_MESSAGE = re.compile(
    r"^locked out by lock \d+ on (?P<subject>.+?): requires (?P<rule>.+) \(reason: (?P<reason>.*)\)$"
)
NEAREST_CANDIDATE = re.compile(r"nearest candidate: (?P<rtt>\d+) ms")
FARTHER_PREFIX = "farther from its users than the chosen clusters"
STATE_MESSAGE = re.compile(r"^not schedulable \(state (?P<state>[\w-]+)\)$")

# Unused-cluster reasons whose wording needs no data beyond the reason.
PLAIN_REASONS = {
    "excluded": "held back: your replicas return there only once the failback is approved",
    "pruned": "not considered: farther or more expensive than the clusters the scheduler compared",
    scheduler_explain.SPREAD: "not used: adding it would break your spread rule (minimum providers or regions)",
    scheduler_explain.RELEASED: "no longer used: it takes no new replicas, and your replicas now run elsewhere",
    scheduler_explain.PENALISED: "avoided for now: it lost this deployment's replicas several times recently",
    scheduler_explain.LOWER_PREFERENCE: "lower in your region preference than the clusters used",
    scheduler_explain.COSTLIER: "more expensive overall (price, latency and your preference) than the clusters used",
}
STATE_WORDS = {
    "cordoned": "cordoned by operators: it takes no new replicas",
    "draining": "being drained by operators: it takes no new replicas",
    "down": "down",
    "suspect": "not answering reliably",
    "recovering": "recovering after an outage: it takes no new replicas yet",
}


class PlacedClusterSerializer(serializers.Serializer):
    cluster = serializers.CharField()
    provider = serializers.CharField()
    region = serializers.CharField(help_text="'provider/code', for example 'aws/eu-central-1'.")
    location = serializers.CharField(help_text="City, or the region's name when the city is unknown.")
    sku = serializers.CharField()
    replicas = serializers.IntegerField()
    sentence = serializers.CharField()


class UnusedGroupSerializer(serializers.Serializer):
    reason = serializers.CharField(help_text="Machine-readable reason, for example 'locked_out' or 'full'.")
    sentence = serializers.CharField()
    count = serializers.IntegerField(help_text="Clusters with this reason.")
    clusters = serializers.ListField(child=serializers.CharField(), help_text="Up to 10 of their names.")


class DeploymentExplainSerializer(serializers.Serializer):
    deployment = serializers.CharField(help_text="'customer/name'.")
    plan_version = serializers.IntegerField(allow_null=True)
    planned_at = serializers.DateTimeField(allow_null=True)
    summary = serializers.CharField()
    placed = PlacedClusterSerializer(many=True)
    not_used = UnusedGroupSerializer(many=True)


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _when(moment) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def explain_for_customer(deployment: Deployment) -> dict:
    """Return the customer's explanation of ``deployment`` under the current applied plan."""
    plan = current_plan()
    outcome = DeploymentOutcome.objects.filter(plan=plan, deployment=deployment).first() if plan else None
    stored = outcome.explanation if outcome else None
    answer = {
        "deployment": str(deployment),
        "plan_version": plan.version if plan else None,
        "planned_at": plan.created_at if plan else None,
        "placed": [],
        "not_used": [],
    }
    if not stored or not isinstance(stored.get("chosen"), list):
        # Plans stored before the scheduler wrote its explanation as lists have nothing to word.
        if outcome is None:
            answer["summary"] = "No plan has placed this deployment yet: it is placed at the next planning run."
        else:
            answer["summary"] = (
                f"Plan v{plan.version} places {outcome.placed_replicas} of its replicas but stored no reasons; "
                "the next planning run explains its choices."
            )
        return answer

    names = {item["cluster"] for item in stored["chosen"]}
    for group in stored.get("not_chosen", []):
        names.update(group.get("clusters", []))
    clusters = {
        cluster.name: cluster for cluster in Cluster.objects.filter(name__in=names).select_related("region__provider")
    }
    origins = [origin.name for origin in deployment.demand_origins.all() if origin.name]
    has_preference = deployment.region_preferences.exists()

    for item in stored["chosen"]:
        cluster = clusters.get(item["cluster"])
        if cluster is None:  # deleted since the plan
            continue
        region = cluster.region
        location = region.city or region.display_name or region.code
        answer["placed"].append(
            {
                "cluster": cluster.name,
                "provider": region.provider.name,
                "region": f"{region.provider.name}/{region.code}",
                "location": location,
                "sku": item["sku"],
                "replicas": item["replicas"],
                "sentence": _placed_sentence(item, cluster, location, origins, has_preference),
            }
        )
    for group in stored.get("not_chosen", []):
        answer["not_used"].append(
            {
                "reason": group["reason"],
                "sentence": _unused_sentence(group, clusters),
                "count": group["count"],
                "clusters": list(group["clusters"]),
            }
        )
    placed, desired = stored.get("placed", 0), stored.get("desired", deployment.desired_replicas)
    summary = f"{placed} of {_plural(desired, 'replica')} placed on {_plural(len(answer['placed']), 'cluster')}."
    if stored.get("unmet"):
        summary += f" {stored['unmet']} could not be placed: the unused clusters below say why."
    answer["summary"] = summary
    return answer


def _placed_sentence(item: dict, cluster: Cluster, location: str, origins: list[str], has_preference: bool) -> str:
    region = cluster.region
    head = (
        f"{_plural(item['replicas'], 'replica')} of {item['sku']} in {location} "
        f"({region.provider.name}/{region.code}, cluster {cluster.name})"
    )
    why = item.get("why", "")
    reasons = []
    if item.get("held"):
        reasons.append("kept where already running, although the cluster takes no new replicas now")
    if origins:
        users = f"your users in {_join(origins)}"
        if "nearest to its users" in why:
            reasons.append(f"nearest allowed region to {users} (about {item['rtt_ms']:.0f} ms)")
        else:
            nearest = NEAREST_CANDIDATE.search(why)
            detail = f"; the nearest allowed option is about {nearest['rtt']} ms" if nearest else ""
            reasons.append(f"about {item['rtt_ms']:.0f} ms from {users}{detail}")
    if has_preference:
        rank = item.get("preference_rank")
        reasons.append(
            f"your preferred region #{rank + 1}" if rank is not None else "not one of your preferred regions"
        )
    price = f"USD {item['price_per_gpu_hour']:.2f} per GPU-hour"
    reasons.append(f"{price}, the cheapest option" if "(cheapest)" in why else price)
    if scheduler_explain.REPEATED_LOSSES in why:
        reasons.append("used although it lost this deployment's replicas several times recently")
    return f"{head}: {'; '.join(reasons)}."


def _unused_sentence(group: dict, clusters: dict[str, Cluster]) -> str:
    reason = group["reason"]
    message = group.get("message", "")
    if reason == "locked_out":
        match = LOCK_MESSAGE.match(message)
        if match:
            owner = "the platform's lock" if match["subject"] == "the platform" else "your lock"
            return f"not allowed by {owner} '{match['reason']}' ({match['subject']}): it requires {match['rule']}."
        return "not allowed by a placement lock on this deployment or its customer."
    if reason == "wrong_sku":
        return f"no {message.removeprefix('offers none of ')} GPUs there."
    if reason == "full":
        if "went to other placements" in message:
            return "no free GPUs left: they run other replicas."
        return f"no free capacity: {message.removeprefix('full: ')}."
    if reason == "not_schedulable":
        match = STATE_MESSAGE.match(message)
        state = match["state"] if match else ""
        words = STATE_WORDS.get(state, f"not taking new replicas ({state or 'unavailable'})")
        if state in ("down", "suspect"):
            changes = [
                clusters[name].health_changed_at
                for name in group["clusters"]
                if name in clusters and clusters[name].health_changed_at
            ]
            if changes:
                words += f" since {_when(min(changes))}"
        return f"{words}."
    if reason == scheduler_explain.FARTHER:
        return f"farther from your users than the clusters used{message.removeprefix(FARTHER_PREFIX)}."
    return f"{PLAIN_REASONS.get(reason, message)}."
