//! The load side: `POST /enqueue` one at a time, in bulk, or at a fixed offered rate, and
//! a recorder of the dashboard event stream (`GET /events`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::{Semaphore, oneshot};

use crate::stats::now_us;

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(120))
        .build()
        .expect("http client")
}

/// An enqueue body, serialised once.
#[derive(Clone)]
pub struct Body(pub Arc<Vec<u8>>);

impl Body {
    /// The same body with the message content `m<n>`, so the bench's stub provider can tell
    /// which request it is serving.
    pub fn marked(&self, n: u64) -> Body {
        let text = String::from_utf8_lossy(&self.0);
        let marked = text.replacen("\"content\":\"x\"", &format!("\"content\":\"m{n}\""), 1);
        Body(Arc::new(marked.into_bytes()))
    }
}

pub struct BodySpec<'a> {
    pub provider: &'a str,
    pub class: &'a str,
    /// RFC 3339, or none for "now".
    pub run_at: Option<String>,
    pub queue_timeout_ms: Option<u64>,
    pub max_attempts: Option<u32>,
}

impl BodySpec<'_> {
    pub fn build(&self) -> Body {
        let mut v = serde_json::json!({
            "provider": self.provider,
            "class": self.class,
            "request": {"messages": [{"role": "user", "content": "x"}]},
        });
        if let Some(t) = &self.run_at {
            v["run_at"] = t.clone().into();
        }
        if let Some(ms) = self.queue_timeout_ms {
            v["queue_timeout_ms"] = ms.into();
        }
        if let Some(n) = self.max_attempts {
            v["max_attempts"] = n.into();
        }
        Body(Arc::new(serde_json::to_vec(&v).expect("json")))
    }
}

#[derive(Deserialize)]
struct Accepted {
    id: String,
}

