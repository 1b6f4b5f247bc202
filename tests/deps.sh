#!/bin/sh
# deps.sh — installs the Debian packages sparselab builds and tests with
# (DESIGN §12), only those missing. Runs apt-get as root (or through sudo).
# chromium and nodejs (the headless browser check of `sparselab report` in tests/cli/test_viz.sh)
# are optional: installed when apt can, and that check is skipped with a message when not.
set -eu
OPTIONAL="chromium nodejs"
PKGS="build-essential pkg-config liblua5.4-dev lua5.4 libsqlite3-dev sqlite3 libopenblas-dev libuv1-dev check
libsubunit-dev libedit-dev libgsl-dev libcjson-dev libpng-dev gnuplot-nox
libsentencepiece-dev libpcre2-dev python3-sentencepiece python3-regex python3-numpy"
# --fuzz: also clang (libFuzzer and its sanitizer runtimes), for make fuzz only.
[ "${1:-}" = --fuzz ] && PKGS="$PKGS clang"
missing=""
for p in $PKGS; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
optional=""
for p in $OPTIONAL; do
    dpkg -s "$p" >/dev/null 2>&1 || optional="$optional $p"
done
if [ -z "$missing$optional" ]; then
    echo "deps: all Debian packages present"
    exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
$SUDO apt-get update -qq || [ -z "$missing" ]
if [ -n "$missing" ]; then
    echo "deps: installing$missing"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
if [ -n "$optional" ]; then
    echo "deps: installing (optional)$optional"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $optional >/dev/null 2>&1 ||
        echo "deps: could not install$optional; the tests that need it are skipped"
fi
