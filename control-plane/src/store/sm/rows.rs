//! How builds before storage format 4 keyed the state machine's rows in tree `sm` (one
//! prefixed key per entity, the prefix byte and a 0 before its name, per client of the seen table, per token and per audit record),
//! read once when such a data dir is opened.

pub const LAST_APPLIED: &[u8] = b"~last_applied";
pub const MEMBERSHIP: &[u8] = b"~membership";
pub const SETTINGS: &[u8] = b"~settings";
pub const CLOCK: &[u8] = b"~clock";
pub const AFFINITY_SECRET: &[u8] = b"~affinity_secret";
/// The cluster feature level (absent in data from before levels: level 1).
pub const FEATURE_LEVEL: &[u8] = b"~feature_level";
