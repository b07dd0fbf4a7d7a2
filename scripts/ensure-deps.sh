#!/usr/bin/env bash
# Installs the Debian packages the KMS needs when any is missing: SoftHSM for the data plane's
# HSM, OpenSSL and CA certificates, etcd-server (the tests start real etcd members for the
# control plane's etcd store), and protoc with the well-known .proto files (protobuf-compiler,
# libprotobuf-dev), which the etcd-client crate's build script needs, and headless Chromium with
# its WebDriver (chromium, chromium-driver) for the console's browser tests. Idempotent and silent when
# everything is present; runs `apt-get update` only when something has to be installed; uses
# sudo when not root. python3-venv: scripts/python-env.sh makes the virtual environment of the
# cloud SDKs the gateway is tested with.
set -euo pipefail

packages=(softhsm2 openssl ca-certificates etcd-server protobuf-compiler libprotobuf-dev python3-venv chromium chromium-driver)

missing=()
for pkg in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-deps: missing packages: ${missing[*]}; this script only knows apt-get (Debian/Ubuntu), install them by hand" >&2
    exit 1
fi

sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo_cmd=(sudo)
    else
        echo "ensure-deps: missing packages: ${missing[*]}; run as root or install sudo" >&2
        exit 1
    fi
fi

echo "ensure-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
