#!/usr/bin/env bash
# row-retention against one `DELETE` in psql on identical data: a plain
# table of ROWS rows (default 2000000) with an index on created_at, half of
# them older than 90 days. Each side starts from freshly loaded, vacuumed
# data; ROUNDS rounds (default 3), alternating. The housekeeper side is the
# release binary's `run` of the example manifest
# (deploy/tasks/sensor-readings-retention.toml, batches of 10000, no pause),
# process start and compile-cache load included. A third side is what a
# user would script instead of either: psql sending 100 block-range
# batches, each its own transaction (waiting for its commit, PostgreSQL's
# default). Prints the medians and the ratios to the one DELETE. Needs PostgreSQL at PGHOST/PGPORT (default 127.0.0.1:5432, user
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
# 100 ranges of blocks, each its own transaction (psql -f commits each
# statement on its own).
psql_batches() {
    local blocks step t0
    blocks=$(psql_ $db -c "SELECT pg_relation_size('sensor_readings') / 8192")
    step=$(( blocks / 100 + 1 ))
    for s in $(seq 0 "$step" "$blocks"); do
        echo "DELETE FROM sensor_readings WHERE ctid >= '($s,0)'::tid AND ctid < '($((s + step)),0)'::tid AND created_at < now() - interval '90 days';"
    done > "$work/batches.sql"
    t0=$(ms)
    psql_ $db -f "$work/batches.sql" >/dev/null
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

declare -a p b h
count() { psql_ $db -c "SELECT count(*) FROM sensor_readings"; }
for i in $(seq "$rounds"); do
    load
    psql_delete; p+=("$now_ms")
    left=$(count)
    load
    psql_batches; b+=("$now_ms")
    [ "$left" = "$(count)" ] || { echo "different results: psql batches left $(count), one DELETE $left"; exit 1; }
    load
    hk_delete; h+=("$now_ms")
    [ "$left" = "$(count)" ] || { echo "different results: housekeeper left $(count), psql $left"; exit 1; }
    echo "round $i: psql DELETE ${p[-1]} ms, psql batches ${b[-1]} ms, housekeeper ${h[-1]} ms ($left of $rows rows left)"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
mp=$(median "${p[@]}"); mb=$(median "${b[@]}"); mh=$(median "${h[@]}")
echo "median: psql DELETE $mp ms, psql batches $mb ms ($(ratio "$mb" "$mp")), housekeeper row-retention $mh ms (ratio $(ratio "$mh" "$mp"))"
