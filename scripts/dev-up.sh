#!/usr/bin/env bash
# Runs the whole KMS locally in the foreground: installs the system packages it needs, builds
# the binaries, then hands over to `kmsctl dev up --dir DIR` from the repository root. DIR
# defaults to .dev in the repository root; a relative DIR given here is relative to where the
# script was started. Ctrl-C stops everything.
#
#   scripts/dev-up.sh [DIR]
set -euo pipefail

dir=${1:-.dev}
if [[ $# -ge 1 && "$dir" != /* ]]; then
    dir="$PWD/$dir"
fi

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

scripts/ensure-deps.sh

echo "building the planes, the console, the gateway and kmsctl (cargo build --bins) ..." >&2
cargo build --bins --quiet

exec target/debug/kmsctl dev up --dir "$dir"
