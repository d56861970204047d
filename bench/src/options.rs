//! What a run of the harness is asked to do: the command-line options, the sizes of each
//! scenario in a full and a quick run, and the shape each scenario has in both.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "sluice-bench",
    about = "Benchmark harness for Sluice (see BENCHMARKS.md)"
)]
pub struct Cli {
    /// Smaller N and shorter steps: the whole run in under two minutes.
    #[arg(long)]
    pub quick: bool,
    /// The `sluice` binary to run (a release build).
    #[arg(long)]
    pub sluice_bin: PathBuf,
    /// A superuser URL of the PostgreSQL server to use (databases are created on it).
    #[arg(long)]
    pub pg_url: String,
    /// Comma-separated scenarios to run (default: all but styles): idle, drain, steady,
    /// latency, overhead, goodput, live, peers, and styles (the rate-limit styles, about
    /// 5½ minutes on their own, run only when named).
    #[arg(long)]
    pub only: Option<String>,
    /// Runs in the drain (default 100,000; 20,000 with --quick).
    #[arg(long)]
    pub n: Option<u64>,
    /// Requests in flight during bulk enqueues.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// `dispatch.slots` of the server (all scenarios but the drain and live-first).
    #[arg(long, default_value_t = 1000)]
    pub slots: usize,
    /// `dispatch.slots` of the server in the drain (a zero-latency provider needs many
    /// attempts in flight to keep the claim and completion statements busy).
    #[arg(long, default_value_t = 4000)]
    pub drain_slots: usize,
    #[arg(long, default_value_t = 1000)]
    pub claim_batch: usize,
    #[arg(long, default_value_t = 1000)]
    pub complete_batch: usize,
    #[arg(long, default_value_t = 1000)]
    pub enqueue_batch: usize,
    /// `database.max_connections` of the server.
    #[arg(long, default_value_t = 16)]
    pub max_connections: u32,
    /// `SLUICE_LOG` of the server.
    #[arg(long, default_value = "warn")]
    pub server_log: String,
    /// The shared/bench-peers scripts; the peers are skipped without it.
    #[arg(long)]
    pub peers_dir: Option<PathBuf>,
    /// node_modules holding graphile-worker, pg-boss and pg.
    #[arg(long)]
    pub peers_node_path: Option<PathBuf>,
    /// Record the peers as not run, with this reason.
    #[arg(long)]
    pub peers_skip: Option<String>,
    /// Jobs in the peers' drains (default: the same N as Sluice's drain).
    #[arg(long)]
    pub peer_n: Option<u64>,
    /// Runs per peer configuration (each figure is their median).
    #[arg(long)]
    pub peer_runs: Option<u32>,
    /// Where to write the JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where to write the markdown table too.
    #[arg(long)]
    pub md: Option<PathBuf>,
    /// A markdown file (BENCHMARKS.md) whose rate-limit styles table is rewritten, between
    /// its markers, when the styles ran.
    #[arg(long)]
    pub doc: Option<PathBuf>,
    /// Kept for the record in the JSON: how the binary was built.
    #[arg(long, default_value = "")]
    pub build_note: String,
}

impl Cli {
    /// Whether `--only` selects this scenario; without it, every scenario runs.
    pub fn wants(&self, name: &str) -> bool {
        self.only.is_none() || self.names(name)
    }

    /// Whether `--only` names this scenario: for those that run only when asked for.
    pub fn names(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_some_and(|o| o.split(',').any(|x| x.trim() == name))
    }

    /// The run's mode as the report names it.
    pub fn mode(&self) -> &'static str {
        if self.quick { "quick" } else { "full" }
    }
}

/// How much each scenario does. A quick run is smaller and shorter so that the whole bench
/// ends in under two minutes; the options that set a size override both.
pub struct Sizes {
    /// Runs in Sluice's drain.
    pub drain_runs: u64,
    /// How long each offered rate of the steady state is held.
    pub steady_step: Duration,
    /// Measured probes of the enqueue → start latency, and of graphile-worker's.
    pub latency_samples: usize,
    /// Probes sent before the measured ones.
    pub latency_warmup: usize,
    /// How long each offered rate of the dispatch overhead is held.
    pub overhead_step: Duration,
    /// The window over which rate-limit goodput is counted.
    pub goodput_window: Duration,
    /// Live probes on the idle server in the live-first scenario.
    pub live_idle_probes: usize,
    /// Background runs in the live-first flood.
    pub live_flood: u64,
    /// Runs per peer configuration.
    pub peer_runs: u32,
    /// Jobs in the peers' drains.
    pub peer_drain_jobs: u64,
    /// Probes of pg-boss's latency; none in a quick run, as pg-boss picks up by polling
    /// every 0.5 s and each probe takes that long.
    pub pgboss_latency_samples: usize,
    /// The whole run is expected to end within this.
    pub run_time_budget_secs: f64,
}

impl Sizes {
    pub fn for_run(cli: &Cli) -> Sizes {
        let quick = cli.quick;
        let secs =
            |quick_secs, full_secs| Duration::from_secs(by_mode(quick, quick_secs, full_secs));
        let drain_runs = cli.n.unwrap_or(by_mode(quick, 20_000, 100_000));
        Sizes {
            drain_runs,
            steady_step: secs(3, 6),
            latency_samples: by_mode(quick, 300, 1000),
            latency_warmup: by_mode(quick, 50, 100),
            overhead_step: secs(3, 10),
            goodput_window: secs(15, 60),
            live_idle_probes: by_mode(quick, 100, 200),
            live_flood: by_mode(quick, 5_000, 10_000),
            peer_runs: cli.peer_runs.unwrap_or(by_mode(quick, 1, 3)),
            peer_drain_jobs: cli.peer_n.unwrap_or(drain_runs),
            pgboss_latency_samples: by_mode(quick, 0, 100),
            run_time_budget_secs: by_mode(quick, 120.0, 600.0),
        }
    }
}

fn by_mode<T>(quick: bool, quick_size: T, full_size: T) -> T {
    if quick { quick_size } else { full_size }
}

/// Requests the steady state's producer keeps open at most.
pub const STEADY_MAX_IN_FLIGHT: usize = 1024;
/// The offered rates (runs/s) of the dispatch overhead.
pub const OVERHEAD_RATES: [f64; 3] = [100.0, 500.0, 1000.0];
/// The one offered rate whose overhead is judged against the targets.
pub const OVERHEAD_JUDGED_RATE: f64 = 500.0;
/// The fixed latency of the provider in the dispatch overhead.
pub const OVERHEAD_PROVIDER_LATENCY_MS: u64 = 50;
/// The stub provider's rate limit in the goodput scenario (requests per minute).
pub const GOODPUT_RPM: f64 = 600.0;
/// `dispatch.slots` of the server in the live-first scenario.
pub const LIVE_FIRST_SLOTS: usize = 100;
/// The sim provider's latency in the live-first scenario.
pub const LIVE_FIRST_PROVIDER_LATENCY_MS: u64 = 50;
