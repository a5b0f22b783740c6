"""The only settings module. Everything that differs between machines comes from the
environment; with no DATABASE_URL / REDIS_URL it is the embedded default (SQLite,
in-process Celery worker and channel layer). See docs/RUNNING.md."""
import os
import secrets
from pathlib import Path
from urllib.parse import urlparse

import dj_database_url
from csp.constants import NONCE, SELF

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("FLPORTAL_DATA_DIR", BASE_DIR / "var")).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _env_bool(name: str, default: bool = False) -> bool:
    return os.environ.get(name, "1" if default else "0").lower() in ("1", "true", "yes", "on")


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


def _secret_key() -> str:
    """FLPORTAL_SECRET_KEY, else one generated once and kept in the data dir, so agent
    keys (derived from it) survive restarts of an embedded portal."""
    if os.environ.get("FLPORTAL_SECRET_KEY"):
        return os.environ["FLPORTAL_SECRET_KEY"]
    path = DATA_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


def _database(url: str | None) -> dict:
    if not url:
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "flportal.sqlite3",
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    if urlparse(url).scheme not in ("postgres", "postgresql"):
        raise RuntimeError(f"DATABASE_URL must be postgres://..., got {urlparse(url).scheme}://")
    # dj-database-url: user, password (percent-decoded), host, port, name, and query
    # options such as ?sslmode=require, which become the connection's OPTIONS
    parsed = dj_database_url.parse(url)
    return {
        **parsed,
        # ASGI request threads do not outlive a request, so connections come from a pool
        # per process (psycopg_pool) instead of persistent ones: a request or a Celery task
        # borrows one and gives it back, and no request pays for a new PostgreSQL backend
        # (measured: connecting was 13 % of the portal's time in a round, bench/round_overhead.py).
        # max_size bounds what one process can hold of PostgreSQL's max_connections.
        "CONN_MAX_AGE": 0,
        # a pooled connection is checked as it is handed out (one empty round trip), so
        # one that a PostgreSQL restart broke is replaced, not failed on once per connection
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": {**parsed.get("OPTIONS", {}),
                    "pool": {"min_size": 2, "max_size": _env_int("FLPORTAL_DB_POOL_SIZE", 16), "timeout": 30}},
    }


SECRET_KEY = _secret_key()
DEBUG = _env_bool("FLPORTAL_DEBUG")
ALLOWED_HOSTS = os.environ.get("FLPORTAL_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("FLPORTAL_CSRF_TRUSTED_ORIGINS", "").split(",") if o]

DATABASE_URL = os.environ.get("DATABASE_URL") or None
REDIS_URL = os.environ.get("REDIS_URL") or None
EMBEDDED = REDIS_URL is None

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "channels",
    "core",
    "nodes",
    "jobs",
    "flportal",  # its management commands: serve, demo
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "flportal.urls"
ASGI_APPLICATION = "flportal.asgi.application"
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

DATABASES = {"default": _database(DATABASE_URL)}

# Served behind a TLS-terminating proxy (README, "Running in production"): one switch,
# FLPORTAL_HTTPS=1, for secure cookies, HSTS, the redirect to https and trusting the
# proxy's X-Forwarded-Proto. Without it (the plain-HTTP embedded demo) all stay off.
HTTPS = _env_bool("FLPORTAL_HTTPS")
if HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = _env_int("FLPORTAL_HSTS_SECONDS", 365 * 24 * 3600)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True  # consent to the browsers' preload list; nothing is submitted by it
# Security headers on every page (besides SecurityMiddleware's nosniff and
# Referrer-Policy, and X-Frame-Options: DENY): a Content-Security-Policy that only the
# portal's own files and the pages' nonced inline scripts satisfy.
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF, NONCE],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],  # the pages' websockets (ws: and wss: to the same host)
        "frame-ancestors": ["'none'"],
        "form-action": [SELF],
        "base-uri": [SELF],
        "object-src": ["'none'"],
    },
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "static"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "job-list"
LOGOUT_REDIRECT_URL = "login"

# Artifacts (model versions, updates) live under this directory.
ARTIFACT_ROOT = Path(os.environ.get("FLPORTAL_ARTIFACT_ROOT", DATA_DIR / "artifacts")).resolve()

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "core.auth.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "EXCEPTION_HANDLER": "core.errors.api_exception_handler",
    "DEFAULT_PARSER_CLASSES": ["core.parsers.StrictJSONParser"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
}

