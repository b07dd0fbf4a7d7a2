#!/usr/bin/env bash
# The test command: installs what the tests need, then checks formatting, lints and runs every
# test. The end-to-end tests start the real binaries, so they are built first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-deps.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build --bins"
cargo build --workspace --bins --locked
echo "== cargo test"
cargo test --workspace --locked
