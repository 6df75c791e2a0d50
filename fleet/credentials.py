"""Encryption at rest of cluster credentials (Fernet: AES-128-CBC with HMAC-SHA256).

The key comes from ``settings.MCM_CREDENTIALS_KEYS``: a list of Fernet keys, newest first, so a key
can be rotated by putting the new one in front and re-saving each cluster's credentials.
"""

import json

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError

from fleet.kube import Credentials


def cipher() -> MultiFernet:
    keys = settings.MCM_CREDENTIALS_KEYS
    if not keys:
        raise ImproperlyConfigured("MCM_CREDENTIALS_KEYS is empty: generate one with Fernet.generate_key()")
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except ValueError as error:
        raise ImproperlyConfigured(f"MCM_CREDENTIALS_KEYS contains an invalid Fernet key: {error}") from None


def validate_credentials(data: dict) -> Credentials:
    """Check a credentials document and return it as ``Credentials``; errors never echo secrets."""
    if not isinstance(data, dict):
        raise ValidationError({"credentials": "must be an object with 'token' (and 'ca_cert_pem') or 'kubeconfig'"})
    unknown = set(data) - {"token", "ca_cert_pem", "kubeconfig", "insecure_skip_tls_verify"}
    if unknown:
        raise ValidationError({"credentials": f"unknown keys: {', '.join(sorted(unknown))}"})
    token = data.get("token", "")
    kubeconfig = data.get("kubeconfig")
    if not token and not kubeconfig:
        raise ValidationError({"credentials": "missing: give a bearer 'token' or a 'kubeconfig'"})
    if token and not isinstance(token, str):
        raise ValidationError({"credentials.token": "must be a string"})
    if kubeconfig is not None and not isinstance(kubeconfig, dict):
        raise ValidationError({"credentials.kubeconfig": "must be a kubeconfig document (an object)"})
    ca_cert = data.get("ca_cert_pem", "")
    if ca_cert and "BEGIN CERTIFICATE" not in ca_cert:
        raise ValidationError({"credentials.ca_cert_pem": "must be a PEM certificate"})
    skip_verify = data.get("insecure_skip_tls_verify", False)
    if not isinstance(skip_verify, bool):
        raise ValidationError({"credentials.insecure_skip_tls_verify": f"must be true or false, not {skip_verify!r}"})
    return Credentials(token=token, ca_cert_pem=ca_cert, kubeconfig=kubeconfig, insecure_skip_tls_verify=skip_verify)


def encrypt_credentials(credentials: Credentials) -> str:
    document = {
        "token": credentials.token,
        "ca_cert_pem": credentials.ca_cert_pem,
        "kubeconfig": credentials.kubeconfig,
        "insecure_skip_tls_verify": credentials.insecure_skip_tls_verify,
    }
    return cipher().encrypt(json.dumps(document).encode()).decode()


def decrypt_credentials(token: str) -> Credentials:
    try:
        document = json.loads(cipher().decrypt(token.encode()))
    except InvalidToken:
        raise ImproperlyConfigured(
            "stored cluster credentials cannot be decrypted: MCM_CREDENTIALS_KEYS lacks the key they were saved with"
        ) from None
    return Credentials(**document)
