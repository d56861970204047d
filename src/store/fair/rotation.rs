//! A rotation's state and names: the virtual time and the passes of the members ahead of
//! it, stored as JSON per rotation; a lane's rotation across tenants and a tenant's across
//! its batches.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::GroupName;
use crate::run::Class;
use crate::store::StoreError;

/// Separates the parts of a rotation's name (a provider, a class, a tenant).
const SCOPE_SEPARATOR: char = '\u{1f}';

/// One rotation's stored state: its virtual time and the passes of members ahead of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(in crate::store) struct Rotation {
    pub vtime: f64,
    pub passes: HashMap<String, f64>,
}

impl Rotation {
    /// A rotation as stored (JSON).
    pub(in crate::store) fn decode(scope: &str, stored: &str) -> Result<Rotation, StoreError> {
        serde_json::from_str(stored)
            .map_err(|e| StoreError::Corrupt(format!("rotation {scope}: {e}")))
    }

    /// The rotation to store.
    pub(in crate::store) fn encode(&self) -> String {
        serde_json::to_string(self).expect("a map of numbers serialises")
    }

    pub(super) fn pass(&self, member: &str) -> f64 {
        self.passes
            .get(member)
            .copied()
            .unwrap_or(self.vtime)
            .max(self.vtime)
    }

    /// Serves `member` once, at `cost` (one over its weight).
    pub(super) fn serve(&mut self, member: &str, cost: f64) {
        let start = self.pass(member);
        self.vtime = start;
        self.passes.insert(member.to_string(), start + cost);
        let vtime = self.vtime;
        self.passes.retain(|_, pass| *pass > vtime);
    }
}

/// The rotation across tenants of a lane.
pub(in crate::store) fn tenant_scope(provider: &str, class: Class) -> String {
    format!("{provider}{SCOPE_SEPARATOR}{}", class.rank())
}

/// The rotation across one tenant's batches in a lane.
pub(in crate::store) fn batch_scope(provider: &str, class: Class, tenant: &str) -> String {
    format!("{}{SCOPE_SEPARATOR}{tenant}", tenant_scope(provider, class))
}

/// The rotations a claim over `groups` reads.
pub(in crate::store) fn scopes_of(groups: &[GroupName]) -> Vec<String> {
    let mut scopes: Vec<String> = groups
        .iter()
        .flat_map(|g| {
            [
                tenant_scope(&g.provider, g.class),
                batch_scope(&g.provider, g.class, &g.tenant),
            ]
        })
        .collect();
    scopes.sort();
    scopes.dedup();
    scopes
}
