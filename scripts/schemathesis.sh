#!/usr/bin/env bash
# Property-based API test: schemathesis generates requests from
# /api/openapi.json against a real `housekeeper serve` and fails on any 5xx
# or any response that does not match the document. Bounded examples,
# deterministic generation. Uses the debug binary (scripts/test.sh builds it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
venv=$target/schemathesis-venv
version=4.32.5

if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi

work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

mkdir -p "$work/tasks"
cp "$target/fixtures/noop.wasm" "$work/tasks/noop.wasm"
printf 'schedule = "*/2 * * * * *"\n' > "$work/tasks/noop.toml"
cp "$target/fixtures/hostile.wasm" "$work/tasks/hostile.wasm"
printf '[config]\nmode = "fail"\n' > "$work/tasks/hostile.toml"
printf 'schedule = "whenever"\n' > "$work/tasks/broken.toml"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
env -u DATABASE_URL -u DB_HOST HOST=127.0.0.1 PORT="$port" LOG_LEVEL=warn \
    HOUSEKEEPER_TASKS_DIR="$work/tasks" HOUSEKEEPER_DATA_DIR="$work/data" \
    HOUSEKEEPER_API_TOKEN=schemathesis \
    "$target/debug/housekeeper" serve &
pid=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.1
done

# schemathesis keeps its state in the working directory: keep it out of the tree.
cd "$work"
"$venv/bin/schemathesis" run "http://127.0.0.1:$port/api/openapi.json" \
    -H "Authorization: Bearer schemathesis" \
    --checks not_a_server_error,response_schema_conformance \
    --max-examples 25 \
    --generation-deterministic
