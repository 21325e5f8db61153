//! Edge authentication, as the control plane validates it and the proxy compiles it: a
//! route's JSON Web Key Set becomes verification keys, and the rest of its settings are
//! checked once, at write time, so a proxy never meets a form it cannot use.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use switchyard_proto::v1::{route_auth, AuthRequest, JwtAuth, RouteAuth};

use crate::KeySpec;

/// A key set larger than this is refused: it travels in every watch and cache.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;
const MAX_KEYS: usize = 32;
const MAX_LIST: usize = 16;
/// An auth subrequest's deadline when the route gives none, and its cap.
pub const DEFAULT_SUBREQUEST_MS: u32 = 2000;
const MAX_SUBREQUEST_MS: u32 = 60_000;

/// A verification key: its `kid` (when the set names one), the algorithms it may verify
/// (its `alg`, or those of its key type), and the key.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    pub algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("kid", &self.kid).field("algorithms", &self.algorithms).finish()
    }
}

/// The keys of a JSON Web Key Set. Only public asymmetric keys are taken: a symmetric
/// (`oct`) key would let anyone who can read the config mint tokens.
pub fn compile_jwks(text: &str) -> Result<Vec<Key>, String> {
    if text.len() > MAX_JWKS_BYTES {
        return Err(format!("key set is {} bytes; at most {MAX_JWKS_BYTES}", text.len()));
    }
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
    if set.keys.is_empty() || set.keys.len() > MAX_KEYS {
        return Err(format!("a key set needs 1 to {MAX_KEYS} keys, not {}", set.keys.len()));
    }
    private_parts(text)?;
    set.keys
        .iter()
        .enumerate()
        .map(|(i, jwk)| {
            let what =
                || format!("key {i}{}", jwk.common.key_id.as_deref().map(|k| format!(" ({k})")).unwrap_or_default());
            let by_type: Vec<Algorithm> = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => vec![
                    Algorithm::RS256,
                    Algorithm::RS384,
                    Algorithm::RS512,
                    Algorithm::PS256,
                    Algorithm::PS384,
                    Algorithm::PS512,
                ],
                AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                    EllipticCurve::P256 => vec![Algorithm::ES256],
                    EllipticCurve::P384 => vec![Algorithm::ES384],
                    _ => return Err(format!("{}: curve {:?} is not supported", what(), ec.curve)),
                },
                AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
                AlgorithmParameters::OctetKeyPair(okp) => {
                    return Err(format!("{}: curve {:?} is not supported", what(), okp.curve))
                }
                AlgorithmParameters::OctetKey(_) => {
                    return Err(format!("{}: symmetric (oct) keys are refused; publish public keys only", what()))
                }
            };
            let algorithms = match jwk.common.key_algorithm {
                None => by_type,
                Some(a) => {
                    let a = algorithm_of(a).ok_or_else(|| format!("{}: alg {a:?} is not supported", what()))?;
                    if !by_type.contains(&a) {
                        return Err(format!("{}: alg {a:?} does not fit its key type", what()));
                    }
                    vec![a]
                }
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("{}: {e}", what()))?;
            Ok(Key { kid: jwk.common.key_id.clone(), algorithms, key })
        })
        .collect()
}

/// Members that only a private key has (RFC 7518 §6.2.2, §6.3.2; RFC 8037 §2). A symmetric
/// key's `k` is refused by its type, below.
const PRIVATE: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "oth"];

/// Refuses a key set that carries private key material. jsonwebtoken reads the public members
/// and ignores the rest, so a set exported whole from a key store would otherwise be taken,
/// stored, and shown to every viewer of the config: the key to sign tokens with.
fn private_parts(text: &str) -> Result<(), String> {
    let set: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
    let keys = set.get("keys").and_then(|k| k.as_array()).map(Vec::as_slice).unwrap_or_default();
    for (i, key) in keys.iter().enumerate() {
        if let Some(m) = PRIVATE.iter().find(|m| key.get(**m).is_some()) {
            return Err(format!(
                "key {i} holds private key material (member {m:?}): publish public keys only, and treat that key as \
                 exposed"
            ));
        }
    }
    Ok(())
}

