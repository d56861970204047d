//! The API tests' calls on a [`TestServer`]: every request goes through [`TestServer::send`],
//! which reads the whole reply and asserts that it carries an `x-request-id`.

use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::{Method, RequestBuilder};
use serde_json::Value;

use super::{POLL_EVERY, SHUTDOWN_WITHIN, TERMINAL, assert_enqueue_reply};
use crate::common::TestServer;

/// One HTTP exchange: status, headers and the body (parsed as JSON when it is JSON,
/// otherwise kept as a JSON string so messages can show it).
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) headers: HeaderMap,
    pub(super) body: Value,
}

impl Reply {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl TestServer {
    /// Triggers graceful shutdown and asserts that `serve` returned `Ok` promptly.
    pub(super) async fn shutdown(mut self) {
        self.stop_within(SHUTDOWN_WITHIN).await;
    }

    pub(super) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http().request(method, self.url(path))
    }

    /// Sends a request and reads the reply. Every response must carry `x-request-id`.
    pub(super) async fn send(&self, what: &str, req: RequestBuilder) -> Reply {
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: request failed: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{what}: reading the body failed: {e}"));
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        let reply = Reply {
            status,
            headers,
            body,
        };
        let id = reply.header("x-request-id").unwrap_or("");
        assert!(
            !id.is_empty(),
            "{what}: response {status} has no x-request-id header; headers {:?}",
            reply.headers
        );
        reply
    }

    pub(super) async fn get(&self, path: &str) -> Reply {
        self.send(&format!("GET {path}"), self.request(Method::GET, path))
            .await
    }

    pub(super) async fn post_raw(&self, what: &str, body: impl Into<String>) -> Reply {
        let req = self
            .request(Method::POST, "/enqueue")
            .header(CONTENT_TYPE, "application/json")
            .body(body.into());
        self.send(what, req).await
    }

    pub(super) async fn enqueue(&self, body: &Value) -> Reply {
        self.post_raw(&format!("POST /enqueue {body}"), body.to_string())
            .await
    }

    /// Enqueues and asserts the 202 reply's shape; returns the run id.
    pub(super) async fn enqueue_ok(&self, body: &Value) -> String {
        let reply = self.enqueue(body).await;
        assert_eq!(
            reply.status, 202,
            "POST /enqueue {body}: expected 202, got {} {}",
            reply.status, reply.body
        );
        assert_enqueue_reply(&reply.body);
        reply.body["id"].as_str().unwrap().to_string()
    }

    pub(super) async fn cancel(&self, id: &str) -> Reply {
        let path = format!("/runs/{id}/cancel");
        self.send(&format!("POST {path}"), self.request(Method::POST, &path))
            .await
    }

    pub(super) async fn run(&self, id: &str) -> Value {
        let reply = self.get(&format!("/runs/{id}")).await;
        assert_eq!(
            reply.status, 200,
            "GET /runs/{id}: expected 200, got {} {}",
            reply.status, reply.body
        );
        reply.body
    }

    /// Polls `GET /runs/ID` until `done` holds; panics after `within` with the last body.
    pub(super) async fn wait_run(
        &self,
        id: &str,
        what: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let body = self.run(id).await;
            if done(&body) {
                return body;
            }
            if Instant::now() >= deadline {
                panic!("run {id}: waited {within:?} for {what}; last body: {body:#}");
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    pub(super) async fn wait_terminal(&self, id: &str, within: Duration) -> Value {
        self.wait_run(id, "a terminal status", within, |b| {
            TERMINAL.contains(&b["status"].as_str().unwrap_or(""))
        })
        .await
    }

    pub(super) async fn health(&self) -> Value {
        let reply = self.get("/health").await;
        assert_eq!(
            reply.status, 200,
            "GET /health: expected 200, got {} {}",
            reply.status, reply.body
        );
        reply.body
    }

    /// Runs queued or running, both classes, as `/health` reports them.
    pub(super) async fn active_runs(&self) -> i64 {
        let h = self.health().await;
        let q = &h["queues"];
        ["live", "background"]
            .iter()
            .flat_map(|class| ["queued", "running"].map(|s| &q[*class][s]))
            .map(|v| {
                v.as_i64()
                    .unwrap_or_else(|| panic!("/health queue depth is not an integer: {h:#}"))
            })
            .sum()
    }
}
