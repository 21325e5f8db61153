//! wss for `ws-bench`: with `--tls-ca`, every connection is TLS to the target (verified
//! against that CA, for the name `--sni`), then the same WebSocket client as for ws. Session
//! resumption is off, so every handshake is a full one whatever the target offers.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::either::Either;

pub type Io = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;
pub type Ws = tokio_tungstenite::WebSocketStream<Io>;

struct Tls {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

static TLS: OnceLock<Option<Tls>> = OnceLock::new();
static READ_BUF: OnceLock<usize> = OnceLock::new();

/// Sets up TLS for every connection this run makes (none without a CA), and the read buffer
/// for messages of `message_size` bytes.
pub fn init(ca: Option<PathBuf>, sni: &str, message_size: usize) -> Result<()> {
    // Room for one whole message and its frame header, 4 KiB at least (NGINX's default
    // proxy buffer): a small buffer because tungstenite zero-fills all of it before every read.
    let _ = READ_BUF.set((message_size + 14).max(4096));
    let tls = match ca {
        None => None,
        Some(ca) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(&ca).with_context(|| format!("{}", ca.display()))? {
                roots.add(c?)?;
            }
            let mut cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            cfg.resumption = rustls::client::Resumption::disabled();
            let name = ServerName::try_from(sni.to_string())?;
            Some(Tls { connector: tokio_rustls::TlsConnector::from(Arc::new(cfg)), name })
        }
    };
    let _ = TLS.set(tls);
    Ok(())
}

/// tungstenite zero-fills its whole read buffer (128 KiB by default) before every read, even
/// one that finds nothing; with echoes of 64 bytes that was 30% of this tool's CPU, taken from
/// the same two cores as the proxy it measures.
fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    let size = READ_BUF.get().copied().unwrap_or(4096);
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(size)
}

/// A WebSocket to `target` (TLS first when set up), with `header` added if given.
pub async fn connect(target: &str, header: Option<(&str, &str)>) -> Result<Ws> {
    let mut req = format!("ws://{target}/").into_client_request()?;
    if let Some((k, v)) = header {
        req.headers_mut()
            .insert(tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())?, v.parse()?);
    }
    let open = async {
        let tcp = TcpStream::connect(target).await?;
        let io = match TLS.get().and_then(Option::as_ref) {
            None => Either::Left(tcp),
            Some(t) => Either::Right(t.connector.connect(t.name.clone(), tcp).await?),
        };
        let (ws, _) = tokio_tungstenite::client_async_with_config(req, io, Some(ws_config())).await?;
        anyhow::Ok(ws)
    };
    tokio::time::timeout(Duration::from_secs(10), open).await.context("handshake timed out")?
}
