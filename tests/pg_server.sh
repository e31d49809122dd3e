#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback, for the multi-worker search test.
#
#   tests/pg_server.sh start DIR PORT   start a fresh server with its data in DIR; print its URL
#   tests/pg_server.sh stop DIR         stop it and delete DIR
#   tests/pg_server.sh install          only make sure PostgreSQL is installed
#
# When initdb is not found it installs Debian's postgresql with apt-get (root only). PostgreSQL
# refuses to run as root, so as root the server runs as the 'postgres' user.
set -euo pipefail

pg_bin() {
    if command -v initdb >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v initdb)")"
    else
        ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
    fi
}

install() {
    [ -n "$(pg_bin)" ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "PostgreSQL is not installed and cannot be (needs root and apt-get)" >&2
        return 3
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    [ -n "$(pg_bin)" ] || { echo "apt-get installed postgresql but initdb is still missing" >&2; return 3; }
}

owner() {  # the user the server runs as
    if [ "$(id -u)" = 0 ]; then
        id -u postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        echo postgres
    else
        id -un
    fi
}

as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
    local dir=$1 port=$2 bin
    install
    bin=$(pg_bin)
    mkdir -p "$dir"
    chown "$(owner)" "$dir"
    as_owner "$bin/initdb" -D "$dir/data" -U spikernel --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
        || { tail -n 5 "$dir/initdb.log" >&2; return 4; }
    # Loopback only, the socket inside DIR, no fsync: it lives for one test.
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
        -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir -c fsync=off" >/dev/null \
        || { tail -n 5 "$dir/server.log" >&2; return 5; }
    echo "postgresql://spikernel@127.0.0.1:$port/postgres"
}

stop() {
    local dir=$1
    [ -d "$dir/data" ] && as_owner "$(pg_bin)/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}

case "${1:-}" in
    install) install ;;
    start) start "$2" "$3" ;;
    stop) stop "$2" ;;
    *) echo "usage: $0 install | start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
