#!/usr/bin/env bash
# Makes target/python-venv, a Python virtual environment with the official Alibaba Cloud KMS
# SDKs the gateway's tests drive (tests/python/requirements.txt), when it is missing or the
# requirements changed since it was made. Needs python3 with venv (Debian: python3-venv, which
# scripts/ensure-deps.sh installs) and access to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/python-venv
requirements=tests/python/requirements.txt
stamp="$venv/.requirements"
if [[ -x "$venv/bin/python" && -f "$stamp" ]] && cmp -s "$requirements" "$stamp"; then
    exit 0
fi
echo "== python venv $venv"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
cp "$requirements" "$stamp"
