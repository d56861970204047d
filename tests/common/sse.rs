//! A minimal server-sent events reader over a reqwest response, for the run event
//! streams.

/// A minimal SSE reader over a reqwest response: yields (id, event, data) records.
pub struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

impl SseReader {
    pub async fn open(
        client: &reqwest::Client,
        url: &str,
        last_event_id: Option<&str>,
    ) -> SseReader {
        let mut req = client.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.expect("open event stream");
        assert_eq!(resp.status(), 200, "event stream status");
        SseReader {
            resp,
            buf: String::new(),
        }
    }

    /// The next event (comments skipped), or None when the stream ends.
    pub async fn next(&mut self) -> Option<(Option<String>, String, serde_json::Value)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() && id.is_none() {
                    continue; // a keep-alive comment
                }
                let json = serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data));
                return Some((id, event, json));
            }
            match self.resp.chunk().await.expect("read event stream") {
                Some(bytes) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                None => return None,
            }
        }
    }
}