/// One `POST /enqueue`; the run id.
pub async fn enqueue(http: &reqwest::Client, base: &str, body: &Body) -> anyhow::Result<String> {
    let r = http
        .post(format!("{base}/enqueue"))
        .header("content-type", "application/json")
        .body(body.0.as_ref().clone())
        .send()
        .await?;
    let status = r.status();
    let bytes = r.bytes().await?;
    if status.as_u16() != 202 {
        bail!(
            "enqueue answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    let a: Accepted = serde_json::from_slice(&bytes).context("enqueue reply")?;
    Ok(a.id)
}

/// A sent enqueue: the run id and the wall-clock time (µs) just before the request left.
#[derive(Clone, Debug)]
pub struct Sent {
    pub id: String,
    pub t_req: i64,
    pub t_resp: i64,
    /// The marker of its body (see [`Body::marked`]), when it was marked.
    pub mark: Option<u64>,
}

#[derive(Debug, Default)]
pub struct BulkResult {
    pub ok: u64,
    /// Answered 429 (admission control refused the run).
    pub refused: u64,
    pub first_refusal: Option<String>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub secs: f64,
}

/// Enqueues `n` runs with `concurrency` requests in flight; returns once all are answered.
pub async fn bulk(
    http: &reqwest::Client,
    base: &str,
    body: &Body,
    n: u64,
    concurrency: usize,
) -> BulkResult {
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let first_refusal: Arc<Mutex<Option<String>>> = Arc::default();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, base, body) = (http.clone(), base.to_string(), body.clone());
        let (next, ok, errors, first_error) = (
            next.clone(),
            ok.clone(),
            errors.clone(),
            first_error.clone(),
        );
        let (refused, first_refusal) = (refused.clone(), first_refusal.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                match enqueue(&http, &base, &body).await {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.to_string().starts_with("enqueue answered 429") => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        first_refusal.lock().unwrap().get_or_insert(e.to_string());
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.lock().unwrap().get_or_insert(e.to_string());
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    BulkResult {
        ok: ok.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
        first_refusal: first_refusal.lock().unwrap().clone(),
        errors: errors.load(Ordering::Relaxed),
        first_error: first_error.lock().unwrap().clone(),
        secs: t.elapsed().as_secs_f64(),
    }
}

#[derive(Debug, Default)]
pub struct OfferResult {
    pub secs: f64,
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// How far behind its schedule the producer fell at worst (ms): it waits when
    /// `max_in_flight` requests are open.
    pub max_lag_ms: f64,
    pub sent_runs: Vec<Sent>,
}

impl OfferResult {
    pub fn achieved_rate(&self) -> f64 {
        self.ok as f64 / self.secs.max(1e-9)
    }
}

/// An open-loop producer: request i leaves at start + i/rate (in 1 ms ticks), whatever the
/// answers, with at most `max_in_flight` open (beyond that it falls behind, which is
/// reported as lag).
/// What `offer` keeps of the runs it sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    Nothing,
    /// Each run's id and times, each body marked (see [`Body::marked`]) for the stub
    /// provider.
    MarkedRuns,
}

pub async fn offer(
    http: &reqwest::Client,
    base: &str,
    body: &Body,
    rate: f64,
    duration: Duration,
    max_in_flight: usize,
    keep: Keep,
) -> OfferResult {
    let keep_runs = keep == Keep::MarkedRuns;
    let mark = keep_runs;
    let sem = Arc::new(Semaphore::new(max_in_flight));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let runs: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let start = Instant::now();
    let mut sent = 0u64;
    let mut max_lag = 0f64;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break;
        }
        let due = (elapsed.as_secs_f64() * rate).floor() as u64 + 1;
        while sent < due.min((duration.as_secs_f64() * rate).ceil() as u64) {
            let scheduled = sent as f64 / rate;
            let permit = sem.clone().acquire_owned().await.expect("semaphore");
            let lag = start.elapsed().as_secs_f64() - scheduled;
            max_lag = max_lag.max(lag * 1000.0);
            let marker = mark.then_some(sent);
            let body = match marker {
                Some(n) => body.marked(n),
                None => body.clone(),
            };
            let (http, base) = (http.clone(), base.to_string());
            let (ok, errors, first_error, runs) = (
                ok.clone(),
                errors.clone(),
                first_error.clone(),
                runs.clone(),
            );
            tasks.spawn(async move {
                let t_req = now_us();
                match enqueue(&http, &base, &body).await {
                    Ok(id) => {
                        let t_resp = now_us();
                        ok.fetch_add(1, Ordering::Relaxed);
                        if keep_runs {
                            runs.lock().unwrap().push(Sent {
                                id,
                                t_req,
                                t_resp,
                                mark: marker,
                            });
                        }
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.lock().unwrap().get_or_insert(e.to_string());
                    }
                }
                drop(permit);
            });
            sent += 1;
            // Reap finished tasks as we go so the set does not grow without bound.
            while tasks.try_join_next().is_some() {}
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    while tasks.join_next().await.is_some() {}
    let sent_runs = std::mem::take(&mut *runs.lock().unwrap());
    OfferResult {
        secs,
        sent,
        ok: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        first_error: first_error.lock().unwrap().clone(),
        max_lag_ms: max_lag,
        sent_runs,
    }
}

#[derive(Deserialize)]
struct EventData {
    run_id: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Default)]
struct Seen {
    /// Arrival (µs, wall clock) of the first `started` and of `completed`, per run.
    started: HashMap<String, i64>,
    completed: HashMap<String, i64>,
    waiting: HashMap<String, oneshot::Sender<i64>>,
    lagged: bool,
}

/// Records when each run's `started` and `completed` events reach the client on
/// `GET /events`.
#[derive(Clone)]
pub struct EventRecorder {
    seen: Arc<Mutex<Seen>>,
    /// Events received (all kinds).
    events: Arc<AtomicUsize>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl EventRecorder {
    pub async fn connect(base: &str) -> anyhow::Result<EventRecorder> {
        // Its own client: a long-lived stream with no overall timeout.
        let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
        let r = http
            .get(format!("{base}/events"))
            .header("accept", "text/event-stream")
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("GET /events answered {}", r.status());
        }
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let events = Arc::new(AtomicUsize::new(0));
        let (s, ev) = (seen.clone(), events.clone());
        let task = tokio::spawn(async move {
            let mut stream = r.bytes_stream();
            let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
            let mut event_name = String::new();
            while let Some(Ok(chunk)) = stream.next().await {
                let at = now_us();
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let line = String::from_utf8_lossy(&line);
                    let line = line.trim_end_matches(['\n', '\r']);
                    if let Some(name) = line.strip_prefix("event:") {
                        event_name = name.trim().to_string();
                        if event_name == "lagged" {
                            s.lock().unwrap().lagged = true;
                        }
                    } else if let Some(data) = line.strip_prefix("data:") {
                        if event_name == "lagged" {
                            continue;
                        }
                        let Ok(d) = serde_json::from_str::<EventData>(data.trim()) else {
                            continue;
                        };
                        ev.fetch_add(1, Ordering::Relaxed);
                        let mut g = s.lock().unwrap();
                        match d.kind.as_str() {
                            "started" if !g.started.contains_key(&d.run_id) => {
                                if let Some(tx) = g.waiting.remove(&d.run_id) {
                                    let _ = tx.send(at);
                                }
                                g.started.insert(d.run_id, at);
                            }
                            "completed" => {
                                g.completed.insert(d.run_id, at);
                            }
                            _ => {}
                        }
                    } else if line.is_empty() {
                        event_name.clear();
                    }
                }
            }
        });
        Ok(EventRecorder {
            seen,
            events,
            task: Arc::new(task),
        })
    }

    /// Waits for the run's `started` event (or returns its arrival if it came already).
    pub async fn wait_started(&self, id: &str, limit: Duration) -> anyhow::Result<i64> {
        let rx = {
            let mut g = self.seen.lock().unwrap();
            if let Some(at) = g.started.get(id) {
                return Ok(*at);
            }
            let (tx, rx) = oneshot::channel();
            g.waiting.insert(id.to_string(), tx);
            rx
        };
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(at)) => Ok(at),
            _ => bail!("no `started` event for run {id} within {limit:?}"),
        }
    }

    pub fn completed_at(&self, id: &str) -> Option<i64> {
        self.seen.lock().unwrap().completed.get(id).copied()
    }

    pub fn events(&self) -> usize {
        self.events.load(Ordering::Relaxed)
    }

    pub fn lagged(&self) -> bool {
        self.seen.lock().unwrap().lagged
    }

    pub fn close(&self) {
        self.task.abort();
    }
}
