//! The adaptive limiter against every real rate-limit style: a stand-in provider (HTTP, in
//! `standin`) holds a true limit of `R` requests a second and states it the way OpenAI,
//! Anthropic or a bare proxy does; Sluice, configured with no limit, a wrong one or the
//! right one, works through a backlog kept topped up for the whole run. Each case asserts
//! that every run completes and that, in steady state, the provider accepted at least 90% of
//! `R` while refusing at most 5% of what it was sent. The bounds are loose on purpose: the
//! suite runs on a busy machine beside other tests. The cases run one at a time.

mod measure;
mod standin;

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

use crate::common::{TestServer, enqueue, http, read_health, wait_run};
use measure::{Figures, converged_after, figures};
use standin::{StandIn, Style};

/// The true limit every case starts at, requests a second.
const RATE: f64 = 10.0;
/// From the start until the first steady-state window opens.
const WARM_UP: Duration = Duration::from_secs(5);
/// How long a steady state is measured.
const WINDOW: Duration = Duration::from_secs(12);
/// After a stated burst was spent, before steady state is measured.
const AFTER_BURST: Duration = Duration::from_secs(2);
/// After a stated limit changed or any limit fell, before the new phase is measured.
const SETTLE: Duration = Duration::from_secs(5);
/// After a limit nobody states changed, before the new phase is measured: a rise is only
/// found by probing, after the hold on the old limit (`probe_every` attempts, at most 8 s)
/// and a doubling ramp.
const SETTLE_BARE: Duration = Duration::from_secs(11);
/// Runs kept queued beyond what the provider accepted: seconds of the current rate...
const BACKLOG_SECS: f64 = 3.0;
/// ...plus one per worker slot, so demand never runs dry.
const SLOTS: usize = 16;
/// How often the backlog is topped up.
const FEED_EVERY: Duration = Duration::from_millis(100);
/// Enqueue calls in flight while topping up.
const FEED_CONCURRENCY: usize = 16;
/// A case that has not reached its end by then stops feeding anyway.
const LONGEST_FEED: Duration = Duration::from_secs(90);
/// Steady-state goodput every case must reach, as a share of the true limit.
const MIN_GOODPUT: f64 = 0.9;
/// Refused share every case must stay under in steady state.
const MAX_REFUSED: f64 = 0.05;

/// The cases share two cores with the rest of the suite; two of them at once would measure
/// each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Case {
    name: &'static str,
    style: Style,
    /// The `rpm` Sluice is configured with.
    rpm: Option<u32>,
    /// `(from, rate)`: the true limit from that long after the start.
    schedule: &'static [(Duration, f64)],
    /// How long the last phase lasts.
    last_phase: Duration,
    /// After the true limit rose, before the new phase is measured.
    settle: Duration,
    /// `[providers.limiter]` settings.
    limiter: &'static str,
}

/// One measured phase.
struct Phase {
    rate: f64,
    steady: Figures,
    /// From the change (or the start) to the first converged window.
    converged: Option<Duration>,
}

const STEADY: &[(Duration, f64)] = &[(Duration::ZERO, RATE)];
const HALVED_AND_RESTORED: &[(Duration, f64)] = &[
    (Duration::ZERO, RATE),
    (Duration::from_secs(12), RATE / 2.0),
    (Duration::from_secs(26), RATE),
];

fn config(dir: &tempfile::TempDir, case: &Case, root: &str) -> String {
    let base = match case.style.kind() {
        "openai" => format!("{root}/v1"),
        _ => root.to_string(),
    };
    let rpm = case.rpm.map(|r| format!("rpm = {r}")).unwrap_or_default();
    format!(
        r#"
[database]
sqlite_path = {db:?}
[dispatch]
slots = {SLOTS}
shutdown_grace = "1s"
[queue]
live_queue_timeout = "300s"
[retry]
backoff_base = "20ms"
backoff_cap = "100ms"
[[providers]]
name = "standin"
kind = "{kind}"
base_url = "{base}"
default_model = "standin-1"
{rpm}
[providers.limiter]
{limiter}
"#,
        db = dir.path().join("sluice.db").display().to_string(),
        kind = case.style.kind(),
        limiter = case.limiter,
    )
}

