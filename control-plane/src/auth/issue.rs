//! Minting tokens through Raft (the Access API and the bootstrap credential share this), and
//! writing the first admin credential where only its owner can read it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::tokens::{self, TokenRecord};
use crate::audit::AuditNote;
use crate::error::ApiError;
use crate::node::context::NodeCtx;
use crate::node::leader;
use crate::state::{Command, Proposed};

/// Longest lifetime a token may be given: ten years.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The file the initializing node writes the cluster's first admin token to.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Mints a token and commits its hash; the secret is returned to the caller only. `ttl`
/// `None` never expires (the bootstrap token only). Not deduplicated by request id: a retry
/// would answer with the first token's record but this attempt's secret, so each call mints
/// its own.
pub async fn create_token(
    node: &NodeCtx,
    name: String,
    role: &str,
    ttl: Option<Duration>,
    audit: Option<Arc<AuditNote>>,
) -> Result<(u64, TokenRecord, String), ApiError> {
    tokens::token_role(role).map_err(ApiError::InvalidArgument)?;
    if name.len() > tokens::MAX_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::InvalidArgument(format!(
            "token name must be at most {} printable characters",
            tokens::MAX_NAME
        )));
    }
    let now = crate::clock::now_ms();
    let expires_ms = match ttl {
        None => 0,
        Some(t) if t.is_zero() || t > MAX_TTL => {
            return Err(ApiError::InvalidArgument("ttl must be more than 0 and at most 10 years".into()))
        }
        Some(t) => now + t.as_millis() as u64,
    };
    let (id, secret) = tokens::mint();
    let rec = TokenRecord {
        id,
        name,
        role: role.to_string(),
        hash: tokens::hash(&secret),
        created_ms: now,
        expires_ms,
        created_revision: 0,
    };
    let cmd = Command::CreateToken(rec.clone());
    let (revision, _) = leader::write(node, Proposed { id: None, cmd, audit }).await?;
    Ok((revision, TokenRecord { created_revision: revision, ..rec }, secret))
}

/// Writes `secret` to `path` with mode 0600, through a temporary file so a reader never sees
/// half of it. A stale file from before initialization is replaced.
pub fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("token.tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    // `mode` applies only to a new file: make sure of it for a leftover one too.
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    writeln!(f, "{secret}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// On the node that initialized the cluster: mints the first admin token (no expiry), commits
/// its hash, and writes it to `<data-dir>/admin.token`. Retries while the first leader is
/// being elected. The log says where it went, never what it is.
pub async fn bootstrap_admin_token(node: &NodeCtx) {
    let path: PathBuf = node.config.data_dir.join(ADMIN_TOKEN_FILE);
    let audit = Some(Arc::new(AuditNote {
        who: "bootstrap".into(),
        role: "admin".into(),
        method: "Access/CreateToken".into(),
        summary: format!("the first admin token, written to {} on node {}", path.display(), node.id),
        at_ms: 0,
    }));
    let mut tries = 0;
    let (rec, secret) = loop {
        match create_token(node, "bootstrap-admin".into(), "admin", None, audit.clone()).await {
            Ok((_, rec, secret)) => break (rec, secret),
            Err(e) if tries < 20 && !node.shutdown.is_cancelled() => {
                tries += 1;
                tracing::info!("bootstrap admin token not committed yet ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                tracing::error!("could not mint the bootstrap admin token: {e}");
                return;
            }
        }
    };
    match write_secret(&path, &secret) {
        Ok(()) => tracing::warn!(
            token_id = rec.id,
            "wrote the cluster's first admin token to {} (mode 0600): use it with --token-file, \
             and revoke it (`switchyard token revoke {}`) once other admin credentials exist",
            path.display(),
            rec.id
        ),
        Err(e) => tracing::error!(
            token_id = rec.id,
            "minted the first admin token but cannot write {}: {e}; revoke token {} with an admin certificate",
            path.display(),
            rec.id
        ),
    }
}
