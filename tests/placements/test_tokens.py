"""Customers' API tokens: create, list, revoke, authenticate, the rate limit, and where secrets never appear."""

import logging
from datetime import timedelta

import pytest
from django.core.cache import caches
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from compliance.models import AuditEvent
from placements.models import ApiToken
from placements.tokens import create_api_token, revoke_api_token, token_digest
from tests.conftest import token_client

TOKENS = "/api/v1/tokens/"
DEPLOYMENTS = "/api/v1/deployments/"


def bearer(raw: str, keyword: str = "Bearer") -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"{keyword} {raw}")
    return client


@pytest.fixture
def acme_token(acme_member):
    return create_api_token(actor=acme_member, user=acme_member, name="ci")


# Creation: the secret once, stored hashed, audited with the prefix only.


@pytest.mark.django_db
def test_create_shows_secret_once(acme_client, acme_member):
    response = acme_client.post(TOKENS, {"name": "ci deploys"}, format="json")
    assert response.status_code == 201
    raw = response.data["token"]
    assert raw.startswith(response.data["prefix"] + "_")
    stored = ApiToken.objects.get(pk=response.data["id"])
    assert stored.user == acme_member
    assert stored.digest == token_digest(raw)
    assert raw not in {stored.prefix, stored.digest, stored.name}

    listing = acme_client.get(TOKENS)
    assert listing.status_code == 200
    assert raw not in str(listing.content)
    assert "token" not in listing.data["results"][0]
    detail = acme_client.get(f"{TOKENS}{stored.pk}/")
    assert "token" not in detail.data
    assert raw not in str(detail.content)


@pytest.mark.django_db
def test_create_audits_prefix_not_secret(acme_client, acme_member):
    response = acme_client.post(TOKENS, {"name": "ci"}, format="json")
    raw = response.data["token"]
    event = AuditEvent.objects.get(action="api_token.created", subject_id=str(response.data["id"]))
    assert event.actor == acme_member
    assert event.subject_type == "placements.apitoken"
    assert event.after["prefix"] == response.data["prefix"]
    stored = ApiToken.objects.get(pk=response.data["id"])
    for field in (event.before, event.after, event.reason):
        assert raw not in str(field)
        assert stored.digest not in str(field)


@pytest.mark.django_db
def test_create_never_logs_the_secret(acme_client, caplog):
    with caplog.at_level(logging.DEBUG):
        response = acme_client.post(TOKENS, {"name": "ci"}, format="json")
        bearer(response.data["token"]).get(DEPLOYMENTS)
    raw = response.data["token"]
    secret = raw.rsplit("_", 1)[1]
    assert response.data["prefix"] in caplog.text
    assert secret not in caplog.text


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "name"),
        ({}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"name": "ci", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "ci", "expires_at": "soon"}, "expires_at"),
    ],
)
def test_create_rejects_bad_fields(acme_client, body, field):
    response = acme_client.post(TOKENS, body, format="json")
    assert response.status_code == 400
    assert field in response.data
    assert ApiToken.objects.count() == 0
    assert not AuditEvent.objects.filter(action="api_token.created").exists()


@pytest.mark.django_db
def test_past_expiry_named_in_iso_8601(acme_client):
    response = acme_client.post(TOKENS, {"name": "ci", "expires_at": "2001-01-01T00:00:00Z"}, format="json")

    assert response.status_code == 400
    assert response.data["expires_at"] == [
        "2001-01-01T00:00:00+00:00 is not in the future: give a later time, or none for no expiry."
    ]


# Authentication.


@pytest.mark.django_db
@pytest.mark.parametrize("keyword", ["Bearer", "Token"])
def test_token_authenticates_owner(acme_token, acme_chat, globex_search, keyword):
    token, raw = acme_token
    response = bearer(raw, keyword).get(DEPLOYMENTS)
    assert response.status_code == 200
    assert [row["name"] for row in response.data["results"]] == ["chat"]
    token.refresh_from_db()
    assert token.last_used_at is not None


