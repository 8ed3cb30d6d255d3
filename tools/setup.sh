#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (run as root by `make demo`
# and `make test`): system packages, the project venv, and the MicroPython
# WebAssembly VM.  Each step is skipped when its result is already there.
# `sh tools/setup.sh` works too: a shell other than bash re-runs it with bash
# (dash, Debian's sh, has no `pipefail` and no arrays).
if [ -z "${BASH_VERSION:-}" ]; then
    exec bash "$0" "$@"
fi
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_passwd >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v influxd >/dev/null 2>&1 || need_apt+=(influxdb)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v make >/dev/null 2>&1 || need_apt+=(make)
# pdftoppm/pdftotext: the session record's tests render and read back its PDF
command -v pdftoppm >/dev/null 2>&1 || need_apt+=(poppler-utils)
# systemd-analyze (tests/deploy: `systemd-analyze verify` on the shipped units)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
# the station's browser tests drive Debian's chromium (Playwright never downloads a browser here)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)

if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" != "0" ]; then
        echo "setup: missing ${need_apt[*]}; run as root or install them" >&2
        exit 1
    fi
    echo "setup: installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Debian's packages start their own system services; ours run on free
# loopback ports and never use them.

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=.venv/.chairside-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/pip install -q --upgrade pip >/dev/null
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 .venv/bin/pip install -q -e '.[dev]'
    touch "$stamp"
fi

if [ ! -d tools/mpvm/node_modules/@micropython ]; then
    (cd tools/mpvm && if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --silent; else npm install --no-audit --no-fund --silent; fi)
fi
