use std::sync::Arc;

use tonic::Code;

use super::tokens::{hash, mint, TokenRecord, Tokens};
use super::*;

struct Fixed(Tokens);

impl TokenLookup for Fixed {
    fn lookup(&self, secret: &str) -> Option<TokenRecord> {
        self.0.by_secret(secret).cloned()
    }
}

fn token(role: &str, expires_ms: u64) -> (TokenRecord, String) {
    let (id, secret) = mint();
    let rec = TokenRecord {
        id,
        name: "ci".into(),
        role: role.into(),
        hash: hash(&secret),
        created_ms: 0,
        expires_ms,
        created_revision: 1,
    };
    (rec, secret)
}

fn auth(mode: Auth, recs: Vec<TokenRecord>) -> Authorizer {
    Authorizer { mode, tokens: Arc::new(Fixed(Tokens::from_records(recs))) }
}

fn call(a: &Authorizer, path: &str, header: Option<&str>) -> Result<Option<Caller>, tonic::Status> {
    a.check(&Presented { path, authorization: header.map(str::as_bytes), peer_certs: None }, 100)
}

const CREATE_POOL: &str = "/switchyard.v1.Admin/CreatePool";
const DRAIN: &str = "/switchyard.v1.Admin/SetBackendState";

#[test]
fn tokens_admit_by_role_and_refuse_with_the_reason() {
    let (viewer, vs) = token("viewer", 0);
    let (operator, os) = token("operator", 0);
    let (expired, es) = token("admin", 100);
    let a = auth(Auth::Required, vec![viewer.clone(), operator, expired]);
    let bearer = |s: &str| format!("Bearer {s}");

    let caller = call(&a, "/switchyard.v1.Query/ListPools", Some(&bearer(&vs))).unwrap().unwrap();
    assert_eq!(caller.who(), format!("token {} (ci)", viewer.id));
    let e = call(&a, CREATE_POOL, Some(&bearer(&vs))).unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("Admin/CreatePool needs role admin") && e.message().contains("role viewer"), "{e:?}");
    assert!(call(&a, DRAIN, Some(&bearer(&os))).is_ok());
    assert_eq!(call(&a, CREATE_POOL, Some(&bearer(&os))).unwrap_err().code(), Code::PermissionDenied);

    let e = call(&a, CREATE_POOL, Some(&bearer(&es))).unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("expired"), "{e:?}");
    let (_, unknown) = mint();
    assert!(call(&a, CREATE_POOL, Some(&bearer(&unknown))).unwrap_err().message().contains("unknown or revoked"));
    assert!(call(&a, CREATE_POOL, Some("Basic abc")).unwrap_err().message().contains("Bearer"));
    assert!(call(&a, CREATE_POOL, Some("Bearer sy_12")).unwrap_err().message().contains("malformed"));
}

#[test]
fn without_a_credential_the_mode_decides() {
    let strict = auth(Auth::Required, vec![]);
    let e = call(&strict, "/switchyard.v1.Query/ListPools", None).unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("no credential"), "{e:?}");
    // Health needs nothing, in either mode.
    assert_eq!(call(&strict, "/grpc.health.v1.Health/Check", None).unwrap(), None);

    let loopback = auth(Auth::LoopbackTrusted, vec![]);
    assert_eq!(call(&loopback, CREATE_POOL, None).unwrap(), Some(Caller::Loopback));
    assert_eq!(call(&loopback, "/switchyard.raft.v1.Raft/Vote", None).unwrap(), Some(Caller::Loopback));
    // A token sent to a loopback node still counts, with its role.
    let (viewer, vs) = token("viewer", 0);
    let loopback = auth(Auth::LoopbackTrusted, vec![viewer]);
    let e = call(&loopback, CREATE_POOL, Some(&format!("Bearer {vs}"))).unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}

#[test]
fn a_path_not_in_the_table_is_refused_even_for_the_trusted() {
    let loopback = auth(Auth::LoopbackTrusted, vec![]);
    let e = call(&loopback, "/switchyard.v1.Admin/DropEverything", None).unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("not in the permission table"), "{e:?}");
}
