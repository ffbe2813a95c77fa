#!/usr/bin/env bash
# Several replicas on one PostgreSQL database against one replica, in the
# same run (release build):
#  1. TASKS tasks (default 100) sharing the no-op component, all on
#     `* * * * * *`, served for DURATION seconds (default 100) by one
#     replica, then by REPLICAS replicas (default 5), each phase on a fresh
#     database. Over the window, from `housekeeper_runs` in SQL: misses (an
#     occurrence without a row, or with a row that did not run it),
#     duplicates (more than one row per occurrence, and more than one run of
#     it counting retries), lateness (`started_at` - `scheduled_for`, both
#     by the database's clock; runs that started before their time are
#     counted), each replica's share of the runs and the offsets from the
#     database's clock it reported (sampled once a second); and the CPU time
#     per occurrence of the service processes (/proc) and of the PostgreSQL
#     backends serving the database, as ratios replicas / one.
#  2. Failover: one slow task (the witness fixture sleeping 30 s,
#     `*/2 * * * * *`, overlap = skip) on 3 replicas; kill -9 of the replica
#     running it, FAILOVER_ROUNDS times (default 3, the killed replica
#     started again between rounds): time until its run is recorded
#     `interrupted`, and until a run of the task starts on another replica
#     (default HOUSEKEEPER_LEASE, 15 s). Beside it, one replica killed and
#     started again at once, as a supervisor would.
# HOUSEKEEPER_MAX_CONCURRENT_RUNS is TASKS, so that runs do not wait for a
# slot. Needs PostgreSQL at BENCH_SERVER (default 127.0.0.1:5432, user
# postgres, trust); uses a database named housekeeper_bench_replicas,
# dropped afterwards.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tasks=${TASKS:-100}
duration=${DURATION:-100}
replicas=${REPLICAS:-5}
rounds=${FAILOVER_ROUNDS:-3}
server=${BENCH_SERVER:-postgres://postgres@127.0.0.1:5432}
db=housekeeper_bench_replicas
url=$server/$db
work=$(mktemp -d)
declare -A pid port
psql_() { PGOPTIONS='-c client_min_messages=warning' psql "$server/$1" -v ON_ERROR_STOP=1 -qAt "${@:2}"; }
stop_all() {
    for r in "${!pid[@]}"; do kill -TERM "${pid[$r]}" 2>/dev/null || true; done
    for r in "${!pid[@]}"; do wait "${pid[$r]}" 2>/dev/null || true; done
    pid=(); port=()
}
cleanup() {
    stop_all
    psql_ postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

command -v psql >/dev/null || apt-get install -y -qq postgresql-client >/dev/null || {
    echo "psql is missing: apt-get install postgresql-client" >&2; exit 1; }
command -v curl >/dev/null || apt-get install -y -qq curl >/dev/null || {
    echo "curl is missing: apt-get install curl" >&2; exit 1; }
psql_ postgres -c "SELECT 1" >/dev/null || { echo "no PostgreSQL at $server" >&2; exit 1; }
cargo build --release --quiet --bin housekeeper --manifest-path "$root/Cargo.toml"
[ -f "$root/target/fixtures/noop.wasm" ] && [ -f "$root/target/fixtures/witness.wasm" ] || "$root/scripts/build-tasks.sh"
bin=$root/target/release/housekeeper

fresh_db() { psql_ postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"; }
now() { date +%s.%N; }

start() { # replica tasks-dir [extra env...]
    local r=$1 dir=$2
    mkdir -p "$work/data-$r"
    : > "$work/$r.log"
    env -u DB_HOST HOST=127.0.0.1 PORT=0 LOG_LEVEL=warn,housekeeper::server=info \
        DATABASE_URL="$url" HOUSEKEEPER_REPLICA="$r" \
        HOUSEKEEPER_TASKS_DIR="$dir" HOUSEKEEPER_DATA_DIR="$work/data-$r" \
        HOUSEKEEPER_MAX_CONCURRENT_RUNS="$tasks" "${@:3}" \
        "$bin" serve 2>>"$work/$r.log" &
    pid[$r]=$!
}

# Waits until replica $1 answers /ready and lists its $2 tasks with a next
# fire.
ready() {
    local r=$1 n=$2 p=
    for _ in $(seq 600); do
        kill -0 "${pid[$r]}" 2>/dev/null || { echo "replica $r exited:" >&2; cat "$work/$r.log" >&2; exit 1; }
        [ -n "$p" ] || p=$(sed -n 's/\x1b\[[0-9;]*m//g; s/.*listening.*address=[^ ]*:\([0-9]*\).*/\1/p' "$work/$r.log" | head -1)
        if [ -n "$p" ] && curl -sf "http://127.0.0.1:$p/ready" >/dev/null &&
            [ "$(curl -sf "http://127.0.0.1:$p/api/housekeeper/tasks" | python3 -c \
                'import json,sys; print(sum(1 for t in json.load(sys.stdin)["tasks"] if t["nextRunAt"]))' 2>/dev/null)" = "$n" ]; then
            port[$r]=$p
            return
        fi
        sleep 0.1
    done
    echo "replica $r did not become ready:" >&2; cat "$work/$r.log" >&2; exit 1
}

# CPU seconds (user + system) of the service processes and of the
# PostgreSQL backends connected to the database.
cpu_service() {
    local t=0
    for r in "${!pid[@]}"; do t=$(( t + $(awk '{print $14 + $15}' "/proc/${pid[$r]}/stat") )); done
    awk -v t="$t" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.3f", t / hz}'
}
backend_ticks() { # prints "pid ticks" for each backend of the database
    local b
    for b in $(psql_ postgres -c "SELECT pid FROM pg_stat_activity WHERE datname = '$db' AND pid <> pg_backend_pid()"); do
        [ -r "/proc/$b/stat" ] && awk -v p="$b" '{print p, $14 + $15}' "/proc/$b/stat" 2>/dev/null || true
    done
}
cpu_backends_since() { # file of "pid ticks" taken at the start
    backend_ticks | awk -v hz="$(getconf CLK_TCK)" 'NR == FNR {s[$1] = $2; next} {t += $2 - s[$1]} END {printf "%.3f", t / hz}' "$1" -
}

# 1. Every second, TASKS tasks: one replica, then REPLICAS.
mkdir -p "$work/tasks"
cp "$root/target/fixtures/noop.wasm" "$work/tasks/noop.wasm"
for i in $(seq 1 "$tasks"); do
    printf 'name = "t%03d"\ncomponent = "noop.wasm"\nschedule = "* * * * * *"\n' "$i" > "$work/tasks/t$(printf %03d "$i").toml"
done

steady() { # label replicas
    local label=$1 n=$2 t0 t1 s0 s1 b
    fresh_db
    for i in $(seq 1 "$n"); do start "$label$i" "$work/tasks"; done
    for i in $(seq 1 "$n"); do ready "$label$i" "$tasks"; done
    # The window: whole seconds, from 2 s after every replica is ready.
    t0=$(( $(date +%s) + 3 ))
    sleep "$(awk -v t="$t0" -v n="$(now)" 'BEGIN {print t - n}')"
    s0=$(cpu_service); backend_ticks > "$work/backends"
    t1=$(( t0 + duration ))
    # Each replica's offset from the database's clock, as it last measured
    # it, once a second.
    while :; do
        psql_ $db -c "SELECT string_agg(replica || ' ' || clock_offset_ms, ' ') FROM housekeeper_replicas" || true
        sleep 1
    done > "$work/$label.offsets" 2>/dev/null &
    local sampler=$!
    sleep "$(awk -v t="$t1" -v n="$(now)" 'BEGIN {print t - n}')"
    s1=$(cpu_service); b=$(cpu_backends_since "$work/backends")
    kill "$sampler"; wait "$sampler" 2>/dev/null || true
    sleep 3  # the window's last occurrences finish
    stop_all
    psql_ $db -v t0="$t0" -v t1="$t1" -v tasks="$tasks" -F ' ' <<'SQL' > "$work/$label.sql"
WITH occ AS (
    SELECT format('t%s', lpad(i::text, 3, '0')) AS task_name, to_timestamp(s) AS scheduled_for
    FROM generate_series(1, :tasks) i, generate_series(:t0, :t1 - 1) s
), rows AS (
    SELECT * FROM housekeeper_runs
    WHERE scheduled_for >= to_timestamp(:t0) AND scheduled_for < to_timestamp(:t1)
), per_occ AS (
    SELECT o.task_name, o.scheduled_for,
           count(r.id) FILTER (WHERE r.triggered_by = 'schedule') AS rows,
           count(r.id) FILTER (WHERE r.triggered_by IN ('schedule', 'retry') AND r.status NOT IN ('skipped')) AS runs,
           count(r.id) FILTER (WHERE r.triggered_by = 'schedule' AND r.status = 'success') AS ok
    FROM occ o LEFT JOIN rows r USING (task_name, scheduled_for)
    GROUP BY 1, 2
), late AS (
    SELECT replica, extract(epoch FROM started_at - scheduled_for) * 1000 AS ms
    FROM rows WHERE triggered_by = 'schedule' AND status <> 'skipped'
)
SELECT 'expected', count(*)::text FROM per_occ
UNION ALL SELECT 'rows', sum(rows)::text FROM per_occ
UNION ALL SELECT 'runs', sum(runs)::text FROM per_occ
UNION ALL SELECT 'missing_row', count(*) FILTER (WHERE rows = 0)::text FROM per_occ
UNION ALL SELECT 'not_run', count(*) FILTER (WHERE rows > 0 AND ok = 0)::text FROM per_occ
UNION ALL SELECT 'dup_rows', count(*) FILTER (WHERE rows > 1)::text FROM per_occ
UNION ALL SELECT 'dup_runs', count(*) FILTER (WHERE runs > 1)::text FROM per_occ
UNION ALL SELECT 'p50', round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1)::text FROM late
UNION ALL SELECT 'p99', round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1)::text FROM late
UNION ALL SELECT 'max', round(max(ms)::numeric, 1)::text FROM late
UNION ALL SELECT 'min', round(min(ms)::numeric, 1)::text FROM late
UNION ALL SELECT 'early', count(*) FILTER (WHERE ms < 0)::text FROM late
UNION ALL SELECT 'per_replica', string_agg(format('%s:%s:%s:%s', replica, n, p50, early), ',' ORDER BY replica)
    FROM (SELECT replica, count(*) n, round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1) p50,
                 count(*) FILTER (WHERE ms < 0) early FROM late GROUP BY 1) s
UNION ALL SELECT 'statuses', string_agg(status || ':' || n, ',') FROM (SELECT status, count(*) n FROM rows GROUP BY 1 ORDER BY 1) s
UNION ALL SELECT 'share', string_agg(replica || ':' || n, ',') FROM (SELECT replica, count(*) n FROM rows WHERE status <> 'skipped' GROUP BY 1 ORDER BY 1) s;
SQL
    echo "offsets $(awk '{for (i = 1; i < NF; i += 2) {r = $i; o = $(i + 1); if (!(r in lo) || o < lo[r]) lo[r] = o; if (!(r in hi) || o > hi[r]) hi[r] = o}}
        END {n = asorti(lo, k); for (j = 1; j <= n; j++) printf "%s%s:%s..%s", (j > 1 ? "," : ""), k[j], lo[k[j]], hi[k[j]]}' "$work/$label.offsets")" >> "$work/$label.sql"
    echo "cpu_service $(awk -v a="$s0" -v b="$s1" 'BEGIN {printf "%.3f", b - a}')" >> "$work/$label.sql"
    echo "cpu_backends $b" >> "$work/$label.sql"
    echo "$label ($n replica(s), $tasks tasks, ${duration} s from $(date -u -d "@$t0" +%H:%M:%S)): $(tr '\n' ' ' < "$work/$label.sql")"
}
steady one 1
steady rep "$replicas"

