//! What every remote command runs with: the client, the printer, the read consistency, the
//! write identity, and one helper per kind of call, so commands hold no retry or cloning
//! boilerplate.

use std::future::Future;

use anyhow::Result;
use switchyard_model::grpc::{self, ClientTls};
use switchyard_model::tls::TlsFiles;
use switchyard_proto::v1::access_client::AccessClient;
use switchyard_proto::v1::admin_client::AdminClient;
use switchyard_proto::v1::discovery_client::DiscoveryClient;
use switchyard_proto::v1::query_client::QueryClient;
use switchyard_proto::v1::Consistency;
use tonic::{Request, Response, Status};

use crate::client::{Bearer, Chan, Client, Retry};
use crate::output::{Format, Out};

pub struct Ctx {
    client: Client,
    pub out: Out,
    /// For read requests: `Consistency` as its wire value.
    pub consistency: i32,
    /// This process's client id: random, so two CLI runs never share one and a run's writes
    /// never answer for another's.
    client_id: String,
    /// The last write's sequence number; each write takes the next.
    seq: u64,
}

impl Ctx {
    /// `local`: read this node's state as it is instead of confirming with the leader.
    pub fn connect(endpoints: &str, format: Format, local: bool, tls: &TlsFiles, token: Option<String>) -> Result<Ctx> {
        let consistency = if local { Consistency::Local } else { Consistency::Linearizable } as i32;
        let client_id = format!("cli-{:016x}", rand::random::<u64>());
        let client = Client::new(endpoints, ClientTls::from_files(tls)?, Bearer::new(token.as_deref())?)?;
        Ok(Ctx { client, out: Out { format }, consistency, client_id, seq: 0 })
    }

    /// A write, applied once: `ctx.admin(req, |mut c, r| async move { c.create_pool(r).await })`.
    /// Every attempt carries the same client id and seq, so it is retried even when its
    /// outcome is unknown: a repeat is answered with the first attempt's answer.
    pub async fn admin<Req, T, F, Fut>(&mut self, req: Req, f: F) -> Result<T>
    where
        Req: Clone,
        F: Fn(AdminClient<Chan>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.seq += 1;
        let (client_id, seq) = (self.client_id.as_str(), self.seq);
        let r = self
            .client
            .call(Retry::Deduplicated, |c| {
                let req =
                    grpc::with_request_id(req.clone(), client_id, seq).map_err(|e| Status::internal(e.to_string()));
                let call = req.map(|r| f(Client::admin(c), r));
                async move { call?.await }
            })
            .await?;
        Ok(r.into_inner())
    }

    /// A membership change: Raft's own entries, outside the seen table, so retried only when
    /// the node did not take it (a repeat would be refused, not applied twice).
    pub async fn membership<Req, T, F, Fut>(&mut self, req: Req, f: F) -> Result<T>
    where
        Req: Clone,
        F: Fn(AdminClient<Chan>, Req) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call(Client::admin, Retry::NotTaken, req, f).await
    }

    /// A token write: retried only when the node did not take it (a token create is
    /// not deduplicated, since each attempt mints its own secret).
    pub async fn access<Req, T, F, Fut>(&mut self, req: Req, f: F) -> Result<T>
    where
        Req: Clone,
        F: Fn(AccessClient<Chan>, Req) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call(Client::access, Retry::NotTaken, req, f).await
    }

    /// A read of tokens or the audit log: asked again at the next node like [`Ctx::query`].
    pub async fn access_read<Req, T, F, Fut>(&mut self, req: Req, f: F) -> Result<T>
    where
        Req: Clone,
        F: Fn(AccessClient<Chan>, Req) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call(Client::access, Retry::Read, req, f).await
    }

    /// A read, asked again at the next node on any failure to answer (a broken connection
    /// included): asking twice changes nothing.
    pub async fn query<Req, T, F, Fut>(&mut self, req: Req, f: F) -> Result<T>
    where
        Req: Clone,
        F: Fn(QueryClient<Chan>, Req) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call(Client::query, Retry::Read, req, f).await
    }

    /// A stream from the discovery service, retried like [`Ctx::query`] until it opens.
    pub async fn discovery<Req, T, F, Fut>(&mut self, req: Req, f: F) -> Result<T>
    where
        Req: Clone,
        F: Fn(DiscoveryClient<Chan>, Req) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call(Client::discovery, Retry::Read, req, f).await
    }

    /// The request is cloned per attempt because the client may try several endpoints.
    async fn call<S, Req, T, F, Fut>(&mut self, stub: fn(Chan) -> S, retry: Retry, req: Req, f: F) -> Result<T>
    where
        Req: Clone,
        F: Fn(S, Req) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        Ok(self.client.call(retry, |c| f(stub(c), req.clone())).await?.into_inner())
    }
}

/// A token file's text, 4 KiB at most (a token is under 100 bytes; this stops `/dev/zero`
/// being read until memory runs out; a pipe, `<(vault read ...)` or `/dev/stdin`, is fine). A
/// regular file that others may read is used, with a warning: the token in it is as good as a
/// password.
fn token_file(p: &std::path::Path) -> Result<String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("--token-file {}: {e}", p.display());
    let meta = std::fs::metadata(p).map_err(|e| err(&e))?;
    if meta.is_dir() {
        return Err(err(&"a directory"));
    }
    if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
        eprintln!("warning: --token-file {} can be read by others than its owner (chmod 600 it)", p.display());
    }
    let mut text = String::new();
    std::fs::File::open(p).and_then(|f| f.take(4097).read_to_string(&mut text)).map_err(|e| err(&e))?;
    if text.len() > 4096 {
        return Err(err(&"larger than 4 KiB: not a token file"));
    }
    Ok(text)
}

/// The bearer token from `--token-file` (named explicitly, so it wins over an exported
/// `SWITCHYARD_TOKEN`) or `--token`/`SWITCHYARD_TOKEN`, trimmed. Errors name the file, never the
/// token.
pub fn read_token(flag: Option<String>, file: Option<&std::path::Path>) -> Result<Option<String>> {
    let token = match (file, flag) {
        (Some(p), _) => token_file(p)?,
        (None, Some(t)) => t,
        (None, None) => return Ok(None),
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        anyhow::bail!("the bearer token is empty (--token, SWITCHYARD_TOKEN or --token-file)");
    }
    Ok(Some(token))
}
