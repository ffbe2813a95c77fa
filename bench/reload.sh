#!/usr/bin/env bash
# Hot reload latency: time from the rename of a new component into the tasks
# directory until the running service lists it as scheduled (its first
# possible run). The component is a debug build of cleanup-old-logs (a few
# MB of real, unoptimized code). Cold = never seen; cache hit = the same file
# removed and added again (served from $HOUSEKEEPER_DATA_DIR/cache/).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${ROUNDS:-5}
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

[ -x "$root/target/release/housekeeper" ] || cargo build --release --quiet --bin housekeeper --manifest-path "$root/Cargo.toml"
cargo build --quiet --manifest-path "$root/tasks/Cargo.toml" -p cleanup-old-logs --target wasm32-wasip2 --target-dir "$root/target"
big=$root/target/wasm32-wasip2/debug/cleanup_old_logs.wasm

mkdir -p "$work/tasks"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
env -u DATABASE_URL -u DB_HOST HOST=127.0.0.1 PORT="$port" LOG_LEVEL=warn \
    HOUSEKEEPER_TASKS_DIR="$work/tasks" HOUSEKEEPER_DATA_DIR="$work/data" \
    "$root/target/release/housekeeper" serve &
pid=$!
until curl -sf "http://127.0.0.1:$port/ready" >/dev/null; do sleep 0.05; done

python3 - "$big" "$work/tasks" "$port" "$rounds" <<'PY'
import http.client, json, os, shutil, statistics, sys, time
big, tasks, port, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def listed(name):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/api/housekeeper/tasks")
    body = json.loads(c.getresponse().read())
    c.close()
    return any(t["name"] == name and t["nextRunAt"] for t in body["tasks"])
def add(name, wasm):
    with open(f"{tasks}/{name}.toml", "w") as f:
        f.write('schedule = "0 3 * * *"\n')
    shutil.copy(wasm, f"{tasks}/.{name}.partial")
    t0 = time.perf_counter()
    os.rename(f"{tasks}/.{name}.partial", f"{tasks}/{name}.wasm")
    while not listed(name):
        time.sleep(0.002)
    return (time.perf_counter() - t0) * 1000
def remove(name):
    os.remove(f"{tasks}/{name}.wasm"); os.remove(f"{tasks}/{name}.toml")
    while listed(name):
        time.sleep(0.01)
size = os.path.getsize(big) / 2**20
cold, warm = [], []
for i in range(rounds):
    # A distinct file each round (trailing custom section): never seen before.
    data = open(big, "rb").read() + b"\x00\x0a\x05round" + f"{i:04}".encode()
    path = f"{tasks}/../big{i}.wasm"
    open(path, "wb").write(data)
    cold.append(add(f"big{i}", path)); remove(f"big{i}")
    warm.append(add(f"big{i}", path)); remove(f"big{i}")
print(f"component: {size:.1f} MiB debug build of cleanup-old-logs")
print(f"rename -> scheduled, cold:      median {statistics.median(cold):.0f} ms ({', '.join(f'{x:.0f}' for x in cold)})")
print(f"rename -> scheduled, cache hit: median {statistics.median(warm):.0f} ms ({', '.join(f'{x:.0f}' for x in warm)})")
PY
