#!/usr/bin/env bash
# API throughput: GET /api/housekeeper/tasks with 50 tasks and 100,000 runs
# in history, on SQLite and on PostgreSQL, under wrk (Debian package `wrk`).
# Release build. PostgreSQL: a scratch database `housekeeper_bench` on
# $PGHOST (default 127.0.0.1, user postgres), dropped and recreated.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
duration=${DURATION:-15s}
connections=${CONNECTIONS:-32}
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

[ -x "$root/target/release/housekeeper" ] || cargo build --release --quiet --bin housekeeper --manifest-path "$root/Cargo.toml"
[ -f "$root/target/fixtures/noop.wasm" ] || "$root/scripts/build-tasks.sh"
bin=$root/target/release/housekeeper

mkdir -p "$work/tasks"
cp "$root/target/fixtures/noop.wasm" "$work/tasks/"
for i in $(seq -w 1 50); do
    printf 'name = "task-%s"\ncomponent = "noop.wasm"\nschedule = "0 3 * * *"\n' "$i" > "$work/tasks/t$i.toml"
done

serve() { # database-url
    env HOST=127.0.0.1 PORT="$port" LOG_LEVEL=warn DATABASE_URL="$1" \
        HOUSEKEEPER_TASKS_DIR="$work/tasks" HOUSEKEEPER_DATA_DIR="$work/data" "$bin" serve &
    pid=$!
    for _ in $(seq 200); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && return; sleep 0.1; done
    echo "service did not start" >&2; exit 1
}
stop() { kill -TERM "$pid"; wait "$pid" || true; pid=; }

# 100,000 finished runs spread over the 50 tasks, and their summaries.

measure() { # label
    local out
    out=$(wrk -t2 -c"$connections" -d"$duration" --latency "http://127.0.0.1:$port/api/housekeeper/tasks")
    local rps p99
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    echo "$1: $rps req/s, p99 $p99"
}

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# SQLite.
mkdir -p "$work/data"
serve "sqlite:$work/data/housekeeper.db"; stop
python3 - "$work/data/housekeeper.db" <<'PY'
import sqlite3, sys, datetime
db = sqlite3.connect(sys.argv[1])
base = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
rows = []
for n in range(100_000):
    ts = (base + datetime.timedelta(minutes=n)).isoformat().replace("+00:00", "Z")
    rows.append((f"task-{n % 50 + 1:02}", ts, ts, "error" if n % 10 == 0 else "success", n % 500, "seeded", "schedule", ts, "bench"))
db.executemany("INSERT INTO housekeeper_runs (task_name, started_at, completed_at, status, duration_ms, output, triggered_by, scheduled_for, replica) VALUES (?,?,?,?,?,?,?,?,?)", rows)
db.execute("""INSERT INTO housekeeper_task_stats (task_name, total_runs, success_count, error_count, total_duration_ms, last_run_at, last_status)
              SELECT task_name, COUNT(*), SUM(status = 'success'), SUM(status <> 'success'), SUM(duration_ms), MAX(started_at), 'success'
              FROM housekeeper_runs GROUP BY task_name""")
db.commit()
print("sqlite rows:", db.execute("SELECT COUNT(*) FROM housekeeper_runs").fetchone()[0])
PY
serve "sqlite:$work/data/housekeeper.db"
measure "sqlite"
stop

# PostgreSQL.
pg=${PGHOST:-127.0.0.1}
psql -q -h "$pg" -U postgres -c "DROP DATABASE IF EXISTS housekeeper_bench" -c "CREATE DATABASE housekeeper_bench"
url="postgres://postgres@$pg:5432/housekeeper_bench"
serve "$url"; stop
psql -q -h "$pg" -U postgres -d housekeeper_bench <<'SQL'
INSERT INTO housekeeper_runs (task_name, started_at, completed_at, status, duration_ms, output, triggered_by, scheduled_for, replica)
SELECT 'task-' || lpad((n % 50 + 1)::text, 2, '0'), ts, ts, CASE WHEN n % 10 = 0 THEN 'error' ELSE 'success' END, n % 500, 'seeded', 'schedule', ts, 'bench'
FROM generate_series(0, 99999) AS n, LATERAL (SELECT timestamptz '2026-01-01' + n * interval '1 minute' AS ts) t;
INSERT INTO housekeeper_task_stats (task_name, total_runs, success_count, error_count, total_duration_ms, last_run_at, last_status)
SELECT task_name, COUNT(*), COUNT(*) FILTER (WHERE status = 'success'), COUNT(*) FILTER (WHERE status <> 'success'), SUM(duration_ms), MAX(started_at), 'success'
FROM housekeeper_runs GROUP BY task_name;
ANALYZE;
SQL
echo "postgres rows: $(psql -tA -h "$pg" -U postgres -d housekeeper_bench -c 'SELECT COUNT(*) FROM housekeeper_runs')"
serve "$url"
measure "postgres"
stop
psql -q -h "$pg" -U postgres -c "DROP DATABASE IF EXISTS housekeeper_bench"
