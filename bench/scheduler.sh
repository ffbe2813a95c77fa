#!/usr/bin/env bash
# Scheduling precision and idle cost of `housekeeper serve` (release build,
# embedded SQLite):
#  1. 200 tasks sharing the no-op component, all due every 10 s on the same
#     second: lateness = when the run was recorded as started minus its
#     scheduled time, p50/p99 over ROUNDS fires (default 3, i.e. 600 runs).
#  2. 200 registered tasks that are not due: CPU time and RSS over IDLE
#     seconds (default 60).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${ROUNDS:-3}
idle=${IDLE:-60}
tasks=${TASKS:-200}
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

[ -x "$root/target/release/housekeeper" ] || cargo build --release --quiet --bin housekeeper --manifest-path "$root/Cargo.toml"
[ -f "$root/target/fixtures/noop.wasm" ] || "$root/scripts/build-tasks.sh"
bin=$root/target/release/housekeeper

serve() { # tasks-dir data-dir
    env -u DATABASE_URL -u DB_HOST HOST=127.0.0.1 PORT=0 LOG_LEVEL=warn \
        HOUSEKEEPER_TASKS_DIR="$1" HOUSEKEEPER_DATA_DIR="$2" \
        HOUSEKEEPER_MAX_CONCURRENT_RUNS="$tasks" \
        "$bin" serve &
    pid=$!
}

make_tasks() { # dir schedule
    mkdir -p "$1"
    cp "$root/target/fixtures/noop.wasm" "$1/noop.wasm"
    for i in $(seq -w 1 "$tasks"); do
        printf 'name = "t%s"\ncomponent = "noop.wasm"\nschedule = "%s"\n' "$i" "$2" > "$1/t$i.toml"
    done
}

# 1. Precision.
make_tasks "$work/due" "*/10 * * * * *"
serve "$work/due" "$work/data-due"
sleep $(( rounds * 10 + 12 ))
kill -TERM "$pid"; wait "$pid" || true; pid=
python3 - "$work/data-due/housekeeper.db" "$tasks" <<'PY'
import sqlite3, sys
from datetime import datetime
db, tasks = sys.argv[1], int(sys.argv[2])
rows = sqlite3.connect(db).execute(
    "SELECT scheduled_for, started_at FROM housekeeper_runs WHERE triggered_by = 'schedule' AND status = 'success'").fetchall()
late = sorted((datetime.fromisoformat(s) - datetime.fromisoformat(d)).total_seconds() * 1000 for d, s in rows)
by_fire = {}
for d, _ in rows:
    by_fire[d] = by_fire.get(d, 0) + 1
full = [f for f, n in by_fire.items() if n == tasks]
pick = lambda p: late[min(len(late) - 1, round((len(late) - 1) * p))]
print(f"precision: {len(late)} runs over {len(by_fire)} fires ({len(full)} with all {tasks} tasks)")
print(f"lateness p50 {pick(0.5):.1f} ms, p99 {pick(0.99):.1f} ms, max {late[-1]:.1f} ms")
PY

# 2. Idle cost.
make_tasks "$work/idle" "0 0 1 1 *"
serve "$work/idle" "$work/data-idle"
sleep 10  # past start-up (compiling and describing every task)
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
before=$(cpu)
sleep "$idle"
after=$(cpu)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
kill -TERM "$pid"; wait "$pid" || true; pid=
awk -v b="$before" -v a="$after" -v t="$ticks" -v s="$idle" -v r="$rss" -v n="$tasks" 'BEGIN {
    printf "idle: %d tasks, %d s: CPU %.3f s (%.2f%% of one core), RSS %.1f MiB\n", n, s, (a - b) / t, 100 * (a - b) / t / s, r / 1024 }'
