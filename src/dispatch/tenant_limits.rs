//! Per-tenant limits at enqueue, for runs of every class: the daily token and spend
//! budgets (today's usage as the store recorded it, spend at the `[[prices]]`), then, once
//! everything else admitted the run, the enqueue rate (a token bucket the store keeps,
//! shared by every process on PostgreSQL). A refused run leaves nothing behind; runs
//! already queued or running are not touched by a spent budget.
//!
//! Also what `GET /tenants/…` shows: a tenant's usage of the day, its spend and limits.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};

use super::Dispatcher;
use super::admission::{Refusal, RefusalReason};
use crate::config::{Config, PriceConfig, TenantConfig};
use crate::store::{ModelUsage, NewRun, StoreError, day_date, next_utc_midnight, utc_day};

/// Tokens in a million, the unit prices are given per.
const TOKENS_PER_PRICE_UNIT: f64 = 1_000_000.0;
/// The shortest `Retry-After` given: the header counts whole seconds.
const MIN_RETRY: Duration = Duration::from_secs(1);

/// The configured tenants and prices, taken from [`Config`] once.
#[derive(Clone, Debug, Default)]
pub struct TenantBook {
    tenants: HashMap<String, TenantConfig>,
    prices: Vec<PriceConfig>,
}

impl TenantBook {
    pub fn from_config(config: &Config) -> TenantBook {
        TenantBook {
            tenants: config
                .tenants
                .iter()
                .map(|t| (t.name.clone(), t.clone()))
                .collect(),
            prices: config.prices.clone(),
        }
    }

    /// The configured tenant of this name: metrics label only these, so their
    /// cardinality stays bounded.
    pub fn get(&self, name: &str) -> Option<&TenantConfig> {
        self.tenants.get(name)
    }

    /// The metric label of a run's tenant: its name when configured, else none.
    pub fn label(&self, tenant: Option<&str>) -> Option<String> {
        tenant
            .filter(|t| self.tenants.contains_key(*t))
            .map(str::to_string)
    }

    /// What a model's tokens cost: its provider's own price, else the model's price for
    /// any provider, else nothing.
    pub fn cost(&self, provider: &str, model: &str, prompt: i64, completion: i64) -> f64 {
        let own = self
            .prices
            .iter()
            .find(|p| p.model == model && p.provider.as_deref() == Some(provider));
        let any = || {
            self.prices
                .iter()
                .find(|p| p.model == model && p.provider.is_none())
        };
        own.or_else(any).map_or(0.0, |p| {
            (prompt as f64 * p.input_per_million + completion as f64 * p.output_per_million)
                / TOKENS_PER_PRICE_UNIT
        })
    }
}

/// One tenant's day: what its completed runs used and cost, and its limits.
#[derive(Clone, Debug)]
pub struct TenantDay {
    pub tenant: String,
    pub day: NaiveDate,
    /// When the daily budgets start again: the next UTC midnight.
    pub resets_at: DateTime<Utc>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub spend: f64,
    pub queued: i64,
    pub running: i64,
    /// None for a tenant that is not configured (open mode).
    pub limits: Option<TenantConfig>,
}

impl TenantDay {
    pub fn total_tokens(&self) -> i64 {
        self.prompt_tokens + self.completion_tokens
    }
}

impl Dispatcher {
    /// `tenant`'s usage today, its runs in flight, and its limits when it is configured.
    pub async fn tenant_day(&self, tenant: &str) -> Result<TenantDay, StoreError> {
        let s = &self.shared;
        let now = s.clock.now();
        let usage = s.store.tenant_usage(tenant, utc_day(now)).await?;
        let activity = s.store.tenant_activity().await?;
        let mine = activity.into_iter().find(|a| a.tenant == tenant);
        Ok(TenantDay {
            tenant: tenant.to_string(),
            day: day_date(utc_day(now)),
            resets_at: next_utc_midnight(now),
            prompt_tokens: usage.iter().map(|u| u.prompt_tokens).sum(),
            completion_tokens: usage.iter().map(|u| u.completion_tokens).sum(),
            spend: spend(&s.tenants, &usage),
            queued: mine.as_ref().map_or(0, |a| a.queued),
            running: mine.as_ref().map_or(0, |a| a.running),
            limits: s.tenants.get(tenant).cloned(),
        })
    }

