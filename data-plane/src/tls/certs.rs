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
        Ok(self.scan()?.0)
    }

    /// [`Self::files`], and the directory's certificates with no key beside them (a CA's, or
    /// one of a pair being replaced).
    fn scan(&self) -> Result<Scan, TlsError> {
        let mut out = self.pairs.clone();
        let mut lone = Vec::new();
        if let Some(dir) = &self.dir {
            let entries = std::fs::read_dir(dir).map_err(|e| TlsError(format!("{}: {e}", dir.display())))?;
            let mut found: Vec<(PathBuf, PathBuf)> = Vec::new();
            for crt in entries.filter_map(|e| e.ok().map(|e| e.path())) {
                if crt.extension().is_none_or(|x| x != "crt") {
                    continue;
                }
                let key = crt.with_extension("key");
                if key.is_file() {
                    found.push((crt, key));
                } else {
                    lone.push(crt);
                }
            }
            found.sort();
            lone.sort();
            out.extend(found);
        }
        Ok((out, lone))
    }
}

/// Pairs to load, and certificates without a key.
type Scan = (Vec<(PathBuf, PathBuf)>, Vec<PathBuf>);

/// One loaded set: what a handshake is served from until the next reload.
pub struct CertSet {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    pub count: usize,
    /// The directory's pairs as loaded, by certificate file: what a later load keeps for a
    /// pair it cannot read.
    from_dir: HashMap<PathBuf, Loaded>,
    /// The directory's pairs this load could not read, and what it did instead.
    pub problems: Vec<String>,
}

type Loaded = (Arc<CertifiedKey>, Vec<String>);

impl fmt::Debug for CertSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSet").field("count", &self.count).field("names", &self.exact.len()).finish()
    }
}

impl CertSet {
    /// Loads every pair, the first time. See [`Self::load_after`].
    pub fn load(src: &CertSources) -> Result<CertSet, TlsError> {
        Self::load_after(src, None)
    }

    /// Loads every pair. A `--wss-cert`/`--wss-key` pair that cannot be read (unreadable,
    /// bad PEM, a key that does not match) fails the whole set: a reload then keeps the
    /// `previous` one. A directory's pair that cannot be read, or whose key is missing, is
    /// the same pair of `previous` if it had one, else left out, and either way a problem
    /// named in the set: one tenant's broken pair neither blocks the others' renewals nor
    /// (mid-replacement) drops its names to the default certificate. CA certificates there
    /// (such as `switchyard certs`' own `ca.crt`) are skipped.
    pub fn load_after(src: &CertSources, previous: Option<&CertSet>) -> Result<CertSet, TlsError> {
        let (files, lone) = src.scan()?;
        let kept = |crt: &Path| previous.and_then(|p| p.from_dir.get(crt)).cloned();
        let mut problems = Vec::new();
        // (certificate file, from the directory, what it serves), in the order loaded.
        let mut loaded: Vec<(PathBuf, bool, Loaded)> = Vec::new();
        for (i, (crt, key)) in files.into_iter().enumerate() {
            let explicit = i < src.pairs.len();
            match load_pair(&crt, &key, explicit) {
                Ok(Some((ck, names))) => loaded.push((crt, !explicit, (Arc::new(ck), names))),
                Ok(None) => {}
                Err(e) if explicit => return Err(e),
                Err(e) => match kept(&crt) {
                    Some(k) => {
                        problems.push(format!("{e}; its previous certificate stays"));
                        loaded.push((crt, true, k));
                    }
                    None => problems.push(format!("{e}; left out")),
                },
            }
        }
        for crt in lone {
            if let Some(k) = kept(&crt) {
                problems.push(format!("{}: its key is gone; its previous certificate stays", crt.display()));
                loaded.push((crt, true, k));
            }
        }
        let (mut keys, mut exact, mut wildcard, mut from_dir) =
            (Vec::new(), HashMap::new(), HashMap::new(), HashMap::new());
        for (crt, in_dir, (ck, names)) in loaded {
            for n in &names {
                match n.strip_prefix("*.") {
                    Some(rest) => wildcard.entry(rest.to_string()).or_insert_with(|| ck.clone()),
                    None => exact.entry(n.clone()).or_insert_with(|| ck.clone()),
                };
            }
            keys.push(ck.clone());
            if in_dir {
                from_dir.insert(crt, (ck, names));
            }
        }
        let Some(default) = keys.first().cloned() else {
            let why = if problems.is_empty() { String::new() } else { format!(" ({})", problems.join("; ")) };
            return Err(TlsError(format!(
                "no certificate: give --wss-cert/--wss-key or a --wss-cert-dir holding NAME.crt and NAME.key (a CA's, \
                 or a Switchyard identity other than a proxy's, is skipped there){why}"
            )));
        };
        Ok(CertSet { default, exact, wildcard, count: keys.len(), from_dir, problems })
    }

