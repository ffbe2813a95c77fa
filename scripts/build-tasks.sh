#!/usr/bin/env bash
# Builds the guest crates in tasks/ for wasm32-wasip2 and puts each component
# at target/tasks/<task-name>.wasm (bundled tasks) or
# target/fixtures/<name>.wasm (test-only components).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}

rustup target add wasm32-wasip2 >/dev/null 2>&1 || rustup target list --installed | grep -qx wasm32-wasip2

cargo build --release --quiet --manifest-path "$root/tasks/Cargo.toml" --target wasm32-wasip2 --target-dir "$target_dir"

out=$target_dir/wasm32-wasip2/release
mkdir -p "$target_dir/tasks" "$target_dir/fixtures"
for manifest in "$root"/tasks/*/Cargo.toml "$root"/tasks/fixtures/*/Cargo.toml; do
    dir=$(dirname "$manifest")
    name=$(basename "$dir")
    [ "$name" = sdk ] && continue
    case "$dir" in
        */fixtures/*) dest=$target_dir/fixtures ;;
        *) dest=$target_dir/tasks ;;
    esac
    cp "$out/${name//-/_}.wasm" "$dest/$name.wasm"
done
echo "components in $target_dir/tasks and $target_dir/fixtures"
