#!/usr/bin/env bash
# partition-maintenance against pg_partman's run_maintenance() on identical
# tables: daily range partitions of an `events`-shaped table from 150 days
# ago through tomorrow (pg_partman's smallest premake is 1), a default
# partition, pg_partman premake 30, retention 90 days. pg_partman counts its
# premake in calendar months and days (`age()`), so how far ahead 30 reaches
# depends on the month lengths ahead of the day it runs: an untimed first
# pass measures it, and housekeeper's premake (counted in days from today)
# is set to the same day. One maintenance pass then creates about 30
# partitions (+2 through that day) and drops 60 (150 to 91 days old); the
# script checks that both end with the same partitions, whatever the date.
# ROUNDS rounds (default 5) on freshly built
# tables, alternating; the housekeeper side is the release binary's `run`
# (process start and compile-cache load included), the pg_partman side is
# `psql -c "SELECT partman.run_maintenance(...)"`. Prints the medians and
# the ratio. Needs PostgreSQL with pg_partman installed
# (apt-get install postgresql-15-partman) at BENCH_SERVER; uses a database
# named housekeeper_bench_partman, dropped afterwards.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${ROUNDS:-5}
server=${BENCH_SERVER:-postgres://postgres@127.0.0.1:5432}
db=housekeeper_bench_partman
work=$(mktemp -d)
psql_() { psql "$server/$1" -v ON_ERROR_STOP=1 -qAt "${@:2}"; }
trap 'rm -rf "$work"; psql_ postgres -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true' EXIT

command -v psql >/dev/null || { echo "psql is missing: apt-get install postgresql-client-15" >&2; exit 1; }
[ -f /usr/share/postgresql/15/extension/pg_partman.control ] || apt-get install -y -qq postgresql-15-partman >/dev/null || {
    echo "pg_partman is missing: apt-get install postgresql-15-partman" >&2; exit 1; }
[ -x "$root/target/release/housekeeper" ] || cargo build --release --quiet --bin housekeeper --manifest-path "$root/Cargo.toml"
[ -f "$root/target/tasks/partition-maintenance.wasm" ] || "$root/scripts/build-tasks.sh"
bin=$root/target/release/housekeeper

psql_ postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
psql_ $db -c "CREATE SCHEMA partman" -c "CREATE EXTENSION pg_partman SCHEMA partman"
echo "pg_partman $(psql_ $db -c "SELECT extversion FROM pg_extension WHERE extname = 'pg_partman'")"

mkdir -p "$work/tasks" "$work/data"
cp "$root/target/tasks/partition-maintenance.wasm" "$work/tasks/"
manifest() { # premake
    cat > "$work/tasks/events-hk.toml" <<TOML
component = "partition-maintenance.wasm"
[grants.database]
connection = "main"
tables = { events_hk = ["select", "create_partition", "drop_partition"], events_hk_default = ["select"] }
[config]
table = "events_hk"
interval = "daily"
premake = $1
retention = "90 days"
TOML
}

table() {
    echo "DROP TABLE IF EXISTS $1;
          CREATE TABLE $1 (id bigint, event_type text, device_uuid uuid, data jsonb,
                           \"timestamp\" timestamptz NOT NULL) PARTITION BY RANGE (\"timestamp\");"
}

setup_partman() {
    psql_ $db -c "DELETE FROM partman.part_config WHERE parent_table = 'public.events_pm'" \
        -c "DROP TABLE IF EXISTS partman.template_public_events_pm" \
        -c "$(table events_pm)" \
        -c "SELECT partman.create_parent('public.events_pm', 'timestamp', 'native', 'daily',
                p_premake := 1, p_start_partition := (current_date - 150)::text)" \
        -c "UPDATE partman.part_config SET premake = 30, retention = '90 days', retention_keep_table = false,
                infinite_time_partitions = true
            WHERE parent_table = 'public.events_pm'" >/dev/null
}

setup_hk() {
    psql_ $db -c "$(table events_hk)" \
        -c "CREATE TABLE events_hk_default PARTITION OF events_hk DEFAULT" \
        -c "DO \$\$ DECLARE d date; BEGIN
              FOR d IN SELECT generate_series(current_date - 150, current_date + 1, '1 day')::date LOOP
                EXECUTE format('CREATE TABLE %I PARTITION OF events_hk FOR VALUES FROM (%L) TO (%L)',
                  'events_hk_' || to_char(d, 'YYYY_MM_DD'), d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
              END LOOP; END \$\$" >/dev/null
}

children() { psql_ $db -c "SELECT count(*) FROM pg_inherits WHERE inhparent = '$1'::regclass"; }
ms() { date +%s%3N; }

# How far ahead pg_partman's premake reaches today (its last partition is
# named _pYYYY_MM_DD after its first day).
setup_partman
psql_ $db -c "SELECT partman.run_maintenance('public.events_pm')" >/dev/null
ahead=$(psql_ $db -c "SELECT max(to_date(right(c.relname, 10), 'YYYY_MM_DD')) - current_date
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'events_pm'::regclass AND c.relname <> 'events_pm_default'")
echo "pg_partman premake 30 reaches +$ahead days today; housekeeper premake = $ahead"
manifest "$ahead"

# Warm the compile cache once.
setup_hk
DATABASE_URL="$server/$db" HOUSEKEEPER_DB_MAIN_UNSAFE_SUPERUSER=1 HOUSEKEEPER_DATA_DIR="$work/data" "$bin" run events-hk --tasks-dir "$work/tasks" --no-record --dry-run >/dev/null

declare -a p h
for i in $(seq "$rounds"); do
    setup_partman
    before_pm=$(children events_pm)
    t0=$(ms)
    psql_ $db -c "SELECT partman.run_maintenance('public.events_pm')" >/dev/null
    p+=($(( $(ms) - t0 )))
    after_pm=$(children events_pm)

    setup_hk
    before_hk=$(children events_hk)
    t0=$(ms)
    out=$(DATABASE_URL="$server/$db" HOUSEKEEPER_DB_MAIN_UNSAFE_SUPERUSER=1 HOUSEKEEPER_DATA_DIR="$work/data" "$bin" run events-hk --tasks-dir "$work/tasks" --no-record)
    h+=($(( $(ms) - t0 )))
    after_hk=$(children events_hk)
    echo "$out" | grep -q "created $(( ahead - 1 )), dropped 60" || { echo "$out"; exit 1; }
    [ "$after_pm" = "$after_hk" ] || { echo "different results: pg_partman left $after_pm partitions, housekeeper $after_hk"; psql_ $db -c "SELECT min(c.relname), max(c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events_pm'::regclass AND c.relname <> 'events_pm_default'" -c "SELECT min(c.relname), max(c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events_hk'::regclass AND c.relname <> 'events_hk_default'"; exit 1; }
    echo "round $i: pg_partman ${p[-1]} ms ($before_pm -> $after_pm partitions), housekeeper ${h[-1]} ms ($before_hk -> $after_hk)"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mp=$(median "${p[@]}"); mh=$(median "${h[@]}")
echo "median: pg_partman run_maintenance $mp ms, housekeeper partition-maintenance $mh ms, ratio $(awk -v a="$mh" -v b="$mp" 'BEGIN {printf "%.2f", a/b}')"
