//! The fair pick on made-up groups: claims carried over by the stored rotations.

use super::*;

const PROVIDER: &str = "p";

fn group(tenant: &str, batch: &str, priority: i16, runs: usize) -> Group {
    Group {
        name: GroupName {
            provider: PROVIDER.into(),
            class: Class::Live,
            tenant: tenant.into(),
            batch: batch.into(),
        },
        runs: (0..runs)
            .map(|i| Candidate {
                id: Uuid::now_v7(),
                priority,
                due_micros: i as i64,
                key: None,
            })
            .collect(),
        more: false,
    }
}

/// A dispatcher's view: groups with runs left, and the rotations as stored between claims.
struct Queue {
    groups: Vec<Group>,
    rotations: HashMap<String, Rotation>,
    shares: TenantShares,
    in_flight: HashMap<String, i64>,
}

impl Queue {
    fn new(groups: Vec<Group>) -> Queue {
        Queue {
            groups,
            rotations: HashMap::new(),
            shares: TenantShares::default(),
            in_flight: HashMap::new(),
        }
    }

    /// One claim of up to `limit`; returns the (tenant, batch) of each run taken.
    fn claim(&mut self, limit: usize) -> Vec<(String, String)> {
        let quotas = [ProviderQuota::only(PROVIDER, limit)];
        let in_flight = InFlight {
            tenants: self.in_flight.clone(),
            ..InFlight::default()
        };
        let rooms = lane_rooms(&quotas, &in_flight, &HashSet::new());
        let picked = pick(PickInput {
            bounds: ClaimBounds {
                quotas: &quotas,
                key_caps: KeyCaps::default(),
                shares: &self.shares,
            },
            rooms,
            in_flight,
            groups: self.groups.clone(),
            rotations: self.rotations.clone(),
            limit,
        });
        self.rotations.extend(picked.rotations);
        let mut taken = Vec::new();
        for id in picked.ids {
            let g = self
                .groups
                .iter_mut()
                .find(|g| g.runs.iter().any(|r| r.id == id))
                .expect("a picked run is a candidate");
            g.runs.retain(|r| r.id != id);
            *self.in_flight.entry(g.name.tenant.clone()).or_insert(0) += 1;
            taken.push((g.name.tenant.clone(), g.name.batch.clone()));
        }
        taken
    }
}

fn count(taken: &[(String, String)], tenant: &str) -> usize {
    taken.iter().filter(|(t, _)| t == tenant).count()
}

#[test]
fn claims_of_one_rotate_across_tenants() {
    let mut q = Queue::new(vec![group("a", "", 5, 1000), group("b", "", 5, 10)]);
    let taken: Vec<_> = (0..20).flat_map(|_| q.claim(1)).collect();
    assert_eq!(
        count(&taken, "b"),
        10,
        "b's ten runs go within twenty claims of one: {taken:?}"
    );
}

#[test]
fn weights_split_the_claims() {
    let mut q = Queue::new(vec![group("a", "", 5, 1000), group("b", "", 5, 1000)]);
    q.shares.weights.insert("a".into(), 3);
    let taken: Vec<_> = (0..100).flat_map(|_| q.claim(4)).collect();
    assert_eq!((count(&taken, "a"), count(&taken, "b")), (300, 100));
}

#[test]
fn batches_of_one_tenant_interleave() {
    let mut q = Queue::new(vec![group("a", "big", 5, 5000), group("a", "small", 5, 50)]);
    let taken: Vec<_> = (0..25).flat_map(|_| q.claim(4)).collect();
    let small = taken.iter().filter(|(_, b)| b == "small").count();
    assert_eq!(
        small, 50,
        "the small batch is done in the first hundred starts"
    );
}

#[test]
fn a_tenant_joining_late_gets_no_credit_for_its_absence() {
    let mut q = Queue::new(vec![group("a", "", 5, 1000)]);
    for _ in 0..50 {
        q.claim(2);
    }
    q.groups.push(group("b", "", 5, 1000));
    let taken: Vec<_> = (0..10).flat_map(|_| q.claim(2)).collect();
    assert_eq!(
        count(&taken, "b"),
        10,
        "b shares from the moment it arrives: {taken:?}"
    );
}

#[test]
fn priority_goes_before_the_rotation() {
    let mut q = Queue::new(vec![group("a", "", 1, 10), group("b", "", 5, 10)]);
    let taken = q.claim(10);
    assert_eq!(count(&taken, "a"), 10, "a's urgent runs all go first");
}

#[test]
fn a_tenant_cap_bounds_its_runs_in_flight() {
    let mut q = Queue::new(vec![group("a", "", 5, 100), group("b", "", 5, 100)]);
    q.shares.caps.insert("a".into(), 3);
    q.in_flight.insert("a".into(), 1);
    let taken = q.claim(20);
    assert_eq!((count(&taken, "a"), count(&taken, "b")), (2, 18));
    assert_eq!(count(&q.claim(20), "a"), 0, "a stays at its cap");
}

#[test]
fn a_group_read_short_holds_its_lane_for_the_next_claim() {
    let mut short = group("a", "", 5, 1);
    short.more = true;
    let mut q = Queue::new(vec![short, group("b", "", 5, 100)]);
    let taken = q.claim(10);
    assert!(
        taken.len() < 10 && count(&taken, "b") <= 2,
        "b does not take a's turns while a's runs were not read: {taken:?}"
    );
}

#[test]
fn rotations_keep_only_members_ahead() {
    let mut r = Rotation::default();
    r.serve("a", 1.0);
    r.serve("b", 1.0);
    r.serve("a", 1.0);
    assert_eq!(r.vtime, 1.0);
    assert_eq!(
        r.passes,
        HashMap::from([("a".to_string(), 2.0)]),
        "b, at the virtual time, needs no row"
    );
}

#[test]
fn a_group_held_by_its_key_cap_holds_nobody_back() {
    let mut keyed = group("a", "", 5, 3);
    keyed.more = true;
    for run in &mut keyed.runs {
        run.key = Some("session".into());
    }
    let quotas = [ProviderQuota::only(PROVIDER, 10)];
    let in_flight = InFlight {
        keys: HashMap::from([(("session".to_string(), Class::Live), 1)]),
        ..InFlight::default()
    };
    let rooms = lane_rooms(&quotas, &in_flight, &HashSet::new());
    let shares = TenantShares::default();
    let picked = pick(PickInput {
        bounds: ClaimBounds {
            quotas: &quotas,
            key_caps: KeyCaps {
                live: Some(1),
                background: None,
            },
            shares: &shares,
        },
        rooms,
        in_flight,
        groups: vec![keyed, group("b", "", 5, 20)],
        rotations: HashMap::new(),
        limit: 10,
    });
    assert_eq!(
        picked.ids.len(),
        10,
        "b's runs start while a's key is at its cap"
    );
}

#[test]
fn crowded_lanes_give_each_group_one_turn_per_claim() {
    let names: Vec<String> = (0..50).map(|i| format!("t{i:02}")).collect();
    let groups = names
        .iter()
        .map(|t| {
            let mut g = group(t, "", 5, 1);
            g.more = true;
            g
        })
        .collect();
    let mut q = Queue::new(groups);
    let taken = q.claim(20);
    assert_eq!(taken.len(), 20, "twenty groups served once each: {taken:?}");
    let next = q.claim(20);
    assert!(
        next.iter().all(|(t, _)| !taken.iter().any(|(u, _)| u == t)),
        "the next claim serves the groups not yet served"
    );
}
