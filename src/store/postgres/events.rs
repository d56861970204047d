//! Reading the PostgreSQL event log, and the event pump that feeds the in-process hub.
//!
//! Event ids come from a sequence, so they are allocated in statement order but become
//! visible in commit order: a transaction can commit id 101 before another commits 100.
//! Within one run that cannot happen (its row lock serialises its changes), so per-run
//! streams may resume "after id N". Across runs the pump keeps a short list of the ids it
//! skipped and looks for them again until they appear or expire (a rolled-back
//! transaction leaves a permanent hole).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use super::{PgStore, db, event_from_row};
use crate::run::RunId;
use crate::store::{EventFilter, EventHub, Result, RunEvent};

/// The channel the `run_events` trigger notifies on.
const EVENTS_CHANNEL: &str = "sluice_events";
/// How long a skipped id is looked for before it is taken for a rolled-back transaction.
const GAP_PATIENCE: Duration = Duration::from_secs(10);
/// Most skipped ids remembered at one step.
const MAX_GAPS: i64 = 10_000;
/// Most events one pump query reads.
const PUMP_BATCH: i64 = 2000;
/// Safety net: the pump also looks without a notification this often.
const PUMP_IDLE_POLL: Duration = Duration::from_secs(1);

const EVENT_COLUMNS: &str =
    "id, run_id, kind, at, attempt, data::text AS data, class, tenant, batch";

impl PgStore {
    pub(in crate::store) async fn events_for_run(
        &self,
        run: RunId,
        after: i64,
    ) -> Result<Vec<RunEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM run_events WHERE run_id = $1 AND id > $2 ORDER BY id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(run.0)
            .bind(after)
            .fetch_all(self.pool())
            .await
            .map_err(db)?;
        rows.iter().map(event_from_row).collect()
    }

    pub(in crate::store) async fn events_after(
        &self,
        after: i64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<RunEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM run_events
             WHERE id > $1 AND ($2::int2 IS NULL OR class = $2)
               AND ($3::text IS NULL OR tenant = $3) AND ($4::text IS NULL OR batch = $4)
             ORDER BY id LIMIT $5"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after)
            .bind(filter.class.map(|c| c.rank()))
            .bind(filter.tenant.as_deref())
            .bind(filter.batch.as_deref())
            .bind(limit as i64)
            .fetch_all(self.pool())
            .await
            .map_err(db)?;
        rows.iter().map(event_from_row).collect()
    }

    pub(in crate::store) async fn last_event_id(&self) -> Result<i64> {
        let id: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM run_events")
            .fetch_one(self.pool())
            .await
            .map_err(db)?;
        Ok(id.unwrap_or(0))
    }

    /// Publishes every committed event (this process's and others') to `hub`, starting
    /// from the newest event at start, until `stop` fires.
    pub(in crate::store) async fn pump_events(&self, hub: EventHub, stop: CancellationToken) {
        let mut pump = Pump {
            cursor: None,
            gaps: BTreeMap::new(),
        };
        let mut listener: Option<PgListener> = None;
        loop {
            if listener.is_none() {
                match PgListener::connect_with(self.pool()).await {
                    Ok(mut l) => match l.listen(EVENTS_CHANNEL).await {
                        Ok(()) => listener = Some(l),
                        Err(e) => tracing::warn!(error = %e, "event pump cannot LISTEN"),
                    },
                    Err(e) => tracing::warn!(error = %e, "event pump cannot connect"),
                }
            }
            // Read after (re)subscribing, so nothing committed in between is missed.
            if let Err(e) = pump.read(self, &hub).await {
                tracing::warn!(error = %e, "event pump read failed");
            }
            let wait = async {
                match listener.as_mut() {
                    Some(l) => match tokio::time::timeout(PUMP_IDLE_POLL, l.try_recv()).await {
                        Ok(Ok(Some(_))) | Err(_) => true,
                        Ok(Ok(None)) | Ok(Err(_)) => false,
                    },
                    None => {
                        tokio::time::sleep(PUMP_IDLE_POLL).await;
                        true
                    }
                }
            };
            tokio::select! {
                healthy = wait => if !healthy {
                    listener = None;
                },
                _ = stop.cancelled() => break,
            }
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
            self.cursor = Some(store.last_event_id().await?);
            return Ok(());
        };
        let now = Instant::now();
        self.gaps
            .retain(|_, since| now.duration_since(*since) < GAP_PATIENCE);
        let gaps: Vec<i64> = self.gaps.keys().copied().collect();
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM run_events WHERE id > $1 OR id = ANY($2)
             ORDER BY id LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(cursor)
            .bind(&gaps)
            .bind(PUMP_BATCH)
            .fetch_all(store.pool())
            .await
            .map_err(db)?;
        let events: Vec<RunEvent> = rows.iter().map(event_from_row).collect::<Result<_>>()?;
        let mut high = cursor;
        for e in &events {
            self.gaps.remove(&e.id);
            if e.id > high {
                // Bounded: only transactions in flight at this moment can leave holes.
                for missing in (high + 1).max(e.id - MAX_GAPS)..e.id {
                    self.gaps.insert(missing, now);
                }
                high = e.id;
            }
        }
        self.cursor = Some(high);
        let full = events.len() as i64 == PUMP_BATCH;
        hub.publish(events);
        if full {
            // More is waiting; read again without waiting for a notification.
            Box::pin(self.read(store, hub)).await?;
        }
        Ok(())
    }
}
