"""Customers' API tokens: creation, revocation, authentication and the API rate limit.

A token reads ``mcm_<prefix>_<secret>``. Only the SHA-256 digest of the whole token is stored, so
a leaked database does not leak working tokens. The prefix ``mcm_<prefix>`` names the token in lists,
the admin and the audit trail. Clients send ``Authorization: Bearer <token>`` or ``Authorization: Token <token>``;
DRF's own tokens (``drf_create_token``) keep working next to these.
"""

import hashlib
import logging
import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import caches
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from redis.exceptions import RedisError
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.throttling import SimpleRateThrottle

from compliance.services import record_event
from placements.models import ApiToken

logger = logging.getLogger(__name__)

TOKEN_MARK = "mcm_"
# 6 random bytes: the visible prefix is unique, and a clash on creation is retried.
PREFIX_BYTES = 6
SECRET_BYTES = 32
# ApiTokenAuthentication writes last_used_at only when the stored value is older than this.
LAST_USED_RESOLUTION = timedelta(seconds=60)
NAME_MAX_LENGTH = ApiToken._meta.get_field("name").max_length


def token_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def token_audit_view(token: ApiToken) -> dict:
    """What the audit trail keeps of a token: never the secret or its digest."""
    return {
        "prefix": token.prefix,
        "name": token.name,
        "user": token.user.get_username(),
        "expires_at": token.expires_at.isoformat() if token.expires_at else None,
        "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None,
    }


def validate_token_fields(*, name, expires_at) -> tuple[str, datetime | None]:
    errors: dict[str, list[str]] = {}
    if not isinstance(name, str) or not name.strip():
        errors["name"] = [f"{name!r} is not valid: give the token a name, for example 'ci deploys'."]
    elif len(name.strip()) > NAME_MAX_LENGTH:
        errors["name"] = [f"The name is {len(name.strip())} characters long: use at most {NAME_MAX_LENGTH}."]
    if expires_at is not None and (not isinstance(expires_at, datetime) or expires_at <= timezone.now()):
        expiry_text = expires_at.isoformat() if isinstance(expires_at, datetime) else repr(expires_at)
        errors["expires_at"] = [f"{expiry_text} is not in the future: give a later time, or none for no expiry."]
    if errors:
        raise ValidationError(errors)
    return name.strip(), expires_at


def create_api_token(*, actor, user, name, expires_at: datetime | None = None) -> tuple[ApiToken, str]:
    """Create a token for ``user``; return it and the raw token, which nothing stores and only the caller receives.

    Audited as ``api_token.created`` with the prefix.
    """
    name, expires_at = validate_token_fields(name=name, expires_at=expires_at)
    for _attempt in range(3):
        prefix = TOKEN_MARK + secrets.token_hex(PREFIX_BYTES)
        if not ApiToken.objects.filter(prefix=prefix).exists():
            break
    else:
        raise RuntimeError("Could not draw an unused token prefix in 3 attempts.")
    raw = f"{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=user, name=name, prefix=prefix, digest=token_digest(raw), expires_at=expires_at
        )
        record_event(actor=actor, action="api_token.created", subject=token, after=token_audit_view(token))
    logger.info("API token %s created for user %s", token.prefix, user.pk)
    return token, raw


def revoke_api_token(*, actor, token: ApiToken, reason: str = "") -> ApiToken:
    """Revoke ``token`` at once, audited as ``api_token.revoked``; revoking a revoked token changes nothing."""
    with transaction.atomic():
        locked = ApiToken.objects.select_for_update().select_related("user").get(pk=token.pk)
        if locked.revoked_at is not None:
            return locked
        before = token_audit_view(locked)
        locked.revoked_at = timezone.now()
        locked.save(update_fields=["revoked_at"])
        record_event(
            actor=actor,
            action="api_token.revoked",
            subject=locked,
            reason=reason,
            before=before,
            after=token_audit_view(locked),
        )
    logger.info("API token %s revoked by %s", locked.prefix, getattr(actor, "pk", actor))
    return locked


def can_revoke(user, token: ApiToken) -> bool:
    return token.user_id == user.pk or user.has_perm("placements.change_apitoken")


class ApiTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer mcm_...`` or ``Token mcm_...``; other ``Token`` values go on to DRF's own tokens."""

    keywords = (b"bearer", b"token")

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() not in self.keywords:
            return None
        bearer = parts[0].lower() == b"bearer"
        raw = parts[1].decode("latin-1") if len(parts) == 2 else ""
        if not raw.startswith(TOKEN_MARK):
            if bearer:
                raise AuthenticationFailed("Invalid Authorization header: use 'Bearer <token>' with an MCM API token.")
            return None
        return self.authenticate_token(raw)

    def authenticate_token(self, raw: str):
        token = ApiToken.objects.select_related("user").filter(digest=token_digest(raw)).first()
        if token is None:
            raise AuthenticationFailed("Invalid token.")
        now = timezone.now()
        if token.revoked_at is not None:
            raise AuthenticationFailed(f"Token {token.prefix} was revoked.")
        if token.expires_at is not None and token.expires_at <= now:
            raise AuthenticationFailed(f"Token {token.prefix} expired at {token.expires_at.isoformat()}.")
        if not token.user.is_active:
            raise AuthenticationFailed("User inactive or deleted.")
        if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
            token.last_used_at = now
        return token.user, token

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class ApiTokenScheme(OpenApiAuthenticationExtension):
    """Describes ``ApiTokenAuthentication`` in the OpenAPI schema."""

    target_class = ApiTokenAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An MCM API token (mcm_...), created at /api/v1/tokens/; 'Token <token>' works too.",
        }


class ApiRateThrottle(SimpleRateThrottle):
    """One request budget per user, shared by all of a user's tokens and sessions; anonymous requests per address.

    Customers get ``MCM_API_RATE_USER``; staff and agent accounts (``fleet.add_clusterevent``), which
    push events for whole fleets, get ``MCM_API_RATE_STAFF``. The settings are read on every request.
    NOTE: the history is read and written without a lock, as in DRF's throttles, so concurrent
    requests of one user can each pass near the limit. A Redis script would close that gap.
    """

    cache_format = "throttle_api_%(ident)s"

    def __init__(self):
        # SimpleRateThrottle reads a fixed rate here; this one picks it per requester in allow_request.
        self.rate = None

    def allow_request(self, request, view):
        user = request.user
        privileged = bool(user and user.is_authenticated and (user.is_staff or user.has_perm("fleet.add_clusterevent")))
        self.rate = settings.MCM_API_RATE_STAFF if privileged else settings.MCM_API_RATE_USER
        if not self.rate:
            return True
        self.num_requests, self.duration = self.parse_rate(self.rate)
        self.cache = caches[settings.MCM_API_THROTTLE_CACHE]
        try:
            return super().allow_request(request, view)
        except (RedisError, OSError) as exc:
            # The rate limit protects the API; an unreachable store must not take the API down with it.
            logger.warning("API rate limit not checked for %s: throttle store failed: %s", request.path, exc)
            return True

    def get_cache_key(self, request, view):
        if request.user and request.user.is_authenticated:
            ident = f"user_{request.user.pk}"
        else:
            ident = f"address_{self.get_ident(request)}"
        return self.cache_format % {"ident": ident}
