//! `switchyard certs`: a cluster CA and the certificates of its parts, so the secure setup is
//! a few commands. Keys are ECDSA P-256; every key file is written mode 0600, and nothing is
//! overwritten (a CA replaced by accident would orphan every certificate it issued).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use switchyard_model::tls::Role;
use time::{Duration, OffsetDateTime};

/// A CA lives ten years; what it issues, about two (the longest browsers still accept).
const CA_DAYS: i64 = 3650;
const LEAF_DAYS: i64 = 825;

pub fn ca_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.crt"), dir.join("ca.key"))
}

/// Writes `DIR/ca.crt` and `DIR/ca.key`.
pub fn init(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (crt, key) = ca_paths(dir);
    for p in [&crt, &key] {
        if p.exists() {
            bail!("{} already exists; a new CA would orphan every certificate the old one issued", p.display());
        }
    }
    let kp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "Switchyard cluster CA");
    p.distinguished_name.push(DnType::OrganizationName, "switchyard");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut p, CA_DAYS);
    let cert = p.self_signed(&kp)?;
    write_pair(&key, kp.serialize_pem().as_bytes(), &crt, cert.pem().as_bytes())
}

/// A subject alternative name a TLS client can match: an IP address or a DNS name (a
/// leading `*.` allowed). rcgen takes any ASCII as a DNS name, so `http://h:1` or `h:7401`
/// made a certificate no client would ever accept for the host meant.
fn check_san(san: &str) -> Result<()> {
    if san.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let name = san.strip_prefix("*.").unwrap_or(san);
    if rustls::pki_types::DnsName::try_from(name).is_err() || name.parse::<std::net::IpAddr>().is_ok() {
        bail!("--san {san:?} is neither a host name nor an IP address (no scheme, no port)");
    }
    // Both are names webpki skips as malformed when it reads them in a certificate: the
    // certificate would be issued, and no client would match it.
    if name.ends_with('.') {
        bail!("--san {san:?}: give the name without its trailing dot (clients match it either way)");
    }
    if san.starts_with("*.") && !name.contains('.') {
        bail!("--san {san:?}: a wildcard needs two labels after \"*.\" (*.example.com, not *.com)");
    }
    Ok(())
}

