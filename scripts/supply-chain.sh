#!/usr/bin/env bash
# The supply-chain check of the test command: `cargo deny` with the checked-in deny.toml.
# Licenses, bans (no second version of a crypto crate) and sources are checked always. Known
# advisories are checked where the advisory database is on the machine ($CARGO_HOME/advisory-dbs,
# which `cargo deny fetch db` fills where it can be reached); elsewhere this says it skipped them
# rather than fail, since the database cannot be fetched from every machine.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-deny >/dev/null 2>&1; then
    # No prebuilt binary can be fetched here: build it from crates.io (a few minutes, once).
    echo "supply-chain: installing cargo-deny from crates.io" >&2
    cargo install --locked cargo-deny
fi

echo "== cargo deny: licenses, bans, sources"
cargo deny --locked check licenses bans sources

db_dir="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
if compgen -G "$db_dir/*/crates" >/dev/null; then
    echo "== cargo deny: advisories (database in $db_dir, not fetched)"
    cargo deny --locked check --disable-fetch advisories
else
    echo "== cargo deny: advisories SKIPPED: no advisory database in $db_dir on this machine;" \
        "where it can be fetched, run 'cargo deny fetch db' once, then this script again"
fi