@pytest.mark.django_db
def test_drf_tokens_still_work(acme_client, acme_chat):
    assert acme_client.get(DEPLOYMENTS).status_code == 200


@pytest.mark.django_db
def test_revoked_token_gets_401(acme_token, acme_member):
    token, raw = acme_token
    revoke_api_token(actor=acme_member, token=token)
    response = bearer(raw).get(DEPLOYMENTS)
    assert response.status_code == 401
    assert token.prefix in response.data["detail"]
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db
def test_expired_token_gets_401(acme_token):
    token, raw = acme_token
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = bearer(raw).get(DEPLOYMENTS)
    assert response.status_code == 401
    assert "expired" in response.data["detail"]


@pytest.mark.django_db
@pytest.mark.parametrize("keyword", ["Bearer", "Token"])
def test_unknown_token_gets_401(acme_token, keyword):
    _token, raw = acme_token
    response = bearer(raw[:-2] + "xx", keyword).get(DEPLOYMENTS)
    assert response.status_code == 401


@pytest.mark.django_db
def test_bearer_non_mcm_token_gets_401(acme_member):
    assert bearer("not-a-token").get(DEPLOYMENTS).status_code == 401


# Listing and revoking: each customer their own tokens.


@pytest.mark.django_db
def test_member_lists_only_own_tokens(acme_client, acme_token, globex_member):
    create_api_token(actor=globex_member, user=globex_member, name="globex ci")
    response = acme_client.get(TOKENS)
    assert [row["name"] for row in response.data["results"]] == ["ci"]


@pytest.mark.django_db
def test_member_cannot_touch_foreign_token(globex_client, acme_token):
    token, raw = acme_token
    assert globex_client.get(f"{TOKENS}{token.pk}/").status_code == 404
    assert globex_client.delete(f"{TOKENS}{token.pk}/").status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None
    assert bearer(raw).get(DEPLOYMENTS).status_code == 200


@pytest.mark.django_db
def test_revoked_own_token_stops_working(acme_token, acme_member):
    token, raw = acme_token
    client = bearer(raw)
    response = client.delete(f"{TOKENS}{token.pk}/", {"reason": "laptop lost"}, format="json")
    assert response.status_code == 204
    token.refresh_from_db()
    assert token.revoked_at is not None
    event = AuditEvent.objects.get(action="api_token.revoked", subject_id=str(token.pk))
    assert event.actor == acme_member
    assert event.reason == "laptop lost"
    assert event.before["revoked_at"] is None
    assert event.after["prefix"] == token.prefix
    assert client.get(DEPLOYMENTS).status_code == 401


@pytest.mark.django_db
def test_second_revoke_changes_nothing(acme_client, acme_token):
    token, _raw = acme_token
    assert acme_client.delete(f"{TOKENS}{token.pk}/").status_code == 204
    assert acme_client.delete(f"{TOKENS}{token.pk}/").status_code == 204
    assert AuditEvent.objects.filter(action="api_token.revoked").count() == 1
    listed = acme_client.get(TOKENS).data["results"][0]
    assert listed["revoked_at"] is not None and listed["active"] is False


@pytest.mark.django_db
def test_staff_without_permission_cannot_revoke(django_user_model, acme_token):
    token, _raw = acme_token
    client = token_client(django_user_model.objects.create_user(username="sam", is_staff=True))
    assert client.get(f"{TOKENS}{token.pk}/").status_code == 200
    response = client.delete(f"{TOKENS}{token.pk}/")
    assert response.status_code == 403
    assert "needs the ops role (permission placements.change_apitoken)" in response.json()["detail"]
    token.refresh_from_db()
    assert token.revoked_at is None


@pytest.mark.django_db
def test_ops_revokes_customer_token(ops_client, acme_token):
    token, _raw = acme_token
    response = ops_client.delete(f"{TOKENS}{token.pk}/", {"reason": "Leaked in a public repository."}, format="json")
    assert response.status_code == 204
    token.refresh_from_db()
    assert token.revoked_at is not None
    event = AuditEvent.objects.get(action="api_token.revoked")
    assert event.actor_label == "ops"


