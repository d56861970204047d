//! Fair dispatch: which startable runs a claim takes when several tenants, or several
//! batches of one tenant, have runs waiting. Written once, as pure logic over what each
//! backend reads; the backends only read the inputs and write the result.
//!
//! The rule. Live runs go first, then priority, as always; a provider's quota, its class
//! caps, the concurrency-key caps and each tenant's cap on runs in flight bound what is
//! taken. Among the runs of one provider, class and priority, the claim rotates across
//! tenants in proportion to their weights, and within a tenant across its batches (runs
//! with no batch are one batch): stride scheduling, one run at a time. Every member of a
//! rotation has a *pass*; the member with the lowest pass is served and its pass grows by
//! `1 / weight` (by 1 for batches). A rotation keeps a virtual time, the pass at which its
//! last member was served, and a member's pass is never below it: a tenant that arrives,
//! or comes back after a pause, joins at the current time instead of cashing in credit
//! for the time it waited with nothing queued.
//!
//! Why stride scheduling with stored passes rather than ranking each claim afresh: a
//! claim is often small (one slot frees, one run is claimed), and a claim that ranks from
//! scratch picks the oldest run every time, which is the big backlog's. The pass carries
//! the rotation from one claim to the next, and it is stored in the database (one row per
//! rotation) so that every process continues the same rotation. Runs in flight per tenant
//! would carry it too, but not when runs finish before the next claim (one slot, short
//! runs), where every tenant has none in flight and the tie falls to the oldest run again.
//!
//! The cost stays bounded by the groups, not the backlog: the backends find the groups
//! with runs queued by walking an index (one probe per group), read at most a share of the
//! room per group ([`fetch_sizes`]), and store only members whose pass is ahead of their
//! rotation's virtual time (the others would be raised to it anyway). The groups are
//! whatever `tenant` and `batch` values the queued runs carry, configured or not (open
//! mode works alike). A table of groups with queued work, kept up to date by every
//! enqueue and claim, was the alternative: it would add a write to a shared row on each,
//! where the loose scan needs nothing kept in step.
//!
//! Layout: this file (the pick and what it reads), `rotation` (a rotation's state and the
//! names of the rotations).

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::model::{ClaimBounds, KeyCaps, ProviderQuota, TenantShares};
use crate::run::Class;

/// Candidates read per group beyond its share of the room, so a group that deserves a
/// little more than its share (a rounding, a better priority) has it at hand.
const SPARE: usize = 2;
/// Candidates read per group beyond its share while keys are capped, so runs skipped
/// because their key is at its cap do not leave the group short.
const SPARE_WITH_KEY_CAPS: usize = 64;

/// A group of runs waiting in one lane (a provider and class): one tenant's runs of one
/// batch. Names are empty for runs with no tenant or no batch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct GroupName {
    pub provider: String,
    pub class: Class,
    pub tenant: String,
    pub batch: String,
}

/// A startable run of a group.
#[derive(Clone, Debug)]
pub(super) struct Candidate {
    pub id: Uuid,
    pub priority: i16,
    /// When it became due, in microseconds: the order across providers.
    pub due_micros: i64,
    pub key: Option<String>,
}

/// A group's startable runs in dispatch order, as read.
#[derive(Clone, Debug)]
pub(super) struct Group {
    pub name: GroupName,
    pub runs: Vec<Candidate>,
    /// As many runs were read as were asked for: the group may hold more.
    pub more: bool,
}

/// Runs in flight, across every process.
#[derive(Clone, Debug, Default)]
pub(super) struct InFlight {
    pub lanes: HashMap<(String, Class), i64>,
    pub keys: HashMap<(String, Class), i64>,
    pub tenants: HashMap<String, i64>,
}

/// Runs in flight by lane, by key and by tenant, in one read, for both backends: rows of
/// (what is counted, its name, its class, how many).
pub(super) const IN_FLIGHT_SQL: &str = "
    SELECT 'lane', provider, CAST(class AS BIGINT), count(*) FROM runs
        WHERE status = 'running' GROUP BY provider, class
    UNION ALL
    SELECT 'key', concurrency_key, CAST(class AS BIGINT), count(*) FROM runs
        WHERE status = 'running' AND concurrency_key IS NOT NULL GROUP BY concurrency_key, class
    UNION ALL
    SELECT 'tenant', tenant, CAST(0 AS BIGINT), count(*) FROM runs
        WHERE status = 'running' AND tenant IS NOT NULL GROUP BY tenant";