/// Issues `DIR/NAME.crt` and `DIR/NAME.key` for `role`, valid for the given host names and
/// IP addresses (`localhost` and `127.0.0.1` when none are given).
pub fn issue(dir: &Path, role: Role, name: &str, sans: &[String]) -> Result<(PathBuf, PathBuf)> {
    check_name(name)?;
    let (ca_crt, ca_key) = ca_paths(dir);
    let ca_pem = std::fs::read_to_string(&ca_crt).with_context(|| {
        format!("reading {} (run `switchyard certs init {}` first)", ca_crt.display(), dir.display())
    })?;
    let ca_kp =
        KeyPair::from_pem(&std::fs::read_to_string(&ca_key).with_context(|| format!("reading {}", ca_key.display()))?)
            .with_context(|| format!("{}: not a usable private key", ca_key.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_kp)
        .with_context(|| format!("{}: not a CA certificate", ca_crt.display()))?;
    let ca_until = ca_until(&switchyard_model::tls::load_certs(&ca_crt)?[0])
        .with_context(|| format!("{}: not a CA certificate", ca_crt.display()))?;

    let (crt, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    for p in [&crt, &key] {
        if p.exists() {
            bail!("{} already exists; pick another --name or remove the old pair", p.display());
        }
    }
    let sans = if sans.is_empty() { vec!["localhost".to_string(), "127.0.0.1".to_string()] } else { sans.to_vec() };
    sans.iter().try_for_each(|s| check_san(s))?;
    let mut p = CertificateParams::new(sans).context("a --san is neither a host name nor an IP address")?;
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p.distinguished_name.push(DnType::OrganizationalUnitName, role.as_str());
    p.distinguished_name.push(DnType::OrganizationName, "switchyard");
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every part is both: a node serves and calls its peers, a proxy may serve wss.
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, LEAF_DAYS);
    // Not past the CA: a certificate outliving its issuer fails anyway, later and at once for
    // every part issued together.
    p.not_after = p.not_after.min(ca_until);
    let kp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = p.signed_by(&kp, &issuer)?;
    verifies(&ca_crt, cert.der())?;
    write_pair(&key, kp.serialize_pem().as_bytes(), &crt, cert.pem().as_bytes())?;
    Ok((crt, key))
}

/// Checks that `leaf`, just signed, verifies against `ca_crt` as every part will check it:
/// rcgen signs with whatever key it is given and checks nothing of the CA, so a `ca.key`
/// from another CA, a leaf certificate as `ca.crt` or an expired CA made certificates that
/// failed at every handshake. Nothing is written when it does not.
fn verifies(ca_crt: &Path, leaf: &rustls::pki_types::CertificateDer<'_>) -> Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    for c in switchyard_model::tls::load_certs(ca_crt)? {
        roots.add(c).with_context(|| format!("{}: not a usable CA certificate", ca_crt.display()))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    // Every leaf is issued for client use too, which needs no name to check.
    let v =
        rustls::server::WebPkiClientVerifier::builder_with_provider(std::sync::Arc::new(roots), provider).build()?;
    v.verify_client_cert(leaf, &[], rustls::pki_types::UnixTime::now()).map(|_| ()).map_err(|e| {
        anyhow::anyhow!(
            "{}: a certificate signed with its key does not verify against it ({e}): is ca.key the key of this \
             ca.crt, and is the CA still valid?",
            ca_crt.display()
        )
    })
}

/// When a certificate stops being valid.
fn not_after(der: &[u8]) -> Result<OffsetDateTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| anyhow::anyhow!("unreadable: {e}"))?;
    Ok(OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())?)
}

/// When a CA certificate stops being valid; an error for one that says it is no CA (webpki
/// takes any certificate as a root, so a leaf's pair copied in as the CA's would sign).
fn ca_until(der: &[u8]) -> Result<OffsetDateTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| anyhow::anyhow!("unreadable: {e}"))?;
    if !cert.basic_constraints().ok().flatten().is_some_and(|b| b.value.ca) {
        bail!("its basic constraints do not make it a CA (is it a part's certificate?)");
    }
    not_after(der)
}

/// Names become file names and certificate subjects: keep them plain.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.');
    if !ok || name == "ca" {
        bail!("--name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.', and not \"ca\"");
    }
    Ok(())
}

fn validity(p: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // An hour of slack for clocks a little behind the issuer's.
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(days);
}

