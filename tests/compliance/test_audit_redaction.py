"""record_event keeps secrets (tokens, credentials, keys) out of the before and after it stores."""

import pytest

from compliance.models import AuditEvent
from compliance.services import REDACTED, record_event, redact_secrets

TOKEN = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2Vu.c2ln"
PEM_KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----"
FERNET = "gAAAAABn" + "x" * 80 + "=="


@pytest.mark.parametrize(
    "key",
    ["token", "Token", "password", "secret", "key", "api-key", "kubeconfig", "client_key_data", "bearer_token"],
)
def test_secret_keys_redacted(key):
    assert redact_secrets({key: TOKEN}) == {key: REDACTED}


@pytest.mark.parametrize("value", [PEM_KEY, FERNET, f"Bearer {TOKEN}", f"Token {TOKEN}"])
def test_secret_values_redacted_under_any_key(value):
    assert redact_secrets({"note": value}) == {"note": REDACTED}


def test_nested_secrets_redacted():
    document = {"credentials": {"kind": "token", "token": TOKEN, "users": [{"user": {"token": TOKEN}}]}}

    redacted = redact_secrets(document)

    assert redacted == {"credentials": {"kind": "token", "token": REDACTED, "users": [{"user": {"token": REDACTED}}]}}


def test_kubeconfig_redacted_whole():
    redacted = redact_secrets({"kubeconfig": {"users": [{"name": "mcm", "user": {"username": "admin"}}]}})

    assert redacted == {"kubeconfig": REDACTED}


def test_flags_and_plain_values_kept():
    document = {"has_credentials": True, "token": None, "secret": False, "api_endpoint": "https://k8s.example"}

    assert redact_secrets(document) == document


def test_non_dict_values_pass_through():
    assert redact_secrets(None) is None
    assert redact_secrets(["a", 1, 2.5]) == ["a", 1, 2.5]
    assert redact_secrets("plain reason") == "plain reason"


def test_record_event_stores_redacted(ops):
    event = record_event(
        actor=ops,
        action="cluster.registered",
        subject=("fleet.cluster", 3),
        before={"api_endpoint": "", "has_credentials": False},
        after={"api_endpoint": "https://k8s.example", "credentials": {"token": TOKEN, "ca_cert": True}},
    )

    stored = AuditEvent.objects.get(pk=event.pk)
    assert TOKEN not in str(stored.after)
    assert stored.after == {"api_endpoint": "https://k8s.example", "credentials": {"token": REDACTED, "ca_cert": True}}
    assert stored.before == {"api_endpoint": "", "has_credentials": False}


def test_token_key_redacted_in_api(ops, ops_client):
    record_event(actor=ops, action="token.created", subject=("authtoken.token", "ops"), after={"key": TOKEN})

    response = ops_client.get("/api/v1/audit-events/", {"action": "token.created"})

    assert TOKEN not in str(response.data)
    assert response.data["results"][0]["after"] == {"key": REDACTED}
