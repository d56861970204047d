//! The adaptive limiter against every real rate-limit style: a stand-in provider (HTTP, in
//! `standin`) holds a true limit of `R` requests a second and states it the way OpenAI,
//! Anthropic or a bare proxy does; Sluice, configured with no limit, a wrong one or the
//! right one, works through a backlog kept topped up for the whole run. Each case asserts
//! that every run completes and that, in steady state, the provider accepted at least 90% of
//! `R` while refusing at most 5% of what it was sent; a token-limited case counts goodput in
//! tokens. The bounds are loose on purpose: the suite runs on a busy machine beside other
//! tests. The cases run one at a time. The cases, the stand-in and the measures are shared
//! with the benchmark's `styles` scenario (`plan.rs`), which holds the tighter targets.

mod measure;
mod plan;
mod standin;

use std::time::Duration;

use futures::StreamExt;

use crate::common::{TestServer, enqueue, http, read_health, scrape, series_value, wait_run};
use plan::{CASES, Case, Drive, PROVIDER, Phase, Timing};
use standin::{StandIn, Style};

/// The true limit every case starts at, requests a second.
const RATE: f64 = 10.0;
/// How long each part of a case lasts.
const TIMING: Timing = Timing::with_windows(
    Duration::from_secs(12),
    Duration::from_secs(12),
    Duration::from_secs(14),
);
/// Worker slots; one more run per slot is kept queued, so demand never runs dry.
const SLOTS: usize = 16;
/// Enqueue calls in flight while topping up.
const FEED_CONCURRENCY: usize = 16;
/// A case that has not reached its end by then stops feeding anyway.
const LONGEST_FEED: Duration = Duration::from_secs(90);
/// Steady-state goodput every case must reach, as a share of the true limit.
const MIN_GOODPUT: f64 = 0.9;
/// Refused share every case must stay under in steady state.
const MAX_REFUSED: f64 = 0.05;

/// The case of that name.
fn case(name: &str) -> Case {
    *CASES
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no limiter style case {name}"))
}

/// The cases share two cores with the rest of the suite; two of them at once would measure
/// each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config(dir: &tempfile::TempDir, case: &Case, root: &str) -> String {
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
{provider}"#,
        db = dir.path().join("sluice.db").display().to_string(),
        provider = case.provider_toml(root, RATE),
    )
}

/// Enqueues `n` runs of the case at once and returns their ids.
async fn enqueue_many(
    client: &reqwest::Client,
    server: &TestServer,
    case: &Case,
    n: usize,
) -> Vec<String> {
    let body = case.enqueue_body();
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
        Style::MinuteTokens => {
            assert_eq!(stated, None, "no request limit is stated: {provider}");
            assert_eq!(
                provider["current_tpm"].as_f64(),
                Some((rate * 60.0).round()),
                "the stated token limit is followed: {provider}"
            );
        }
        _ => assert_eq!(
            stated,
            Some((rate * 60.0).round()),
            "the stated limit in /health: {provider}"
        ),
    }
    if case.style == Style::Bare && case.rpm_times.is_none() {
        assert!(
            provider["learned_rpm"].as_f64().is_some_and(|r| r > 0.0),
            "a pace learned from bare 429s: {provider}"
        );
    }
    // `/metrics` exports the same rates. (The recorder is one per process, shared by every
    // test server, so a rate a case does not have may still show a previous case's.)
    let metrics = scrape(client, server).await;
    for which in ["stated", "learned"] {
        if let Some(rpm) = provider[format!("{which}_rpm")].as_f64() {
            let series =
                format!(r#"sluice_provider_rate_rpm{{provider="{PROVIDER}",which="{which}"}}"#);
            assert_eq!(series_value(&metrics, &series), rpm, "{series}:\n{metrics}");
        }
    }
}

/// Runs one case: feeds a backlog through the phases, waits for every run, and measures
/// each phase's steady state on the stand-in's log.
async fn run(case: Case) -> Vec<Phase> {
    let _one = ONE_AT_A_TIME.lock().await;
    let rate = case.rate(RATE);
    let standin = StandIn::new(case.style, rate);
    let root = standin.clone().serve().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(&dir, &case, &root), &[]).await;
    let client = http();
    let drive = Drive::new(case, TIMING, rate);
    let (ids, stopped) = drive
        .feed(&standin, SLOTS, LONGEST_FEED, |n| {
            enqueue_many(&client, &server, &case, n)
        })
        .await;
    for id in &ids {
        let run = wait_run(&client, &server, id, "finished", |r| {
            r["status"] != "queued" && r["status"] != "running"
        })
        .await;
        assert_eq!(run["status"], "completed", "every run completes: {run}");
    }
    let last_rate = drive.changes.last().unwrap().1;
    shows_the_limit_it_follows(&client, &server, &case, last_rate).await;
    server.stop().await;
    if case.style.depth_secs() > 1.0 {
        let drained = standin.drained_at().map(|at| at - drive.started);
        assert!(
            drained.is_some_and(|d| d < TIMING.warm_up * 2),
            "{}: the stated burst is spent at once, not paced at the rate: drained after {drained:?}",
            case.name
        );
    }
    let phases = drive.phases(&standin, stopped);
    for p in &phases {
        eprintln!(
            "limiter style {} ({}): R {}/s, goodput {:.1}%, refused {:.2}% over {:.1} s, converged after {:?}",
            case.name,
            case.title,
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
    let phases = run(case).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_bucket_stated_in_openai_headers() {
    reaches_the_true_limit(case("minute-openai")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_bucket_stated_in_anthropic_headers() {
    reaches_the_true_limit(case("minute-anthropic")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_minute_limit_enforced_per_second() {
    reaches_the_true_limit(case("per-second")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_429s_without_headers() {
    reaches_the_true_limit(case("bare")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_configured_five_times_too_high() {
    reaches_the_true_limit(case("rpm-5x")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_configured_exactly() {
    reaches_the_true_limit(case("rpm-exact")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stated_limit_halved_and_restored() {
    reaches_the_true_limit(case("halved-stated")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_limit_halved_and_restored() {
    reaches_the_true_limit(Case {
        // Probing more often finds the restored limit sooner, for a few more refusals.
        limiter: "probe_every = 30",
        ..case("halved-bare")
    })
    .await;
}

/// The token path: each start reserves its prompt estimate plus `max_tokens`, and the
/// usage the provider reports corrects it; goodput is counted in tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_limit_stated_in_openai_headers() {
    reaches_the_true_limit(case("tpm")).await;
}
