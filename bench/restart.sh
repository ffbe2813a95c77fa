#!/usr/bin/env bash
# Restart cost with the compile cache: 50 distinct components (the bundled
# cleanup-old-logs, each made distinct by a trailing custom section, so each
# has its own content hash and cache entry), one task each. Measures the
# time from starting `housekeeper serve` until /api/housekeeper/tasks lists
# all 50 scheduled: once with an empty cache, then ROUNDS times warm.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tasks=${TASKS:-50}
rounds=${ROUNDS:-3}
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

[ -x "$root/target/release/housekeeper" ] || cargo build --release --quiet --bin housekeeper --manifest-path "$root/Cargo.toml"
[ -f "$root/target/tasks/cleanup-old-logs.wasm" ] || "$root/scripts/build-tasks.sh"

mkdir -p "$work/tasks"
python3 - "$root/target/tasks/cleanup-old-logs.wasm" "$work/tasks" "$tasks" <<'PY'
import sys
src, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = open(src, "rb").read()
def leb(v):
    b = bytearray()
    while True:
        byte = v & 0x7F
        v >>= 7
        b.append(byte | (0x80 if v else 0))
        if not v:
            return bytes(b)
for i in range(n):
    name = b"bench-id"
    payload = leb(len(name)) + name + f"{i:08}".encode()
    with open(f"{out}/t{i:02}.wasm", "wb") as f:
        f.write(base + b"\x00" + leb(len(payload)) + payload)
    with open(f"{out}/t{i:02}.toml", "w") as f:
        f.write('schedule = "0 3 * * *"\n')
PY

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start_once() {
    local t0 t1
    t0=$(date +%s%N)
    env -u DATABASE_URL -u DB_HOST HOST=127.0.0.1 PORT="$port" LOG_LEVEL=warn \
        HOUSEKEEPER_TASKS_DIR="$work/tasks" HOUSEKEEPER_DATA_DIR="$work/data" \
        "$root/target/release/housekeeper" serve &
    pid=$!
    until [ "$(curl -sf "http://127.0.0.1:$port/api/housekeeper/tasks" 2>/dev/null \
        | python3 -c 'import json,sys; print(sum(1 for t in json.load(sys.stdin)["tasks"] if t["nextRunAt"]))' 2>/dev/null)" = "$tasks" ]; do
        sleep 0.01
    done
    t1=$(date +%s%N)
    kill -TERM "$pid"; wait "$pid" || true; pid=
    echo $(( (t1 - t0) / 1000000 ))
}
cold=$(start_once)
warm=()
for _ in $(seq "$rounds"); do warm+=("$(start_once)"); done
echo "$tasks distinct components: cold start (empty cache) ${cold} ms; warm starts ${warm[*]} ms"
