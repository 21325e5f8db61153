//! TLS for every part: one crypto provider, PEM files loaded with errors that name the file,
//! and the identity a Switchyard certificate carries.
//!
//! A certificate names its holder in the subject's common name and its role in the
//! organizational unit (`CN=node-1, OU=node`), as `switchyard certs issue` writes them.
//! Identity comes only from a certificate that verified against the cluster CA, so the subject
//! can be trusted as the CA's own statement.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tonic::transport::{Certificate, ClientTlsConfig, Identity as TonicIdentity, ServerTlsConfig};

/// Installs ring as the process's crypto provider. Every binary calls it first; calling it
/// again is harmless.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What a caller may do. The permission table lives with the services; this is the vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads and watches.
    Viewer,
    /// A viewer that may also drain, enable and disable backends and change settings.
    Operator,
    /// Everything, membership and credentials included.
    Admin,
    /// A proxy: watches config and reports bindings and loads, nothing else.
    Proxy,
    /// A control-plane node: the peer service (Raft and forwarded writes).
    Node,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Viewer, Role::Operator, Role::Admin, Role::Proxy, Role::Node];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Proxy => "proxy",
            Role::Node => "node",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Role, TlsError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| TlsError::Role(format!("unknown role {s:?}: one of viewer, operator, admin, proxy, node")))
    }
}

/// Who is calling, as its certificate or token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("{0}")]
    Role(String),
    #[error("{0}")]
    Config(String),
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.display().to_string(), reason: reason.to_string() }
}

/// The most a PEM file of TLS material may hold: a long chain, or a CA bundle, is tens of KiB.
pub const MAX_PEM_FILE: u64 = 1 << 20;

/// A file's bytes, if it is a regular file of at most [`MAX_PEM_FILE`]: `/dev/zero` would be
/// read until memory ran out, and a FIFO would block the reader (a whole worker, for a
/// reload) until something wrote to it.
pub fn read_small(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| file_err(path, e))?;
    if !meta.is_file() {
        return Err(file_err(path, "not a regular file"));
    }
    let mut out = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_FILE + 1).read_to_end(&mut out))
        .map_err(|e| file_err(path, e))?;
    if out.len() as u64 > MAX_PEM_FILE {
        return Err(file_err(
            path,
            format!("larger than {MAX_PEM_FILE} bytes: not a PEM file of certificates or a key"),
        ));
    }
    Ok(out)
}

/// The certificates of a PEM file, at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_small(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>().map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read_small(path)?)
        .map_err(|e| file_err(path, format!("no usable PEM private key: {e}")))
}

/// The identity in a certificate's subject: CN is the name, OU the role.
pub fn identity_of(der: &[u8]) -> Result<Identity, TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::Certificate(format!("unreadable: {e}")))?;
    let subject = cert.subject();
    let one = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>, what: &str| {
        it.next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_string)
            .ok_or_else(|| TlsError::Certificate(format!("the subject has no {what}")))
    };
    let name = one(&mut subject.iter_common_name(), "common name (CN)")?;
    let role = one(&mut subject.iter_organizational_unit(), "role (OU)")?;
    let role = role.parse().map_err(|_| TlsError::Certificate(format!("the subject's OU {role:?} is not a role")))?;
    Ok(Identity { name, role })
}

