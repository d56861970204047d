//! A frontend on another origin follows a run with a plain browser `EventSource`, in
//! headless Chromium (Debian's package, which scripts/test.sh installs when missing): the
//! page is the example frontend (`examples/follow-a-run.html`), served from its own port;
//! Sluice allows that origin only. Between them a proxy cuts the first stream mid-answer:
//! the browser reconnects by itself with `Last-Event-ID`, and the page ends with every
//! event once and the whole answer. A page on an origin Sluice does not allow gets no
//! `Access-Control-Allow-Origin` and its stream fails. A screenshot of the example is kept
//! under the target directory (`ui-screenshots/`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{TestServer, enqueue, get_run, http, run_script, screenshot_dir, wait_run};

/// The example frontend, served by the page servers.
const EXAMPLE: &str = include_str!("../../examples/follow-a-run.html");
/// The stream is cut after this many deltas have passed the proxy.
const CUT_AFTER_DELTAS: usize = 3;
/// A prompt long enough for many deltas: at 300 ms a delta the answer streams for about
/// ten seconds, so the cut lands while the attempt still runs.
const LONG: &str = "one two three four five six seven eight nine ten eleven twelve thirteen \
    fourteen fifteen sixteen seventeen eighteen nineteen twenty twenty-one twenty-two \
    twenty-three twenty-four twenty-five twenty-six twenty-seven twenty-eight twenty-nine \
    thirty thirty-one thirty-two thirty-three";

/// Serves the example page on a port of its own; its origin.
async fn page_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async { axum::response::Html(EXAMPLE) }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    format!("http://{addr}")
}

/// A TCP proxy to `upstream` that cuts the first event stream it carries once
/// [`CUT_AFTER_DELTAS`] deltas went through; later connections pass whole.
async fn cutting_proxy(upstream: SocketAddr) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cut_once = Arc::new(AtomicBool::new(false));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let cut_once = cut_once.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                relay(client, server, cut_once).await;
            });
        }
    });
    format!("http://{addr}")
}

async fn relay(client: TcpStream, server: TcpStream, cut_once: Arc<AtomicBool>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = tokio::spawn(async move {
        tokio::io::copy(&mut client_read, &mut server_write)
            .await
            .ok();
    });
    let mut seen = String::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match server_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if client_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if !cut_once.load(Ordering::SeqCst) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.matches("event: delta").count() >= CUT_AFTER_DELTAS
                && !cut_once.swap(true, Ordering::SeqCst)
            {
                // Mid-answer: both sides go away, as when a proxy or a network drops.
                break;
            }
        }
    }
    upstream.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_origin_follows_a_run_through_a_drop() {
    let allowed = page_server().await;
    let denied = page_server().await;
    let server = TestServer::start_on_sqlite(&format!(
        "[http.cors]\nallowed_origins = [\"{allowed}\"]\n\
         [[providers]]\nname = \"sim\"\nkind = \"sim\"\n\
         [providers.sim]\nlatency = \"200ms\"\nlatency_jitter = \"0ms\"\ndelta_interval = \"300ms\"\n"
    ))
    .await;
    let client = http();

    // CORS as the browser will see it, checked directly first.
    let events_of = |id: &str| format!("/runs/{id}/events");
    let id = enqueue(
        &client,
        &server,
        serde_json::json!({"provider": "sim", "stream": true,
            "request": {"messages": [{"role": "user", "content": LONG}]}}),
    )
    .await;
    for (origin, expected) in [(&allowed, Some(allowed.as_str())), (&denied, None)] {
        let resp = client
            .get(server.url("/livez"))
            .header("origin", origin.as_str())
            .send()
            .await
            .unwrap();
        let got = resp
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(got.as_deref(), expected, "origin {origin}");
    }
    let preflight = client
        .request(reqwest::Method::OPTIONS, server.url("/enqueue"))
        .header("origin", allowed.as_str())
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let allow_headers = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(allow_headers.contains("authorization"), "{allow_headers}");

    let upstream: SocketAddr = server
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let proxy = cutting_proxy(upstream).await;
    let shots = screenshot_dir();
    let allowed_page = format!("{allowed}/?events={proxy}{}", events_of(&id));
    let denied_page = format!("{denied}/?events={}", server.url(&events_of(&id)));
    let saw = run_script(
        "browser/watch.py",
        vec![allowed_page, denied_page, shots.display().to_string()],
    )
    .await;

    let followed = &saw["allowed"];
    assert!(
        followed["opens"].as_u64().unwrap() >= 2,
        "the cut stream reopened by itself: {followed}"
    );
    let events = followed["events"].as_array().unwrap();
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "no event twice: {ids:?}");
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"queued"), "{types:?}");
    assert_eq!(types.get(1), Some(&"started"), "{types:?}");
    assert_eq!(types.last(), Some(&"completed"), "{types:?}");
    assert!(
        types[2..types.len() - 1].iter().all(|t| *t == "delta"),
        "only deltas between start and end: {types:?}"
    );
    let text: String = events
        .iter()
        .filter(|e| e["type"] == "delta")
        .map(|e| e["data"]["content"].as_str().unwrap())
        .collect();
    let run = wait_run(&client, &server, &id, "completed", |r| {
        r["status"] == "completed"
    })
    .await;
    assert_eq!(
        text, run["output"]["content"],
        "the page has the whole answer, no gap and no duplicate"
    );
    let run = get_run(&client, &server, &id).await;
    assert_eq!(run["status"], "completed");

    let refused = &saw["denied"];
    assert_eq!(
        refused["readyState"], 2,
        "the browser refused it: {refused}"
    );
    assert_eq!(refused["events"], serde_json::json!([]), "{refused}");
    assert!(shots.join("cross-origin-stream.png").is_file());
    server.stop().await;
}
