#!/usr/bin/env bash
# row-retention against one `DELETE` in psql on identical data: a plain
# table of ROWS rows (default 2000000) with an index on created_at, half of
# them older than 90 days. Each side starts from freshly loaded, vacuumed
# data; ROUNDS rounds (default 3), alternating. The housekeeper side is the
# release binary's `run` of the example manifest
# (deploy/tasks/sensor-readings-retention.toml, batches of 10000, no pause),
# process start and compile-cache load included. Prints the medians and the
# ratio. Needs PostgreSQL at PGHOST/PGPORT (default 127.0.0.1:5432, user
# postgres); uses a database named housekeeper_bench, dropped afterwards.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rows=${ROWS:-2000000}
rounds=${ROUNDS:-3}
server=${BENCH_SERVER:-postgres://postgres@127.0.0.1:5432}
db=housekeeper_bench
work=$(mktemp -d)
psql_() { psql "$server/$1" -v ON_ERROR_STOP=1 -qAt "${@:2}"; }
trap 'rm -rf "$work"; psql_ postgres -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true' EXIT

[ -x "$root/target/release/housekeeper" ] || cargo build --release --quiet --bin housekeeper --manifest-path "$root/Cargo.toml"
[ -f "$root/target/tasks/row-retention.wasm" ] || "$root/scripts/build-tasks.sh"
bin=$root/target/release/housekeeper

psql_ postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
psql_ $db -f "$root/deploy/schema/example.sql" >/dev/null
mkdir -p "$work/tasks" "$work/data"
cp "$root/target/tasks/row-retention.wasm" "$work/tasks/"
sed 's/^pause_ms = .*/pause_ms = 0/' "$root/deploy/tasks/sensor-readings-retention.toml" > "$work/tasks/sensor-readings-retention.toml"

load() {
    psql_ $db -c "TRUNCATE sensor_readings" \
        -c "INSERT INTO sensor_readings (device_uuid, value, created_at)
            SELECT md5(g::text)::uuid, g, now() - ((g % 180) || ' days')::interval - interval '1 hour'
            FROM generate_series(1, $rows) g" \
        -c "VACUUM ANALYZE sensor_readings" -c "CHECKPOINT"
}

ms() { date +%s%3N; }
now_ms=0
psql_delete() {
    local t0; t0=$(ms)
    psql_ $db -c "DELETE FROM sensor_readings WHERE created_at < now() - interval '90 days'" >/dev/null
    now_ms=$(( $(ms) - t0 ))
}
hk_delete() {
    local t0 out; t0=$(ms)
    out=$(DATABASE_URL="$server/$db" HOUSEKEEPER_DB_MAIN_UNSAFE_SUPERUSER=1 HOUSEKEEPER_DATA_DIR="$work/data" "$bin" run sensor-readings-retention --tasks-dir "$work/tasks" --no-record)
    now_ms=$(( $(ms) - t0 ))
    echo "$out" | grep -q "deleted" || { echo "$out"; exit 1; }
}

# Warm the compile cache once.
load >/dev/null
DATABASE_URL="$server/$db" HOUSEKEEPER_DB_MAIN_UNSAFE_SUPERUSER=1 HOUSEKEEPER_DATA_DIR="$work/data" "$bin" run sensor-readings-retention --tasks-dir "$work/tasks" --no-record --dry-run >/dev/null

declare -a p h
for i in $(seq "$rounds"); do
    load
    psql_delete; p+=("$now_ms")
    left=$(psql_ $db -c "SELECT count(*) FROM sensor_readings")
    load
    hk_delete; h+=("$now_ms")
    left_hk=$(psql_ $db -c "SELECT count(*) FROM sensor_readings")
    [ "$left" = "$left_hk" ] || { echo "different results: psql left $left, housekeeper $left_hk"; exit 1; }
    echo "round $i: psql ${p[-1]} ms, housekeeper ${h[-1]} ms ($left of $rows rows left)"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mp=$(median "${p[@]}"); mh=$(median "${h[@]}")
echo "median: psql DELETE $mp ms, housekeeper row-retention $mh ms, ratio $(awk -v a="$mh" -v b="$mp" 'BEGIN {printf "%.2f", a/b}')"
