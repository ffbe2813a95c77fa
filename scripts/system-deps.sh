#!/usr/bin/env bash
# System packages the build needs beyond rustup: libclang, for the bindgen
# step of libpg_query (PostgreSQL's parser, which checks task SQL). Installs
# it with apt-get when missing (as root, or through sudo); otherwise says
# exactly what to run.
set -euo pipefail

have_libclang() {
    [ -n "${LIBCLANG_PATH:-}" ] && return 0
    # libclang itself (libclang.so*, libclang-14.so*), not libclang-cpp,
    # which other packages bring and bindgen cannot use.
    compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null ||
        compgen -G '/usr/lib/*/libclang-[0-9]*.so*' >/dev/null ||
        compgen -G '/usr/lib/*/libclang.so*' >/dev/null
}

have_libclang && exit 0
if command -v apt-get >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq libclang-dev
    elif command -v sudo >/dev/null; then
        sudo apt-get update -qq && sudo apt-get install -y -qq libclang-dev
    fi
fi
have_libclang && exit 0
echo "libclang is missing: the build needs it for PostgreSQL's parser (libpg_query)." >&2
echo "Install it, e.g. on Debian or Ubuntu: sudo apt-get install libclang-dev" >&2
echo "or point LIBCLANG_PATH at the directory that holds libclang.so." >&2
exit 1
