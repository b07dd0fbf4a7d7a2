#!/usr/bin/env bash
# etcd sizing: how many bytes of etcd's database a key costs. Starts `kmsctl dev up --store
# etcd` in a temporary directory on ports of its own, creates KEYS software keys (default
# 100000) with kms-bench through the control plane, then asks the etcd member (its JSON
# gateway) for its database size, compacts the history and defragments, and asks again.
# Prints bytes per key before and after compaction. Builds what it needs first.
#
#   scripts/etcd-size.sh [KEYS] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."

keys="${1:-100000}"
concurrency="${2:-16}"
if ! [[ "$keys" =~ ^[1-9][0-9]*$ && "$keys" -le 100000 ]]; then
    echo "usage: scripts/etcd-size.sh [KEYS (1-100000)] [CONCURRENCY]" >&2
    exit 2
fi

scripts/ensure-deps.sh
cargo build --locked --quiet -p kms-control -p kms-data -p kms-cli -p kms-bench --bins

dir=$(mktemp -d -t kms-etcd-size-XXXXXX)
etcd_port=23790
control=127.0.0.1:23700
data=127.0.0.1:23701
etcd=http://127.0.0.1:$etcd_port
principal=acs:ram::1234567890123456:root
operator=acs:ram::1000000000000000:user/operator

target/debug/kmsctl dev up --dir "$dir" --store etcd --control-addr "$control" \
    --data-addr "$data" --etcd-addr "127.0.0.1:$etcd_port" >"$dir/dev-up.out" 2>&1 &
dev_pid=$!
cleanup() {
    kill -INT "$dev_pid" 2>/dev/null || true
    wait "$dev_pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

for _ in $(seq 1 600); do
    grep -q "Press Ctrl-C" "$dir/dev-up.out" && break
    if ! kill -0 "$dev_pid" 2>/dev/null; then
        cat "$dir/dev-up.out" >&2
        exit 1
    fi
    sleep 0.2
done

status() {
    curl -s -X POST "$etcd/v3/maintenance/status" -d '{}'
}
field() {
    # A number from the gateway's JSON (int64s are strings there).
    sed -n "s/.*\"$1\":\"\\{0,1\\}\\([0-9]*\\).*/\\1/p"
}

before=$(status)
size0=$(field dbSize <<<"$before")

instance=$(target/debug/kmsctl --control "http://$control" --principal "$operator" \
    create-kms-instance --type software --owner 1234567890123456 --key-quota 100000 \
    --access-management-quota 1 --json | sed -n 's/.*"kms_instance_id": *"\([^"]*\)".*/\1/p')
echo "instance $instance; creating $keys keys, $concurrency at a time"
start=$(date +%s)
target/debug/kms-bench --control "http://$control" --data "http://$data" \
    --principal "$principal" --op create-key --instance "$instance" \
    --requests "$keys" --concurrency "$concurrency"
elapsed=$(( $(date +%s) - start ))

after=$(status)
size1=$(field dbSize <<<"$after")
in_use1=$(field dbSizeInUse <<<"$after")
revision=$(field revision <<<"$after")
curl -s -X POST "$etcd/v3/kv/compaction" -d "{\"revision\":\"$revision\",\"physical\":true}" >/dev/null
curl -s -X POST "$etcd/v3/maintenance/defragment" -d '{}' >/dev/null
compacted=$(status)
size2=$(field dbSize <<<"$compacted")

echo "== etcd size for $keys keys (created in ${elapsed} s)"
echo "database before:            $size0 bytes"
echo "database after creation:    $size1 bytes ($in_use1 in use), $(( (size1 - size0) / keys )) bytes per key"
echo "after compaction + defrag:  $size2 bytes, $(( (size2 - size0) / keys )) bytes per key"
