#!/usr/bin/env bash
# Builds everything (the wasm32-wasip2 target, the bundled tasks, the
# housekeeper binary), prepares a demo tasks directory (cleanup-old-logs on a
# generated ./data/demo-logs) and starts the service on its embedded default:
# SQLite at ./data/housekeeper.db, HTTP on $HOST:$PORT (0.0.0.0:3200).
# Ctrl-C stops it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

scripts/build-tasks.sh
cargo build --release --bin housekeeper
bin=target/release/housekeeper

# A tasks directory with cleanup-old-logs, granted ./data/demo-logs.
mkdir -p tasks.d data/demo-logs
cp target/tasks/*.wasm tasks.d/
[ -f tasks.d/cleanup-old-logs.toml ] || cat > tasks.d/cleanup-old-logs.toml <<TOML
schedule = "0 3 * * *"
run_on_startup = true

[[grants.dirs]]
host = "$root/data/demo-logs"
guest = "/logs"
mode = "rw"

[config]
max_age_days = 7
keep_newest = 20
TOML

# Thirty days of logs, one file a day.
for day in $(seq 0 29); do
    f=data/demo-logs/app-$(date -u -d "-$day days" +%Y-%m-%d).log
    [ -f "$f" ] || { echo "demo log line" > "$f"; touch -d "-$day days" "$f"; }
done

"$bin" check tasks.d
echo "--- dry run ---"
"$bin" run cleanup-old-logs --tasks-dir tasks.d --dry-run --no-record
echo "--- starting the service (Ctrl-C to stop) ---"
exec "$bin" serve --tasks-dir tasks.d
