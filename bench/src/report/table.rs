//! The markdown table of a run: one row per headline figure with its target, the peers'
//! figures of the same run where they have one, and whether the target was met.

use serde_json::Value;

use super::Figures;
use crate::options::{Cli, GOODPUT_RPM, OVERHEAD_JUDGED_RATE, Sizes};

/// The targets of the benchmark issue.
const TARGET_LAT_P50: f64 = 1.25;
const TARGET_LAT_P99: f64 = 3.5;
const TARGET_OVH_P50: f64 = 2.0;
const TARGET_OVH_P99: f64 = 10.0;
const TARGET_GOODPUT: f64 = 0.95;
const TARGET_REFUSED: f64 = 0.05;
const TARGET_RSS_MIB: f64 = 50.0;
/// The faster peer's drain from shared/bench-peers (graphile-worker, 2 × 24, local queue),
/// used when the peers are not run.
const REFERENCE_PEER_DRAIN: f64 = 25_707.0;
/// The drain must be this many times as fast as the faster peer's.
const DRAIN_TARGET_TIMES_PEER: f64 = 2.0;

pub(super) struct Row {
    scenario: String,
    figure: String,
    target: String,
    peers: String,
    verdict: &'static str,
}

impl Row {
    /// A row that only reports a figure: no target, no peers' figure, no verdict.
    pub(super) fn figure_only(scenario: String, figure: String) -> Row {
        Row {
            scenario,
            figure,
            target: "—".into(),
            peers: "—".into(),
            verdict: "—",
        }
    }
}

/// What the table needs of the run besides the scenarios' figures.
pub struct TableContext<'a> {
    pub cli: &'a Cli,
    pub sizes: &'a Sizes,
    pub total_secs: f64,
}

/// The table in markdown, followed by a line for each scenario that failed.
pub fn markdown(figures: &Figures, run: &TableContext) -> String {
    let mut md = String::new();
    md.push_str(
        "| scenario | figure | target | peers (same run) | verdict |\n|---|---|---|---|---|\n",
    );
    for r in &rows(figures, run) {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.scenario, r.figure, r.target, r.peers, r.verdict
        ));
    }
    for (k, v) in &figures.results {
        if let Some(e) = v.get("error") {
            md.push_str(&format!("\nScenario `{k}` failed: {e}\n"));
        }
    }
    md
}

fn rows(figures: &Figures, run: &TableContext) -> Vec<Row> {
    let res = Value::Object(figures.results.clone());
    let peers = Value::Object(figures.peers.clone());
    let mut rows: Vec<Row> = Vec::new();
    if let Some(d) = res.get("drain") {
        drain_rows(&mut rows, d, &peers, run);
    }
    if let Some(s) = res.get("steady") {
        rows.push(steady_row(s));
    }
    if let Some(l) = res.get("latency") {
        latency_rows(&mut rows, l, &peers);
    }
    if let Some(o) = res.get("overhead") {
        overhead_rows(&mut rows, o);
    }
    if let Some(g) = res.get("goodput") {
        goodput_rows(&mut rows, g);
    }
    if let Some(l) = res.get("live") {
        live_rows(&mut rows, l);
    }
    if let Some(i) = res.get("idle") {
        rows.push(idle_row(i, res.get("drain"), &peers));
    }
    super::tenancy::tenancy_rows(&mut rows, &res);
    rows.push(run_time_row(run));
    rows
}

/// The peers' drains (jobs/s): graphile-worker's and pg-boss's, where they ran.
pub fn peer_drains(peers: &Value) -> (Option<f64>, Option<f64>) {
    (
        f(peers, &["graphile_drain", "summary", "medianJobsPerSec"]),
        f(peers, &["pgboss_drain", "summary", "medianJobsPerSec"]),
    )
}