    /// The directory's certificate files this set holds and `next` does not: their names go
    /// to the default certificate once `next` is in use.
    pub fn gone_in(&self, next: &CertSet) -> Vec<PathBuf> {
        let mut gone: Vec<PathBuf> =
            self.from_dir.keys().filter(|p| !next.from_dir.contains_key(*p)).cloned().collect();
        gone.sort();
        gone
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
    // A directory made by `switchyard certs` also holds the nodes' and the operators'
    // identities: served to browsers, an `admin.crt` (first by name) would be the default
    // certificate. Only a proxy's, or one from another CA (no Switchyard role), serves.
    if let Ok(id) = switchyard_model::tls::identity_of(&chain[0]) {
        if !explicit && id.role != switchyard_model::tls::Role::Proxy {
            tracing::info!(file = %crt.display(), role = %id.role, "skipping a Switchyard identity that is not a proxy's");
            return Ok(None);
        }
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

    pub fn current(&self) -> Arc<CertSet> {
        self.set.load_full()
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
    fn a_switchyard_identity_other_than_a_proxys_is_not_served_from_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let with_role = |name: &str, role: &str| {
            let kp = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(vec![format!("{name}.example")]).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, name);
            p.distinguished_name.push(rcgen::DnType::OrganizationalUnitName, role);
            std::fs::write(dir.path().join(format!("{name}.crt")), p.self_signed(&kp).unwrap().pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), kp.serialize_pem()).unwrap();
        };
        with_role("admin", "admin");
        with_role("node-1", "node");
        with_role("edge", "proxy");
        write_pair(dir.path(), "site", &["site.example"]);
        let set = CertSet::load(&CertSources { pairs: vec![], dir: Some(dir.path().into()) }).unwrap();
        assert_eq!(set.count, 2, "the proxy's and the one with no Switchyard role");
        assert!(set.problems.is_empty());
        let default = set.pick(None);
        let (_, leaf) = x509_parser::parse_x509_certificate(&default.cert[0]).unwrap();
        assert!(leaf.subject().to_string().contains("edge"), "the default is the proxy's, not admin.crt");
    }

    #[test]
    fn a_key_that_does_not_match_fails_an_explicit_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = write_pair(dir.path(), "a", &["a.example"]);
        let (_, k) = write_pair(dir.path(), "b", &["b.example"]);
        let e = CertSet::load(&CertSources { pairs: vec![(c, k)], dir: None }).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
        // Nothing loadable at all in the directory: no set, saying why.
        std::fs::write(dir.path().join("a.crt"), "not pem").unwrap();
        std::fs::write(dir.path().join("b.crt"), "not pem").unwrap();
        let e = CertSet::load(&CertSources { pairs: vec![], dir: Some(dir.path().into()) }).unwrap_err().to_string();
        assert!(e.contains("no certificate") && e.contains("a.crt") && e.contains("left out"), "{e}");
    }

    /// One tenant's broken or half-replaced pair in the directory costs only that pair: the
    /// others load (renewals go through), and its own previous certificate stays.
    #[test]
    fn a_broken_directory_pair_keeps_its_previous_certificate_and_blocks_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let src = CertSources { pairs: vec![], dir: Some(dir.path().into()) };
        write_pair(dir.path(), "a", &["a.example"]);
        write_pair(dir.path(), "b", &["b.example"]);
        let first = CertSet::load(&src).unwrap();
        assert!(first.problems.is_empty());
        let a_before = first.pick(Some("a.example")).cert[0].clone();
        let b_before = first.pick(Some("b.example")).cert[0].clone();

        // a's key replaced by another's (mid-renewal), b renewed.
        let (_, other) = write_pair(dir.path(), "other", &["other.example"]);
        std::fs::copy(&other, dir.path().join("a.key")).unwrap();
        std::fs::remove_file(dir.path().join("other.crt")).unwrap();
        write_pair(dir.path(), "b", &["b.example"]);
        let next = CertSet::load_after(&src, Some(&first)).unwrap();
        assert_eq!(next.pick(Some("a.example")).cert[0], a_before, "a keeps its previous certificate");
        assert_ne!(next.pick(Some("b.example")).cert[0], b_before, "b's renewal went through");
        assert!(
            next.problems.len() == 1 && next.problems[0].contains("previous certificate stays"),
            "{:?}",
            next.problems
        );

        // a's key gone altogether: still the previous; without one, a is left out.
        std::fs::remove_file(dir.path().join("a.key")).unwrap();
        let again = CertSet::load_after(&src, Some(&next)).unwrap();
        assert_eq!(again.pick(Some("a.example")).cert[0], a_before);
        assert!(again.problems[0].contains("its key is gone"), "{:?}", again.problems);
        let fresh = CertSet::load(&src).unwrap();
        assert_eq!(fresh.count, 1);
        // A pair removed whole is gone from the next set, and said to be.
        std::fs::remove_file(dir.path().join("a.crt")).unwrap();
        let last = CertSet::load_after(&src, Some(&again)).unwrap();
        assert!(last.problems.is_empty());
        assert_eq!(again.gone_in(&last), vec![dir.path().join("a.crt")]);
    }
}
