//! The event pump that feeds the in-process hub from the PostgreSQL event log.
//!
//! Event ids come from a sequence, so they are allocated in statement order but become
//! visible in commit order: a transaction can commit id 101 before another commits 100.
//! Within one run that cannot happen (its row lock serialises its changes), so per-run
//! streams may resume "after id N". Across runs the pump keeps a short list of the ids it
//! skipped and looks for them again until they appear or expire (a rolled-back
//! transaction leaves a permanent hole).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::FutureExt;
use sqlx::Row;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use super::listen::Routes;
use super::{PgStore, event_from_row};
use crate::store::reads::EVENT_COLUMNS;
use crate::store::{EventHub, Notice, Result, RunEvent};

/// How long a skipped id is looked for before it is taken for a rolled-back transaction.
const GAP_PATIENCE: Duration = Duration::from_secs(10);
/// Most skipped ids remembered at one step.
const MAX_GAPS: i64 = 10_000;
/// Most events one pump query reads.
const PUMP_BATCH: i64 = 2000;
/// Safety net: the pump also looks without a notification this often.
const PUMP_IDLE_POLL: Duration = Duration::from_secs(1);
/// Least time between two reads while no one in this process is subscribed.
const PUMP_UNWATCHED_INTERVAL: Duration = Duration::from_millis(100);

impl PgStore {
    /// Holds the process's LISTEN connection (see `listen`) and publishes every committed
    /// event (this process's and others') to `hub`, starting from the newest event at
    /// start, until `stop` fires. Each commit that writes events notifies; notifications
    /// that pile up while a read runs are answered by one read. While nobody in this
    /// process is subscribed, reads happen at most every [`PUMP_UNWATCHED_INTERVAL`] (a new
    /// subscriber brings the next one forward): they only keep the cursor current, and
    /// under load they were the most frequent statement.
    pub(in crate::store) async fn pump_events(
        &self,
        hub: EventHub,
        notices: &broadcast::Sender<Notice>,
        stop: CancellationToken,
    ) {
        let committed = Notify::new();
        let routes = Routes {
            events: &committed,
            notices,
        };
        tokio::join!(
            self.listen(routes, &stop),
            self.pump(&hub, &committed, &stop)
        );
    }

    /// Reads the log whenever `committed` is notified, and every [`PUMP_IDLE_POLL`] anyway.
    async fn pump(&self, hub: &EventHub, committed: &Notify, stop: &CancellationToken) {
        let mut pump = Pump {
            cursor: None,
            gaps: BTreeMap::new(),
        };
        loop {
            let read_at = tokio::time::Instant::now();
            if let Err(e) = pump.read(self, hub).await {
                tracing::warn!(error = %e, "event pump read failed");
            }
            tokio::select! {
                _ = tokio::time::timeout(PUMP_IDLE_POLL, committed.notified()) => {}
                _ = stop.cancelled() => break,
            }
            if hub.subscribers() == 0 {
                tokio::select! {
                    _ = tokio::time::sleep_until(read_at + PUMP_UNWATCHED_INTERVAL) => {}
                    _ = hub.subscribed() => {}
                    _ = stop.cancelled() => break,
                }
            }
            // Whatever was announced up to now is covered by the next read.
            let _ = committed.notified().now_or_never();
        }
    }
}

struct Pump {
    /// The highest id published; `None` until the first read sets it to the newest id.
    cursor: Option<i64>,
    /// Ids below the cursor not seen yet, with when they were first missed.
    gaps: BTreeMap<i64, Instant>,
}

impl Pump {
    async fn read(&mut self, store: &PgStore, hub: &EventHub) -> Result<()> {
        let Some(cursor) = self.cursor else {
            self.cursor = Some(store.reads().last_event_id().await?);
            return Ok(());
        };
        let now = Instant::now();
        self.gaps
            .retain(|_, since| now.duration_since(*since) < GAP_PATIENCE);
        let gaps: Vec<i64> = self.gaps.keys().copied().collect();
        // With nobody subscribed the events need not be read, only their ids, to keep
        // the cursor and the gaps right for whoever subscribes next.
        let watched = hub.subscribers() > 0;
        let (columns, limit) = if watched {
            (EVENT_COLUMNS, PUMP_BATCH)
        } else {
            ("id", PUMP_BATCH * 10)
        };
        // Two index lookups, not one `id > $1 OR id = ANY($2)`: the planner answers that
        // by walking the whole primary key from its start, which grows with the log.
        let sql = format!(
            "SELECT {columns} FROM (
                (SELECT {columns} FROM run_events WHERE id > $1 ORDER BY id LIMIT $3)
                UNION ALL
                (SELECT {columns} FROM run_events WHERE id = ANY($2))
             ) e ORDER BY id LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(cursor)
            .bind(&gaps)
            .bind(limit)
            .fetch_all(store.pool())
            .await?;
        let (ids, events): (Vec<i64>, Vec<RunEvent>) = if watched {
            let events: Vec<RunEvent> = rows.iter().map(event_from_row).collect::<Result<_>>()?;
            (events.iter().map(|e| e.id).collect(), events)
        } else {
            let ids = rows
                .iter()
                .map(|r| Ok(r.try_get::<i64, _>(0)?))
                .collect::<Result<_>>()?;
            (ids, Vec::new())
        };
        let mut high = cursor;
        for &id in &ids {
            self.gaps.remove(&id);
            if id > high {
                // Bounded: only transactions in flight at this moment can leave holes.
                for missing in (high + 1).max(id - MAX_GAPS)..id {
                    self.gaps.insert(missing, now);
                }
                high = id;
            }
        }
        self.cursor = Some(high);
        let full = ids.len() as i64 == limit;
        hub.publish(events);
        if full {
            // More is waiting; read again without waiting for a notification.
            Box::pin(self.read(store, hub)).await?;
        }
        Ok(())
    }
}
