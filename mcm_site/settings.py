"""Settings for MCM, read from the environment.

Two modes, chosen explicitly:

- ``MCM_EMBEDDED=1``: a SQLite file under ``var/`` and Celery tasks run in the calling process.
  Only the demo sets it, so that a machine with nothing but Python can run MCM.
- otherwise ``DATABASE_URL`` and ``CELERY_BROKER_URL`` are required; a missing one is an error,
  never a silent fall-back to the embedded mode.
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_flag(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is invalid: use 1/0, true/false, yes/no or on/off")


def env_required(name: str, hint: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise ImproperlyConfigured(f"{name} is missing: {hint}")
    return value


DEBUG = env_flag("DEBUG", default=False)
MCM_EMBEDDED = env_flag("MCM_EMBEDDED", default=False)

if DEBUG:
    SECRET_KEY = os.environ.get("SECRET_KEY") or "development-only-insecure-key"
else:
    SECRET_KEY = env_required("SECRET_KEY", "set a long random value, or DEBUG=1 for development")

ALLOWED_HOSTS = [
    host.strip() for host in os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if host.strip()
]


def env_seconds(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        value = -1
    if value < 0:
        raise ImproperlyConfigured(f"{name}={raw!r} is invalid: use a whole number of seconds, 0 or more")
    return value


# HTTPS and cookies (docs/production.md). MCM_HTTPS states that clients reach MCM over HTTPS, directly
# or through a TLS proxy, and sets the defaults of the secure cookies, the HTTPS redirect and HSTS.
# It is off by default with DEBUG=1 or MCM_EMBEDDED=1, because the demo serves plain HTTP on 127.0.0.1.
MCM_HTTPS = env_flag("MCM_HTTPS", default=not DEBUG and not MCM_EMBEDDED)
SESSION_COOKIE_SECURE = env_flag("SESSION_COOKIE_SECURE", default=MCM_HTTPS)
CSRF_COOKIE_SECURE = env_flag("CSRF_COOKIE_SECURE", default=MCM_HTTPS)
# The test suite turns the redirect off (tests/conftest.py), because Django's test client and the
# live test server speak plain HTTP.
SECURE_SSL_REDIRECT = env_flag("SECURE_SSL_REDIRECT", default=MCM_HTTPS)
SECURE_HSTS_SECONDS = env_seconds("SECURE_HSTS_SECONDS", 31536000 if MCM_HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_flag("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=MCM_HTTPS)
SECURE_HSTS_PRELOAD = env_flag("SECURE_HSTS_PRELOAD", default=MCM_HTTPS)
# Opt-in: trust a header that says the original request was HTTPS. Set it only behind a proxy that
# always sets (or strips) that header, or any client could claim HTTPS.
_proxy_header = os.environ.get("SECURE_PROXY_SSL_HEADER", "").strip()
if _proxy_header:
    if not all(part.isalnum() for part in _proxy_header.split("-")):
        raise ImproperlyConfigured(
            f"SECURE_PROXY_SSL_HEADER={_proxy_header!r} is invalid: use a header name such as X-Forwarded-Proto"
        )
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _proxy_header.upper().replace("-", "_"), "https")
CSRF_TRUSTED_ORIGINS = [
    origin.strip() for origin in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if origin.strip()
]
for _origin in CSRF_TRUSTED_ORIGINS:
    if not _origin.startswith(("https://", "http://")) or _origin.rstrip("/").count("/") != 2:
        raise ImproperlyConfigured(
            f"CSRF_TRUSTED_ORIGINS contains {_origin!r}, which is invalid: use scheme and host, "
            "for example https://mcm.example.com"
        )
# Eight hours: an admin session lasts a working day, not Django's default two weeks.
SESSION_COOKIE_AGE = env_seconds("SESSION_COOKIE_AGE", 8 * 3600)
if SESSION_COOKIE_AGE == 0:
    raise ImproperlyConfigured(
        f"SESSION_COOKIE_AGE={os.environ['SESSION_COOKIE_AGE']!r} is invalid: use a whole number of seconds, 1 or more"
    )
SESSION_EXPIRE_AT_BROWSER_CLOSE = env_flag("SESSION_EXPIRE_AT_BROWSER_CLOSE", default=False)
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

INSTALLED_APPS = [
    "mcm_site.apps.McmAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "django_celery_beat",
    "fleet",
    "placements",
    "compliance",
    "tasks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves STATIC_ROOT after collectstatic. With DEBUG=1 it also finds files in the apps, as runserver does.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mcm_site.urls"
WSGI_APPLICATION = "mcm_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

if MCM_EMBEDDED:
    EMBEDDED_DIR = Path(os.environ.get("MCM_EMBEDDED_DIR", BASE_DIR / "var"))
    EMBEDDED_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": EMBEDDED_DIR / "mcm.sqlite3",
            # The demo's admin server and its control loop write to the file from two threads. A transaction
            # that reads first and then writes fails at once with "database is locked" while the other
            # thread writes, whatever the timeout. So each transaction takes the write lock when it begins
            # (IMMEDIATE) and waits up to the timeout for it. WAL lets reads continue meanwhile.
            "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"},
        }
    }
else:
    DATABASES = {
        "default": dj_database_url.parse(
            env_required("DATABASE_URL", "for example postgres://postgres@127.0.0.1:5432/mcm, or MCM_EMBEDDED=1"),
            # Seconds a connection is kept for the next request. 0 (the default) closes it after each request,
            # because runserver starts a thread per request and each thread would keep its own connection.
            # Under gunicorn's sync workers (one thread each), 60 saves a connect per request.
            conn_max_age=int(os.environ.get("MCM_DB_CONN_MAX_AGE", "0")),
            conn_health_checks=True,
        )
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
# Celery beat logs in Django's time zone; UTC keeps every timestamp comparable across regions.
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Folder that collectstatic fills and WhiteNoise serves.
STATIC_ROOT = Path(os.environ.get("MCM_STATIC_ROOT", BASE_DIR / "var" / "static"))

# Celery. The embedded mode runs tasks in process; otherwise a broker URL is required.
if MCM_EMBEDDED:
    # The in-memory transport ignores the host, but kombu 5.7 logs the warning "No hostname was
    # supplied" when it copies a connection without one, as an eager task's first producer does.
    CELERY_BROKER_URL = "memory://localhost/"
    CELERY_TASK_ALWAYS_EAGER = True
    CELERY_TASK_EAGER_PROPAGATES = True
else:
    CELERY_BROKER_URL = env_required("CELERY_BROKER_URL", "for example redis://127.0.0.1:6379/0, or MCM_EMBEDDED=1")
    CELERY_TASK_ALWAYS_EAGER = False
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = TIME_ZONE


def env_rate(name: str, default: str) -> str:
    """A request rate such as ``600/min`` (per second, minute, hour or day); ``0`` turns the limit off."""
    raw = os.environ.get(name, "").strip() or default
    if raw == "0":
        return ""
    count, _, period = raw.partition("/")
    if not count.isdigit() or int(count) < 1 or period[:1] not in ("s", "m", "h", "d"):
        raise ImproperlyConfigured(f"{name}={raw!r} is invalid: use requests per period, for example 600/min, or 0")
    return raw


# API rate limits per user, shared by all of the user's tokens and sessions (placements.tokens.ApiRateThrottle).
# Customers get MCM_API_RATE_USER; staff and agent accounts, which push events for whole fleets, MCM_API_RATE_STAFF.
MCM_API_RATE_USER = env_rate("MCM_API_RATE_USER", "600/min")
MCM_API_RATE_STAFF = env_rate("MCM_API_RATE_STAFF", "6000/min")
# The request counts live in Redis so that every web process shares them; the embedded mode has no Redis.
MCM_API_THROTTLE_CACHE = "throttle"
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "throttle": (
        {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "throttle"}
        if MCM_EMBEDDED
        else {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": os.environ.get("MCM_API_THROTTLE_REDIS_URL", CELERY_BROKER_URL),
            "KEY_PREFIX": "mcm",
        }
    ),
}

REST_FRAMEWORK = {
    # MCM API tokens first: its Bearer challenge makes unauthenticated requests 401, and it passes
    # "Token <key>" values that are not MCM tokens on to DRF's own token authentication.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "placements.tokens.ApiTokenAuthentication",
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["placements.tokens.ApiRateThrottle"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "MCM API",
    "DESCRIPTION": "Multi-cloud Capacity Management: fleet inventory, deployments and their placement.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    # Django's own configuration gives the "django" logger a console handler too, which printed each record twice.
    "loggers": {"django": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO"), "propagate": False}},
}

# Shared real-world data (catalogs, regions, traces); absent on a user's machine.
MCM_DATA_DIR = Path(os.environ.get("MCM_DATA_DIR", BASE_DIR.parent / "shared" / "data"))

# Scheduler limits; each can be overridden per run.
MCM_SCHEDULER_TIME_LIMIT_S = float(os.environ.get("MCM_SCHEDULER_TIME_LIMIT_S", "60"))
MCM_SCHEDULER_GAP_TARGET = float(os.environ.get("MCM_SCHEDULER_GAP_TARGET", "0.01"))

# Fernet keys for cluster credentials at rest, comma-separated, newest first. Development derives
# one from SECRET_KEY so that DEBUG=1 needs no extra set-up; production must set its own.
if os.environ.get("MCM_CREDENTIALS_KEYS"):
    MCM_CREDENTIALS_KEYS = [key.strip() for key in os.environ["MCM_CREDENTIALS_KEYS"].split(",") if key.strip()]
elif DEBUG:
    import base64
    import hashlib

    MCM_CREDENTIALS_KEYS = [base64.urlsafe_b64encode(hashlib.sha256(SECRET_KEY.encode()).digest()).decode()]
else:
    MCM_CREDENTIALS_KEYS = []

# Execution of plans through the clusters' Kubernetes APIs, and reconciliation.
# Seconds a cluster API call may take before it fails as retryable.
MCM_CLUSTER_API_TIMEOUT_S = float(os.environ.get("MCM_CLUSTER_API_TIMEOUT_S", "10"))
# Maximum API calls per second to one cluster, per worker process.
MCM_CLUSTER_CALLS_PER_SECOND = float(os.environ.get("MCM_CLUSTER_CALLS_PER_SECOND", "20"))
# Maximum clusters that one execution or reconciliation pass calls at once, one thread each.
MCM_EXECUTION_PARALLEL_CLUSTERS = int(os.environ.get("MCM_EXECUTION_PARALLEL_CLUSTERS", "16"))
# Failed attempts after which an execution step is marked failed (non-retryable errors fail at once).
MCM_EXECUTION_MAX_ATTEMPTS = int(os.environ.get("MCM_EXECUTION_MAX_ATTEMPTS", "5"))
# Seconds between execution passes while a plan's replicas come up.
MCM_EXECUTION_POLL_S = float(os.environ.get("MCM_EXECUTION_POLL_S", "2"))
# Seconds a step may stay pending before the reconciler marks it failed and requests a re-plan.
MCM_EXECUTION_TIMEOUT_S = float(os.environ.get("MCM_EXECUTION_TIMEOUT_S", "600"))
# Seconds a pushed event waits for a missing earlier sequence number before the gap is skipped.
MCM_EVENT_GAP_TIMEOUT_S = float(os.environ.get("MCM_EVENT_GAP_TIMEOUT_S", "300"))
# Seconds the scheduler treats a cluster's SKU as full after replicas there did not become ready in time.
MCM_NOT_CONVERGED_AVOID_S = float(os.environ.get("MCM_NOT_CONVERGED_AVOID_S", "900"))

# Cluster health (fleet.health). A cluster is suspect after this many failed reads or this long
# without a heartbeat, down after the larger thresholds, and healthy again only after this many
# successful reads in a row (hysteresis). Ages count from the evaluator's own restart when MCM was stopped.
MCM_HEARTBEAT_INTERVAL_S = float(os.environ.get("MCM_HEARTBEAT_INTERVAL_S", "10"))
MCM_HEALTH_SUSPECT_AFTER_FAILURES = int(os.environ.get("MCM_HEALTH_SUSPECT_AFTER_FAILURES", "1"))
MCM_HEALTH_DOWN_AFTER_FAILURES = int(os.environ.get("MCM_HEALTH_DOWN_AFTER_FAILURES", "3"))
MCM_HEALTH_SUSPECT_AFTER_S = float(os.environ.get("MCM_HEALTH_SUSPECT_AFTER_S", "25"))
MCM_HEALTH_DOWN_AFTER_S = float(os.environ.get("MCM_HEALTH_DOWN_AFTER_S", "45"))
MCM_HEALTH_RECOVER_AFTER_SUCCESSES = int(os.environ.get("MCM_HEALTH_RECOVER_AFTER_SUCCESSES", "3"))
# The evaluator counts itself stopped when it has not run for this long.
MCM_HEALTH_MONITOR_GAP_S = float(os.environ.get("MCM_HEALTH_MONITOR_GAP_S", "30"))
# Replicas return to a recovered cluster once it has been healthy for this long.
MCM_FAILBACK_AFTER_S = float(os.environ.get("MCM_FAILBACK_AFTER_S", "600"))
# A cluster that loses one deployment's replicas this many times within the window is charged
# extra for that deployment for the cool-down.
MCM_REPEATED_LOSS_COUNT = int(os.environ.get("MCM_REPEATED_LOSS_COUNT", "3"))
MCM_REPEATED_LOSS_WINDOW_S = float(os.environ.get("MCM_REPEATED_LOSS_WINDOW_S", "3600"))
MCM_REPEATED_LOSS_AVOID_S = float(os.environ.get("MCM_REPEATED_LOSS_AVOID_S", "3600"))
# Traffic samples older than this are deleted by the periodic "prune traffic" task.
MCM_TRAFFIC_RETENTION_S = float(os.environ.get("MCM_TRAFFIC_RETENTION_S", "86400"))
# Seconds between autoscaler passes; each pass decides every deployment with an enabled policy.
MCM_AUTOSCALE_INTERVAL_S = float(os.environ.get("MCM_AUTOSCALE_INTERVAL_S", "15"))
# The route table lives in Redis. The embedded mode has no Redis, so it computes every route from
# the database, chosen here and not by a missing setting.
if MCM_EMBEDDED:
    MCM_ROUTES_REDIS_URL = None
else:
    MCM_ROUTES_REDIS_URL = os.environ.get("MCM_ROUTES_REDIS_URL", CELERY_BROKER_URL)

# Bearer token of GET /metrics (mcm_site.metrics, docs/metrics.md): a scraper sends
# "Authorization: Bearer <MCM_METRICS_TOKEN>", and signed-in staff need none. Empty (the default)
# accepts only staff sessions. Use a random value of at least 32 characters.
MCM_METRICS_TOKEN = os.environ.get("MCM_METRICS_TOKEN", "").strip()
if MCM_METRICS_TOKEN and len(MCM_METRICS_TOKEN) < 32:
    raise ImproperlyConfigured(
        f"MCM_METRICS_TOKEN is {len(MCM_METRICS_TOKEN)} characters long, which is too short: use a random value "
        "of at least 32 characters, for example from `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
    )
