//! What travels through the Raft log: commands as proposed (with their request id and audit
//! note), batched per entry, and what applying one did.

use serde::{Deserialize, Serialize};
use switchyard_proto::v1::{Backend, Change, Pool, Route, SessionBinding, Settings};

use crate::audit::{AuditNote, AuditRecord};
use crate::auth::tokens::TokenRecord;
use crate::error::ApiError;
use crate::pb::Pb;
use crate::seen::RequestId;

use super::Guard;

/// A write to the model, as it travels through the Raft log.
///
/// The log's encoding is postcard, which is not self-describing: a variant is its index, so
/// a node that does not know a variant cannot decode the entry at all, let alone skip it.
/// That is why each variant has the cluster feature level it needs ([`Command::needs`]): the
/// leader proposes one only once the cluster runs at that level, which it reaches only when
/// every member supports it. New variants go at the end, with a new level.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    CreatePool(Pb<Pool>),
    UpdatePool {
        pool: Pb<Pool>,
        mask: Vec<String>,
    },
    DeletePool {
        name: String,
    },
    AddBackend(Pb<Backend>),
    SetBackendWeight {
        pool: String,
        address: String,
        weight: u32,
    },
    SetBackendState {
        pool: String,
        address: String,
        state: i32,
    },
    SetBackendHealth {
        pool: String,
        address: String,
        health: i32,
    },
    RemoveBackend {
        pool: String,
        address: String,
    },
    SetRoute(Pb<Route>),
    DeleteRoute {
        name: String,
    },
    UpdateSettings {
        settings: Pb<Settings>,
        mask: Vec<String>,
    },
    /// New or refreshed bindings reported by proxies; the first writer of a key wins.
    BindSessions {
        now_ms: u64,
        bindings: Vec<Pb<SessionBinding>>,
    },
    /// Drops bindings whose TTL has passed at `now_ms`.
    ExpireSessions {
        now_ms: u64,
    },
    DeleteSession {
        pool: String,
        key: String,
    },
    /// A bearer token's record (hash only), minted by the node that took the request.
    CreateToken(TokenRecord),
    RevokeToken {
        id: String,
    },
    /// Changes nothing; carries the audit note of a write that is not a command (membership
    /// changes are Raft's own entries).
    Note,
    /// The leader's freshly minted affinity hashing secret; only the first one ever takes.
    SetAffinitySecret(SecretBytes),
    /// Raises the cluster's feature level (never lowers it). The leader proposes it once
    /// every member says it supports the level (`crate::features`).
    SetFeatureLevel(u32),
    /// Drops every binding of a pool (`session delete POOL --all`). Feature level 2.
    DeleteSessions {
        pool: String,
    },
    /// An admin write with conditions that every node checks as it applies it, refusing it
    /// (all alike) when one fails ([`Guard`]). Never nested. Feature level 5.
    Guarded {
        #[serde(deserialize_with = "super::guard::few")]
        guards: Vec<Guard>,
        #[serde(deserialize_with = "super::guard::unguarded")]
        cmd: Box<Command>,
    },
}

/// The feature level from which an admin write carries its guards ([`Command::Guarded`]).
pub const GUARDED_LEVEL: u32 = 5;

fn uses_claims(p: &Pool) -> bool {
    [&p.affinity, &p.hash_key].iter().any(|k| k.trim_start().to_ascii_lowercase().starts_with("claim:"))
}

fn closes_on_failure(p: &Pool) -> bool {
    p.health_check.as_ref().is_some_and(|h| h.close_on_failure)
}

impl Command {
    /// The cluster feature level this command needs: the leader refuses it below that.
    pub fn needs(&self) -> u32 {
        match self {
            Command::DeleteSessions { .. } => 2,
            Command::Guarded { guards, cmd } => {
                guards.iter().map(Guard::needs).fold(cmd.needs().max(GUARDED_LEVEL), u32::max)
            }
            // An older node would drop the field (prost skips what it does not know) and
            // apply a different pool than the rest.
            Command::CreatePool(Pb(p)) if p.backend_tls.is_some() => 3,
            Command::UpdatePool { mask, .. } if mask.iter().any(|f| f == "backend_tls") => 3,
            // Edge authentication and `claim:` keys came before level 3, after rolling
            // upgrades: a level-2 node would store the route without its auth (and serve it
            // open), and refuse a `claim:` key the others apply.
            Command::SetRoute(Pb(r)) if r.auth.is_some() => 3,
            Command::CreatePool(Pb(p)) if uses_claims(p) => 3,
            Command::UpdatePool { pool: Pb(p), mask }
                if mask.iter().any(|f| f == "affinity" || f == "hash_key") && uses_claims(p) =>
            {
                3
            }
            Command::CreatePool(Pb(p)) if closes_on_failure(p) => 4,
            Command::UpdatePool { pool: Pb(p), mask }
                if mask.iter().any(|f| f == "health_check") && closes_on_failure(p) =>
            {
                4
            }
            // Gated by its own rule: proposed only when every member supports the level.
            Command::SetFeatureLevel(_) => 1,
            _ => 1,
        }
    }

