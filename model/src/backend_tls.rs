//! A pool's TLS to its backends: checked where it is written (the admin API) and compiled
//! where it is used (every proxy and the leader's health checker), by the same code, so a
//! setting the API accepted is one every proxy can run.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use switchyard_proto::v1::BackendTls;

/// A CA bundle is a handful of certificates; this bounds what one pool puts in every snapshot.
pub const MAX_CA_PEM_BYTES: usize = 256 * 1024;

/// The trust anchors of a PEM bundle: at least one, each usable.
pub fn roots(pem: &str) -> Result<RootCertStore, String> {
    if pem.len() > MAX_CA_PEM_BYTES {
        return Err(format!("CA bundle is {} bytes, more than {MAX_CA_PEM_BYTES}", pem.len()));
    }
    // Only certificates: the PEM reader skips other sections, so a server's combined file
    // (certificate, then its private key) would be taken, and its key stored in the config,
    // shown to every viewer and written to every proxy's cache.
    for line in pem.lines() {
        let label = line.trim().strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----"));
        if let Some(label) = label.filter(|l| *l != "CERTIFICATE") {
            let label: String = label.chars().take(40).collect();
            return Err(format!(
                "CA bundle holds a {label:?} section; it may hold CERTIFICATE sections only (a private key must \
                 never go into the config)"
            ));
        }
    }
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("CA bundle is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("CA bundle has no PEM certificate".into());
    }
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| format!("CA bundle has a certificate that is not a usable CA: {e}"))?;
    }
    Ok(roots)
}

/// The client config for TLS to backends trusting `roots`: TLS 1.3 and 1.2, ALPN `http/1.1`
/// (WebSocket upgrades and the plain HTTP the proxy forwards are HTTP/1.1).
pub fn client_config(roots: RootCertStore) -> Arc<ClientConfig> {
    crate::tls::install_provider();
    let mut c = ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// The name a backend at `address` (host:port) must prove: `server_name` when set, else the
/// address's host.
pub fn name_for(server_name: &str, address: &str) -> Result<ServerName<'static>, String> {
    let host = if server_name.is_empty() {
        address.rsplit_once(':').map_or(address, |(h, _)| h).trim_start_matches('[').trim_end_matches(']')
    } else {
        server_name
    };
    ServerName::try_from(host.to_string())
        .map_err(|_| format!("{host:?} is not a host name or IP address to verify a backend against"))
}

/// Why a pool's backend TLS setting cannot be taken, if it cannot.
pub fn check(t: &BackendTls) -> Result<(), String> {
    if !t.enabled {
        if !t.ca_pem.is_empty() || !t.server_name.is_empty() {
            return Err("backend TLS is off: a CA bundle or server name would not be used".into());
        }
        return Ok(());
    }
    if t.ca_pem.is_empty() {
        return Err("backend TLS needs the CA bundle the backends' certificates are verified against".into());
    }
    roots(&t.ca_pem)?;
    if !t.server_name.is_empty() {
        if t.server_name.len() > 253 {
            return Err("backend TLS server name is longer than 253 bytes".into());
        }
        name_for(&t.server_name, "")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn settings_are_checked_before_they_are_stored() {
        let on = |ca: &str, name: &str| BackendTls { enabled: true, ca_pem: ca.into(), server_name: name.into() };
        let ca = ca_pem();
        assert_eq!(check(&on(&ca, "")), Ok(()));
        assert_eq!(check(&on(&ca, "backend.internal")), Ok(()));
        assert_eq!(check(&on(&ca, "10.0.0.7")), Ok(()));
        assert_eq!(check(&BackendTls::default()), Ok(()));
        assert!(check(&on("", "")).unwrap_err().contains("needs the CA bundle"));
        assert!(check(&on("garbage", "")).unwrap_err().contains("no PEM certificate"));
        let torn = &ca[..ca.len() / 2];
        assert!(check(&on(torn, "")).is_err());
        assert!(check(&on(&ca, "bad name!")).unwrap_err().contains("not a host name"));
        let huge = ca.repeat(MAX_CA_PEM_BYTES / ca.len() + 1);
        assert!(check(&on(&huge, "")).unwrap_err().contains("more than"));
        // A server's combined file, its key after its certificate: refused.
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let err = check(&on(&format!("{ca}{key}"), "")).unwrap_err();
        assert!(err.contains("\"PRIVATE KEY\" section") && !err.contains(&key[40..80]), "{err}");
        let off_with_ca = BackendTls { enabled: false, ca_pem: ca, server_name: String::new() };
        assert!(check(&off_with_ca).unwrap_err().contains("off"));
    }

    #[test]
    fn the_name_is_the_setting_or_the_backends_host() {
        assert_eq!(name_for("", "10.1.2.3:443").unwrap().to_str(), "10.1.2.3");
        assert_eq!(name_for("", "[::1]:443").unwrap().to_str(), "::1");
        assert_eq!(name_for("", "svc.local:8443").unwrap().to_str(), "svc.local");
        assert_eq!(name_for("api.example", "10.1.2.3:443").unwrap().to_str(), "api.example");
    }
}
