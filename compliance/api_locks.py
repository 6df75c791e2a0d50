"""API over placement locks at /api/v1/locks/: staff with the lock permissions change them, customers read theirs.

Writes go through ``compliance.lock_services``, so the API and the admin apply the same hierarchy
checks, keep the same history and write the same audit events. Creating, changing and deleting
need the Django model permissions ``compliance.add_placementlock``, ``change_placementlock`` and
``delete_placementlock``; every change needs a ``change_reason``.
"""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.permissions import DjangoModelPermissions

from compliance.lock_services import LIST_FIELDS, create_lock, delete_lock, update_lock
from compliance.locks import RELATED
from compliance.models import LockChange, PlacementLock
from mcm_site.api import ModelViewSet


class LockPartSerializer(serializers.Serializer):
    values = serializers.ListField(child=serializers.CharField(), allow_null=True, help_text="Null: no restriction.")
    # "from" is a Python keyword, so the field is added to the declared fields after the class.


LockPartSerializer._declared_fields["from"] = serializers.ListField(
    child=serializers.IntegerField(), help_text="Ids of the locks this part comes from."
)


class LockSummarySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    level = serializers.CharField(help_text="platform, customer or deployment.")
    subject = serializers.CharField()
    reason = serializers.CharField()


class EffectiveLockSerializer(serializers.Serializer):
    locks = LockSummarySerializer(many=True, help_text="The locks that bind the deployment, widest level first.")
    allowed_regions = LockPartSerializer()
    allowed_jurisdictions = LockPartSerializer()
    allowed_providers = LockPartSerializer()
    excluded_providers = LockPartSerializer()
    required_capabilities = LockPartSerializer()


class NamesField(serializers.ListField):
    """A list of names read from a many-to-many field."""

    def __init__(self, *, to_name, **kwargs):
        self.to_name = to_name
        super().__init__(child=serializers.CharField(), required=False, **kwargs)

    def to_representation(self, value):
        return sorted(self.to_name(item) for item in value.all())


class PlacementLockSerializer(serializers.ModelSerializer):
    level = serializers.CharField(
        read_only=True, help_text="platform (no customer and no deployment), customer or deployment."
    )
    customer = serializers.CharField(
        source="customer.name", required=False, allow_null=True, help_text="Customer name, for a customer lock."
    )
    deployment = serializers.IntegerField(
        source="deployment_id", required=False, allow_null=True, help_text="Deployment id, for a deployment lock."
    )
    allowed_regions = NamesField(
        to_name=str,
        help_text="'provider/code' keys; empty allows any.",
    )
    allowed_jurisdictions = serializers.ListField(child=serializers.CharField(), required=False)
    allowed_providers = NamesField(
        to_name=lambda provider: provider.name, help_text="Provider names; empty allows any."
    )
    excluded_providers = NamesField(to_name=lambda provider: provider.name)
    required_capabilities = serializers.ListField(child=serializers.CharField(), required=False)
    reason = serializers.CharField(required=False, help_text="Why the lock exists, for example the contract clause.")
    change_reason = serializers.CharField(
        write_only=True,
        required=False,
        help_text="Why this change is made; required on update, and on create defaults to the lock's reason.",
    )

    class Meta:
        model = PlacementLock
        fields = [
            "id",
            "level",
            "customer",
            "deployment",
            *LIST_FIELDS,
            "reason",
            "change_reason",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]

    def service_data(self, validated_data: dict) -> dict:
        data = {key: value for key, value in validated_data.items() if key in LIST_FIELDS or key == "reason"}
        if "customer" in validated_data:
            data["customer"] = (validated_data["customer"] or {}).get("name")
        if "deployment_id" in validated_data:
            data["deployment"] = validated_data["deployment_id"]
        return data

    def create(self, validated_data):
        actor = self.context["request"].user
        return create_lock(
            actor=actor, data=self.service_data(validated_data), reason=validated_data.get("change_reason")
        )

    def update(self, instance, validated_data):
        actor = self.context["request"].user
        data = self.service_data(validated_data)
        if not self.partial:
            # A full update replaces every part: the ones left out become empty, the subject the platform.
            data = {"customer": None, "deployment": None, **{name: [] for name in LIST_FIELDS}, **data}
        return update_lock(actor=actor, lock=instance, data=data, reason=validated_data.get("change_reason", ""))


class LockChangeSerializer(serializers.ModelSerializer):
    class Meta:
        model = LockChange
        fields = ["id", "lock_pk", "action", "actor_id", "actor_label", "reason", "before", "after", "changed_at"]
        read_only_fields = fields


class LockPermissions(DjangoModelPermissions):
    """Reads need a login (the queryset scopes them); writes need the model permission of the method."""

    perms_map = {**DjangoModelPermissions.perms_map, "GET": [], "OPTIONS": [], "HEAD": []}
    message = "Changing placement locks needs the compliance role (permissions compliance.*_placementlock)."


class PlacementLockViewSet(ModelViewSet):
    """Placement locks at platform, customer and deployment level. Customers read the locks of their customers."""

    queryset = (
        PlacementLock.objects.select_related("customer", "deployment__customer")
        .prefetch_related(*RELATED)
        .order_by("pk")
    )
    serializer_class = PlacementLockSerializer
    permission_classes = [LockPermissions]
    ordering_fields = ["created_at", "updated_at"]

    @extend_schema(
        parameters=[
            OpenApiParameter("change_reason", OpenApiTypes.STR, description="Why the lock is deleted (required).")
        ]
    )
    def destroy(self, request, *args, **kwargs):
        return super().destroy(request, *args, **kwargs)

    def perform_destroy(self, instance):
        reason = self.request.query_params.get("change_reason") or ""
        if not reason and isinstance(self.request.data, dict):
            reason = self.request.data.get("change_reason") or ""
        delete_lock(actor=self.request.user, lock=instance, reason=reason)

    @extend_schema(responses=LockChangeSerializer(many=True))
    @action(detail=True, methods=["get"], filter_backends=[])
    def changes(self, request, pk=None):
        """List the changes of this lock, newest first, with who made each, why, and the lock before and after."""
        rows = LockChange.objects.filter(lock_pk=self.get_object().pk).order_by("-changed_at", "-pk")
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(LockChangeSerializer(page, many=True).data)
