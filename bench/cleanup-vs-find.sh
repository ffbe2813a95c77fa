#!/usr/bin/env bash
# cleanup-old-logs against `find DIR -name '*.log' -mtime +N -delete` on
# identical trees: FILES files (default 100000), half of them 60 days old,
# half 10 days, some non-matching; N = 30. Each tool runs on a freshly
# generated tree, ROUNDS times (default 5); the medians and their ratio are
# printed. Uses the release binary (built if missing).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
files=${FILES:-100000}
rounds=${ROUNDS:-5}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

[ -x "$root/target/release/housekeeper" ] || cargo build --release --quiet --bin housekeeper --manifest-path "$root/Cargo.toml"
[ -f "$root/target/tasks/cleanup-old-logs.wasm" ] || "$root/scripts/build-tasks.sh"
bin=$root/target/release/housekeeper

mkdir -p "$work/tasks"
cp "$root/target/tasks/cleanup-old-logs.wasm" "$work/tasks/"
cat > "$work/tasks/cleanup-old-logs.toml" <<TOML
[[grants.dirs]]
host = "$work/tree"
guest = "/logs"
mode = "rw"

[config]
max_age_days = 30
recursive = true
TOML

make_tree() {
    rm -rf "$work/tree"
    python3 - "$work/tree" "$files" <<'PY'
import os, sys, time
root, n = sys.argv[1], int(sys.argv[2])
now = time.time()
for d in range(100):
    os.makedirs(f"{root}/d{d:03}", exist_ok=True)
for i in range(n):
    name = f"{root}/d{i % 100:03}/f{i}." + ("txt" if i % 10 == 9 else "log")
    with open(name, "w") as f:
        f.write("x" * 64)
    age = 60 if i % 2 == 0 else 10
    t = now - age * 86400
    os.utime(name, (t, t))
PY
    sync
}

count() { find "$work/tree" -type f | wc -l; }

time_ms() {
    local start end
    start=$(date +%s%N)
    "$@" >/dev/null
    end=$(date +%s%N)
    echo $(( (end - start) / 1000000 ))
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

hk=() find_=()
for r in $(seq "$rounds"); do
    make_tree
    hk+=("$(time_ms "$bin" run cleanup-old-logs --tasks-dir "$work/tasks")")
    left_hk=$(count)
    make_tree
    find_+=("$(time_ms find "$work/tree" -name '*.log' -mtime +30 -delete)")
    left_find=$(count)
    if [ "$left_hk" != "$left_find" ]; then
        echo "mismatch: housekeeper left $left_hk files, find left $left_find" >&2
        exit 1
    fi
done
hk_med=$(printf '%s\n' "${hk[@]}" | median)
find_med=$(printf '%s\n' "${find_[@]}" | median)
echo "files: $files, rounds: $rounds, files left by each: $left_hk"
echo "housekeeper run cleanup-old-logs: median ${hk_med} ms (${hk[*]})"
echo "find -delete:                     median ${find_med} ms (${find_[*]})"
awk -v a="$hk_med" -v b="$find_med" 'BEGIN { printf "ratio (housekeeper / find): %.2f\n", a / b }'