fn drain_rows(rows: &mut Vec<Row>, d: &Value, peers: &Value, run: &TableContext) {
    let (gw_drain, pgb_drain) = peer_drains(peers);
    let faster_peer = match (gw_drain, pgb_drain) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let rps = f(d, &["runs_per_sec"]);
    let (target, basis) = match faster_peer {
        Some(p) => (DRAIN_TARGET_TIMES_PEER * p, "faster peer, this run"),
        None => (
            DRAIN_TARGET_TIMES_PEER * REFERENCE_PEER_DRAIN,
            "reference figure",
        ),
    };
    rows.push(Row {
        scenario: "1. Drain, zero-latency provider".into(),
        figure: rps.map_or("error".into(), |r| {
            format!(
                "{} runs/s (N = {}, {} slots; T0 to all finished: {}/s)",
                fmt_int(r),
                fmt_int(run.sizes.drain_runs as f64),
                fmt_int(run.cli.drain_slots as f64),
                fmt_int(f(d, &["runs_per_sec_t0_to_observed"]).unwrap_or(0.0))
            )
        }),
        target: format!(
            "≥ {} runs/s ({DRAIN_TARGET_TIMES_PEER} × {basis})",
            fmt_int(target)
        ),
        peers: format!(
            "graphile-worker {} · pg-boss {} (median of {}, from \"go\" to empty)",
            gw_drain.map_or("not run".into(), |x| format!("{}/s", fmt_int(x))),
            pgb_drain.map_or("not run".into(), |x| format!("{}/s", fmt_int(x))),
            run.sizes.peer_runs,
        ),
        verdict: verdict(rps.map(|r| r >= target)),
    });
    if let Some(e) = d.get("enqueue") {
        rows.push(Row {
            peers: "peers insert in bulk by SQL".into(),
            ..Row::figure_only(
                "1. Bulk enqueue over HTTP (not timed in the drain)".into(),
                format!(
                    "{} runs/s, {} in flight",
                    fmt_int(f(e, &["runs_per_sec"]).unwrap_or(0.0)),
                    run.cli.concurrency
                ),
            )
        });
    }
}

fn steady_row(s: &Value) -> Row {
    let figure = match (
        f(s, &["highest_sustained_rate"]),
        f(s, &["lowest_unsustained_rate"]),
    ) {
        (Some(b), Some(w)) => format!("{} runs/s sustained ({} not)", fmt_int(b), fmt_int(w)),
        (Some(b), None) => format!("{} runs/s sustained", fmt_int(b)),
        (None, Some(w)) => format!("none sustained ({} not)", fmt_int(w)),
        _ => "error".into(),
    };
    Row::figure_only("1. Steady state, zero-latency provider".into(), figure)
}

fn latency_rows(rows: &mut Vec<Row>, l: &Value, peers: &Value) {
    let peer_lat = |key: &str| {
        let p = |q: &str| f(peers, &[key, "summary", q, "median"]);
        match (p("p50"), p("p95"), p("p99")) {
            (Some(a), Some(b), Some(c)) => Some(format!("{a:.2} / {b:.2} / {c:.2}")),
            _ => None,
        }
    };
    let peers_figure = format!(
        "graphile-worker {} · pg-boss {}",
        peer_lat("graphile_latency").map_or("not run".into(), |x| x + " ms"),
        peer_lat("pgboss_latency").map_or("not run".into(), |x| x + " ms")
    );
    let row = |key: &str, label: &str, judge: bool| {
        let (p50, p95, p99) = (
            f(l, &[key, "p50"]),
            f(l, &[key, "p95"]),
            f(l, &[key, "p99"]),
        );
        Row {
            scenario: format!("2. Enqueue → start p50 / p95 / p99, {label}"),
            figure: format!("{} / {} / {} ms", ms(p50), ms(p95), ms(p99)),
            target: format!("p50 ≤ {TARGET_LAT_P50} ms, p99 ≤ {TARGET_LAT_P99} ms"),
            peers: peers_figure.clone(),
            verdict: if judge {
                verdict(
                    p50.zip(p99)
                        .map(|(a, b)| a <= TARGET_LAT_P50 && b <= TARGET_LAT_P99),
                )
            } else {
                "—"
            },
        }
    };
    rows.push(row(
        "request_at_provider_ms",
        "the request's arrival at the provider",
        true,
    ));
    rows.push(row(
        "db_ms",
        "start stamp in the database (taken before the commit that starts the run)",
        false,
    ));
    rows.push(row("sse_ms", "`started` event at the client", true));
}

fn overhead_rows(rows: &mut Vec<Row>, o: &Value) {
    for r in o["rates"].as_array().cloned().unwrap_or_default() {
        let rate = f(&r, &["offered_rate"]).unwrap_or(0.0);
        for (key, label) in [("overhead_db_ms", "db"), ("overhead_sse_ms", "events")] {
            let (p50, p99) = (f(&r, &[key, "p50"]), f(&r, &[key, "p99"]));
            let scenario = format!(
                "3. Dispatch overhead p50 / p99 at {} runs/s ({label})",
                fmt_int(rate)
            );
            let figure = format!("{} / {} ms", ms(p50), ms(p99));
            if rate != OVERHEAD_JUDGED_RATE {
                rows.push(Row::figure_only(scenario, figure));
                continue;
            }
            rows.push(Row {
                target: format!("p50 ≤ {TARGET_OVH_P50} ms, p99 ≤ {TARGET_OVH_P99} ms"),
                verdict: verdict(
                    p50.zip(p99)
                        .map(|(a, b)| a <= TARGET_OVH_P50 && b <= TARGET_OVH_P99),
                ),
                ..Row::figure_only(scenario, figure)
            });
        }
    }
}