impl InFlight {
    /// The counts from the rows of [`IN_FLIGHT_SQL`].
    pub(super) fn from_rows(rows: Vec<(String, String, i64, i64)>) -> InFlight {
        let mut out = InFlight::default();
        for (kind, name, class, n) in rows {
            let class = Class::from_rank(class as i16).unwrap_or(Class::Live);
            match kind.as_str() {
                "lane" => out.lanes.insert((name, class), n),
                "key" => out.keys.insert((name, class), n),
                _ => out.tenants.insert(name, n),
            };
        }
        out
    }
}

/// Whether a claim over `groups` needs the fair pick: some lane has more than one group
/// waiting, or some waiting tenant has a cap. Otherwise dispatch order alone is fair.
pub(super) fn needs_rotation(groups: &[GroupName], shares: &TenantShares) -> bool {
    let mut lanes = HashSet::new();
    groups.iter().any(|g| {
        !lanes.insert((&g.provider, g.class)) || shares.cap(tenant_name(&g.tenant)).is_some()
    })
}

/// How many runs of each lane may start now: its provider's quota within its class cap
/// less the runs in flight; background runs only while none of the provider's live runs
/// is due (`live_due`).
pub(super) fn lane_rooms(
    quotas: &[ProviderQuota],
    in_flight: &InFlight,
    live_due: &HashSet<String>,
) -> HashMap<(String, Class), usize> {
    let mut rooms = HashMap::new();
    for q in quotas.iter().filter(|q| q.max > 0) {
        let running = |class| {
            let n = in_flight.lanes.get(&(q.provider.clone(), class));
            n.copied().unwrap_or(0)
        };
        let below = |cap: u32, class| usize::try_from(i64::from(cap) - running(class)).unwrap_or(0);
        let live = q
            .live_cap
            .map_or(q.max, |cap| below(cap, Class::Live).min(q.max));
        rooms.insert((q.provider.clone(), Class::Live), live);
        if !live_due.contains(&q.provider) {
            let background = below(q.background_cap, Class::Background).min(q.max);
            rooms.insert((q.provider.clone(), Class::Background), background);
        }
    }
    rooms
}

/// How many runs to read of each group: its tenant's weighted share of its lane's room,
/// split across the tenant's batches, plus a few spare (more while keys are capped).
pub(super) fn fetch_sizes(
    groups: &[GroupName],
    rooms: &HashMap<(String, Class), usize>,
    shares: &TenantShares,
    key_caps: KeyCaps,
) -> Vec<usize> {
    let mut lane_weight: HashMap<(&str, Class), u64> = HashMap::new();
    let mut lane_groups: HashMap<(&str, Class), usize> = HashMap::new();
    let mut batches: HashMap<(&str, Class, &str), usize> = HashMap::new();
    for g in groups {
        *lane_groups.entry((&g.provider, g.class)).or_insert(0) += 1;
        let n = batches
            .entry((&g.provider, g.class, &g.tenant))
            .or_insert(0);
        if *n == 0 {
            *lane_weight.entry((&g.provider, g.class)).or_insert(0) +=
                u64::from(shares.weight(tenant_name(&g.tenant)));
        }
        *n += 1;
    }
    groups
        .iter()
        .map(|g| {
            let room = rooms
                .get(&(g.provider.clone(), g.class))
                .copied()
                .unwrap_or(0);
            if room == 0 {
                return 0;
            }
            let weight = u64::from(shares.weight(tenant_name(&g.tenant)));
            let total = lane_weight[&(g.provider.as_str(), g.class)].max(1);
            let split = batches[&(g.provider.as_str(), g.class, g.tenant.as_str())].max(1) as u64;
            let share = (room as u64 * weight).div_ceil(total * split) as usize;
            let keyed = match g.class {
                Class::Live => key_caps.live.is_some(),
                Class::Background => key_caps.background.is_some(),
            };
            // With at least as many groups as room, no group gets a second turn in this
            // claim: its share (one) is all it can use.
            let crowded = lane_groups[&(g.provider.as_str(), g.class)] >= room;
            share
                + match (keyed, crowded) {
                    (true, _) => SPARE_WITH_KEY_CAPS,
                    (false, true) => 0,
                    (false, false) => SPARE,
                }
        })
        .collect()
}

