"""Production settings: ``manage.py check --deploy`` in a fresh interpreter with a production environment."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STRONG_KEY = "k7Qv2-Xr9pLm4Zt8Wc1Ns6Bh3Yf5Jd0Ga-Ue7Ri2Oo9Pq4Ls8Kx1Mv6Tb3Hn5Cz0"


def production_environment(**overrides) -> dict:
    """The test run's environment stripped of the security variables, plus a production configuration."""
    keep = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SECURE_", "SESSION_", "CSRF_", "MCM_HTTPS", "MCM_EMBEDDED"))
        and key not in ("DEBUG", "ALLOWED_HOSTS", "SECRET_KEY")
    }
    keep.update(
        DJANGO_SETTINGS_MODULE="mcm_site.settings",
        SECRET_KEY=STRONG_KEY,
        ALLOWED_HOSTS="mcm.example.com",
        CSRF_TRUSTED_ORIGINS="https://mcm.example.com",
        DEBUG="0",
    )
    keep.update(overrides)
    return keep


def manage(*args: str, **overrides) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=production_environment(**overrides),
        capture_output=True,
        text=True,
        timeout=120,
    )


def deploy_check(**overrides) -> subprocess.CompletedProcess:
    return manage("check", "--deploy", "--fail-level", "WARNING", **overrides)


def test_production_environment_passes_the_deploy_check():
    completed = deploy_check()
    assert completed.returncode == 0, completed.stderr
    assert "no issues" in completed.stdout


@pytest.mark.parametrize(
    ("overrides", "check_id"),
    [
        ({"SECRET_KEY": "short"}, "security.W009"),
        ({"DEBUG": "1"}, "security.W018"),
        ({"SECURE_HSTS_SECONDS": "0"}, "security.W004"),
        ({"SECURE_SSL_REDIRECT": "0"}, "security.W008"),
        ({"SESSION_COOKIE_SECURE": "0"}, "security.W012"),
        ({"MCM_HTTPS": "0"}, "security.W004"),
        ({"MCM_CREDENTIALS_KEYS": ""}, "fleet.W001"),
        ({"MCM_CREDENTIALS_KEYS": "not-a-key"}, "fleet.E001"),
    ],
)
def test_weak_settings_fail_the_deploy_check_naming_it(overrides, check_id):
    completed = deploy_check(**overrides)
    assert completed.returncode != 0
    assert check_id in completed.stderr + completed.stdout


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SECURE_HSTS_SECONDS", "a year"),
        ("SECURE_HSTS_SECONDS", "-1"),
        ("SESSION_COOKIE_AGE", "0"),
        ("SECURE_SSL_REDIRECT", "maybe"),
        ("SECURE_PROXY_SSL_HEADER", "X-Forwarded-Proto: https"),
        ("CSRF_TRUSTED_ORIGINS", "mcm.example.com"),
    ],
)
def test_bad_value_fails_at_start(name, value):
    completed = manage("check", **{name: value})
    assert completed.returncode != 0
    assert "ImproperlyConfigured" in completed.stderr
    assert name in completed.stderr
    assert repr(value) in completed.stderr


SHOW = (
    "from django.conf import settings as s; "
    "print(s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, s.SECURE_HSTS_SECONDS)"
)


def show_settings(**overrides) -> str:
    environment = production_environment(**overrides)
    completed = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {SHOW}"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip()


def test_development_and_embedded_serve_plain_http(tmp_path):
    assert show_settings() == "True True 31536000"
    assert show_settings(DEBUG="1") == "False False 0"
    assert show_settings(MCM_EMBEDDED="1", DEBUG="1", MCM_EMBEDDED_DIR=str(tmp_path)) == "False False 0"


def test_proxy_header_is_opt_in():
    code = "import django; django.setup(); from django.conf import settings as s; print(s.SECURE_PROXY_SSL_HEADER)"
    run = dict(cwd=ROOT, capture_output=True, text=True, timeout=60)
    plain = subprocess.run([sys.executable, "-c", code], env=production_environment(), **run)
    proxied = subprocess.run(
        [sys.executable, "-c", code], env=production_environment(SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto"), **run
    )
    assert plain.stdout.strip() == "None"
    assert proxied.stdout.strip() == "('HTTP_X_FORWARDED_PROTO', 'https')"