    /// The limits of the run's tenant, when it is a configured one.
    pub(super) fn limits_of(&self, run: &NewRun) -> Option<&TenantConfig> {
        run.spec
            .tenant
            .as_deref()
            .and_then(|t| self.shared.tenants.get(t))
    }

    /// Whether a configured tenant's daily budgets still allow a new run.
    pub(super) async fn within_budget(
        &self,
        run: &NewRun,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let s = &self.shared;
        let Some(limits) = self.limits_of(run) else {
            return Ok(Ok(()));
        };
        if limits.daily_tokens.is_none() && limits.daily_spend.is_none() {
            return Ok(Ok(()));
        }
        let now = s.clock.now();
        let usage = s.store.tenant_usage(&limits.name, utc_day(now)).await?;
        let tokens: i64 = usage
            .iter()
            .map(|u| u.prompt_tokens + u.completion_tokens)
            .sum();
        let resets_in = (next_utc_midnight(now) - now)
            .to_std()
            .unwrap_or_default()
            .max(MIN_RETRY);
        let refuse = |reason, message| {
            Ok(Err(Refusal {
                reason,
                retry_after: resets_in,
                message,
            }))
        };
        if let Some(budget) = limits.daily_tokens
            && tokens >= i64::try_from(budget).unwrap_or(i64::MAX)
        {
            return refuse(
                RefusalReason::DailyTokens,
                format!(
                    "tenant {:?} used {tokens} of its {budget} tokens for today (UTC); the budget resets at midnight UTC",
                    limits.name
                ),
            );
        }
        let spent = spend(&s.tenants, &usage);
        if let Some(budget) = limits.daily_spend
            && spent >= budget
        {
            return refuse(
                RefusalReason::DailySpend,
                format!(
                    "tenant {:?} spent {spent:.4} of its {budget} for today (UTC); the budget resets at midnight UTC",
                    limits.name
                ),
            );
        }
        Ok(Ok(()))
    }

    /// Takes one run from a configured tenant's enqueue bucket, or refuses.
    pub(super) async fn within_rate(
        &self,
        run: &NewRun,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let s = &self.shared;
        let Some(limits) = self.limits_of(run) else {
            return Ok(Ok(()));
        };
        let (Some(rate), Some(capacity)) = (limits.enqueue_rate, limits.enqueue_capacity()) else {
            return Ok(Ok(()));
        };
        let taken = s
            .store
            .take_enqueue_slot(&limits.name, rate, capacity, s.clock.now())
            .await?;
        Ok(taken.map_err(|wait| Refusal {
            reason: RefusalReason::EnqueueRate,
            retry_after: wait.max(MIN_RETRY),
            message: format!(
                "tenant {:?} enqueues faster than its {rate} runs per second",
                limits.name
            ),
        }))
    }
}

fn spend(book: &TenantBook, usage: &[ModelUsage]) -> f64 {
    usage
        .iter()
        .map(|u| book.cost(&u.provider, &u.model, u.prompt_tokens, u.completion_tokens))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(model: &str, provider: Option<&str>, input: f64, output: f64) -> PriceConfig {
        PriceConfig {
            model: model.into(),
            provider: provider.map(String::from),
            input_per_million: input,
            output_per_million: output,
        }
    }

    #[test]
    fn a_providers_own_price_wins_and_unpriced_models_cost_nothing() {
        let book = TenantBook {
            tenants: HashMap::new(),
            prices: vec![
                price("m", None, 1.0, 2.0),
                price("m", Some("openai"), 10.0, 20.0),
            ],
        };
        assert!((book.cost("sim", "m", 1_000_000, 500_000) - 2.0).abs() < 1e-9);
        assert!((book.cost("openai", "m", 1_000_000, 500_000) - 20.0).abs() < 1e-9);
        assert_eq!(book.cost("sim", "other", 1_000_000, 1_000_000), 0.0);
    }
}