v() { awk -v k="$2" '$1 == k {print $2}' "$work/$1.sql"; }
per() { awk -v c="$(v "$1" "$2")" -v n="$(v "$1" runs)" 'BEGIN {printf "%.0f", n ? c / n * 1e6 : 0}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf (b > 0 ? "%.2f" : "-"), a / b}'; }
echo
printf '| %s | %s | %s | %s |\n' "what" "1 replica" "$replicas replicas" "ratio / target"
printf '| %s | %s | %s | %s |\n' "---" "---" "---" "---"
printf '| %s | %s | %s | %s |\n' "occurrences in the window" "$(v one expected)" "$(v rep expected)" ""
printf '| %s | %s | %s | %s |\n' "runs recorded" "$(v one runs)" "$(v rep runs)" ""
printf '| %s | %s | %s | %s |\n' "misses: no row / row not run" "$(v one missing_row) / $(v one not_run)" "$(v rep missing_row) / $(v rep not_run)" "0"
printf '| %s | %s | %s | %s |\n' "duplicates: rows / runs" "$(v one dup_rows) / $(v one dup_runs)" "$(v rep dup_rows) / $(v rep dup_runs)" "0"
printf '| %s | %s | %s | %s |\n' "lateness p50 (ms)" "$(v one p50)" "$(v rep p50)" "$(ratio "$(v rep p50)" "$(v one p50)")"
printf '| %s | %s | %s | %s |\n' "lateness p99 (ms)" "$(v one p99)" "$(v rep p99)" "$(ratio "$(v rep p99)" "$(v one p99)")"
printf '| %s | %s | %s | %s |\n' "lateness max (ms)" "$(v one max)" "$(v rep max)" "$(ratio "$(v rep max)" "$(v one max)")"
printf '| %s | %s | %s | %s |\n' "runs started before their time (earliest, ms)" "$(v one early) ($(v one min))" "$(v rep early) ($(v rep min))" ""
printf '| %s | %s | %s | %s |\n' "service CPU per occurrence (µs, all replicas)" "$(per one cpu_service)" "$(per rep cpu_service)" "$(ratio "$(per rep cpu_service)" "$(per one cpu_service)")"
printf '| %s | %s | %s | %s |\n' "PostgreSQL backend CPU per occurrence (µs)" "$(per one cpu_backends)" "$(per rep cpu_backends)" "$(ratio "$(per rep cpu_backends)" "$(per one cpu_backends)")"
printf '| %s | %s | %s | %s |\n' "statuses" "$(v one statuses)" "$(v rep statuses)" ""
printf '| %s | %s | %s | %s |\n' "per replica: runs:lateness p50:early runs" "$(v one per_replica)" "$(v rep per_replica)" ""
printf '| %s | %s | %s | %s |\n' "per replica: clock offset seen (ms)" "$(v one offsets)" "$(v rep offsets)" ""
echo

