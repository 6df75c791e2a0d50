"""Serializers of a deployment's autoscaling policy, its cold-start note and its scaling decisions.

Shapes only: ``placements.autoscaling_policy`` checks the values, through the deployment services.
"""

from collections.abc import Mapping

from rest_framework import serializers

from placements.autoscaling_policy import POLICY_FIELDS, error_key
from placements.models import AutoscalingPolicy, ScalingDecision

ERROR_PREFIX = error_key("")


class NumberField(serializers.FloatField):
    """A float field that rejects JSON true and false, which Python would take as 1.0 and 0.0."""

    def to_internal_value(self, data):
        if isinstance(data, bool):
            raise serializers.ValidationError(f"{str(data).lower()} is not a number: send a number such as 0.7.")
        return super().to_internal_value(data)


class AutoscalingPolicySerializer(serializers.Serializer):
    """A deployment's autoscaling policy; on write, fields left out keep their stored or default values."""

    enabled = serializers.BooleanField(
        required=False, help_text="While true the autoscaler sets desired_replicas; default true."
    )
    target_concurrency = NumberField(
        required=False, help_text="In-flight requests one replica serves at full load; default 8."
    )
    target_utilization = NumberField(
        required=False, help_text="Share of target_concurrency aimed at, in (0, 1]; default 0.7."
    )
    window_s = serializers.IntegerField(
        required=False, help_text="Seconds of traffic averaged for each decision, 1 to 86400; default 60."
    )
    scale_down_delay_s = serializers.IntegerField(
        required=False,
        help_text="Seconds a lower need must last before replicas are removed, 0 to 86400; default 300.",
    )
    max_scale_down_fraction = NumberField(
        required=False,
        help_text="Largest share of replicas removed per minute, in (0, 1], at least one replica; default 0.5.",
    )
    scale_to_zero = serializers.BooleanField(
        required=False,
        help_text="Remove every replica after scale_down_delay_s without traffic; needs min_replicas 0.",
    )
    seconds_per_request = NumberField(
        required=False,
        help_text="Mean request duration, to derive concurrency when in-flight requests are not reported; default 1.",
    )

    def to_internal_value(self, data):
        # Unknown keys are rejected, not dropped (a misspelt field would be lost): with the type
        # errors here, or else passed on so the services report them with the range errors.
        unknown = sorted(set(data) - set(self.fields), key=str) if isinstance(data, Mapping) else []
        try:
            values = super().to_internal_value(data)
        except serializers.ValidationError as error:
            if not unknown or not isinstance(error.detail, dict):
                raise
            errors = {
                str(name): [f"{name!r} is not a policy field: use {', '.join(POLICY_FIELDS)}."] for name in unknown
            }
            raise serializers.ValidationError({**error.detail, **errors}) from error
        return {**values, **{name: data[name] for name in unknown}}

    def get_attribute(self, instance):
        # A deployment without a policy has no related row: show null.
        try:
            return instance.autoscaling
        except AutoscalingPolicy.DoesNotExist:
            return None


class ColdStartSerializer(serializers.Serializer):
    message = serializers.CharField()
    last_start_s = serializers.FloatField(
        allow_null=True, help_text="Seconds the last start from zero took until a replica was ready; null if unknown."
    )


class ScalingDecisionSerializer(serializers.ModelSerializer):
    plan_version = serializers.IntegerField(source="plan.version", allow_null=True, read_only=True)

    class Meta:
        model = ScalingDecision
        fields = [
            "id",
            "decided_at",
            "direction",
            "from_replicas",
            "to_replicas",
            "reason",
            "measurements",
            "plan",
            "plan_version",
        ]
        read_only_fields = fields


def nest_policy_errors(detail):
    """Move the error keys ``autoscaling.<field>`` of a 400 response under ``autoscaling``, keyed by field.

    The services key policy errors that way (Django's ``ValidationError`` does not nest); the
    serializer's own type errors have this nested shape already.
    """
    if not isinstance(detail, dict) or not any(str(key).startswith(ERROR_PREFIX) for key in detail):
        return detail
    nested: dict = {}
    result: dict = {}
    for key, messages in detail.items():
        if str(key).startswith(ERROR_PREFIX):
            nested.setdefault(str(key)[len(ERROR_PREFIX) :], []).extend(messages)
        else:
            result[key] = messages
    if isinstance(result.get("autoscaling"), list):
        nested.setdefault("non_field_errors", []).extend(result["autoscaling"])
    result["autoscaling"] = nested
    return result
