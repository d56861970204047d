#!/usr/bin/env bash
# Sluice's single test command: fmt check, clippy, and the full test suite
# against a real PostgreSQL.
#
# PostgreSQL selection (first match wins):
#   1. SLUICE_TEST_PG_URL, used as is;
#   2. DATABASE_URL, if it is a postgres:// or postgresql:// URL;
#   3. a throwaway cluster started here (installing the `postgresql` Debian
#      package first when no server binaries are found and we are root),
#      stopped and deleted on exit.
# The tests create their own databases on that server, so the URL must be a
# superuser's. For a throwaway cluster the script also exports
# SLUICE_TEST_PG_BIN / SLUICE_TEST_PG_DATA / SLUICE_TEST_PG_RUNAS so a test
# can stop and restart the server to simulate an outage.
#
# Extra arguments are passed to `cargo test --all-targets`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice-target}"

banner() {
    printf '\n==> %s\n' "$*"
}

die() {
    printf 'scripts/test.sh: error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------

PG_TMP=""
PG_BIN=""
PG_DATA=""
PG_RUNAS=""

# Run a command as the PostgreSQL OS user (root may not run initdb/postgres),
# from a working directory that user can read.
as_pg() {
    if [[ -n "$PG_RUNAS" ]]; then
        (cd "$PG_TMP" && runuser -u "$PG_RUNAS" -- "$@")
    else
        (cd "$PG_TMP" && "$@")
    fi
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$PG_DATA" && -f "$PG_DATA/postmaster.pid" ]]; then
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    if [[ -n "$PG_TMP" && -d "$PG_TMP" ]]; then
        rm -rf -- "$PG_TMP" || true
    fi
    exit "$rc"
}

has_server_bins() {
    [[ -x "$1/pg_ctl" && -x "$1/initdb" && -x "$1/postgres" ]]
}

# Prints the directory holding pg_ctl, initdb and postgres, or fails.
find_pg_bin() {
    local p dir
    if p="$(command -v pg_ctl 2>/dev/null)"; then
        # Prefer the real install directory when PATH holds symlinks to it.
        for dir in "$(dirname "$(readlink -f "$p")")" "$(dirname "$p")"; do
            if has_server_bins "$dir"; then
                printf '%s\n' "$dir"
                return 0
            fi
        done
    fi
    # Debian/Ubuntu layout; highest major version first.
    while IFS= read -r dir; do
        if has_server_bins "$dir"; then
            printf '%s\n' "$dir"
            return 0
        fi
    done < <(compgen -G '/usr/lib/postgresql/*/bin' | sort -rV)
    return 1
}

free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
        return
    fi
    local port
    for _ in $(seq 1 100); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            printf '%s\n' "$port"
            return
        fi
    done
    die "could not find a free TCP port on 127.0.0.1"
}

