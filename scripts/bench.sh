#!/usr/bin/env bash
# Sluice's benchmark: builds the server (release) and the harness (bench/, binary
# sluice-bench), starts a throwaway PostgreSQL with DEFAULT durability (fsync on,
# synchronous_commit on), installs the peers (graphile-worker 0.17.3, pg-boss 10.4.2) from
# the npm registry into a scratch folder, runs every scenario and the peers on that
# cluster, prints a markdown table and writes the JSON.
#
#   bash scripts/bench.sh            # full run (under 10 minutes once built)
#   bash scripts/bench.sh --quick    # under 2 minutes
#   bash scripts/bench.sh --only drain,latency   # any sluice-bench flags pass through
#   bash scripts/bench.sh --only styles   # the rate-limit styles alone (about 5½ minutes);
#                                         # rewrites their table in BENCHMARKS.md
#
# Scenarios: idle, drain, steady, latency, overhead, goodput, live, peers (all run by
# default) and styles (run only when named in --only).
#
# Environment:
#   CARGO_TARGET_DIR         where both crates are built
#                            (default ${XDG_CACHE_HOME:-$HOME/.cache}/sluice-bench-target,
#                            apart from the tests' target dir, so a running test suite
#                            does not hold the build lock)
#   SLUICE_BENCH_PG_URL      use this PostgreSQL (a superuser URL) instead of a throwaway one
#   SLUICE_BENCH_PEERS_DIR   the peers' scripts (default ../shared/bench-peers next to the
#                            checkout; set it when the checkout lives elsewhere)
#   SLUICE_BENCH_PEERS_NODE  scratch folder for the peers' npm packages
#                            (default /tmp/sluice-bench-peers; reused when present)
#   SLUICE_BENCH_NO_PEERS=1  do not run the peers
#   SLUICE_BENCH_OUT         JSON output (default bench/results/latest.json, or
#                            bench/results/quick.json with --quick, or
#                            bench/results/only-<scenarios>.json with --only, so a partial
#                            run never overwrites the full run's figures)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice-bench-target}"

banner() { printf '\n==> %s\n' "$*"; }
die() { printf 'scripts/bench.sh: error: %s\n' "$*" >&2; exit 1; }

QUICK=""; ONLY=""; prev=""
for a in "$@"; do
    [[ "$a" == "--quick" ]] && QUICK=1
    [[ "$prev" == "--only" ]] && ONLY="$a"
    [[ "$a" == --only=* ]] && ONLY="${a#--only=}"
    prev="$a"
done
if [[ -n "$QUICK" ]]; then
    RESULT=quick
elif [[ -n "$ONLY" ]]; then
    RESULT="only-${ONLY//,/-}"
else
    RESULT=latest
fi
OUT="${SLUICE_BENCH_OUT:-$ROOT/bench/results/$RESULT.json}"
DOC_ARGS=()
[[ -z "$QUICK" ]] && DOC_ARGS=(--doc "$ROOT/BENCHMARKS.md")

# ---------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------
banner "cargo build --release (server, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
cargo build --release --locked --bin sluice
banner "cargo build --release (bench/)"
cargo build --release --locked --manifest-path bench/Cargo.toml
SLUICE_BIN="$CARGO_TARGET_DIR/release/sluice"
BENCH_BIN="$CARGO_TARGET_DIR/release/sluice-bench"

