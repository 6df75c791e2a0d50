"""Writes to deployments, and the read of the current placement that planning builds on.

Every write is atomic and records an audit event in the same transaction. The API serializers and
the admin forms call the ``validate_*`` functions here, so both doors reject the same input.

Service input (``data``) is a plain dict with these keys, any of which an update may leave out:

- ``name``: a Kubernetes-safe slug, unique per customer.
- ``sku``: a ``GpuSku`` or its name; ``alternative_skus``: a list of ``GpuSku`` or names.
- ``gpus_per_replica``, ``min_replicas``, ``desired_replicas``, ``max_replicas``,
  ``min_providers``, ``min_regions``: integers.
- ``region_preference``: regions, most preferred first, each a ``Region`` or a ``"provider/code"``
  key such as ``"aws/us-east-1"``. Keys stay valid across databases, which ids do not.
- ``demand_origins``: dicts with ``name``, ``country_code`` (optional), ``latitude``,
  ``longitude`` and ``share``.
- ``autoscaling``: a dict of ``AutoscalingPolicy`` fields, or None for no policy
  (``placements.autoscaling_policy``). While a policy is enabled the autoscaler owns
  ``desired_replicas``: data that sets it is rejected, and the stored value is kept within min and max.

On update, a list or policy that is present replaces the stored one, and one that is absent is kept.
"""

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_slug
from django.db import transaction

from compliance.lock_services import check_regions, delete_lock, describe
from compliance.roles import LOCK_DELETE
from compliance.services import record_event
from fleet.models import GpuSku, Region
from placements.autoscaling_policy import autoscaled_desired, check_replicas, save_autoscaling, validate_autoscaling
from placements.models import (
    Assignment,
    AutoscalingPolicy,
    Customer,
    DemandOrigin,
    Deployment,
    DeploymentOutcome,
    PlacementPlan,
    PlanStatus,
    RegionPreference,
)
from placements.scheduler.problem import PlacementKey

logger = logging.getLogger(__name__)

INTEGER_FIELDS = (
    "gpus_per_replica",
    "min_replicas",
    "desired_replicas",
    "max_replicas",
    "min_providers",
    "min_regions",
)
MAX_GPUS_PER_REPLICA = 16
# Shares are floats typed by people and programs, so this tolerance absorbs rounding in their sum.
SHARE_SUM_TOLERANCE = 1e-6
NAME_MAX_LENGTH = Deployment._meta.get_field("name").max_length or 63
ORIGIN_NAME_MAX_LENGTH = DemandOrigin._meta.get_field("name").max_length or 128


# Validation: one source for the API and the admin.


def validate_deployment_fields(values: Mapping[str, Any], *, customer: Customer | None, instance=None) -> dict:
    """Check a deployment's own fields and return them resolved (SKU names become ``GpuSku`` rows).

    ``values`` contains every field of the deployment, already merged with the stored ones on update.
    Raises ``ValidationError`` with a dict keyed by field name. Each message quotes the rejected value.
    """
    errors: dict[str, list[str]] = {}
    cleaned: dict[str, Any] = {}

    name = values.get("name")
    if not isinstance(name, str) or not name:
        errors.setdefault("name", []).append("A name is required.")
    else:
        cleaned["name"] = name
        _check_name(name, customer=customer, instance=instance, errors=errors)

    for field in INTEGER_FIELDS:
        value = values.get(field)
        if isinstance(value, bool) or not isinstance(value, int):
            errors.setdefault(field, []).append(f"{value!r} is not an integer.")
        else:
            cleaned[field] = value

    _check_numbers(cleaned, errors)

    sku = _resolve_sku(values.get("sku"), "sku", errors)
    cleaned["sku"] = sku
    alternatives = [_resolve_sku(item, "alternative_skus", errors) for item in values.get("alternative_skus") or []]
    _check_alternatives(sku, alternatives, errors)
    cleaned["alternative_skus"] = [item for item in alternatives if item is not None]

    if errors:
        raise ValidationError(errors)
    return cleaned


