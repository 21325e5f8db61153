//! What every remote command runs with: the client, the printer, the read consistency, and
//! one helper that makes a call, so commands hold no retry or cloning boilerplate.

use std::future::Future;

use anyhow::Result;
use switchyard_proto::v1::admin_client::AdminClient;
use switchyard_proto::v1::discovery_client::DiscoveryClient;
use switchyard_proto::v1::query_client::QueryClient;
use switchyard_proto::v1::Consistency;
use tonic::transport::Channel;
use tonic::{Response, Status};

use crate::client::Client;
use crate::output::{Format, Out};

pub struct Ctx {
    client: Client,
    pub out: Out,
    /// For read requests: `Consistency` as its wire value.
    pub consistency: i32,
}

impl Ctx {
    /// `local`: read this node's state as it is instead of confirming with the leader.
    pub fn connect(endpoints: &str, format: Format, local: bool) -> Result<Ctx> {
        let consistency = if local { Consistency::Local } else { Consistency::Linearizable } as i32;
        Ok(Ctx { client: Client::new(endpoints)?, out: Out { format }, consistency })
    }

    /// A write: `ctx.admin(req, |mut c, r| async move { c.create_pool(r).await })`.
    pub async fn admin<Req, T, F, Fut>(&mut self, req: Req, f: F) -> Result<T>
    where
        Req: Clone,
        F: Fn(AdminClient<Channel>, Req) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call(Client::admin, req, f).await
    }

    /// A read, like [`Ctx::admin`].
    pub async fn query<Req, T, F, Fut>(&mut self, req: Req, f: F) -> Result<T>
    where
        Req: Clone,
        F: Fn(QueryClient<Channel>, Req) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call(Client::query, req, f).await
    }

    /// A stream from the discovery service, like [`Ctx::admin`].
    pub async fn discovery<Req, T, F, Fut>(&mut self, req: Req, f: F) -> Result<T>
    where
        Req: Clone,
        F: Fn(DiscoveryClient<Channel>, Req) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call(Client::discovery, req, f).await
    }

    /// The request is cloned per attempt because the client may try several endpoints.
    async fn call<S, Req, T, F, Fut>(&mut self, stub: fn(Channel) -> S, req: Req, f: F) -> Result<T>
    where
        Req: Clone,
        F: Fn(S, Req) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        Ok(self.client.call(|c| f(stub(c), req.clone())).await?.into_inner())
    }
}