/// The mTLS material of one part: the cluster CA, and this part's certificate and key.
/// A CLI using a bearer token has only the CA.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether any TLS material was given.
    pub fn enabled(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
        read_small(path)
    }

    /// The identity this part's own certificate claims (checked at startup so a node is not
    /// started with a viewer's certificate, say).
    pub fn own_identity(&self) -> Result<Option<Identity>, TlsError> {
        let Some(cert) = &self.cert else { return Ok(None) };
        let first = load_certs(cert)?.remove(0);
        identity_of(&first).map(Some).map_err(|e| file_err(cert, e))
    }

    /// Checks the files of a part that serves or calls as `role`: all three given, and a
    /// certificate issued for that role (a proxy holding an admin's certificate would have
    /// more power than it needs; a node with a viewer's would be refused by its peers).
    pub fn check_for(&self, role: Role) -> Result<(), TlsError> {
        let (Some(_), Some(cert), Some(_)) = (&self.ca, &self.cert, &self.key) else {
            return Err(TlsError::Config("TLS needs all three of --tls-ca, --tls-cert and --tls-key".into()));
        };
        match self.own_identity()? {
            Some(id) if id.role != role => Err(TlsError::Config(format!(
                "{} is a certificate for {} {:?}; a {role} needs one issued with --role {role}",
                cert.display(),
                id.role,
                id.name
            ))),
            _ => Ok(()),
        }
    }

    fn pair(&self) -> Result<Option<TonicIdentity>, TlsError> {
        match (&self.cert, &self.key) {
            (None, None) => Ok(None),
            (Some(c), Some(k)) => {
                // Parse both now, and pair them, so a bad file is named at startup, not at the
                // first handshake (where tonic reports only "transport error").
                let chain = load_certs(c)?;
                let key = load_key(k)?;
                let signer = rustls::crypto::ring::sign::any_supported_type(&key)
                    .map_err(|e| file_err(k, format!("unusable private key: {e}")))?;
                rustls::sign::CertifiedKey::new(chain, signer)
                    .keys_match()
                    .map_err(|_| file_err(k, format!("the key does not match the certificate {}", c.display())))?;
                Ok(Some(TonicIdentity::from_pem(Self::read(c)?, Self::read(k)?)))
            }
            _ => Err(TlsError::Config("--tls-cert and --tls-key go together".into())),
        }
    }

    fn ca_pem(&self) -> Result<Certificate, TlsError> {
        let ca = self.ca.as_ref().ok_or_else(|| TlsError::Config("TLS needs --tls-ca (the cluster CA)".into()))?;
        load_certs(ca)?;
        Ok(Certificate::from_pem(Self::read(ca)?))
    }

    /// A server that takes only TLS, asks every client for a certificate signed by the CA and
    /// also admits clients without one (they must then bring a bearer token).
    pub fn server(&self) -> Result<ServerTlsConfig, TlsError> {
        let id = self.pair()?.ok_or_else(|| TlsError::Config("a TLS server needs --tls-cert and --tls-key".into()))?;
        Ok(ServerTlsConfig::new()
            .identity(id)
            .client_ca_root(self.ca_pem()?)
            .client_auth_optional(true)
            .timeout(std::time::Duration::from_secs(10)))
    }

    /// A client of the control plane: it shows its own certificate if it has one, and takes a
    /// server whose certificate verifies against the CA *and* was issued to a node (see
    /// [`NodeVerifier`]); the config carries no CA itself, the verifier holds it.
    pub fn node_client(&self) -> Result<(ClientTlsConfig, Arc<dyn ServerCertVerifier>), TlsError> {
        let ca = self.ca.as_ref().ok_or_else(|| TlsError::Config("TLS needs --tls-ca (the cluster CA)".into()))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in load_certs(ca)? {
            roots.add(c).map_err(|e| file_err(ca, format!("not a usable CA certificate: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| file_err(ca, e))?;
        let mut c = ClientTlsConfig::new();
        if let Some(id) = self.pair()? {
            c = c.identity(id);
        }
        Ok((c, Arc::new(NodeVerifier(webpki))))
    }

    /// A client that verifies the server against the CA alone and shows its own certificate
    /// if it has one (for servers that are not nodes: the benchmarks' etcd).
    pub fn client(&self) -> Result<ClientTlsConfig, TlsError> {
        let mut c = ClientTlsConfig::new().ca_certificate(self.ca_pem()?);
        if let Some(id) = self.pair()? {
            c = c.identity(id);
        }
        Ok(c)
    }
}

/// Verifies a control-plane server: the CA chain and the name as webpki does, then the role
/// in the certificate. The CA signs every part's certificate, and all of them name
/// `localhost`/`127.0.0.1` unless told otherwise; without the role check a viewer's or a
/// proxy's key, on a host or address a node is reached by, would pass as that node and be
/// handed the CLI's bearer token, a proxy's config stream, a peer's Raft traffic.
#[derive(Debug)]
pub struct NodeVerifier(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        match identity_of(end_entity) {
            Ok(id) if id.role == Role::Node => Ok(verified),
            Ok(id) => Err(rustls::Error::General(format!(
                "the server's certificate was issued to {} {:?}, not to a control-plane node",
                id.role, id.name
            ))),
            Err(e) => Err(rustls::Error::General(format!("the server's certificate names no role: {e}"))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_print() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        let e = "root".parse::<Role>().unwrap_err().to_string();
        assert!(e.contains("unknown role \"root\""), "{e}");
    }

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = std::env::temp_dir().join(format!("sy-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = load_certs(&empty).unwrap_err().to_string();
        assert!(e.contains("empty.pem") && e.contains("no PEM certificate"), "{e}");
        let e = load_key(&dir.join("absent.key")).unwrap_err().to_string();
        assert!(e.contains("absent.key"), "{e}");
        let half = TlsFiles { ca: Some(empty.clone()), cert: Some(empty), key: None };
        assert!(half.client().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A CA in `dir` and a certificate it issued for `localhost` to each role, as `switchyard
    /// certs` makes them; returns the CA's path.
    pub(crate) fn pki(dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = p.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(p, ca_key);
        for role in Role::ALL {
            let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, format!("a-{role}"));
            p.distinguished_name.push(rcgen::DnType::OrganizationalUnitName, role.as_str());
            let key = rcgen::KeyPair::generate().unwrap();
            std::fs::write(dir.join(format!("{role}.crt")), p.signed_by(&key, &issuer).unwrap().pem()).unwrap();
        }
        std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
        dir.join("ca.crt")
    }

    #[test]
    fn a_control_plane_server_must_hold_a_node_certificate() {
        install_provider();
        let dir = std::env::temp_dir().join(format!("sy-tls-node-{}", std::process::id()));
        let ca = pki(&dir);
        let (_, verifier) = TlsFiles { ca: Some(ca), cert: None, key: None }.node_client().unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let check = |role: Role| {
            let cert = load_certs(&dir.join(format!("{role}.crt"))).unwrap().remove(0);
            verifier.verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
        };
        assert!(check(Role::Node).is_ok());
        for role in [Role::Viewer, Role::Operator, Role::Admin, Role::Proxy] {
            let e = check(role).unwrap_err().to_string();
            assert!(e.contains(&format!("issued to {role} \"a-{role}\", not to a control-plane node")), "{e}");
        }
        // The chain and the name are still webpki's to check.
        let cert = load_certs(&dir.join("node.crt")).unwrap().remove(0);
        let other = ServerName::try_from("node-9.example").unwrap();
        assert!(verifier.verify_server_cert(&cert, &[], &other, &[], UnixTime::now()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_key_of_another_certificate_is_named_at_startup() {
        install_provider();
        let dir = std::env::temp_dir().join(format!("sy-tls-pair-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.crt");
        let mut keys = Vec::new();
        for name in ["a", "b"] {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
            std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
            keys.push(dir.join(format!("{name}.key")));
        }
        std::fs::copy(dir.join("a.crt"), &ca).unwrap();
        let files =
            |key: &Path| TlsFiles { ca: Some(ca.clone()), cert: Some(dir.join("a.crt")), key: Some(key.into()) };
        assert!(files(&keys[0]).node_client().is_ok());
        let e = files(&keys[1]).node_client().unwrap_err().to_string();
        assert!(e.contains("b.key") && e.contains("does not match the certificate") && e.contains("a.crt"), "{e}");
        assert!(files(&keys[1]).server().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn special_and_huge_files_are_refused_without_reading_them_whole() {
        for p in ["/dev/zero", "/dev/null", "/"] {
            let e = load_certs(Path::new(p)).unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{p}: {e}");
        }
        let dir = std::env::temp_dir().join(format!("sy-tls-big-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.pem");
        std::fs::write(&big, vec![b'a'; MAX_PEM_FILE as usize + 1]).unwrap();
        let e = load_key(&big).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(identity_of(b"not der").is_err());
    }
}