/// Enqueues `n` runs at once and returns their ids.
async fn enqueue_many(client: &reqwest::Client, server: &TestServer, n: usize) -> Vec<String> {
    let body = json!({
        "provider": "standin",
        "request": {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 16},
        "max_attempts": 50,
    });
    futures::stream::iter(0..n)
        .map(|_| enqueue(client, server, body.clone()))
        .buffer_unordered(FEED_CONCURRENCY)
        .collect()
        .await
}

/// `/health` shows the limit a provider states in its headers (what the pace follows), and
/// none for a provider that states nothing; a bare provider with no configured `rpm` was
/// only run near its limit by a learned pace, which `/health` shows too.
async fn shows_the_limit_it_follows(
    client: &reqwest::Client,
    server: &TestServer,
    case: &Case,
    rate: f64,
) {
    let health: serde_json::Value = read_health(client, server).await;
    let provider = &health["providers"][0];
    let stated = provider["stated_rpm"].as_f64();
    match case.style {
        Style::Bare => assert_eq!(stated, None, "a bare provider states nothing: {provider}"),
        _ => assert_eq!(
            stated,
            Some((rate * 60.0).round()),
            "the stated limit in /health: {provider}"
        ),
    }
    if case.style == Style::Bare && case.rpm.is_none() {
        assert!(
            provider["learned_rpm"].as_f64().is_some_and(|r| r > 0.0),
            "a pace learned from bare 429s: {provider}"
        );
    }
}

/// Runs one case: feeds a backlog through the phases, waits for every run, and measures
/// each phase's steady state on the stand-in's log.
async fn run(case: &Case) -> Vec<Phase> {
    let _one = ONE_AT_A_TIME.lock().await;
    let standin = StandIn::new(case.style, case.schedule[0].1);
    let root = standin.clone().serve().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(&dir, case, &root), &[]).await;
    let client = http();
    let started = Instant::now();
    let changes: Vec<(Instant, f64)> = case
        .schedule
        .iter()
        .map(|(at, rate)| (started + *at, *rate))
        .collect();
    // The first phase opens after the warm-up and after any stated burst was spent.
    let first_window = |standin: &StandIn| {
        let drained = standin.drained_at().map(|d| d + AFTER_BURST);
        (started + WARM_UP).max(drained.unwrap_or(started))
    };
    let end = |standin: &StandIn| match changes.len() {
        1 => first_window(standin) + WINDOW,
        _ => changes.last().unwrap().0 + case.last_phase,
    };
    let mut ids = Vec::new();
    let mut applied = 1;
    while Instant::now() < end(&standin) && started.elapsed() < LONGEST_FEED {
        if let Some((at, rate)) = changes.get(applied)
            && Instant::now() >= *at
        {
            standin.set_rate(*rate);
            applied += 1;
        }
        let rate = changes[applied - 1].1;
        let accepted = standin.calls().iter().filter(|c| c.status != 429).count();
        let wanted = (rate * BACKLOG_SECS) as usize + SLOTS;
        let outstanding = ids.len().saturating_sub(accepted);
        ids.extend(enqueue_many(&client, &server, wanted.saturating_sub(outstanding)).await);
        tokio::time::sleep(FEED_EVERY).await;
    }
    let stopped = Instant::now();
    for id in &ids {
        let run = wait_run(&client, &server, id, "finished", |r| {
            r["status"] != "queued" && r["status"] != "running"
        })
        .await;
        assert_eq!(run["status"], "completed", "every run completes: {run}");
    }
    let last_rate = changes.last().unwrap().1;
    shows_the_limit_it_follows(&client, &server, case, last_rate).await;
    server.stop().await;
    let calls = standin.calls();
    let mut phases = Vec::new();
    for (i, (at, rate)) in changes.iter().enumerate() {
        let (from, change) = match i {
            0 => (first_window(&standin), started),
            // A fall is found by the next refusal; a rise may take `settle`.
            _ if *rate < changes[i - 1].1 => (*at + SETTLE, *at),
            _ => (*at + case.settle, *at),
        };
        let to = changes.get(i + 1).map_or(stopped, |(next, _)| *next);
        phases.push(Phase {
            rate: *rate,
            steady: figures(&calls, from, to, *rate),
            converged: converged_after(&calls, change, to, *rate),
        });
    }
    for p in &phases {
        eprintln!(
            "limiter style {}: R {}/s, goodput {:.1}%, refused {:.2}% over {:.1} s, converged after {:?}",
            case.name,
            p.rate,
            p.steady.goodput * 100.0,
            p.steady.refused * 100.0,
            p.steady.seconds,
            p.converged.map(|d| d.as_secs_f64()),
        );
    }
    phases
}