start_throwaway_pg() {
    if ! PG_BIN="$(find_pg_bin)"; then
        if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
            banner "PostgreSQL server binaries not found; installing the postgresql package"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update
            apt-get install -y postgresql
        fi
        PG_BIN="$(find_pg_bin)" || die "PostgreSQL server binaries (pg_ctl, initdb, postgres) not found on PATH or in /usr/lib/postgresql/*/bin. Install PostgreSQL (e.g. 'apt-get install postgresql') or set SLUICE_TEST_PG_URL to a superuser URL of a running server."
    fi

    if [[ "$(id -u)" -eq 0 ]]; then
        PG_RUNAS=postgres
        if ! id -u "$PG_RUNAS" >/dev/null 2>&1; then
            useradd --system --user-group --no-create-home \
                --home-dir /nonexistent --shell /usr/sbin/nologin "$PG_RUNAS"
        fi
        # Under /tmp so the postgres user can reach it whatever TMPDIR is.
        PG_TMP="$(mktemp -d /tmp/sluice-pg.XXXXXX)"
        chown "$PG_RUNAS" "$PG_TMP"
    else
        PG_TMP="$(mktemp -d "${TMPDIR:-/tmp}/sluice-pg.XXXXXX")"
    fi
    PG_DATA="$PG_TMP/data"
    local sock="$PG_TMP/sock" log="$PG_TMP/postgres.log"
    as_pg mkdir -m 0700 "$sock"

    banner "Starting a throwaway PostgreSQL cluster ($PG_BIN) in $PG_TMP"
    if ! as_pg "$PG_BIN/initdb" -D "$PG_DATA" -A trust -U postgres --no-sync -E UTF8 \
        >"$PG_TMP/initdb.log" 2>&1; then
        cat "$PG_TMP/initdb.log" >&2
        die "initdb failed"
    fi

    local port started="" attempt
    for attempt in 1 2 3 4 5; do
        port="$(free_port)"
        # Also written to the config so a plain `pg_ctl -D DATA start` (used by
        # the outage test to restart the server) comes back on the same port.
        # pg_ctl -w reads the port from there too.
        as_pg tee "$PG_DATA/sluice_test.conf" >/dev/null <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$sock'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
CONF
        if [[ "$attempt" -eq 1 ]]; then
            printf "include_if_exists = 'sluice_test.conf'\n" | as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null
        fi
        if as_pg "$PG_BIN/pg_ctl" -w -D "$PG_DATA" -l "$log" \
            -o "-p $port -k $sock -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
            start >/dev/null; then
            started=1
            break
        fi
        printf 'PostgreSQL failed to start on port %s (attempt %s)\n' "$port" "$attempt" >&2
    done
    if [[ -z "$started" ]]; then
        echo "----- tail of $log -----" >&2
        tail -n 50 "$log" >&2 || true
        echo "------------------------" >&2
        die "could not start the throwaway PostgreSQL server"
    fi

    export SLUICE_TEST_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
    export SLUICE_TEST_PG_BIN="$PG_BIN"
    export SLUICE_TEST_PG_DATA="$PG_DATA"
    export SLUICE_TEST_PG_RUNAS="$PG_RUNAS"
}

print_pg_version() {
    local psql="" v
    if [[ -n "$PG_BIN" && -x "$PG_BIN/psql" ]]; then
        psql="$PG_BIN/psql"
    elif command -v psql >/dev/null 2>&1; then
        psql="$(command -v psql)"
    fi
    if [[ -n "$psql" ]]; then
        if v="$("$psql" "$SLUICE_TEST_PG_URL" -XtAc 'select version()' 2>&1)"; then
            printf 'PostgreSQL server: %s\n' "$v"
        else
            printf 'PostgreSQL server: could not query the version: %s\n' "$v" >&2
        fi
    elif [[ -n "$PG_BIN" ]]; then
        printf 'PostgreSQL server: %s\n' "$("$PG_BIN/postgres" --version)"
    else
        printf 'PostgreSQL server: version unknown (no psql to ask)\n'
    fi
}

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

banner "PostgreSQL"
if [[ -n "${SLUICE_TEST_PG_URL:-}" ]]; then
    echo "Using SLUICE_TEST_PG_URL from the environment"
elif [[ "${DATABASE_URL:-}" == postgres* ]]; then
    echo "Using DATABASE_URL from the environment"
    export SLUICE_TEST_PG_URL="$DATABASE_URL"
else
    start_throwaway_pg
fi
export SLUICE_TEST_PG_URL
print_pg_version
echo "CARGO_TARGET_DIR=$CARGO_TARGET_DIR"

# ---------------------------------------------------------------------------
# Operations kit and browser: promtool (Debian's prometheus package), chromium (Debian's
# package) and Python packages in a private venv (the OpenAI SDK, Playwright), installed
# here when missing; then the deploy kit is checked (scripts/check_deploy.py). The Rust
# tests use them too (`promtool check metrics`, the SDK, the browser).
# ---------------------------------------------------------------------------

