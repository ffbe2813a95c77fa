#!/usr/bin/env bash
# Builds everything (the wasm32-wasip2 target, the bundled tasks, the
# housekeeper binary), prepares a demo tasks directory (scripts/demo.sh:
# cleanup-old-logs on a generated ./data/demo-logs) and starts the service on
# its embedded default:
# SQLite at ./data/housekeeper.db, HTTP on $HOST:$PORT (0.0.0.0:3200).
# Ctrl-C stops it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

scripts/system-deps.sh
scripts/build-tasks.sh
cargo build --release --bin housekeeper
bin=target/release/housekeeper

# tasks.d with cleanup-old-logs, granted a generated ./data/demo-logs.
scripts/demo.sh "$root"

"$bin" check tasks.d
echo "--- dry run ---"
"$bin" run cleanup-old-logs --tasks-dir tasks.d --dry-run --no-record
echo "--- starting the service (Ctrl-C to stop) ---"
exec "$bin" serve --tasks-dir tasks.d
