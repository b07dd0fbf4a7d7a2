#!/usr/bin/env bash
# The kill drill: tests/tests/crash_durability.rs with many kills. Clients stream CreateKey,
# TagResources and ScheduleKeyDeletion while the control plane is killed with SIGKILL, started
# again on its store, and checked: every acknowledged write present, no key half-written.
# The planes are release builds; the test itself is the debug build `scripts/test.sh` uses.
#
#   scripts/kill-drill.sh [KILLS]     # default 200
#
# KMS_KILL_SEED=<n> repeats the random choices of an earlier run (its log prints the seed).
# The full log is kept in target/kill-drill.log.
set -euo pipefail
cd "$(dirname "$0")/.."

kills="${1:-200}"
if ! [[ "$kills" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: scripts/kill-drill.sh [KILLS]" >&2
    exit 2
fi
log=target/kill-drill.log

echo "== cargo build --release (kms-control, kms-data, kmsctl)"
cargo build --release --locked -p kms-control -p kms-data -p kms-cli --bins
echo "== cargo test --test crash_durability, $kills kills (log: $log)"
status=0
KMS_KILL_ROUNDS="$kills" KMS_BIN_DIR="$PWD/target/release" \
    cargo test --locked -p kms-e2e --test crash_durability -- --nocapture 2>&1 |
    tee "$log" || status=$?

# Figures from the per-kill lines, so a run that failed still reports what it got through.
echo "== kill drill summary"
awk -v asked="$kills" -v status="$status" '
    # The number right after `prefix`, or right before `suffix`, in `s` (POSIX awk: no captures).
    function after(s, prefix,   i, t) {
        i = index(s, prefix); if (!i) return ""
        t = substr(s, i + length(prefix)); match(t, /^[0-9]+/); return substr(t, 1, RLENGTH)
    }
    function before(s, suffix,   i, t) {
        i = index(s, suffix); if (!i) return ""
        t = substr(s, 1, i - 1); match(t, /[0-9]+$/); return substr(t, RSTART, RLENGTH)
    }
    /^kill [0-9]+\/[0-9]+: / {
        rounds++
        acked = before($0, " in all)")
        unknown += before($0, " writes of unknown outcome")
        applied += before($0, " of them applied")
        r = after($0, "restart ") + 0; sum += r; if (r > max) max = r
    }
    /^crash drill summary: / {
        acked = after($0, "acknowledged_writes=")
        confirmed = after($0, "confirmed_on_retry=")
        checks = after($0, "write_checks=")
        elapsed = after($0, "elapsed_s=")
    }
    /panicked at / && failure == "" { failure = $0; getline detail; failure = failure "\n  " detail }
    END {
        printf "kills checked:        %d of %d\n", rounds, asked
        printf "acknowledged writes:  %d", acked
        if (checks != "") printf " (+%d confirmed by a retry); %d checks of them over all kills", confirmed, checks
        printf "\n"
        printf "unknown outcomes:     %d writes unanswered at a check, %d of them found applied, whole\n", unknown, applied
        printf "failures:             %d\n", (status != 0 || rounds < asked) ? 1 : 0
        if (rounds > 0) printf "restart time:         mean %d ms, max %d ms (health polled every 50 ms)\n", sum / rounds, max
        if (elapsed != "") printf "test time:            %d s\n", elapsed
        if (failure != "") printf "first failure:        %s\n", failure
    }
' "$log"
exit "$status"