# Installs Debian package $2 (as root) when command $1 is missing; fails naming it
# otherwise.
ensure_debian_package() {
    local cmd="$1" package="$2"
    if ! command -v "$cmd" >/dev/null 2>&1 && [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        banner "$cmd not found; installing the $package package"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update
        apt-get install -y --no-install-recommends "$package"
    fi
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd not found: install Debian's $package package (as root: 'apt-get install $package')"
}

# The venv is keyed by the requirements file, so a changed pin gets a fresh venv.
ensure_venv() {
    local req="scripts/requirements-test.txt" key
    key="$(sha256sum "$req" | cut -c1-12)"
    VENV="${XDG_CACHE_HOME:-$HOME/.cache}/sluice-venv-$key"
    # `.complete` is written last: a venv cut short by a failed install is made again.
    if [[ ! -f "$VENV/.complete" ]]; then
        banner "Creating the test venv ($VENV)"
        command -v python3 >/dev/null 2>&1 || die "python3 not found"
        rm -rf "$VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$req"
        touch "$VENV/.complete"
    fi
    export PATH="$VENV/bin:$PATH"
}

banner "Operations kit and browser"
ensure_debian_package promtool prometheus
# Debian's chromium, for the status page's browser test (tests/ui/).
ensure_debian_package chromium chromium
export SLUICE_TEST_CHROMIUM="$(command -v chromium)"
ensure_venv
promtool --version 2>&1 | head -n 1
python scripts/check_deploy.py

# ---------------------------------------------------------------------------
# Rust
# ---------------------------------------------------------------------------

banner "cargo fmt --all -- --check"
cargo fmt --all -- --check

# Clippy and the test build share one compilation: clippy-driver compiles the crate's own
# targets (linting them with -D warnings) while cargo builds the tests, so the
# dependencies are built once, with code, instead of once for `cargo clippy` (metadata
# only) and again for `cargo test`. Same lints as `cargo clippy --all-targets -- -D
# warnings`.
CLIPPY_DRIVER="$(command -v clippy-driver 2>/dev/null || true)"
if [[ -z "$CLIPPY_DRIVER" ]]; then
    CLIPPY_DRIVER="$(rustc --print sysroot)/bin/clippy-driver"
fi
[[ -x "$CLIPPY_DRIVER" ]] || die "clippy-driver not found: install the clippy component ('rustup component add clippy')"
export RUSTC_WORKSPACE_WRAPPER="$CLIPPY_DRIVER"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"

banner "clippy (-D warnings) and the test build: cargo test --all-targets --no-run"
cargo test --all-targets --no-run

# The test run's output passes through as it comes; at the end comes one line per test
# binary, the totals, and the name of every failed test, so a failure deep in a long log
# is not missed. The script's status stays cargo's (pipefail).
summarize_tests() {
    awk '
        { print; fflush() }
        /^ *Running / {
            target = $0
            sub(/^ *Running /, "", target)
            sub(/ \(.*$/, "", target)
        }
        /^test result: / {
            line = $0
            n = split(line, parts, /[;.] /)
            p = f = i = 0
            for (k = 1; k <= n; k++) {
                if (parts[k] ~ / passed$/) { p = parts[k] + 0 }
                if (parts[k] ~ / failed$/) { f = parts[k] + 0 }
                if (parts[k] ~ / ignored$/) { i = parts[k] + 0 }
            }
            time = line
            sub(/^.*finished in /, "", time)
            rows[++nrows] = sprintf("  %-40s %7d %7d %8d %10s", target, p, f, i, time)
            tp += p; tf += f; ti += i
        }
        /^test .* \.\.\. FAILED$/ {
            name = $0
            sub(/^test /, "", name)
            sub(/ \.\.\. FAILED$/, "", name)
            failed[++nfailed] = name
        }
        END {
            printf "\n==> Test summary\n"
            if (nrows == 0) {
                print "  no test results (the build or a test binary failed before reporting)"
                exit
            }
            printf "  %-40s %7s %7s %8s %10s\n", "test binary", "passed", "failed", "ignored", "time"
            for (k = 1; k <= nrows; k++) print rows[k]
            printf "  %-40s %7d %7d %8d\n", "total", tp, tf, ti
            for (k = 1; k <= nfailed; k++) print "  FAILED: " failed[k]
        }
    '
}

banner "cargo test --all-targets $*"
cargo test --all-targets "$@" 2>&1 | summarize_tests