fn tenant_name(tenant: &str) -> Option<&str> {
    (!tenant.is_empty()).then_some(tenant)
}

/// What the claim takes, in the order taken, and the rotations it moved.
#[derive(Debug, Default)]
pub(super) struct Picked {
    pub ids: Vec<Uuid>,
    pub rotations: HashMap<String, Rotation>,
}

/// What a fair pick works from.
pub(super) struct PickInput<'a> {
    pub bounds: ClaimBounds<'a>,
    pub rooms: HashMap<(String, Class), usize>,
    pub in_flight: InFlight,
    pub groups: Vec<Group>,
    /// The stored rotations of the groups' scopes (missing ones start at zero).
    pub rotations: HashMap<String, Rotation>,
    pub limit: usize,
}

/// Takes runs one at a time, the best of every lane: lowest class, then priority, then
/// (within a lane) the tenant and batch whose turn it is, then across lanes the earliest
/// due. Everything it counts (quotas, caps) grows as it takes.
pub(super) fn pick(input: PickInput<'_>) -> Picked {
    let PickInput {
        bounds:
            ClaimBounds {
                quotas,
                key_caps,
                shares,
            },
        mut rooms,
        in_flight:
            InFlight {
                mut keys,
                mut tenants,
                ..
            },
        mut groups,
        mut rotations,
        limit,
    } = input;
    let mut provider_left: HashMap<&str, usize> = quotas
        .iter()
        .map(|q| (q.provider.as_str(), q.max))
        .collect();
    let mut lanes: HashMap<(String, Class), Vec<usize>> = HashMap::new();
    for (i, g) in groups.iter().enumerate() {
        lanes
            .entry((g.name.provider.clone(), g.name.class))
            .or_default()
            .push(i);
    }
    // Each group's runs are taken from the front.
    for g in &mut groups {
        g.runs.reverse();
    }
    // The priority of the last run taken from each group in this claim.
    let mut taken: Vec<Option<i16>> = vec![None; groups.len()];
    // Each group's two rotations, named once rather than at every turn.
    let scopes: Vec<(String, String)> = groups
        .iter()
        .map(|g| {
            let n = &g.name;
            let inner = batch_scope(&n.provider, n.class, &n.tenant);
            (tenant_scope(&n.provider, n.class), inner)
        })
        .collect();
    let mut touched = HashSet::new();
    let mut ids = Vec::new();
    while ids.len() < limit {
        let mut best: Option<((i16, i16, i64), usize)> = None;
        for (lane, members) in &lanes {
            let open = rooms.get(lane).is_some_and(|r| *r > 0)
                && provider_left.get(lane.0.as_str()).is_some_and(|n| *n > 0);
            if !open {
                continue;
            }
            let cap = match lane.1 {
                Class::Live => key_caps.live,
                Class::Background => key_caps.background,
            };
            for &i in members {
                drop_capped_heads(&mut groups[i], cap, &keys);
            }
            let turn = lane_turn(
                &groups, &taken, &scopes, members, shares, &tenants, &rotations,
            );
            let Some(i) = turn else {
                continue;
            };
            let Some(head) = groups[i].runs.last() else {
                // Its turn, but the rest of its runs were not read: the lane waits for the
                // next claim rather than hand the turn to someone else.
                rooms.insert(lane.clone(), 0);
                continue;
            };
            let order = (lane.1.rank(), head.priority, head.due_micros);
            if best.is_none_or(|(b, _)| order < b) {
                best = Some((order, i));
            }
        }
        let Some((_, i)) = best else { break };
        let g = &mut groups[i];
        let run = g.runs.pop().expect("the best group has a head");
        taken[i] = Some(run.priority);
        let name = &g.name;
        let lane = (name.provider.clone(), name.class);
        *rooms.get_mut(&lane).expect("a lane with room") -= 1;
        *provider_left
            .get_mut(name.provider.as_str())
            .expect("a listed provider") -= 1;
        if let Some(key) = run.key {
            *keys.entry((key, name.class)).or_insert(0) += 1;
        }
        *tenants.entry(name.tenant.clone()).or_insert(0) += 1;
        let weight = f64::from(shares.weight(tenant_name(&name.tenant)));
        let (scope, inner) = scopes[i].clone();
        rotations
            .entry(scope.clone())
            .or_default()
            .serve(&name.tenant, 1.0 / weight);
        rotations
            .entry(inner.clone())
            .or_default()
            .serve(&name.batch, 1.0);
        touched.extend([scope, inner]);
        ids.push(run.id);
    }
    rotations.retain(|scope, _| touched.contains(scope));
    Picked { ids, rotations }
}