fn algorithm_of(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Where a route's token is read from.
pub fn token_source(j: &JwtAuth) -> Result<KeySpec, String> {
    if j.token_from.is_empty() {
        return Ok(KeySpec::Header("Authorization".into()));
    }
    match j.token_from.parse::<KeySpec>().map_err(|e| e.to_string())? {
        s @ (KeySpec::Header(_) | KeySpec::Cookie(_) | KeySpec::Query(_)) => Ok(s),
        _ => Err(format!("token_from {:?} must be header:NAME, cookie:NAME or query:NAME", j.token_from)),
    }
}

/// An HTTP token (RFC 9110 §5.6.2), what a header name may be.
/// Header names a claim may not be written to.
const RESERVED: [&str; 14] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "expect",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "cookie",
];

fn header_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The subrequest endpoint: `http://host[:port]/path`, as the authority to dial (port 80 when
/// the url names none, as a browser or NGINX reads it) and the path to ask for.
pub fn subrequest_target(r: &AuthRequest) -> Result<(String, String), String> {
    let rest = r.url.strip_prefix("http://").ok_or_else(|| format!("auth request url {:?} must be http://", r.url))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let not = || format!("auth request url {:?} is not http://host:port/path", r.url);
    // A path a request line can carry as it is: visible ASCII (anything else percent-encoded).
    let visible = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
    if authority.is_empty() || !visible(authority) || authority.contains('@') || !visible(path) || r.url.len() > 2048 {
        return Err(not());
    }
    // The port, when given, is 1-65535 written plainly; an IPv6 host is in brackets.
    let authority = if authority.starts_with('[') && authority.ends_with(']') {
        format!("{authority}:80")
    } else {
        match authority.rsplit_once(':') {
            None if !authority.starts_with('[') => format!("{authority}:80"),
            Some((host, port))
                if !host.is_empty() && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']'))) =>
            {
                match port.parse::<u16>() {
                    Ok(p) if p > 0 && p.to_string() == port => authority.to_string(),
                    _ => return Err(format!("auth request url {:?}: port must be 1 to 65535", r.url)),
                }
            }
            _ => return Err(not()),
        }
    };
    Ok((authority, path.to_string()))
}

