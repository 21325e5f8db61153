//! Wall-clock time where the model needs it: the leader stamps it into commands (so applying
//! stays deterministic) and reports carry it for display.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
