//! A server's `/metrics`, read as series values. The metrics recorder is process-wide, so
//! every in-process server of the suite counts into the same series: a test compares a
//! series before and after what it does, never against an absolute count.

use super::server::TestServer;

/// The Prometheus text of `GET /metrics`.
pub async fn scrape(client: &reqwest::Client, server: &TestServer) -> String {
    client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The value of one series, written exactly as in the text (`name{label="…"}`); 0 when
/// the series has no sample yet.
pub fn series_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| {
            value
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("{series} has no number ({e}): {value}"))
        })
        .unwrap_or(0.0)
}