# ---------------------------------------------------------------------------
# PostgreSQL: as scripts/test.sh, but with default durability
# ---------------------------------------------------------------------------
PG_TMP=""; PG_BIN=""; PG_DATA=""; PG_RUNAS=""
as_pg() {
    if [[ -n "$PG_RUNAS" ]]; then (cd "$PG_TMP" && runuser -u "$PG_RUNAS" -- "$@"); else (cd "$PG_TMP" && "$@"); fi
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$PG_DATA" && -f "$PG_DATA/postmaster.pid" ]]; then
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
    fi
    [[ -n "$PG_TMP" && -d "$PG_TMP" ]] && rm -rf -- "$PG_TMP"
    exit "$rc"
}
has_server_bins() { [[ -x "$1/pg_ctl" && -x "$1/initdb" && -x "$1/postgres" ]]; }
find_pg_bin() {
    local p dir
    if p="$(command -v pg_ctl 2>/dev/null)"; then
        for dir in "$(dirname "$(readlink -f "$p")")" "$(dirname "$p")"; do
            if has_server_bins "$dir"; then printf '%s\n' "$dir"; return 0; fi
        done
    fi
    while IFS= read -r dir; do
        if has_server_bins "$dir"; then printf '%s\n' "$dir"; return 0; fi
    done < <(compgen -G '/usr/lib/postgresql/*/bin' | sort -rV)
    return 1
}
free_port() {
    python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
start_throwaway_pg() {
    if ! PG_BIN="$(find_pg_bin)"; then
        if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
            banner "PostgreSQL server binaries not found; installing the postgresql package"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update && apt-get install -y postgresql
        fi
        PG_BIN="$(find_pg_bin)" || die "PostgreSQL server binaries not found; install postgresql or set SLUICE_BENCH_PG_URL"
    fi
    if [[ "$(id -u)" -eq 0 ]]; then
        PG_RUNAS=postgres
        id -u "$PG_RUNAS" >/dev/null 2>&1 || useradd --system --user-group --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin "$PG_RUNAS"
        PG_TMP="$(mktemp -d /tmp/sluice-bench-pg.XXXXXX)"
        chown "$PG_RUNAS" "$PG_TMP"
    else
        PG_TMP="$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench-pg.XXXXXX")"
    fi
    PG_DATA="$PG_TMP/data"
    local sock="$PG_TMP/sock" port
    as_pg mkdir -m 0700 "$sock"
    banner "Starting a throwaway PostgreSQL ($PG_BIN) with default durability in $PG_TMP"
    # No --no-sync and no fsync/synchronous_commit overrides: the durability the peers
    # were measured with. max_connections as the peers' run_all.sh sets it.
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -A trust -U postgres -E UTF8 >"$PG_TMP/initdb.log" 2>&1 \
        || { cat "$PG_TMP/initdb.log" >&2; die "initdb failed"; }
    for _ in 1 2 3 4 5; do
        port="$(free_port)"
        if as_pg "$PG_BIN/pg_ctl" -w -D "$PG_DATA" -l "$PG_TMP/postgres.log" \
            -o "-p $port -k $sock -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null; then
            export SLUICE_BENCH_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
            return 0
        fi
    done
    tail -n 30 "$PG_TMP/postgres.log" >&2 || true
    die "could not start the throwaway PostgreSQL server"
}

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -n "${SLUICE_BENCH_PG_URL:-}" ]]; then
    banner "Using SLUICE_BENCH_PG_URL from the environment"
else
    start_throwaway_pg
fi

# ---------------------------------------------------------------------------
# Peers: npm packages into a scratch folder (nothing of theirs is committed)
# ---------------------------------------------------------------------------
PEER_ARGS=()
PEERS_DIR="${SLUICE_BENCH_PEERS_DIR:-$ROOT/../shared/bench-peers}"
NODE_DIR="${SLUICE_BENCH_PEERS_NODE:-/tmp/sluice-bench-peers}"
if [[ -n "${SLUICE_BENCH_NO_PEERS:-}" ]]; then
    PEER_ARGS=(--peers-skip "SLUICE_BENCH_NO_PEERS is set")
elif [[ -n "$ONLY" && ",$ONLY," != *",peers,"* ]]; then
    PEER_ARGS=(--peers-skip "not selected by --only")
elif [[ ! -d "$PEERS_DIR" ]]; then
    PEER_ARGS=(--peers-skip "the peers' scripts ($PEERS_DIR) are missing")
elif ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    PEER_ARGS=(--peers-skip "node/npm not installed")
else
    banner "Peers: graphile-worker 0.17.3, pg-boss 10.4.2 in $NODE_DIR"
    mkdir -p "$NODE_DIR"
    if [[ ! -d "$NODE_DIR/node_modules/graphile-worker" || ! -d "$NODE_DIR/node_modules/pg-boss" ]]; then
        npm_log="$NODE_DIR/npm-install.log"
        if (cd "$NODE_DIR" && { [[ -f package.json ]] || npm init -y >/dev/null; } \
              && timeout 300 npm install --no-audit --no-fund graphile-worker@0.17.3 pg-boss@10.4.2 pg) >"$npm_log" 2>&1; then
            echo "installed"
        else
            reason="npm install failed (registry unreachable?): $(tail -n 3 "$npm_log" | tr '\n' ' ')"
            echo "$reason"
            PEER_ARGS=(--peers-skip "$reason")
        fi
    else
        echo "already installed"
    fi
    if [[ ${#PEER_ARGS[@]} -eq 0 ]]; then
        PEER_ARGS=(--peers-dir "$PEERS_DIR" --peers-node-path "$NODE_DIR/node_modules")
    fi
fi

# ---------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------
banner "sluice-bench $*"
"$BENCH_BIN" --sluice-bin "$SLUICE_BIN" --pg-url "$SLUICE_BENCH_PG_URL" \
    --out "$OUT" --md "${OUT%.json}.md" \
    --build-note "cargo build --release --locked ($(rustc --version))" \
    "${PEER_ARGS[@]}" "${DOC_ARGS[@]}" "$@"
