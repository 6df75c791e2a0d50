"""A deployment's autoscaling policy: validation, the write, and what the API shows about it.

The deployment services call these, so the API and the admin check a policy the same way. A
policy is given as a dict of ``AutoscalingPolicy`` fields (any left out keep their stored value,
or the model default for a new policy), or None to remove it.
"""

import math
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError

from compliance.services import record_event
from placements.models import AutoscalingPolicy, Deployment, ExecutionStep, ScalingDecision, StepStatus

POLICY_FIELDS = (
    "enabled",
    "target_concurrency",
    "target_utilization",
    "window_s",
    "scale_down_delay_s",
    "max_scale_down_fraction",
    "scale_to_zero",
    "seconds_per_request",
)
BOOLEAN_FIELDS = ("enabled", "scale_to_zero")
# NOTE: the upper bounds are chosen limits, not measured ones: a window or a delay beyond a day
# would keep a deployment from following its traffic at all.
DURATION_RANGE_S = (1, 86400)
DELAY_RANGE_S = (0, 86400)
# Whole seconds, inclusive bounds.
INTEGER_RANGES = {"window_s": DURATION_RANGE_S, "scale_down_delay_s": DELAY_RANGE_S}
# Numbers greater than the lower bound and, where there is one, at most the upper bound.
NUMBER_RANGES: dict[str, tuple[float, float | None]] = {
    "target_concurrency": (0, None),
    "target_utilization": (0, 1),
    "max_scale_down_fraction": (0, 1),
    "seconds_per_request": (0, None),
}


def error_key(field: str) -> str:
    """Return the ``ValidationError`` key of a policy field: ``autoscaling.<field>``.

    The API nests these as ``{"autoscaling": {field: [...]}}``; the admin shows them by field.
    """
    return f"autoscaling.{field}"


def validate_autoscaling(values: Mapping[str, Any] | None, *, stored: AutoscalingPolicy | None = None) -> dict | None:
    """Check a policy and return it complete (stored or default values for fields left out); None stays None.

    Raises ``ValidationError`` keyed by ``autoscaling.<field>`` (``error_key``), or by ``autoscaling``
    when ``values`` is not an object; each message quotes the value.
    """
    if values is None:
        return None
    if not isinstance(values, Mapping):
        raise ValidationError({"autoscaling": [f"{values!r} is not an object of policy fields."]})
    errors: dict[str, list[str]] = {}
    for name in sorted(set(values) - set(POLICY_FIELDS), key=str):
        errors[error_key(str(name))] = [f"{name!r} is not a policy field: use {', '.join(POLICY_FIELDS)}."]
    base = stored or AutoscalingPolicy()
    cleaned = {field: values.get(field, getattr(base, field)) for field in POLICY_FIELDS}
    for field in BOOLEAN_FIELDS:
        if not isinstance(cleaned[field], bool):
            errors[error_key(field)] = [f"{cleaned[field]!r} is not true or false."]
    for field, (low, high) in NUMBER_RANGES.items():
        value = cleaned[field]
        text = f"greater than {low:g}" + ("" if high is None else f" and at most {high:g}")
        if not _is_number(value):
            errors[error_key(field)] = [f"{value!r} is not a number."]
        elif not (value > low and (high is None or value <= high)):
            errors[error_key(field)] = [f"{value!r} is out of range: use a value {text}."]
    for field, (low, high) in INTEGER_RANGES.items():
        value = cleaned[field]
        if isinstance(value, bool) or not isinstance(value, int):
            errors[error_key(field)] = [f"{value!r} is not an integer number of seconds."]
        elif not low <= value <= high:
            errors[error_key(field)] = [f"{value} is out of range: use {low} to {high} seconds."]
    if errors:
        raise ValidationError(errors)
    return cleaned


def check_replicas(policy: dict | None, replicas: dict[str, int], *, desired_requested: bool) -> dict[str, list[str]]:
    """Return errors for replica fields that contradict an enabled policy, keyed as ``ValidationError`` keys.

    ``replicas`` has min_replicas, desired_replicas and max_replicas as they will be stored;
    ``desired_requested`` is whether the request itself set desired_replicas. ``scale_to_zero`` and
    ``min_replicas`` must agree: zero replicas need both, so either one alone is rejected.
    """
    if policy is None or not policy["enabled"]:
        return {}
    errors: dict[str, list[str]] = {}
    if desired_requested:
        errors["desired_replicas"] = [
            f"{replicas['desired_replicas']}: the autoscaler sets desired replicas while autoscaling.enabled is "
            "true. Leave desired_replicas out, or set autoscaling.enabled to false."
        ]
    if replicas["min_replicas"] == 0 and not policy["scale_to_zero"]:
        errors["min_replicas"] = [
            "0 needs autoscaling.scale_to_zero: set it to true, or set min_replicas to at least 1."
        ]
    if replicas["min_replicas"] > 0 and policy["scale_to_zero"]:
        errors[error_key("scale_to_zero")] = [
            f"true needs min_replicas 0, but min_replicas is {replicas['min_replicas']}: set min_replicas to 0, "
            "or set autoscaling.scale_to_zero to false."
        ]
    return errors


def autoscaled_desired(stored: int, *, min_replicas: int, max_replicas: int) -> int:
    """Return the desired replicas an autoscaled deployment keeps on a write: ``stored`` within min and max."""
    return max(min_replicas, min(stored, max_replicas))


def save_autoscaling(*, actor, deployment: Deployment, policy: dict | None) -> None:
    """Create, change or remove a deployment's policy, audited as ``deployment.autoscaling_updated`` on change.

    The caller validated ``policy`` and holds the deployment's row lock. Changing a policy keeps its
    decision history (``state``).
    """
    stored = AutoscalingPolicy.objects.filter(deployment=deployment).first()
    before = policy_snapshot(stored)
    if policy is None:
        if stored is not None:
            stored.delete()
    else:
        if stored is None:
            stored = AutoscalingPolicy(deployment=deployment)
        for field, value in policy.items():
            setattr(stored, field, value)
        stored.save()
    after = policy_snapshot(stored if policy is not None else None)
    if before != after:
        record_event(
            actor=actor, action="deployment.autoscaling_updated", subject=deployment, before=before, after=after
        )


def policy_snapshot(policy: AutoscalingPolicy | None) -> dict | None:
    if policy is None:
        return None
    return {field: getattr(policy, field) for field in POLICY_FIELDS}


def cold_start_note(deployment: Deployment) -> dict | None:
    """Return the API's cold-start note: None unless the deployment runs no replica (desired 0).

    ``last_start_s`` is the measured start from zero of the last one the autoscaler made: seconds
    from its decision to the first step of its plan that found the replicas ready. None when unknown.
    """
    if deployment.desired_replicas != 0:
        return None
    last_start_s = None
    start = (
        ScalingDecision.objects.filter(deployment=deployment, from_replicas=0, plan__isnull=False)
        .order_by("-decided_at")
        .first()
    )
    if start is not None:
        ready = (
            ExecutionStep.objects.filter(
                plan_id=start.plan_id, deployment=deployment, status=StepStatus.EXECUTED, desired_replicas__gt=0
            )
            .order_by("executed_at")
            .values_list("executed_at", flat=True)
            .first()
        )
        if ready is not None:
            last_start_s = round((ready - start.decided_at).total_seconds(), 1)
    message = "No replica runs: the first request waits for a replica to start."
    if last_start_s is not None:
        message += f" The last start from zero took {last_start_s:g} s."
    return {"message": message, "last_start_s": last_start_s}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