/// Runs a case and asserts the loose steady-state bounds on every measured phase. When the
/// limit changes, the phases after each change are asserted; the short one before the first
/// change is only reported (the steady cases assert that state over a full window).
async fn reaches_the_true_limit(case: Case) {
    let phases = run(&case).await;
    let asserted = if phases.len() > 1 { 1 } else { 0 };
    for p in &phases[asserted..] {
        assert!(
            p.steady.goodput >= MIN_GOODPUT,
            "{}: goodput {:.1}% of {}/s",
            case.name,
            p.steady.goodput * 100.0,
            p.rate
        );
        assert!(
            p.steady.refused <= MAX_REFUSED,
            "{}: {:.1}% refused",
            case.name,
            p.steady.refused * 100.0
        );
    }
}

fn steady(name: &'static str, style: Style, rpm: Option<u32>) -> Case {
    Case {
        name,
        style,
        rpm,
        schedule: STEADY,
        last_phase: WINDOW,
        settle: SETTLE,
        limiter: "",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_bucket_stated_in_openai_headers() {
    reaches_the_true_limit(steady("minute-openai", Style::MinuteOpenAi, None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_bucket_stated_in_anthropic_headers() {
    reaches_the_true_limit(steady("minute-anthropic", Style::MinuteAnthropic, None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_minute_limit_enforced_per_second() {
    reaches_the_true_limit(steady("per-second", Style::PerSecond, None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_429s_without_headers() {
    reaches_the_true_limit(steady("bare", Style::Bare, None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_configured_five_times_too_high() {
    let rpm = (RATE * 60.0 * 5.0) as u32;
    reaches_the_true_limit(steady("rpm-5x", Style::Bare, Some(rpm))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_configured_exactly() {
    let rpm = (RATE * 60.0) as u32;
    reaches_the_true_limit(steady("rpm-exact", Style::Bare, Some(rpm))).await;
}

/// The true limit halves and is later restored; `settle` is how long after the restore
/// the last phase is measured from.
fn halved_and_restored(name: &'static str, style: Style, settle: Duration) -> Case {
    Case {
        name,
        style,
        rpm: None,
        schedule: HALVED_AND_RESTORED,
        last_phase: settle + WINDOW,
        settle,
        limiter: "",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stated_limit_halved_and_restored() {
    reaches_the_true_limit(halved_and_restored(
        "halved-stated",
        Style::MinuteOpenAi,
        SETTLE,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_limit_halved_and_restored() {
    reaches_the_true_limit(Case {
        // Probing more often finds the restored limit sooner, for a few more refusals.
        limiter: "probe_every = 30",
        ..halved_and_restored("halved-bare", Style::Bare, SETTLE_BARE)
    })
    .await;
}