# 2. Failover.
rm -f "$work/tasks/"*
cp "$root/target/fixtures/witness.wasm" "$work/tasks/slow.wasm"
printf 'schedule = "*/2 * * * * *"\noverlap = "skip"\n\n[config]\nsleep_ms = 30000\n' > "$work/tasks/slow.toml"

running() { # a running run of `slow` started after $1: "id replica"
    psql_ $db -F ' ' -c "SELECT id, replica FROM housekeeper_runs WHERE task_name = 'slow' AND status = 'running'
        AND started_at > to_timestamp($1) ORDER BY id LIMIT 1"
}
# Kills the replica running `slow` (a run started after $1) and waits until
# its run is recorded and the task's next run starts; with `restart`, starts
# the killed replica again at once. Sets victim, killed, detected (seconds
# from the kill to the run recorded), status (as recorded) and next
# (seconds from the kill to the next run's start).
failover() { # since [restart]
    local row id out
    for _ in $(seq 600); do row=$(running "$1"); [ -n "$row" ] && break; sleep 0.1; done
    [ -n "$row" ] || { echo "no run of slow started" >&2; exit 1; }
    read -r id victim <<< "$row"
    sleep 3  # mid-run
    kill -KILL "${pid[$victim]}"; killed=$(now)
    wait "${pid[$victim]}" 2>/dev/null || true
    unset "pid[$victim]"
    [ "${2:-}" = restart ] && start "$victim" "$work/tasks" HOUSEKEEPER_SHUTDOWN_GRACE=1s
    out=
    for _ in $(seq 1200); do
        out=$(psql_ $db -F ' ' -c "SELECT round(extract(epoch FROM r.completed_at - to_timestamp($killed))::numeric, 1), r.status,
                (SELECT round(extract(epoch FROM min(n.started_at) - to_timestamp($killed))::numeric, 1) FROM housekeeper_runs n
                 WHERE n.task_name = 'slow' AND n.id > r.id AND n.status IN ('running', 'success'))
            FROM housekeeper_runs r WHERE r.id = $id AND r.status <> 'running'")
        [ -n "$(echo "$out" | awk '{print $3}')" ] && break
        sleep 0.1
    done
    read -r detected status next <<< "$out"
    [ -n "${next:-}" ] || { echo "no failover of run $id within 120 s: $out" >&2; exit 1; }
}

fresh_db
declare -a f_detect f_next
for i in 1 2 3; do start "f$i" "$work/tasks" HOUSEKEEPER_SHUTDOWN_GRACE=1s; done
for i in 1 2 3; do ready "f$i" 1; done
killed=$(now)
for k in $(seq "$rounds"); do
    failover "$killed"
    echo "failover round $k: killed $victim; its run recorded $status after $detected s; the next run started on another replica after $next s"
    f_detect+=("$detected"); f_next+=("$next")
    if [ "$k" -lt "$rounds" ]; then start "$victim" "$work/tasks" HOUSEKEEPER_SHUTDOWN_GRACE=1s; ready "$victim" 1; fi
done
stop_all

fresh_db
start s1 "$work/tasks" HOUSEKEEPER_SHUTDOWN_GRACE=1s
ready s1 1
failover "$(now)" restart
s_detect=$detected s_next=$next
echo "one replica, killed and started again at once: its run recorded $status after $detected s; the next run started after $next s"
stop_all

mm() { printf '%s\n' "$@" | sort -n | awk '{a[NR] = $1} END {printf "%s (%s–%s)", a[int((NR + 1) / 2)], a[1], a[NR]}'; }
echo
printf '| %s | %s | %s | %s |\n' "failover after kill -9" "1 replica, restarted at once" "3 replicas, median of $rounds (range)" "target"
printf '| %s | %s | %s | %s |\n' "---" "---" "---" "---"
printf '| %s | %s | %s | %s |\n' "run recorded interrupted (s)" "$s_detect" "$(mm "${f_detect[@]}")" "≤ 20 s"
printf '| %s | %s | %s | %s |\n' "next run of the task starts (s)" "$s_next" "$(mm "${f_next[@]}")" ""
