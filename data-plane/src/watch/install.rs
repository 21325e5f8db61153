//! The one way config enters a running proxy, from the control plane or the cache file:
//! routing table, session bindings and status move together.

use std::sync::Arc;
use std::time::SystemTime;

use switchyard_model::topology::Pair;

use super::mirror::{Delta, Mirror};
use crate::drain;
use crate::state::ProxyState;
use crate::table::Table;

/// Puts `mirror` in force. A topology change rebuilds and swaps the table, then acts on
/// backends whose state changed (drain, disable, removal); established connections are
/// otherwise untouched. A sessions-only change updates the binding map and nothing else.
pub fn install(state: &ProxyState, mirror: &Mirror, delta: &Delta, source: &'static str, applied_at: SystemTime) {
    match delta {
        Delta::Sessions(changes) => state.affinity.update(changes),
        Delta::All => {
            let new = Arc::new(Table::build_with(mirror.model(), mirror.revision, &state.registry, &state.compiled));
            let old = state.table.swap(new.clone());
            drain::on_change(state, &old, &new);
            let backends = &mirror.model().backends;
            state.registry.retain(|(pool, address)| backends.contains_key(&Pair(pool, address)));
            state.affinity.replace(mirror.session_map());
        }
    }
    state.status.record(source, mirror.revision, applied_at);
}