def validate_region_preference(regions: Iterable[Region | str]) -> list[Region]:
    """Resolve an ordered region preference, most preferred first. Each region must exist and appear once."""
    errors: list[str] = []
    resolved: list[Region] = []
    for item in regions:
        region = _resolve_region(item, errors)
        if region is None:
            continue
        if region in resolved:
            errors.append(f"Region {region} is listed more than once.")
            continue
        resolved.append(region)
    if errors:
        raise ValidationError({"region_preference": errors})
    return resolved


def validate_demand_origins(origins: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Check demand origins: coordinates in range, shares in (0, 1] that sum to at most 1."""
    errors: list[str] = []
    cleaned: list[dict] = []
    for position, origin in enumerate(origins):
        label = f"Origin {position} ({origin.get('name') or 'unnamed'})"
        item: dict[str, Any] = {
            "name": str(origin.get("name") or "").strip(),
            "country_code": str(origin.get("country_code") or "").upper(),
            "latitude": origin.get("latitude"),
            "longitude": origin.get("longitude"),
            "share": origin.get("share"),
        }
        if not item["name"]:
            errors.append(f"{label}: a name is required.")
        elif len(item["name"]) > ORIGIN_NAME_MAX_LENGTH:
            errors.append(f"{label}: name is longer than {ORIGIN_NAME_MAX_LENGTH} characters.")
        if len(item["country_code"]) not in (0, 2):
            errors.append(f"{label}: country code {item['country_code']!r} is not ISO 3166-1 alpha-2.")
        _check_range(item["latitude"], -90, 90, f"{label}: latitude", errors)
        _check_range(item["longitude"], -180, 180, f"{label}: longitude", errors)
        share = item["share"]
        if not _is_number(share) or not 0 < share <= 1:
            errors.append(f"{label}: share {share!r} must be greater than 0 and at most 1.")
        cleaned.append(item)

    if not errors:
        total = sum(item["share"] for item in cleaned)
        if total > 1 + SHARE_SUM_TOLERANCE:
            errors.append(f"Shares sum to {total:g}, which is above 1. Lower them so that they sum to at most 1.")
    if errors:
        raise ValidationError({"demand_origins": errors})
    return cleaned


def validate_deployment(data: Mapping[str, Any], *, customer: Customer | None, instance=None) -> dict:
    """Validate a whole deployment (fields, region preference, demand origins) and return it resolved.

    Errors from every part are collected, so one response names every rejected field.
    """
    errors: dict[str, list[str]] = {}
    fields = _collect_errors(errors, validate_deployment_fields, data, customer=customer, instance=instance)
    regions = _collect_errors(errors, validate_region_preference, data.get("region_preference") or [])
    if regions:
        # A newly preferred region that a platform, customer or deployment lock forbids contradicts the lock.
        # Regions already stored stay accepted, so a later lock does not block unrelated updates; the
        # scheduler and the executor keep replicas out of them.
        stored = set(instance.region_preferences.values_list("region_id", flat=True)) if instance is not None else set()
        added = [region for region in regions if region.pk not in stored]
        _collect_errors(
            errors, check_regions, added, customer=customer, deployment=instance, field_name="region_preference"
        )
    origins = _collect_errors(errors, validate_demand_origins, data.get("demand_origins") or [])
    if errors:
        raise ValidationError(errors)
    return {**fields, "region_preference": regions, "demand_origins": origins}


def validate_with_autoscaling(
    merged: dict, data: Mapping[str, Any], *, customer, instance=None, stored_policy: AutoscalingPolicy | None = None
) -> tuple[dict, dict | None]:
    """Validate a deployment write that may carry an ``autoscaling`` policy; return (cleaned, policy).

    ``merged`` is the whole deployment after the write and ``data`` the write itself. With an
    enabled policy, a ``desired_replicas`` that ``data`` leaves out becomes the stored one (or the
    default on create) within the new min and max. Errors of every part are raised together.
    """
    errors: dict[str, list[str]] = {}
    if "autoscaling" in data:
        policy = _collect_errors(errors, validate_autoscaling, data["autoscaling"], stored=stored_policy)
    else:
        policy = _collect_errors(
            errors, validate_autoscaling, None if stored_policy is None else {}, stored=stored_policy
        )
    enabled = policy is not None and policy["enabled"]
    low, high = merged.get("min_replicas"), merged.get("max_replicas")
    numbers = all(isinstance(value, int) and not isinstance(value, bool) for value in (low, high))
    if enabled and "desired_replicas" not in data and numbers and isinstance(merged.get("desired_replicas"), int):
        merged = {
            **merged,
            "desired_replicas": autoscaled_desired(merged["desired_replicas"], min_replicas=low, max_replicas=high),
        }
    cleaned = _collect_errors(errors, validate_deployment, merged, customer=customer, instance=instance)
    if cleaned is not None:
        replicas = {field: cleaned[field] for field in ("min_replicas", "desired_replicas", "max_replicas")}
        for field, messages in check_replicas(policy, replicas, desired_requested="desired_replicas" in data).items():
            errors.setdefault(field, []).extend(messages)
    if errors:
        raise ValidationError(errors)
    return cleaned, policy


def _collect_errors(errors: dict[str, list[str]], check, *args, **kwargs) -> Any:
    """Run one validation ``check``, add its messages to ``errors``, and return its result or None."""
    try:
        return check(*args, **kwargs)
    except ValidationError as error:
        for field, messages in error.message_dict.items():
            errors.setdefault(field, []).extend(messages)
        return None


def _check_name(name: str, *, customer: Customer | None, instance, errors: dict) -> None:
    try:
        validate_slug(name)
    except ValidationError:
        errors.setdefault("name", []).append(f"{name!r} is not a slug: use letters, digits, hyphens, underscores.")
    if len(name) > NAME_MAX_LENGTH:
        errors.setdefault("name", []).append(f"{name!r} is longer than {NAME_MAX_LENGTH} characters.")
    if customer is None:
        return
    taken = Deployment.objects.filter(customer=customer, name=name)
    if instance is not None and instance.pk:
        taken = taken.exclude(pk=instance.pk)
    if taken.exists():
        errors.setdefault("name", []).append(f"Customer {customer.name} already has a deployment named {name!r}.")


def _check_numbers(cleaned: dict, errors: dict) -> None:
    gpus = cleaned.get("gpus_per_replica")
    if gpus is not None and not 1 <= gpus <= MAX_GPUS_PER_REPLICA:
        errors.setdefault("gpus_per_replica", []).append(
            f"{gpus} is out of range: GPUs per replica must be between 1 and {MAX_GPUS_PER_REPLICA}."
        )
    for field in ("min_replicas", "min_providers", "min_regions"):
        value = cleaned.get(field)
        minimum = 0 if field == "min_replicas" else 1
        if value is not None and value < minimum:
            errors.setdefault(field, []).append(f"{value} is out of range: the minimum is {minimum}.")
    low, desired, high = (cleaned.get(key) for key in ("min_replicas", "desired_replicas", "max_replicas"))
    if low is not None and high is not None and low > high:
        # Desired replicas cannot fit between bounds that cross, so only the bounds are reported.
        errors.setdefault("min_replicas", []).append(
            f"{low} is above max_replicas {high}: min_replicas must not exceed max_replicas."
        )
        errors.setdefault("max_replicas", []).append(
            f"{high} is below min_replicas {low}: min_replicas must not exceed max_replicas."
        )
        return
    if low is None or desired is None or high is None:
        return
    if not low <= desired:
        errors.setdefault("desired_replicas", []).append(
            f"{desired} is below min_replicas {low}: replicas must satisfy min <= desired <= max."
        )
    if not desired <= high:
        errors.setdefault("desired_replicas", []).append(
            f"{desired} is above max_replicas {high}: replicas must satisfy min <= desired <= max."
        )


def _check_alternatives(sku: GpuSku | None, alternatives: list[GpuSku | None], errors: dict) -> None:
    seen: set[int] = set()
    for alternative in alternatives:
        if alternative is None:
            continue
        if sku is not None and alternative.pk == sku.pk:
            errors.setdefault("alternative_skus", []).append(
                f"{alternative.name!r} is the primary SKU, so list only other SKUs as alternatives."
            )
        elif alternative.pk in seen:
            errors.setdefault("alternative_skus", []).append(f"{alternative.name!r} is listed more than once.")
        seen.add(alternative.pk)


def _resolve_sku(value: Any, field: str, errors: dict) -> GpuSku | None:
    if isinstance(value, GpuSku):
        return value
    if not isinstance(value, str) or not value:
        errors.setdefault(field, []).append(f"{value!r} is not a SKU name, for example 'H100'.")
        return None
    sku = GpuSku.objects.filter(name=value).first()
    if sku is None:
        errors.setdefault(field, []).append(f"SKU {value!r} not found.")
    return sku


def _resolve_region(value: Any, errors: list[str]) -> Region | None:
    if isinstance(value, Region):
        return value
    provider, _, code = value.partition("/") if isinstance(value, str) else ("", "", "")
    if not provider or not code:
        errors.append(f"{value!r} is not a region key: use 'provider/code', for example 'aws/us-east-1'.")
        return None
    region = Region.objects.select_related("provider").filter(provider__name=provider, code=code).first()
    if region is None:
        errors.append(f"Region {value!r} not found.")
    return region


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_range(value: Any, low: float, high: float, label: str, errors: list[str]) -> None:
    if not _is_number(value) or not low <= value <= high:
        errors.append(f"{label} {value!r} must be between {low} and {high}.")


# Writes.


def deployment_defaults() -> dict:
    """Return the values a new deployment, or a full replacement of one, gets for the fields left out."""
    template = Deployment()
    defaults = {field: getattr(template, field) for field in INTEGER_FIELDS}
    return {**defaults, "alternative_skus": [], "region_preference": [], "demand_origins": []}


def create_deployment(*, actor, customer: Customer, data: Mapping[str, Any]) -> Deployment:
    """Create a deployment for ``customer`` with its region preference and demand origins.

    Fields that ``data`` leaves out get the model's defaults (one replica of one GPU, no lists).
    """
    with transaction.atomic():
        merged = {**deployment_defaults(), **data}
        cleaned, policy = validate_with_autoscaling(merged, data, customer=customer)
        deployment = Deployment(customer=customer, **_scalar_fields(cleaned))
        deployment.save()
        deployment.alternative_skus.set(cleaned["alternative_skus"])
        _replace_region_preference(deployment, cleaned["region_preference"])
        _replace_demand_origins(deployment, cleaned["demand_origins"])
        if policy is not None:
            save_autoscaling(actor=actor, deployment=deployment, policy=policy)
        record_event(
            actor=actor, action="deployment.created", subject=deployment, after=deployment_snapshot(deployment)
        )
    logger.info("Created deployment %s (id %s) for customer %s", deployment, deployment.pk, customer.pk)
    return deployment


def update_deployment(*, actor, deployment: Deployment, data: Mapping[str, Any]) -> Deployment:
    """Change a deployment. Fields and lists that ``data`` leaves out keep their stored values."""
    with transaction.atomic():
        # Lock the row so two concurrent updates cannot both pass validation against stale values.
        deployment = Deployment.objects.select_for_update().select_related("customer", "sku").get(pk=deployment.pk)
        before = deployment_snapshot(deployment)
        merged = {**_stored_values(deployment), **data}
        stored_policy = AutoscalingPolicy.objects.filter(deployment=deployment).first()
        cleaned, policy = validate_with_autoscaling(
            merged, data, customer=deployment.customer, instance=deployment, stored_policy=stored_policy
        )
        for field, value in _scalar_fields(cleaned).items():
            setattr(deployment, field, value)
        deployment.save()
        if "alternative_skus" in data:
            deployment.alternative_skus.set(cleaned["alternative_skus"])
        if "region_preference" in data:
            _replace_region_preference(deployment, cleaned["region_preference"])
        if "demand_origins" in data:
            _replace_demand_origins(deployment, cleaned["demand_origins"])
        if "autoscaling" in data:
            save_autoscaling(actor=actor, deployment=deployment, policy=policy)
        record_event(
            actor=actor,
            action="deployment.updated",
            subject=deployment,
            before=before,
            after=deployment_snapshot(deployment),
        )
    logger.info("Updated deployment %s (id %s)", deployment, deployment.pk)
    return deployment


def delete_deployment(*, actor, deployment: Deployment, reason: str = "") -> None:
    """Delete a deployment with its preferences, origins, locks and its rows in past plans."""
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().select_related("customer", "sku").get(pk=deployment.pk)
        before = deployment_snapshot(deployment)
        subject = (Deployment._meta.label_lower, deployment.pk)
        label = str(deployment)
        # A deployment's own locks go with it, so deleting it is a lock deletion: only compliance may, and it is
        # recorded in each lock's history. Otherwise deleting and re-creating a deployment would shed its lock.
        own_locks = list(deployment.locks.select_related("customer", "deployment__customer"))
        if own_locks and not (isinstance(actor, str) or actor.has_perm(LOCK_DELETE)):
            names = "; ".join(describe(lock) for lock in own_locks)
            raise ValidationError(
                {
                    "deployment": [
                        f"Deployment {label} has its own lock ({names}), and deleting the deployment would delete it. "
                        "Ask compliance staff to delete the lock first."
                    ]
                }
            )
        for lock in own_locks:
            delete_lock(actor=actor, lock=lock, reason=reason or f"Deployment {label} was deleted.")
        deployment.delete()
        record_event(actor=actor, action="deployment.deleted", subject=subject, reason=reason, before=before)
    logger.info("Deleted deployment %s (id %s)", label, subject[1])


def deployment_snapshot(deployment: Deployment) -> dict:
    """Return a deployment as JSON-ready data, for the before and after of audit events."""
    return {
        "customer": deployment.customer.name,
        "name": deployment.name,
        "sku": deployment.sku.name,
        "alternative_skus": sorted(sku.name for sku in deployment.alternative_skus.all()),
        **{field: getattr(deployment, field) for field in INTEGER_FIELDS},
        "region_preference": region_preference_keys(deployment),
        "demand_origins": [
            {
                "name": origin.name,
                "country_code": origin.country_code,
                "latitude": origin.latitude,
                "longitude": origin.longitude,
                "share": origin.share,
            }
            for origin in deployment.demand_origins.all()
        ],
    }


def region_preference_keys(deployment: Deployment) -> list[str]:
    """Return the deployment's preferred regions as ``"provider/code"`` keys, most preferred first."""
    preferences = deployment.region_preferences.select_related("region__provider").order_by("rank")
    return [str(preference.region) for preference in preferences]


def _stored_values(deployment: Deployment) -> dict:
    return {
        "name": deployment.name,
        "sku": deployment.sku,
        "alternative_skus": list(deployment.alternative_skus.all()),
        **{field: getattr(deployment, field) for field in INTEGER_FIELDS},
        "region_preference": [preference.region for preference in deployment.region_preferences.all()],
        "demand_origins": [
            {
                "name": origin.name,
                "country_code": origin.country_code,
                "latitude": origin.latitude,
                "longitude": origin.longitude,
                "share": origin.share,
            }
            for origin in deployment.demand_origins.all()
        ],
    }


def _scalar_fields(cleaned: dict) -> dict:
    return {field: cleaned[field] for field in ("name", "sku", *INTEGER_FIELDS)}


def _replace_region_preference(deployment: Deployment, regions: list[Region]) -> None:
    deployment.region_preferences.all().delete()
    RegionPreference.objects.bulk_create(
        RegionPreference(deployment=deployment, region=region, rank=rank) for rank, region in enumerate(regions)
    )


def _replace_demand_origins(deployment: Deployment, origins: list[dict]) -> None:
    deployment.demand_origins.all().delete()
    DemandOrigin.objects.bulk_create(DemandOrigin(deployment=deployment, **origin) for origin in origins)


# Reads of the current placement.


def current_plan() -> PlacementPlan | None:
    """Return the applied plan that is in force: the applied plan with the highest version."""
    return PlacementPlan.objects.filter(status=PlanStatus.APPLIED).order_by("-version").first()


def current_placement(plan: PlacementPlan | None = None) -> dict[PlacementKey, int]:
    """Return the replicas of the current (or the given) plan, keyed by (deployment id, cluster id, SKU name).

    This is the ``current`` mapping of the scheduler's input: planning charges for moving these
    replicas. Without an applied plan it is empty.
    """
    plan = plan or current_plan()
    if plan is None:
        return {}
    rows = Assignment.objects.filter(plan=plan).values_list("deployment_id", "cluster_id", "sku__name", "replicas")
    return {(deployment_id, cluster_id, sku): replicas for deployment_id, cluster_id, sku, replicas in rows}


def deployment_placement(deployment: Deployment) -> dict:
    """Return where the current plan runs one deployment's replicas, and how many it could not place."""
    plan = current_plan()
    if plan is None:
        return {"plan_id": None, "plan_version": None, "placed_replicas": 0, "unmet_replicas": None, "assignments": []}
    assignments = (
        Assignment.objects.filter(plan=plan, deployment=deployment)
        .select_related("cluster__region__provider", "sku")
        .order_by("cluster__name", "sku__name")
    )
    outcome = DeploymentOutcome.objects.filter(plan=plan, deployment=deployment).first()
    rows = [
        {
            "cluster": assignment.cluster.name,
            "provider": assignment.cluster.region.provider.name,
            "region": str(assignment.cluster.region),
            "sku": assignment.sku.name,
            "replicas": assignment.replicas,
        }
        for assignment in assignments
    ]
    return {
        "plan_id": plan.pk,
        "plan_version": plan.version,
        "placed_replicas": sum(row["replicas"] for row in rows),
        # None when the plan predates the deployment, so the scheduler has not considered it yet.
        "unmet_replicas": outcome.unmet_replicas if outcome else None,
        "assignments": rows,
    }


def deployment_explanation(deployment: Deployment) -> dict:
    """Return the current plan's explanation of one deployment's placement, or a null explanation."""
    plan = current_plan()
    outcome = None
    if plan is not None:
        outcome = DeploymentOutcome.objects.filter(plan=plan, deployment=deployment).first()
    return {
        "plan_id": plan.pk if plan else None,
        "plan_version": plan.version if plan else None,
        "explanation": outcome.explanation if outcome else None,
    }


def deployment_shortfall(deployment: Deployment) -> dict:
    """Return how far the current plan falls short of a deployment's desired replicas, and its condition.

    ``unmet_replicas`` is None when the current plan predates the deployment (or there is no plan),
    because the scheduler has not considered it yet.
    """
    plan = current_plan()
    outcome = None
    if plan is not None:
        outcome = DeploymentOutcome.objects.filter(plan=plan, deployment=deployment).first()
    return {
        "plan_version": plan.version if plan else None,
        "tier": deployment.customer.tier,
        "desired_replicas": deployment.desired_replicas,
        "placed_replicas": outcome.placed_replicas if outcome else None,
        "unmet_replicas": outcome.unmet_replicas if outcome else None,
        "condition": deployment.condition,
        "condition_reason": deployment.condition_reason,
        "condition_since": deployment.condition_since,
    }
