#!/usr/bin/env bash
# The test command: installs what the tests need, then checks formatting, lints and the supply
# chain (cargo deny, scripts/supply-chain.sh) and runs every test, the end-to-end ones on sled
# and again (a subset) on etcd. The end-to-end tests start the real binaries, so they are built
# first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-deps.sh
# The official cloud SDKs the gateway's end-to-end test drives (tests/tests/gateway_sdk.rs).
scripts/python-env.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
scripts/supply-chain.sh
echo "== cargo build --bins"
cargo build --workspace --bins --locked
echo "== cargo test"
cargo test --workspace --locked
# The same end-to-end tests against the etcd store: the control plane, the data plane, identity
# and the quota races, each stack on an etcd member of its own. `--workspace` keeps the feature
# set of the run above, so nothing is compiled again.
echo "== cargo test, control plane on etcd"
KMS_TEST_STORE=etcd cargo test --locked --workspace \
    --test control_plane --test data_plane_symmetric --test data_plane_cache \
    --test identity_policy --test authorization --test quota_races
