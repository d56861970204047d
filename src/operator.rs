//! Operator commands of the `sluice` binary that work on the database directly, with no
//! server running: `sluice dlq list | export | requeue` for dead letters (runs that ended
//! `failed` or `timed_out`). Output is JSON lines, one run per line in the shape of
//! `GET /runs/{id}`, so it pipes into `jq` or a file; requeueing does what
//! `POST /dlq/{id}/requeue` does.

use std::io::Write;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::config::Config;
use crate::run::{Class, RunId, Status};
use crate::store::{DEAD_STATUSES, PageAfter, Requeue, RunFilter, RunView, Store};

/// Runs read per page while exporting.
const EXPORT_PAGE: usize = 500;

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// The newest dead letters matching the filter, one JSON line each.
    List {
        #[command(flatten)]
        filter: DlqFilter,
        /// Most runs listed.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Every dead letter matching the filter, whole (with its attempt log), one JSON line
    /// each, newest first.
    Export {
        #[command(flatten)]
        filter: DlqFilter,
    },
    /// Requeues the runs named, or with `--matching` up to `--limit` of the newest dead
    /// letters matching the filter; prints each run requeued.
    Requeue {
        /// Run ids to requeue.
        ids: Vec<String>,
        /// Requeue the dead letters matching the filter instead of named runs.
        #[arg(long)]
        matching: bool,
        #[command(flatten)]
        filter: DlqFilter,
        /// Most runs requeued with `--matching`.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Attempts each run gets on top of those it used (default `retry.max_attempts`).
        #[arg(long)]
        max_attempts: Option<u32>,
    },
}

/// Which dead letters.
#[derive(Args, Debug, Default)]
pub struct DlqFilter {
    /// `failed` or `timed_out` (both when absent).
    #[arg(long)]
    status: Option<String>,
    #[arg(long)]
    provider: Option<String>,
    /// `live` or `background`.
    #[arg(long)]
    class: Option<String>,
    #[arg(long)]
    tenant: Option<String>,
    #[arg(long)]
    batch: Option<String>,
}

impl DlqFilter {
    fn filter(&self) -> anyhow::Result<RunFilter> {
        let status = match self.status.as_deref() {
            None => None,
            Some(s) => match Status::parse(s) {
                Some(status) if DEAD_STATUSES.contains(&status) => Some(status),
                _ => bail!("--status must be failed or timed_out, not {s:?}"),
            },
        };
        let class = self
            .class
            .as_deref()
            .map(|c| {
                Class::parse(c)
                    .with_context(|| format!("--class must be live or background, not {c:?}"))
            })
            .transpose()?;
        Ok(RunFilter {
            tenant: self.tenant.clone(),
            status,
            class,
            provider: self.provider.clone(),
            batch: self.batch.clone(),
            created_after: None,
            created_before: None,
        })
    }
}

/// Runs `command` against the database `config` names, writing JSON lines to `out`.
pub async fn dlq(config: &Config, command: DlqCommand, out: &mut impl Write) -> anyhow::Result<()> {
    let store = crate::app::open_store(config).await?;
    let result = run(&store, config, command, out).await;
    store.close().await;
    result
}

async fn run(
    store: &Store,
    config: &Config,
    command: DlqCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { filter, limit } => {
            for run in store.list_dead(&filter.filter()?, None, limit).await? {
                print(out, run)?;
            }
        }
        DlqCommand::Export { filter } => {
            let filter = filter.filter()?;
            let mut after = None;
            loop {
                let page = store.list_dead(&filter, after, EXPORT_PAGE).await?;
                let Some(last) = page.last() else { break };
                after = Some(PageAfter {
                    created_at: last.created_at,
                    id: last.id.0,
                });
                let full = page.len() == EXPORT_PAGE;
                for run in page {
                    // The listing carries no attempt log; the whole run does.
                    if let Some(whole) = store.get_run(run.id).await? {
                        print(out, whole)?;
                    }
                }
                if !full {
                    break;
                }
            }
        }
        DlqCommand::Requeue {
            ids,
            matching,
            filter,
            limit,
            max_attempts,
        } => {
            let ids: Vec<RunId> = match (matching, ids.is_empty()) {
                (true, true) => store
                    .list_dead(&filter.filter()?, None, limit)
                    .await?
                    .into_iter()
                    .map(|r| r.id)
                    .collect(),
                (false, false) => ids
                    .iter()
                    .map(|id| {
                        id.parse()
                            .with_context(|| format!("{id:?} is not a run id"))
                    })
                    .collect::<anyhow::Result<_>>()?,
                (true, false) => bail!("name runs or give --matching, not both"),
                (false, true) => bail!("name the runs to requeue, or give --matching"),
            };
            let how = Requeue::configured(config, max_attempts, chrono::Utc::now());
            let requeued = store.requeue(&ids, how).await?;
            for id in &ids {
                if !requeued.contains(id) {
                    eprintln!("{id}: not a dead letter (or no such run); left alone");
                }
            }
            for id in requeued {
                if let Some(run) = store.get_run(id).await? {
                    print(out, run)?;
                }
            }
        }
    }
    Ok(())
}

fn print(out: &mut impl Write, run: RunView) -> anyhow::Result<()> {
    writeln!(out, "{}", crate::api::run_document(run))?;
    Ok(())
}