@pytest.mark.django_db
def test_anonymous_cannot_list_or_create_tokens(anonymous_client):
    assert anonymous_client.get(TOKENS).status_code == 401
    assert anonymous_client.post(TOKENS, {"name": "x"}, format="json").status_code == 401


# Rate limit.


@pytest.fixture
def fresh_throttle_store():
    """A per-test in-memory store, so counts of other tests and runs never reach this one."""
    store = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "throttle-test"}
    with override_settings(CACHES={"default": store, "throttle": store}):
        caches["throttle"].clear()
        yield


@pytest.mark.django_db
@override_settings(MCM_API_RATE_USER="3/min")
def test_over_rate_gets_429_with_retry_after(fresh_throttle_store, acme_token, acme_chat):
    _token, raw = acme_token
    client = bearer(raw)
    statuses = [client.get(DEPLOYMENTS).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    response = client.get(DEPLOYMENTS)
    assert response.status_code == 429
    assert 0 < int(response["Retry-After"]) <= 60


@pytest.mark.django_db
@override_settings(MCM_API_RATE_USER="2/min")
def test_rate_is_per_user_across_tokens(fresh_throttle_store, acme_member, globex_member, acme_chat):
    _first, first_raw = create_api_token(actor=acme_member, user=acme_member, name="one")
    _second, second_raw = create_api_token(actor=acme_member, user=acme_member, name="two")
    _other, other_raw = create_api_token(actor=globex_member, user=globex_member, name="globex")
    assert bearer(first_raw).get(DEPLOYMENTS).status_code == 200
    assert bearer(second_raw).get(DEPLOYMENTS).status_code == 200
    assert bearer(first_raw).get(DEPLOYMENTS).status_code == 429
    assert bearer(second_raw).get(DEPLOYMENTS).status_code == 429
    assert bearer(other_raw).get(DEPLOYMENTS).status_code == 200


@pytest.mark.django_db
@override_settings(MCM_API_RATE_USER="1/min", MCM_API_RATE_STAFF="5/min")
def test_staff_get_the_staff_rate(fresh_throttle_store, ops_client):
    statuses = [ops_client.get(TOKENS).status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]


@pytest.mark.django_db
@override_settings(MCM_API_RATE_USER="1/min")
def test_unreachable_throttle_store_allows_requests(acme_token, acme_chat, caplog):
    store = {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:1/0"}
    _token, raw = acme_token
    with override_settings(CACHES={"default": store, "throttle": store}):
        statuses = [bearer(raw).get(DEPLOYMENTS).status_code for _ in range(2)]
    assert statuses == [200, 200]
    assert "throttle store failed" in caplog.text


# Admin: read-only, no secret.


@pytest.mark.django_db
def test_admin_is_read_only_without_secret(superuser_client, acme_token):
    token, raw = acme_token
    listing = superuser_client.get("/admin/placements/apitoken/")
    assert listing.status_code == 200
    assert token.prefix in listing.content.decode()
    page = superuser_client.get(f"/admin/placements/apitoken/{token.pk}/change/")
    assert page.status_code == 200
    body = page.content.decode()
    assert raw not in body
    assert token.digest not in body
    assert superuser_client.get("/admin/placements/apitoken/add/").status_code == 403
    response = superuser_client.post(f"/admin/placements/apitoken/{token.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
    assert ApiToken.objects.filter(pk=token.pk).exists()


@pytest.mark.django_db
def test_admin_active_filter_leaves_out_expired(superuser_client, acme_member):
    live, _ = create_api_token(actor=acme_member, user=acme_member, name="live")
    expired, _ = create_api_token(actor=acme_member, user=acme_member, name="expired")
    ApiToken.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    html = superuser_client.get("/admin/placements/apitoken/", {"state": "active"}).content.decode()

    assert live.prefix in html
    assert expired.prefix not in html
