//! Authorization on every call, in one place: a tower layer in front of every gRPC service
//! that finds who is calling (client certificate, bearer token, or the loopback mode), checks
//! the method's row in [`table`], and hands the caller to handlers in the request extensions.

pub mod issue;
pub mod layer;
pub mod table;
pub mod tokens;

use std::sync::Arc;

use switchyard_model::tls::{identity_of, Identity, Role};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::transport::CertificateDer;
use tonic::Status;

use self::table::Access;
use self::tokens::TokenRecord;

/// How a node treats a caller that brings no credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Served with TLS: a caller proves itself with a client certificate or a bearer token,
    /// or is refused (UNAUTHENTICATED).
    Required,
    /// Served without TLS (loopback only, unless `--insecure`): there are no certificates, so
    /// a caller without a token is trusted as admin and as a peer. A token, when sent, is
    /// still checked and its role applies.
    LoopbackTrusted,
}

/// Who made a call, as the layer established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Certificate(Identity),
    Token {
        id: String,
        name: String,
        role: Role,
    },
    /// No credential, on a node in [`Auth::LoopbackTrusted`] mode.
    Loopback,
}

impl Caller {
    /// The role that decides what the caller may do; `None` for the trusted loopback caller,
    /// who may do anything.
    pub fn role(&self) -> Option<Role> {
        match self {
            Caller::Certificate(i) => Some(i.role),
            Caller::Token { role, .. } => Some(*role),
            Caller::Loopback => None,
        }
    }

    pub(crate) fn may(&self, allowed: &[Role]) -> bool {
        self.role().is_none_or(|r| allowed.contains(&r))
    }

    /// For audit records and messages: never a secret.
    pub fn who(&self) -> String {
        match self {
            Caller::Certificate(i) => format!("cert {}", i.name),
            Caller::Token { id, name, .. } if name.is_empty() => format!("token {id}"),
            Caller::Token { id, name, .. } => format!("token {id} ({name})"),
            Caller::Loopback => "loopback".into(),
        }
    }

    /// Whether the credential this caller was let in with still holds. A call is checked when
    /// it starts; a stream it opened (a watch, the console's feed) runs on, so it asks this
    /// as it goes: a token revoked or expired since ends it. Certificates (whose revocation is
    /// their CA's business) and the trusted loopback are not looked at again.
    pub fn still_holds(&self, tokens: &tokens::Tokens, now_ms: u64) -> Result<(), String> {
        let Caller::Token { id, .. } = self else { return Ok(()) };
        match tokens.get(id) {
            None => Err(format!("token {id} was revoked")),
            Some(r) if r.expired(now_ms) => Err(format!("token {id} has expired")),
            Some(_) => Ok(()),
        }
    }

    /// The role as audit records show it.
    pub fn role_name(&self) -> &'static str {
        self.role().map_or("admin (loopback)", Role::as_str)
    }
}

/// Finds a token's record by its secret; the node reads its applied state.
pub trait TokenLookup: Send + Sync {
    fn lookup(&self, secret: &str) -> Option<TokenRecord>;
}

impl TokenLookup for crate::store::sm::Shared {
    fn lookup(&self, secret: &str) -> Option<TokenRecord> {
        self.read().state.tokens().by_secret(secret).cloned()
    }
}

/// Decides each call: the mode, where tokens are looked up, and the clock expiry is read from.
pub struct Authorizer {
    pub mode: Auth,
    pub tokens: Arc<dyn TokenLookup>,
}

/// What a request brings, taken from its headers and connection.
pub struct Presented<'a> {
    pub path: &'a str,
    pub authorization: Option<&'a [u8]>,
    /// The client's certificate chain (leaf first), when it sent one over TLS.
    pub peer_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

impl Authorizer {
    /// The caller, if the call may go ahead; otherwise UNAUTHENTICATED (no or bad credential)
    /// or PERMISSION_DENIED (a role the method does not admit), each saying why. An open
    /// method (health) needs no caller: `Ok(None)`.
    pub fn check(&self, p: &Presented<'_>, now_ms: u64) -> Result<Option<Caller>, Status> {
        let method = table::method_name(p.path);
        let Some(access) = table::access(p.path) else {
            return Err(Status::permission_denied(format!("{method} is not in the permission table: refused")));
        };
        let allowed = match access {
            Access::Open => return Ok(None),
            Access::Roles(r) => r,
        };
        let caller = self.caller(p, now_ms)?;
        if !caller.may(allowed) {
            let need: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
            return Err(Status::permission_denied(format!(
                "{method} needs role {}; {} has role {}",
                need.join(" or "),
                caller.who(),
                caller.role_name()
            )));
        }
        Ok(Some(caller))
    }

    /// A presented token wins over the certificate (a person with a viewer certificate may
    /// use an admin token for one command); a bad token is refused, never ignored.
    fn caller(&self, p: &Presented<'_>, now_ms: u64) -> Result<Caller, Status> {
        if let Some(h) = p.authorization {
            return self.token(h, now_ms);
        }
        if let Some(leaf) = p.peer_certs.as_ref().and_then(|c| c.first().cloned()) {
            return identity_of(leaf.as_ref())
                .map(Caller::Certificate)
                .map_err(|e| Status::unauthenticated(format!("client certificate carries no identity: {e}")));
        }
        match self.mode {
            Auth::LoopbackTrusted => Ok(Caller::Loopback),
            Auth::Required => Err(Status::unauthenticated(
                "no credential: present a client certificate signed by the cluster CA, or a bearer token \
                 (--token, SWITCHYARD_TOKEN or --token-file)",
            )),
        }
    }

    fn token(&self, header: &[u8], now_ms: u64) -> Result<Caller, Status> {
        let bad = |m: &str| Status::unauthenticated(m.to_string());
        let text = std::str::from_utf8(header).map_err(|_| bad("authorization header is not text"))?;
        let secret = match text.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => return Err(bad("authorization must be `Bearer <token>`")),
        };
        if !tokens::well_formed(secret) {
            return Err(bad("malformed bearer token: expected sy_ and 64 hex digits"));
        }
        let rec = self.tokens.lookup(secret).ok_or_else(|| bad("unknown or revoked token"))?;
        if rec.expired(now_ms) {
            return Err(Status::unauthenticated(format!("token {} has expired", rec.id)));
        }
        let role =
            tokens::token_role(&rec.role).map_err(|e| Status::unauthenticated(format!("token {}: {e}", rec.id)))?;
        Ok(Caller::Token { id: rec.id, name: rec.name, role })
    }
}

/// The client certificates tonic recorded for a TLS connection, if any.
pub fn peer_certs<B>(req: &http::Request<B>) -> Option<Arc<Vec<CertificateDer<'static>>>> {
    req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|i| i.peer_certs())
}

/// The caller a handler is serving (put there by the layer); a call that reached a handler
/// without one could only come from a test harness bypassing the layer, so it is refused.
pub fn caller_of<T>(req: &tonic::Request<T>) -> Result<Caller, Status> {
    req.extensions().get::<Caller>().cloned().ok_or_else(|| Status::internal("no caller on the request"))
}

#[cfg(test)]
mod tests;
