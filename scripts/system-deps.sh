#!/usr/bin/env bash
# System packages beyond rustup. The build needs libclang, for the bindgen
# step of libpg_query (PostgreSQL's parser, which checks task SQL). With
# --tests, also libfaketime, which the cluster tests use to run a replica
# whose clock is an hour off, and pgbouncer, which the pooler tests start
# (a private one each) to run the store through transaction mode. Installs
# what is missing with apt-get (as root, or through sudo); otherwise says
# exactly what to run.
set -euo pipefail

tests=false
[ "${1:-}" = --tests ] && tests=true

have_libclang() {
    [ -n "${LIBCLANG_PATH:-}" ] && return 0
    # libclang itself (libclang.so*, libclang-14.so*), not libclang-cpp,
    # which other packages bring and bindgen cannot use.
    compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null ||
        compgen -G '/usr/lib/*/libclang-[0-9]*.so*' >/dev/null ||
        compgen -G '/usr/lib/*/libclang.so*' >/dev/null
}

# Where tests/tests/suite/cluster.rs looks for it.
have_libfaketime() {
    compgen -G '/usr/lib/*/faketime/libfaketimeMT.so.1' >/dev/null ||
        compgen -G '/usr/lib/faketime/libfaketimeMT.so.1' >/dev/null ||
        compgen -G '/usr/local/lib/faketime/libfaketimeMT.so.1' >/dev/null
}

# Where tests/tests/suite/pooler.rs looks for it (Debian installs it in
# /usr/sbin, which is not on every user's PATH).
have_pgbouncer() {
    command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ]
}

missing=()
have_libclang || missing+=(libclang-dev)
$tests && ! have_libfaketime && missing+=(faketime)
$tests && ! have_pgbouncer && missing+=(pgbouncer)
[ ${#missing[@]} = 0 ] && exit 0

if command -v apt-get >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq "${missing[@]}"
    elif command -v sudo >/dev/null; then
        sudo apt-get update -qq && sudo apt-get install -y -qq "${missing[@]}"
    fi
fi

status=0
if ! have_libclang; then
    echo "libclang is missing: the build needs it for PostgreSQL's parser (libpg_query)." >&2
    echo "Install it, e.g. on Debian or Ubuntu: sudo apt-get install libclang-dev" >&2
    echo "or point LIBCLANG_PATH at the directory that holds libclang.so." >&2
    status=1
fi
if $tests && ! have_libfaketime; then
    echo "libfaketime is missing: the tests run a replica whose clock is off with it." >&2
    echo "Install it, e.g. on Debian or Ubuntu: sudo apt-get install faketime" >&2
    status=1
fi
if $tests && ! have_pgbouncer; then
    echo "pgbouncer is missing: the tests run the store through it in transaction mode." >&2
    echo "Install it, e.g. on Debian or Ubuntu: sudo apt-get install pgbouncer" >&2
    status=1
fi
exit $status
