//! The table rows of the scenarios about many teams on one server: tenant B's queue wait
//! with and without tenant A's backlog, one `POST /batches`, and a listing page.

use serde_json::Value;

use super::table::{Row, f, fmt_int, ms};

pub(super) fn tenancy_rows(rows: &mut Vec<Row>, res: &Value) {
    if let Some(fair) = res.get("fair") {
        let backlog = format!(
            "behind tenant A's {}-run backlog",
            fmt_int(f(fair, &["a_backlog_runs"]).unwrap_or(0.0))
        );
        for (key, label) in [("idle", "idle server".to_string()), ("behind_backlog", backlog)] {
            rows.push(Row::figure_only(
                format!("7. Tenant B's queue wait p50 / p99, {label}"),
                format!(
                    "{} / {} ms",
                    ms(f(fair, &[key, "queue_wait_ms", "p50"])),
                    ms(f(fair, &[key, "queue_wait_ms", "p99"]))
                ),
            ));
        }
    }
    if let Some(batches) = res.get("batches") {
        rows.push(Row::figure_only(
            format!(
                "8. POST /batches of {} runs",
                fmt_int(f(batches, &["runs_per_batch"]).unwrap_or(0.0))
            ),
            format!(
                "{} runs/s (median; {} s a batch)",
                fmt_int(f(batches, &["runs_per_s_median"]).unwrap_or(0.0)),
                f(batches, &["seconds_per_batch_median"]).map_or("—".into(), |s| format!("{s:.2}"))
            ),
        ));
    }
    if let Some(listing) = res.get("listing") {
        let runs = fmt_int(f(listing, &["runs"]).unwrap_or(0.0));
        if let Some(Value::Object(pages)) = listing.get("pages") {
            for (name, page) in pages {
                rows.push(Row::figure_only(
                    format!("9. A GET /runs page at {runs} runs: {}", name.replace('_', " ")),
                    format!(
                        "{} ms p50 / {} ms p95",
                        ms(f(page, &["ms", "p50"])),
                        ms(f(page, &["ms", "p95"]))
                    ),
                ));
            }
        }
    }
}
