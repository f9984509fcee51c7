#!/usr/bin/env bash
# Prepare a development machine: a virtualenv with the project, and the servers the
# tests and the local stack run (mosquitto, nats-server, influxd). Idempotent: a second
# run with nothing to do takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.installed"

# --- server binaries, from the distribution's packages -------------------------------
declare -A PKG=([mosquitto]=mosquitto [nats-server]=nats-server [influxd]=influxdb
                [mosquitto_ctrl]=mosquitto-clients)
missing=()
for bin in "${!PKG[@]}"; do
    if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then
        missing+=("${PKG[$bin]}")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo"; else SUDO="none"; fi
    if [ "$SUDO" = "none" ] || ! command -v apt-get >/dev/null; then
        echo "setup: missing server packages: ${missing[*]}" >&2
        echo "setup: install them with: sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]} from the distribution's packages"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y --no-install-recommends "${missing[@]}" \
        || { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; }
    # The packages start system-wide daemons; ours run their own instances on their own ports.
fi

# --- the virtualenv ------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    echo "setup: installing the project and its development tools into $VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e '.[dev]'
    touch "$STAMP"
fi
