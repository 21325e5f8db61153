//! The certificates the wss listener serves and how one is chosen for a handshake: by the
//! client's SNI against the DNS names in each certificate's SANs (exact first, then `*.`
//! wildcards), else the first pair configured.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use switchyard_model::tls::{load_certs, load_key};

use super::TlsError;

/// Where the serving certificates come from: `--wss-cert`/`--wss-key` pairs in order, then
/// every `NAME.crt` with a `NAME.key` beside it in `--wss-cert-dir`, by name.
#[derive(Debug, Clone, Default)]
pub struct CertSources {
    pub pairs: Vec<(PathBuf, PathBuf)>,
    pub dir: Option<PathBuf>,
}

impl CertSources {
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty() && self.dir.is_none()
    }

    /// The (certificate, key) files to load now, explicit pairs first.
    pub fn files(&self) -> Result<Vec<(PathBuf, PathBuf)>, TlsError> {
        let mut out = self.pairs.clone();
        if let Some(dir) = &self.dir {
            let entries = std::fs::read_dir(dir).map_err(|e| TlsError(format!("{}: {e}", dir.display())))?;
            let mut found: Vec<(PathBuf, PathBuf)> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "crt"))
                .map(|crt| (crt.clone(), crt.with_extension("key")))
                .filter(|(_, key)| key.is_file())
                .collect();
            found.sort();
            out.extend(found);
        }
        Ok(out)
    }
}

/// One loaded set: what a handshake is served from until the next reload.
pub struct CertSet {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    pub count: usize,
}

impl fmt::Debug for CertSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSet").field("count", &self.count).field("names", &self.exact.len()).finish()
    }
}

impl CertSet {
    /// Loads every pair; any unreadable file, bad PEM or key that does not match its
    /// certificate fails the whole set (a reload then keeps the previous one). In the
    /// directory, CA certificates (such as `switchyard certs`' own `ca.crt`) are skipped.
    pub fn load(src: &CertSources) -> Result<CertSet, TlsError> {
        let files = src.files()?;
        let mut keys = Vec::new();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, (crt, key)) in files.iter().enumerate() {
            let explicit = i < src.pairs.len();
            let Some((ck, names)) = load_pair(crt, key, explicit)? else { continue };
            let ck = Arc::new(ck);
            for n in names {
                match n.strip_prefix("*.") {
                    Some(rest) => wildcard.entry(rest.to_string()).or_insert_with(|| ck.clone()),
                    None => exact.entry(n).or_insert_with(|| ck.clone()),
                };
            }
            keys.push(ck);
        }
        let Some(default) = keys.first().cloned() else {
            return Err(TlsError(
                "no certificate: give --wss-cert/--wss-key or a --wss-cert-dir holding NAME.crt and NAME.key".into(),
            ));
        };
        Ok(CertSet { default, exact, wildcard, count: keys.len() })
    }

    /// The certificate for a client's SNI name.
    pub fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni.map(|s| s.trim_end_matches('.').to_ascii_lowercase()) else {
            return self.default.clone();
        };
        if let Some(k) = self.exact.get(&name) {
            return k.clone();
        }
        // A wildcard covers exactly one label.
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return k.clone();
            }
        }
        self.default.clone()
    }
}

/// Reads a certificate chain and its key; `None` for a CA certificate found in a directory.
fn load_pair(crt: &Path, key: &Path, explicit: bool) -> Result<Option<(CertifiedKey, Vec<String>)>, TlsError> {
    let chain = load_certs(crt).map_err(|e| TlsError(e.to_string()))?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0])
        .map_err(|e| TlsError(format!("{}: unreadable certificate: {e}", crt.display())))?;
    let is_ca = leaf.basic_constraints().ok().flatten().is_some_and(|b| b.value.ca);
    if is_ca {
        if explicit {
            return Err(TlsError(format!("{}: a CA certificate, not a server certificate", crt.display())));
        }
        tracing::debug!(file = %crt.display(), "skipping a CA certificate in the certificate directory");
        return Ok(None);
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    let der = load_key(key).map_err(|e| TlsError(e.to_string()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| TlsError(format!("{}: unusable private key: {e}", key.display())))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().map_err(|_| {
        TlsError(format!("{}: the key does not match the certificate {}", key.display(), crt.display()))
    })?;
    Ok(Some((ck, names)))
}

/// The server side's certificate resolver: reads whatever set is current, so a reload is one
/// pointer swap and handshakes in flight keep the certificate they started with.
#[derive(Debug)]
pub struct SniResolver {
    set: ArcSwap<CertSet>,
}

impl SniResolver {
    pub fn new(set: CertSet) -> SniResolver {
        SniResolver { set: ArcSwap::from_pointee(set) }
    }

    pub fn swap(&self, set: CertSet) {
        self.set.store(Arc::new(set));
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        SEEN_SNI.with(|s| *s.borrow_mut() = hello.server_name().map(str::to_string));
        Some(self.set.load().pick(hello.server_name()))
    }
}

thread_local! {
    /// The name the last ClientHello resolved on this thread asked for. rustls' unbuffered
    /// server connection does not say, and resolving runs inside the caller's synchronous
    /// processing of the hello, on its thread.
    static SEEN_SNI: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` (a step of one connection's handshake), and returns with its result the name
/// the client asked for (SNI) if its hello was resolved during it.
pub fn sni_seen_during<R>(f: impl FnOnce() -> R) -> (R, Option<String>) {
    SEEN_SNI.with(|s| s.borrow_mut().take());
    let r = f();
    (r, SEEN_SNI.with(|s| s.borrow_mut().take()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        let kp = rcgen::KeyPair::generate().unwrap();
        let p = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = p.self_signed(&kp).unwrap();
        let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, kp.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn picks_by_exact_name_then_wildcard_then_the_first_pair() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_pair(dir.path(), "a", &["a.example"]);
        write_pair(dir.path(), "b", &["b.example", "*.apps.example"]);
        let src = CertSources { pairs: vec![a], dir: Some(dir.path().to_path_buf()) };
        let set = CertSet::load(&src).unwrap();
        // The explicit pair and the directory's two (a.crt appears twice: pair and dir).
        assert_eq!(set.count, 3);
        let names = |k: Arc<CertifiedKey>| {
            let (_, c) = x509_parser::parse_x509_certificate(&k.cert[0]).unwrap();
            c.subject_alternative_name().unwrap().unwrap().value.general_names.len()
        };
        assert_eq!(names(set.pick(Some("a.example"))), 1);
        assert_eq!(names(set.pick(Some("B.Example."))), 2);
        assert_eq!(names(set.pick(Some("x.apps.example"))), 2);
        assert_eq!(names(set.pick(Some("x.y.apps.example"))), 1, "a wildcard covers one label");
        assert_eq!(names(set.pick(None)), 1);
        assert_eq!(names(set.pick(Some("unknown.example"))), 1);
    }

    #[test]
    fn a_key_that_does_not_match_fails_the_set() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = write_pair(dir.path(), "a", &["a.example"]);
        let (_, k) = write_pair(dir.path(), "b", &["b.example"]);
        let e = CertSet::load(&CertSources { pairs: vec![(c, k)], dir: None }).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
        std::fs::write(dir.path().join("a.crt"), "not pem").unwrap();
        assert!(CertSet::load(&CertSources { pairs: vec![], dir: Some(dir.path().into()) }).is_err());
    }
}
