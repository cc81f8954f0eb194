#!/usr/bin/env bash
# Shared by scripts/demo and scripts/test: a virtual environment with the project
# installed, and the PostgreSQL and Mosquitto binaries the platform starts locally.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

python=""
for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
  [ -n "$candidate" ] || continue
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    python=$candidate; break
  fi
done
if [ -z "$python" ]; then
  echo "error: Python 3.11 or newer is needed (Debian/Ubuntu: apt-get install python3 python3-venv)" >&2
  exit 1
fi

# Server binaries: PostgreSQL (initdb, pg_ctl) and Mosquitto.
have_pg() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || [ -n "${CITYVITALS_DATABASE_URL:-}" ]; }
have_mq() { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || [ -n "${CITYVITALS_MQTT_URL:-}" ]; }
missing=()
have_pg || missing+=(postgresql)
have_mq || missing+=(mosquitto)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "error: missing ${missing[*]}. Install them, then run this again:" >&2
    echo "  Debian/Ubuntu: sudo apt-get install ${missing[*]}" >&2
    echo "  macOS:         brew install ${missing[*]/postgresql/postgresql@16}" >&2
    echo "or point CITYVITALS_DATABASE_URL / CITYVITALS_MQTT_URL at running servers." >&2
    exit 1
  fi
fi

# The virtual environment, reinstalled only when pyproject.toml changes.
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $python"
  "$python" -m venv .venv
fi
stamp=.venv/.cityvitals-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing CityVitals and its dependencies into .venv"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  echo "$want" > "$stamp"
fi
