#!/usr/bin/env bash
# The whole test suite: builds the components and the host, then runs every
# test. CI runs exactly this (.ci/run).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

scripts/system-deps.sh --tests
# PostgreSQL for the tests that need a real one.
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
    if command -v pg_ctlcluster >/dev/null; then
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start
    fi
    for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi

# #[sqlx::test] makes a fresh database per test under this server.
export DATABASE_URL=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}

cargo fmt --all -- --check
cargo fmt --manifest-path tasks/Cargo.toml --all -- --check

scripts/build-tasks.sh

# The SDK's pure helpers, natively.
host_triple=$(rustc -vV | sed -n 's/^host: //p')
cargo test --quiet --manifest-path tasks/Cargo.toml -p housekeeper-sdk --target "$host_triple" --target-dir "$root/target"

cargo build --workspace --all-targets
cargo test --workspace

# The API against its own OpenAPI document (no 5xx, no schema violations).
scripts/schemathesis.sh
