//! TLS for wss tests: a throw-away CA (rcgen, ECDSA P-256) issuing server certificates to
//! chosen paths, a wss client that verifies against that CA and reports the certificate it
//! was served, and a TLS WebSocket echo backend.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A CA whose certificate is at `dir/ca.crt`.
pub struct TestCa {
    pub ca_file: PathBuf,
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        switchyard_model::tls::install_provider();
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(rcgen::DnType::CommonName, "wss test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("CA certificate");
        let ca_file = dir.join("ca.crt");
        std::fs::write(&ca_file, cert.pem()).expect("write ca.crt");
        TestCa { ca_file, params, key }
    }

    /// A second CA, in `dir/rogue`, that nothing is told to trust: its certificates must be
    /// refused. Returns it with its directory.
    pub fn untrusted(dir: &Path) -> (TestCa, PathBuf) {
        let rogue_dir = dir.join("rogue");
        std::fs::create_dir(&rogue_dir).expect("rogue CA dir");
        (TestCa::new(&rogue_dir), rogue_dir)
    }

    /// Writes a certificate for `sans` and its key to `crt` and `key` (replacing them), and
    /// returns the certificate's DER.
    pub fn issue_to(&self, crt: &Path, key: &Path, sans: &[&str]) -> Vec<u8> {
        let kp = rcgen::KeyPair::generate().expect("key");
        let mut p =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("names");
        p.distinguished_name.push(rcgen::DnType::CommonName, sans.first().copied().unwrap_or("server"));
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = p.signed_by(&kp, &issuer).expect("sign");
        // Key first: a reload between the two writes sees a mismatch and keeps the old set.
        std::fs::write(key, kp.serialize_pem()).expect("write key");
        std::fs::write(crt, cert.pem()).expect("write certificate");
        cert.der().to_vec()
    }

    /// `dir/NAME.crt` and `dir/NAME.key` for `sans`; returns their paths and the DER.
    pub fn issue(&self, dir: &Path, name: &str, sans: &[&str]) -> (PathBuf, PathBuf, Vec<u8>) {
        let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        let der = self.issue_to(&c, &k, sans);
        (c, k, der)
    }

    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in switchyard_model::tls::load_certs(&self.ca_file).expect("CA") {
            roots.add(c).expect("root");
        }
        let mut c = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    }
}

pub type WssClient = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// A TLS connection to `addr` that sends `sni` and verifies the server against `cfg`'s roots;
/// returns the stream and the certificate the server presented.
pub async fn tls_connect(
    addr: &str,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> anyhow::Result<(tokio_rustls::client::TlsStream<TcpStream>, CertificateDer<'static>)> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string())?;
    let tls = tokio::time::timeout(Duration::from_secs(10), tokio_rustls::TlsConnector::from(cfg).connect(name, tcp))
        .await??;
    let cert =
        tls.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned().ok_or(anyhow::anyhow!("no cert"))?;
    Ok((tls, cert))
}

/// A wss client through `addr` for host `sni`: the socket, the backend's greeting and the
/// certificate the proxy served.
pub async fn wss_connect(
    addr: &str,
    sni: &str,
    path: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> anyhow::Result<(WssClient, String, CertificateDer<'static>)> {
    let (tls, cert) = tls_connect(addr, sni, cfg).await?;
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(format!("wss://{sni}{path}"), tls),
    )
    .await??;
    let hello = tokio::time::timeout(Duration::from_secs(10), ws.next()).await?.ok_or(anyhow::anyhow!("closed"))??;
    Ok((ws, hello.into_text()?.to_string(), cert))
}

/// Sends a message on any WebSocket and expects it back unchanged.
pub async fn echo_on<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, m: Message) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(m.clone()).await?;
    let back = tokio::time::timeout(Duration::from_secs(10), ws.next()).await?.ok_or(anyhow::anyhow!("closed"))??;
    anyhow::ensure!(back == m, "echo mismatch");
    Ok(())
}

/// A WebSocket echo server behind TLS that greets with its name; counts the WebSocket
/// handshakes it completed, so a test can tell it was never used.
pub struct TlsEchoBackend {
    pub addr: String,
    pub upgrades: Arc<Mutex<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsEchoBackend {
    pub async fn start(name: &str, crt: &Path, key: &Path) -> TlsEchoBackend {
        switchyard_model::tls::install_provider();
        let certs = switchyard_model::tls::load_certs(crt).expect("backend certificate");
        let key = switchyard_model::tls::load_key(key).expect("backend key");
        let cfg = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).expect("config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let upgrades = Arc::new(Mutex::new(0));
        let (n, u) = (name.to_string(), upgrades.clone());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (n, u, acceptor) = (n.clone(), u.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(sock).await else { return };
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else { return };
                    *u.lock().unwrap() += 1;
                    if ws.send(Message::text(n)).await.is_err() {
                        return;
                    }
                    while let Some(Ok(m)) = ws.next().await {
                        let echo = matches!(m, Message::Text(_) | Message::Binary(_));
                        if matches!(m, Message::Close(_)) || (echo && ws.send(m).await.is_err()) {
                            break;
                        }
                    }
                });
            }
        });
        TlsEchoBackend { addr, upgrades, task }
    }

    pub fn upgrades(&self) -> u64 {
        *self.upgrades.lock().unwrap()
    }
}

impl Drop for TlsEchoBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}
