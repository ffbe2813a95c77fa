#!/usr/bin/env bash
# Prepares the demo that scripts/start.sh serves, under DIR (default: the
# repository): DIR/tasks.d with cleanup-old-logs and its manifest, granted a
# generated DIR/data/demo-logs (thirty days of logs, one file a day). Only
# tasks that can run without a database or other grants go in, so the demo
# starts healthy. Needs the components built (scripts/build-tasks.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mkdir -p "${1:-$root}" && cd "${1:-$root}" && pwd)
components=${CARGO_TARGET_DIR:-$root/target}/tasks

mkdir -p "$dir/tasks.d" "$dir/data/demo-logs"
cp "$components/cleanup-old-logs.wasm" "$dir/tasks.d/"
# Earlier versions of this script copied every bundled component here
# without a manifest: such a task has no grants and its runs fail.
for wasm in "$components"/*.wasm; do
    name=$(basename "$wasm" .wasm)
    if [ "$name" != cleanup-old-logs ] && [ -f "$dir/tasks.d/$name.wasm" ] && [ ! -f "$dir/tasks.d/$name.toml" ]; then
        echo "removing tasks.d/$name.wasm: it has no manifest, so it cannot run in the demo"
        rm "$dir/tasks.d/$name.wasm"
    fi
done
[ -f "$dir/tasks.d/cleanup-old-logs.toml" ] || cat > "$dir/tasks.d/cleanup-old-logs.toml" <<TOML
schedule = "0 3 * * *"
run_on_startup = true

[[grants.dirs]]
host = "$dir/data/demo-logs"
guest = "/logs"
mode = "rw"

[config]
max_age_days = 7
keep_newest = 20
TOML

for day in $(seq 0 29); do
    f=$dir/data/demo-logs/app-$(date -u -d "-$day days" +%Y-%m-%d).log
    [ -f "$f" ] || { echo "demo log line" > "$f"; touch -d "-$day days" "$f"; }
done