fn goodput_rows(rows: &mut Vec<Row>, g: &Value) {
    let (share, refused, per_min) = (
        f(g, &["goodput_share_of_r"]),
        f(g, &["refused_share"]),
        f(g, &["completions_per_min"]),
    );
    rows.push(Row {
        scenario: format!("4. Rate-limit goodput, R = {GOODPUT_RPM}/min"),
        figure: format!(
            "{} /min = {:.1}% of R, {:.1}% refused",
            per_min.map_or("n/a".into(), |x| format!("{x:.0}")),
            share.unwrap_or(f64::NAN) * 100.0,
            refused.unwrap_or(f64::NAN) * 100.0
        ),
        target: format!(
            "≥ {}% of R, ≤ {}% refused",
            TARGET_GOODPUT * 100.0,
            TARGET_REFUSED * 100.0
        ),
        peers: "—".into(),
        verdict: verdict(
            share
                .zip(refused)
                .map(|(s, r)| s >= TARGET_GOODPUT && r <= TARGET_REFUSED),
        ),
    });
    if let Some(h) = g.get("second_half") {
        rows.push(Row::figure_only(
            "4. Rate-limit goodput, second half of the window".into(),
            format!(
                "{:.1}% of R, {:.1}% refused",
                f(h, &["goodput_share_of_r"]).unwrap_or(f64::NAN) * 100.0,
                f(h, &["refused_share"]).unwrap_or(f64::NAN) * 100.0
            ),
        ));
    }
}

fn live_rows(rows: &mut Vec<Row>, l: &Value) {
    let flood = format!(
        "under a flood of {} background runs ({} admitted)",
        fmt_int(f(l, &["flood_background_runs"]).unwrap_or(0.0)),
        fmt_int(f(l, &["flood_admitted"]).unwrap_or(0.0))
    );
    for (key, label) in [("idle", "idle".to_string()), ("under_flood", flood)] {
        rows.push(Row::figure_only(
            format!("5. Live queue wait p50 / p99, {label}"),
            format!(
                "{} / {} ms",
                ms(f(l, &[key, "queue_wait_db_ms", "p50"])),
                ms(f(l, &[key, "queue_wait_db_ms", "p99"]))
            ),
        ));
    }
}

fn idle_row(i: &Value, drain: Option<&Value>, peers: &Value) -> Row {
    let rss = f(i, &["rss_mib"]);
    let peer_rss = |k: &str| f(peers, &[k, "summary", "medianPeakRssMB"]);
    Row {
        scenario: "Idle server RSS".into(),
        figure: match (rss, drain.and_then(|d| f(d, &["server_peak_rss_mib"]))) {
            (Some(x), Some(p)) => format!("{x:.1} MiB (peak in the drain: {p:.1} MiB)"),
            (Some(x), None) => format!("{x:.1} MiB"),
            _ => "n/a".into(),
        },
        target: format!("≤ {TARGET_RSS_MIB} MB"),
        peers: match (peer_rss("graphile_drain"), peer_rss("pgboss_drain")) {
            (None, None) => "not run".into(),
            (g, b) => format!(
                "peak RSS per worker process in their drains: graphile-worker {} · pg-boss {}",
                g.map_or("n/a".into(), |x| format!("{x:.0} MB")),
                b.map_or("n/a".into(), |x| format!("{x:.0} MB"))
            ),
        },
        verdict: verdict(rss.map(|x| x <= TARGET_RSS_MIB)),
    }
}

fn run_time_row(run: &TableContext) -> Row {
    let budget = run.sizes.run_time_budget_secs;
    Row {
        scenario: format!(
            "7. Bench run time ({})",
            if run.cli.quick { "--quick" } else { "default" }
        ),
        figure: format!("{:.0} s", run.total_secs),
        target: format!("< {budget:.0} s"),
        peers: "—".into(),
        verdict: verdict(Some(run.total_secs < budget)),
    }
}

fn verdict(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "pass",
        Some(false) => "**miss**",
        None => "—",
    }
}

/// The number at a path of keys in a JSON value.
pub(super) fn f(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

/// A whole number with thousands separators: 33905.4 → "33,905".
pub(super) fn fmt_int(x: f64) -> String {
    let s = format!("{:.0}", x);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

pub(super) fn ms(x: Option<f64>) -> String {
    x.map_or("n/a".into(), |v| format!("{v:.2}"))
}