/// Drops the runs at the front of `group` whose key is at its cap: they cannot start in
/// this claim.
fn drop_capped_heads(group: &mut Group, cap: Option<u32>, keys: &HashMap<(String, Class), i64>) {
    let Some(cap) = cap else { return };
    while let Some(head) = group.runs.last() {
        let Some(key) = &head.key else { return };
        let running = keys
            .get(&(key.clone(), group.name.class))
            .copied()
            .unwrap_or(0);
        if running < i64::from(cap) {
            return;
        }
        group.runs.pop();
    }
}

/// The group of `members` (one lane's) whose turn it is: among the tenants below their cap
/// with a run at the lane's best priority, the lowest pass; within it, the batch with the
/// lowest pass. A group whose read runs were taken while it may hold more takes part as
/// it was (its turn then ends the lane's claim, see [`pick`]); one whose read runs were
/// all skipped for their keys' caps has nothing to start in this claim.
fn lane_turn(
    groups: &[Group],
    taken: &[Option<i16>],
    scopes: &[(String, String)],
    members: &[usize],
    shares: &TenantShares,
    tenants: &HashMap<String, i64>,
    rotations: &HashMap<String, Rotation>,
) -> Option<usize> {
    let head_priority = |i: usize| match groups[i].runs.last() {
        Some(run) => Some(run.priority),
        // Its read runs were taken and it may hold more: it keeps its place in the
        // rotation, at the priority it was served at.
        None if groups[i].more => taken[i],
        None => None,
    };
    let eligible: Vec<(usize, i16)> = members
        .iter()
        .filter(|&&i| {
            let tenant = &groups[i].name.tenant;
            shares
                .cap(tenant_name(tenant))
                .is_none_or(|cap| tenants.get(tenant).copied().unwrap_or(0) < i64::from(cap))
        })
        .filter_map(|&i| head_priority(i).map(|p| (i, p)))
        .collect();
    let best = eligible.iter().map(|(_, p)| *p).min()?;
    let pass = |scope: &str, member: &str| {
        rotations
            .get(scope)
            .map_or(0.0, |r: &Rotation| r.pass(member))
    };
    eligible
        .into_iter()
        .filter(|(_, p)| *p == best)
        .map(|(i, _)| {
            let n = &groups[i].name;
            let tenant_pass = pass(&scopes[i].0, &n.tenant);
            let batch_pass = pass(&scopes[i].1, &n.batch);
            (i, tenant_pass, batch_pass)
        })
        .min_by(|a, b| {
            let (na, nb) = (&groups[a.0].name, &groups[b.0].name);
            a.1.total_cmp(&b.1)
                .then_with(|| na.tenant.cmp(&nb.tenant))
                .then_with(|| a.2.total_cmp(&b.2))
                .then_with(|| na.batch.cmp(&nb.batch))
        })
        .map(|(i, _, _)| i)
}

mod rotation;
#[cfg(test)]
mod tests;

pub(super) use rotation::{Rotation, batch_scope, scopes_of, tenant_scope};
