"""Dry-run previews on the admin's confirmation pages: drain or cordon clusters, declare an outage.

Each preview calls ``fleet.operations.preview_replan`` with what-ifs that pretend the change is made.
That stores a dry-run plan and its ``plan.dry_run`` audit event, and changes nothing else: no
cluster state, outage, applied plan or other audit event. The pages render the difference with
``admin/placements/plan_diff.html``; only the confirming submit (``name="confirm"``) applies the change.
"""

import logging

from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import urlencode

from fleet import operations
from fleet.models import Cluster, OutageScope

logger = logging.getLogger(__name__)


def unmet_rows(preview: dict) -> list[tuple[str, int | None, int]]:
    """Return (tier, unmet before, unmet after) rows of a preview, highest tier first."""
    before, after = preview["unmet_by_tier"]["before"], preview["unmet_by_tier"]["after"]
    return [(tier, before.get(tier), unmet) for tier, unmet in after.items()]


def diff_context(preview: dict | None) -> dict:
    """Return the context ``admin/placements/plan_diff.html`` reads; empty rows without a preview."""
    return {"preview": preview, "unmet_rows": unmet_rows(preview) if preview else []}


def run_preview(actor, **what_ifs) -> tuple[dict | None, str]:
    """Run ``preview_replan`` with ``what_ifs``; return (preview, "") or, when it fails, (None, the error message)."""
    try:
        return operations.preview_replan(actor=actor, **what_ifs), ""
    except ValueError as error:
        logger.warning("preview of %s by %s failed: %s", what_ifs, operations.actor_label(actor), error)
        return None, f"The preview failed: {error}"


# Cluster actions: the preview pretends the selected clusters are drained or cordoned.

# Each action's what-if argument of preview_replan, and the states the real control accepts.
CLUSTER_WHAT_IFS = {
    "drain": ("drain_clusters", operations.DRAIN_FROM),
    "cordon": ("cordon_clusters", operations.CORDON_FROM),
}


def cluster_action_preview(queryset, *, actor, action: str) -> dict:
    """Preview draining or cordoning the selected clusters, for ``confirm_with_reason``'s page.

    A cluster whose state the control rejects is left out of the dry run and listed in ``skipped``
    with its state, since confirming changes only the others.
    """
    # NOTE: the cordon what-if of planning keeps a cluster's replicas only where it could hold or take
    # them, so cordoning a draining cluster previews its replicas leaving, while a real cordon keeps
    # them. This matters only before the re-plan that follows the drain has moved them off.
    what_if, allowed = CLUSTER_WHAT_IFS[action]
    clusters = list(queryset)
    changing = sorted(cluster.name for cluster in clusters if cluster.state in allowed)
    skipped = [cluster for cluster in clusters if cluster.state not in allowed]
    context = {"skipped": skipped, "allowed_states": ", ".join(str(state) for state in allowed)}
    if not changing:
        return {
            **context,
            **diff_context(None),
            "preview_error": f"No selected cluster can {action}: nothing to preview.",
        }
    preview, error = run_preview(actor, **{what_if: changing})
    return {**context, **diff_context(preview), "preview_error": error}


# Outages: the preview pretends every cluster the outage covers is lost.


def outage_what_if(scope: str, target) -> dict:
    """Return the ``preview_replan`` what-if that makes ``target`` lost, as an outage of ``scope`` does."""
    if scope == OutageScope.PROVIDER:
        return {"exclude_providers": [target.name]}
    if scope == OutageScope.REGION:
        return {"exclude_regions": [f"{target.provider.name}/{target.code}"]}
    if scope == OutageScope.CLUSTER:
        return {"lost_clusters": [target.name]}
    raise operations.OperationError(f"scope {scope!r} is not valid: use one of {', '.join(OutageScope.values)}.")


def covered_clusters(scope: str, target) -> list[Cluster]:
    clusters = Cluster.objects.select_related("region__provider").order_by("name")
    if scope == OutageScope.PROVIDER:
        return list(clusters.filter(region__provider=target))
    if scope == OutageScope.REGION:
        return list(clusters.filter(region=target))
    return list(clusters.filter(pk=target.pk))


def outage_preview_response(modeladmin, request, form) -> TemplateResponse:
    """Render the preview of a valid outage declaration, with the form's data in hidden fields and a confirm button."""
    data = form.cleaned_data
    scope, target = data["scope"], data[data["scope"]]
    preview, error = run_preview(request.user, **outage_what_if(scope, target))
    opts = modeladmin.model._meta
    # The "change" link reopens the add form with these values, as the admin reads initial data from GET.
    edit_query = urlencode({"scope": scope, scope: target.pk, "reason": data["reason"]})
    context = {
        **modeladmin.admin_site.each_context(request),
        **diff_context(preview),
        "title": f"Declare a {scope} outage of {target}",
        "opts": opts,
        "form": form,
        "scope": scope,
        "target": target,
        "reason": data["reason"],
        "clusters": covered_clusters(scope, target),
        "preview_error": error,
        "edit_url": f"{reverse('admin:fleet_outage_add')}?{edit_query}",
    }
    return TemplateResponse(request, "admin/fleet/outage_confirm.html", context)
