# Superset configuration for a fleet behind fleetgate (docker-compose.yml). Every replica reads the same
# settings from the environment: one metadata database, one SECRET_KEY (sessions are signed cookies, so
# any replica serves any request), and Redis for everything that must be shared across replicas.
import os

SECRET_KEY = os.environ["SUPERSET_SECRET_KEY"]

SQLALCHEMY_DATABASE_URI = "postgresql+psycopg2://{user}:{password}@{host}:{port}/{db}".format(
    user=os.environ.get("DATABASE_USER", "superset"),
    password=os.environ.get("DATABASE_PASSWORD", "superset"),
    host=os.environ.get("DATABASE_HOST", "postgres"),
    port=os.environ.get("DATABASE_PORT", "5432"),
    db=os.environ.get("DATABASE_DB", "superset"),
)

# fleetgate appends the client to X-Forwarded-For and sets X-Forwarded-Proto, -Host and -Port: trust
# exactly that one hop, so Superset sees the real client (AUTH_RATE_LIMIT is per client address) and
# builds redirects with the browser's scheme and host. Behind a TLS terminator, fleetgate passes on the
# terminator's Proto, Host and Port, and the client is one hop further: "x_for": 2.
ENABLE_PROXY_FIX = True
PROXY_FIX_CONFIG = {"x_for": 1, "x_proto": 1, "x_host": 1, "x_port": 1, "x_prefix": 1}

# Above this, Superset gives up on a query; the proxy waits longer (--headers-timeout-ms, 120 s).
SUPERSET_WEBSERVER_TIMEOUT = int(os.environ.get("SUPERSET_WEBSERVER_TIMEOUT", "60"))

REDIS_URL = "redis://{host}:{port}".format(
    host=os.environ.get("REDIS_HOST", "redis"),
    port=os.environ.get("REDIS_PORT", "6379"),
)


def _cache(db: int, prefix: str) -> dict:
    return {
        "CACHE_TYPE": "RedisCache",
        "CACHE_DEFAULT_TIMEOUT": 300,
        "CACHE_KEY_PREFIX": prefix,
        "CACHE_REDIS_URL": f"{REDIS_URL}/{db}",
    }


# Shared by all replicas: a chart cached by one is served by the others, and explore and filter state
# written through one replica is read through another.
CACHE_CONFIG = _cache(1, "superset_")
DATA_CACHE_CONFIG = _cache(2, "superset_data_")
FILTER_STATE_CACHE_CONFIG = _cache(3, "superset_filter_")
EXPLORE_FORM_DATA_CACHE_CONFIG = _cache(4, "superset_explore_")

# Rate limits (login attempts) counted across the fleet, not per replica.
RATELIMIT_STORAGE_URI = f"{REDIS_URL}/5"