/// Writes a key (0600) and its certificate (0644) as a pair or not at all: each goes to a
/// temporary name first and is linked into place (a link never replaces a file), so an
/// interrupted run or a full disk leaves no key without its certificate for the next run to
/// refuse as if a CA or a part already existed.
fn write_pair(key: &Path, key_pem: &[u8], crt: &Path, crt_pem: &[u8]) -> Result<()> {
    let tmp = |p: &Path| {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        p.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
    };
    let (tk, tc) = (tmp(key), tmp(crt));
    let done = write_new(&tk, key_pem, 0o600).and_then(|_| write_new(&tc, crt_pem, 0o644)).and_then(|_| {
        std::fs::hard_link(&tk, key).with_context(|| format!("writing {}", key.display()))?;
        std::fs::hard_link(&tc, crt).map_err(|e| {
            let _ = std::fs::remove_file(key);
            anyhow::anyhow!("writing {}: {e}", crt.display())
        })
    });
    let _ = std::fs::remove_file(&tk);
    let _ = std::fs::remove_file(&tc);
    done
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn issued_certificates_carry_name_and_role_and_verify_against_the_ca() {
        switchyard_model::tls::install_provider();
        let d = tempfile::tempdir().unwrap();
        init(d.path()).unwrap();
        assert!(init(d.path()).unwrap_err().to_string().contains("already exists"));
        let (crt, key) = issue(d.path(), Role::Operator, "alice", &[]).unwrap();
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(d.path().join("ca.key")).unwrap().permissions().mode() & 0o777, 0o600);
        let der = switchyard_model::tls::load_certs(&crt).unwrap().remove(0);
        let id = switchyard_model::tls::identity_of(&der).unwrap();
        assert_eq!((id.name.as_str(), id.role), ("alice", Role::Operator));

        // The chain verifies with rustls's own verifier, for both server and client use.
        let ca = switchyard_model::tls::load_certs(&d.path().join("ca.crt")).unwrap().remove(0);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let roots = std::sync::Arc::new(roots);
        use rustls::client::danger::ServerCertVerifier;
        let v = rustls::client::WebPkiServerVerifier::builder(roots.clone()).build().unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        v.verify_server_cert(&der, &[], &name, &[], rustls::pki_types::UnixTime::now()).unwrap();
        let c = rustls::server::WebPkiClientVerifier::builder(roots).build().unwrap();
        c.verify_client_cert(&der, &[], rustls::pki_types::UnixTime::now()).unwrap();

        assert!(issue(d.path(), Role::Node, "alice", &[]).unwrap_err().to_string().contains("already exists"));
        assert!(issue(d.path(), Role::Node, "../x", &[]).unwrap_err().to_string().contains("--name"));
        assert!(issue(d.path(), Role::Node, "ca", &[]).is_err());
        let other = tempfile::tempdir().unwrap();
        assert!(issue(other.path(), Role::Node, "n", &[]).unwrap_err().to_string().contains("certs init"));
    }

    #[test]
    fn a_ca_key_of_another_ca_or_a_leaf_as_the_ca_issues_nothing() {
        switchyard_model::tls::install_provider();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        init(a.path()).unwrap();
        init(b.path()).unwrap();
        std::fs::copy(b.path().join("ca.key"), a.path().join("ca.key")).unwrap();
        let e = issue(a.path(), Role::Node, "n1", &[]).unwrap_err().to_string();
        assert!(e.contains("does not verify against it") && e.contains("is ca.key the key of this"), "{e}");
        assert!(!a.path().join("n1.key").exists() && !a.path().join("n1.crt").exists(), "nothing written");

        // A leaf certificate and its key standing in for the CA.
        let (crt, key) = issue(b.path(), Role::Node, "leaf", &[]).unwrap();
        let c = tempfile::tempdir().unwrap();
        std::fs::copy(&crt, c.path().join("ca.crt")).unwrap();
        std::fs::copy(&key, c.path().join("ca.key")).unwrap();
        assert!(issue(c.path(), Role::Node, "n2", &[]).is_err());
        assert!(!c.path().join("n2.key").exists());

        // What is issued does not outlive the CA.
        let until = |p: &Path| not_after(&switchyard_model::tls::load_certs(p).unwrap()[0]).unwrap();
        assert!(until(&crt) <= until(&b.path().join("ca.crt")));
    }

    #[test]
    fn sans_are_host_names_or_addresses() {
        for ok in ["localhost", "10.0.0.1", "::1", "node-1.example.com", "*.example.com"] {
            check_san(ok).unwrap();
        }
        for bad in ["http://h", "h:7401", "a b", "", "*.", "1.2.3.4:80", "[::1]", "*.10.0.0.1"] {
            let e = check_san(bad).unwrap_err().to_string();
            assert!(e.contains("neither a host name nor an IP address"), "{bad}: {e}");
        }
        // Names webpki would skip in the certificate: issued, and matched by no client.
        assert!(check_san("node1.example.com.").unwrap_err().to_string().contains("trailing dot"));
        for bad in ["*.internal", "*.localhost"] {
            assert!(check_san(bad).unwrap_err().to_string().contains("two labels"), "{bad}");
        }
    }
}
