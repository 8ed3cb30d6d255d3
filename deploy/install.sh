#!/bin/sh
# A Chairside clinic server on Debian 12, in one command (run as root from a
# clone of the repository; re-run it to upgrade):
#     sh deploy/install.sh --site clinic1 [--server-host broker.clinic.lan] [--retention 400d]
# Installs the Debian packages, a bootstrap venv in /opt/chairside/.venv, then
# runs `chairside install` with the same options (docs/install-server.md).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" != "0" ]; then
    echo "install.sh: run as root (sudo sh deploy/install.sh --site ...)" >&2
    exit 2
fi
missing=""
for pkg in mosquitto influxdb openssl python3-venv; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "install.sh: installing$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
fi
mkdir -p /opt/chairside
if [ ! -x /opt/chairside/.venv/bin/python ]; then
    python3 -m venv /opt/chairside/.venv
fi
/opt/chairside/.venv/bin/pip install --quiet --upgrade "$here"
exec /opt/chairside/.venv/bin/chairside install "$@"
