# The CityVitals platform image. `docker compose up` runs it as the `migrate`
# (cityvitals db upgrade) and `platform` (cityvitals run) services.
#
#   docker build -t cityvitals:local .
#   docker run --rm cityvitals:local --help
#
# The platform is configured by CITYVITALS_* environment variables (.env.example);
# in a container CITYVITALS_DATABASE_URL and CITYVITALS_MQTT_URL must be set, as
# the image has no PostgreSQL or Mosquitto of its own to start.

# --- Build: wheels of the project and of every dependency -------------------------
FROM python:3.11.10-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# .dockerignore lets in only pyproject.toml, README.md and the packages.
COPY . .
RUN pip wheel --wheel-dir /wheels .

# --- Runtime -------------------------------------------------------------------------
FROM python:3.11.10-slim-bookworm

LABEL org.opencontainers.image.title="CityVitals" \
      org.opencontainers.image.description="Urban operations IoT platform: MQTT ingest, TimescaleDB storage, vital-sign rules and alerts" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Installed from the build stage's wheels only (no dev extras, no network, no
# wheels left in a layer).
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels cityvitals

RUN groupadd --system --gid 10001 cityvitals \
 && useradd --system --uid 10001 --gid cityvitals --no-log-init \
        --home-dir /var/lib/cityvitals --create-home --shell /usr/sbin/nologin cityvitals
# The working directory holds CITYVITALS_DATA_DIR (.cityvitals) and is where the
# platform looks for an optional cityvitals.toml settings file.
WORKDIR /var/lib/cityvitals
USER 10001:10001
# The HTTP API, when CITYVITALS_API_ENABLED (docker-compose.yml turns it on).
EXPOSE 8080

# Healthy while this container's ingest reports a heartbeat to the database
# (table ingest_stats, every CITYVITALS_STATS_INTERVAL) and is connected to the
# broker: the same 60 s liveness `cityvitals status` uses.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, socket, psycopg; c = psycopg.connect(os.environ['CITYVITALS_DATABASE_URL'], connect_timeout=5); r = c.execute('SELECT 1 FROM ingest_stats WHERE host = %s AND connected AND updated_at > now() - make_interval(secs => 60)', (socket.gethostname(),)).fetchone(); raise SystemExit(0 if r else 1)"]

ENTRYPOINT ["cityvitals"]
CMD ["run"]
