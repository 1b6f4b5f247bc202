#!/bin/sh
# deps.sh — installs the Debian packages sparselab builds and tests with
# (DESIGN §12), only those missing. Runs apt-get as root (or through sudo).
set -eu
PKGS="build-essential pkg-config liblua5.4-dev lua5.4 libsqlite3-dev sqlite3 libopenblas-dev libuv1-dev check
libsubunit-dev libedit-dev libgsl-dev libcjson-dev"
# --fuzz: also clang (libFuzzer and its sanitizer runtimes), for make fuzz only.
[ "${1:-}" = --fuzz ] && PKGS="$PKGS clang"
missing=""
for p in $PKGS; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -z "$missing" ]; then
    echo "deps: all Debian packages present"
    exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
echo "deps: installing$missing"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