# Celery: Redis broker in production; in the embedded default an in-memory broker
# consumed by a worker thread inside the portal process (flportal/embedded.py).
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = (
    {"visibility_timeout": 3600} if REDIS_URL
    # kombu's in-memory transport polls its queues (default: every 1 s, a second of latency
    # on every step of a round); Redis needs no polling (BRPOP)
    else {"polling_interval": 0.01}
)
WATCHDOG_INTERVAL_S = float(os.environ.get("FLPORTAL_WATCHDOG_INTERVAL_S", "5"))
CELERY_BEAT_SCHEDULE = {
    "watchdog": {"task": "jobs.tasks.watchdog", "schedule": WATCHDOG_INTERVAL_S},
}

if EMBEDDED:
    # group_expiry: the in-memory layer drops a group membership after a day by default,
    # and the task long polls' listener (jobs/long_poll.py) stays in a job's group.
    CHANNEL_LAYERS = {"default": {"BACKEND": "core.channel_layer.EmbeddedChannelLayer",
                                  "CONFIG": {"group_expiry": 10**9}}}
else:
    # Redis Pub/Sub: one PUBLISH per event reaches every process, and each process fans
    # it out to its own consumers (channels_redis's list-based layer pops one message per
    # consumer: 50 Redis round trips for 50 watchers of a job). Live events are
    # at-most-once either way; pages render their history from the database.
    # Pub/Sub ignores Redis's database numbers, so the prefix carries it: two portals
    # on one Redis (different dbs) must not hear each other.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": f"flportal.db{urlparse(REDIS_URL).path.lstrip('/') or 0}."},
        }
    }

# Federated-learning limits and timings.
FLPORTAL_MAX_UPDATE_BYTES = int(os.environ.get("FLPORTAL_MAX_UPDATE_BYTES", str(256 * 1024 * 1024)))
# A model version up to this size travels inside the task, base64 (no download request).
FLPORTAL_INLINE_MODEL_BYTES = _env_int("FLPORTAL_INLINE_MODEL_BYTES", 256 * 1024)
FLPORTAL_HEARTBEAT_INTERVAL_S = float(os.environ.get("FLPORTAL_HEARTBEAT_INTERVAL_S", "5"))
FLPORTAL_NODE_OFFLINE_AFTER_S = float(os.environ.get("FLPORTAL_NODE_OFFLINE_AFTER_S", "15"))
# How long a node enrollment code (admin or POST /api/v1/nodes/) can be exchanged for the
# node's credentials (POST /api/v1/fl/enroll): a day by default.
FLPORTAL_ENROLLMENT_CODE_TTL_S = _env_int("FLPORTAL_ENROLLMENT_CODE_TTL_S", 24 * 3600)
FLPORTAL_TASK_LONG_POLL_MAX_S = 25.0
FLPORTAL_AGENT_TIMEOUT_S = float(os.environ.get("FLPORTAL_AGENT_TIMEOUT_S", "30"))
# A job queued this long is started again (its start task was lost).
FLPORTAL_STUCK_AFTER_S = float(os.environ.get("FLPORTAL_STUCK_AFTER_S", "60"))
# A round's aggregation lease (jobs/services/lease.py): renewed every quarter of it while
# a worker aggregates; a killed worker's round is taken over this long after its last renewal.
FLPORTAL_AGGREGATION_LEASE_S = float(os.environ.get("FLPORTAL_AGGREGATION_LEASE_S", "20"))
FLPORTAL_REQUIRE_SERVICES = _env_bool("FLPORTAL_REQUIRE_SERVICES")
# User models: FLPORTAL_MODELS="name=package.module.factory,other=package.module:factory",
# parsed and registered when the jobs app is ready (jobs/apps.py).
FLPORTAL_MODELS = os.environ.get("FLPORTAL_MODELS", "")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("FLPORTAL_LOG_LEVEL", "INFO")},
    "loggers": {"httpx": {"level": "WARNING"}, "celery.worker.strategy": {"level": "WARNING"},
                "celery.app.trace": {"level": "WARNING"}, "celery.beat": {"level": "WARNING"}},
}