    /// Why this command is the leader's own (proposed by it, never forwarded to it: see
    /// `api::peer::forwardable`), or `None` for what an admin may ask any node for. The match
    /// is exhaustive on purpose: a new command does not compile until it is placed.
    pub fn internal(&self) -> Option<&'static str> {
        match self {
            Command::Guarded { cmd, .. } => cmd.internal(),
            Command::SetBackendHealth { .. } => Some("SetBackendHealth (health checks run on the leader)"),
            Command::BindSessions { .. } => Some("BindSessions (proxies report sessions through Discovery)"),
            Command::ExpireSessions { .. } => Some("ExpireSessions"),
            Command::SetAffinitySecret(_) => Some("SetAffinitySecret"),
            Command::SetFeatureLevel(_) => Some("SetFeatureLevel (the leader raises it once every member can)"),
            Command::CreatePool(_)
            | Command::UpdatePool { .. }
            | Command::DeletePool { .. }
            | Command::AddBackend(_)
            | Command::SetBackendWeight { .. }
            | Command::SetBackendState { .. }
            | Command::RemoveBackend { .. }
            | Command::SetRoute(_)
            | Command::DeleteRoute { .. }
            | Command::UpdateSettings { .. }
            | Command::DeleteSession { .. }
            | Command::DeleteSessions { .. }
            | Command::CreateToken(_)
            | Command::RevokeToken { .. }
            | Command::Note => None,
        }
    }

    /// What an operator asked for, to name it in a refusal.
    pub fn what(&self) -> &'static str {
        match self {
            Command::DeleteSessions { .. } => "deleting every session of a pool",
            Command::Guarded { cmd, .. } if cmd.needs() > GUARDED_LEVEL => cmd.what(),
            Command::Guarded { .. } => "a write whose checks every node repeats as it applies it",
            Command::CreatePool(_) | Command::UpdatePool { .. } if self.needs() == 4 => {
                "closing a backend's connections when its health check fails"
            }
            Command::SetRoute(_) => "authentication on a route",
            Command::CreatePool(Pb(p)) | Command::UpdatePool { pool: Pb(p), .. } if uses_claims(p) => {
                "a claim: key (a JWT claim) for affinity or hashing"
            }
            Command::CreatePool(_) | Command::UpdatePool { .. } => "TLS to a pool's backends",
            _ => "this write",
        }
    }
}

/// Secret bytes in a command; `Debug` does not show them.
#[derive(Clone, Serialize, Deserialize)]
pub struct SecretBytes(pub Vec<u8>);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes({} bytes)", self.0.len())
    }
}

/// A command as proposed: with the identity of the admin write it came from, if it carried
/// one (internal writes, such as health flips and session binds, carry none). This is the
/// log's encoding (postcard): logs and snapshots written before request ids do not decode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proposed {
    pub id: Option<RequestId>,
    pub cmd: Command,
    /// Who asked, and what, for the audit log: set on admin writes, none on internal ones.
    pub audit: Option<std::sync::Arc<AuditNote>>,
}

impl From<Command> for Proposed {
    fn from(cmd: Command) -> Proposed {
        Proposed { id: None, cmd, audit: None }
    }
}

/// One Raft entry's payload: the commands a leader gathered while its previous entry was
/// being written (group commit). They apply in order at the entry's revision (a repeated
/// request answers with the revision it was first applied at).
///
/// Shared, so the log's copy of a recent entry is handed to replication and to the state
/// machine without decoding it again (`store::log`'s tail); it encodes as the `Vec` would.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batch(pub std::sync::Arc<Vec<Proposed>>);

/// What applying one command did: the changes it made, or why it made none.
pub type Outcome = Result<Vec<Change>, ApiError>;

/// An [`Outcome`] in a form serde can carry (Raft responses, forwarded replies).
pub type WireOutcome = Result<Vec<Pb<Change>>, ApiError>;

pub fn to_wire(o: Outcome) -> WireOutcome {
    o.map(|v| v.into_iter().map(Pb).collect())
}

pub fn from_wire(o: WireOutcome) -> Outcome {
    o.map(|v| v.into_iter().map(|Pb(c)| c).collect())
}

/// A write's answer: the revision it took effect at, and its outcome.
pub type Written = (u64, WireOutcome);

/// What applying one [`Proposed`] did.
#[derive(Debug)]
pub struct Applied {
    /// The answer; a repeated request gets the first one's (same revision, same outcome).
    pub written: Written,
    /// Whether the model changed as `written` says (false for a repeat or a refusal): only
    /// then are its changes stored and announced.
    pub fresh: bool,
    /// The client whose row in the seen table was written, and those evicted.
    pub recorded: Option<String>,
    pub evicted: Vec<String>,
    /// The audit record written for it, and the one dropped to keep the log bounded.
    pub audited: Option<AuditRecord>,
    pub audit_dropped: Option<u64>,
}
