"""API tokens under /api/v1/tokens/: create (the secret is in that one response), list, retrieve and revoke.

Revoking (``DELETE``) keeps the token's row, marked revoked, so lists and the audit trail still name it.
"""

from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response

from mcm_site.api import ScopedViewSetMixin
from placements.models import ApiToken
from placements.tokens import can_revoke, create_api_token, revoke_api_token


class ApiTokenSerializer(serializers.ModelSerializer):
    user = serializers.CharField(source="user.username", read_only=True)
    active = serializers.SerializerMethodField()

    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "user", "created_at", "expires_at", "last_used_at", "revoked_at", "active"]
        read_only_fields = ["id", "prefix", "user", "created_at", "last_used_at", "revoked_at", "active"]

    def get_active(self, token: ApiToken) -> bool:
        return token.revoked_at is None and (token.expires_at is None or token.expires_at > self.context["now"])


class NewApiTokenSerializer(ApiTokenSerializer):
    """The creation response, the only response that carries the token itself."""

    token = serializers.CharField(read_only=True, help_text="The token. It is shown only in this response.")

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "token"]


class RevokeSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=500)


@extend_schema_view(
    create=extend_schema(request=ApiTokenSerializer, responses={201: NewApiTokenSerializer}),
    destroy=extend_schema(
        summary="Revoke a token",
        description="The token stops working at once. It stays in the list, marked revoked.",
        responses={204: None},
    ),
)
class ApiTokenViewSet(
    ScopedViewSetMixin,
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Each user creates and revokes their own tokens; staff see every token and revoke with ``change_apitoken``."""

    queryset = ApiToken.objects.select_related("user")
    serializer_class = ApiTokenSerializer
    filterset_fields = ["revoked_at"]
    ordering_fields = ["created_at", "last_used_at", "name"]

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "now": timezone.now()}

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        token, raw = create_api_token(
            actor=request.user,
            user=request.user,
            name=serializer.validated_data["name"],
            expires_at=serializer.validated_data.get("expires_at"),
        )
        token.token = raw
        body = NewApiTokenSerializer(token, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_201_CREATED)

    def destroy(self, request, *args, **kwargs):
        token = self.get_object()
        if not can_revoke(request.user, token):
            raise PermissionDenied(
                f"Token {token.prefix} belongs to another user. "
                "Revoking it needs the ops role (permission placements.change_apitoken)."
            )
        reason = RevokeSerializer(data=request.data) if request.data else None
        if reason is not None:
            reason.is_valid(raise_exception=True)
        revoke_api_token(
            actor=request.user, token=token, reason=reason.validated_data.get("reason", "") if reason else ""
        )
        return Response(status=status.HTTP_204_NO_CONTENT)