/// Checks a route's auth settings as written.
pub fn validate(a: &RouteAuth) -> Result<(), String> {
    match &a.kind {
        None => Ok(()),
        Some(route_auth::Kind::Jwt(j)) => {
            compile_jwks(&j.jwks)?;
            token_source(j)?;
            for (what, list) in [("issuers", &j.issuers), ("audiences", &j.audiences)] {
                if list.len() > MAX_LIST || list.iter().any(|v| v.is_empty() || v.len() > 256) {
                    return Err(format!("{what}: at most {MAX_LIST}, each 1 to 256 characters"));
                }
            }
            if j.claim_headers.len() > MAX_LIST {
                return Err(format!("at most {MAX_LIST} claim headers"));
            }
            for (claim, header) in &j.claim_headers {
                if claim.is_empty() || claim.len() > 128 || !header_name(header) {
                    return Err(format!("claim header {claim:?} -> {header:?}: a claim name and a header name"));
                }
                // A claim may name a header the backend reads, never one that frames or routes
                // the request, or that the proxy writes itself.
                if RESERVED.iter().any(|r| header.eq_ignore_ascii_case(r))
                    || header.to_ascii_lowercase().starts_with("sec-websocket-")
                {
                    return Err(format!("claim header {header:?} is one the proxy sets or the request is framed by"));
                }
            }
            Ok(())
        }
        Some(route_auth::Kind::Request(r)) => {
            subrequest_target(r)?;
            if r.timeout_ms > MAX_SUBREQUEST_MS {
                return Err(format!("auth request timeout must be at most {MAX_SUBREQUEST_MS} ms"));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EC: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    #[test]
    fn public_keys_compile_and_symmetric_or_odd_ones_are_refused() {
        let keys = compile_jwks(EC).unwrap();
        assert_eq!((keys[0].kid.as_deref(), keys[0].algorithms.as_slice()), (Some("k1"), &[Algorithm::ES256][..]));
        let oct = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#;
        assert!(compile_jwks(oct).unwrap_err().contains("symmetric"));
        assert!(compile_jwks(r#"{"keys":[]}"#).is_err());
        assert!(compile_jwks("not json").is_err());
        assert!(compile_jwks(&EC.replace("ES256", "RS256")).unwrap_err().contains("does not fit"));
        assert!(compile_jwks(&" ".repeat(MAX_JWKS_BYTES + 1)).is_err());
        // A key exported whole, private part and all: refused, and the error does not echo it.
        let private = EC.replace(r#""kid":"k1","#, r#""kid":"k1","d":"jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI","#);
        let err = compile_jwks(&private).unwrap_err();
        assert!(err.contains("private key material") && err.contains("\"d\"") && !err.contains("jpsQ"), "{err}");
    }

    #[test]
    fn route_auth_settings_are_checked() {
        let jwt = |f: &dyn Fn(&mut JwtAuth)| {
            let mut j = JwtAuth { jwks: EC.into(), ..Default::default() };
            f(&mut j);
            validate(&RouteAuth { kind: Some(route_auth::Kind::Jwt(j)) })
        };
        assert!(jwt(&|_| {}).is_ok());
        assert!(jwt(&|j| j.token_from = "ip".into()).is_err());
        assert!(jwt(&|j| j.token_from = "cookie:tok".into()).is_ok());
        assert!(jwt(&|j| {
            j.claim_headers.insert("sub".into(), "X User".into());
        })
        .is_err());
        // A header that frames or routes the request, or that the proxy writes: refused.
        for reserved in ["Content-Length", "host", "Transfer-Encoding", "Sec-WebSocket-Key", "X-Forwarded-For"] {
            let e = jwt(&|j| {
                j.claim_headers.insert("sub".into(), reserved.into());
            })
            .unwrap_err();
            assert!(e.contains("the proxy sets or the request is framed by"), "{reserved}: {e}");
        }
        assert!(jwt(&|j| {
            j.claim_headers.insert("sub".into(), "X-User".into());
        })
        .is_ok());
        let req = |url: &str| {
            validate(&RouteAuth {
                kind: Some(route_auth::Kind::Request(AuthRequest { url: url.into(), timeout_ms: 0 })),
            })
        };
        assert!(req("http://auth:9000/check").is_ok());
        assert!(req("https://auth/check").is_err());
        assert!(req("http://user@auth/check").is_err());
        // Dialed as host:port, port 80 when none is named; a port the proxy could never dial,
        // or a path a request line cannot carry, is refused when written.
        let target = |url: &str| subrequest_target(&AuthRequest { url: url.into(), timeout_ms: 0 });
        assert_eq!(target("http://auth/check"), Ok(("auth:80".into(), "/check".into())));
        assert_eq!(target("http://auth"), Ok(("auth:80".into(), "/".into())));
        assert_eq!(target("http://10.0.0.5:9000/v?x=1"), Ok(("10.0.0.5:9000".into(), "/v?x=1".into())));
        assert_eq!(target("http://[::1]:9000/check"), Ok(("[::1]:9000".into(), "/check".into())));
        assert_eq!(target("http://[::1]/check"), Ok(("[::1]:80".into(), "/check".into())));
        for bad in
            ["http://auth:0/x", "http://auth:99999/x", "http://auth:/x", "http://auth:+80/x", "http://auth:080/x"]
        {
            assert!(target(bad).unwrap_err().contains("port must be"), "{bad}");
        }
        for bad in [
            "http://auth:9000/\u{fc}",
            "http://auth:9000/a b",
            "http://::1:9000/x",
            "http://[::1:9000/x",
            "http://:9000/x",
        ] {
            assert!(target(bad).is_err(), "{bad}");
        }
    }
}
