//! The tower layer that runs [`Authorizer::check`] before every gRPC service
//! (`Server::layer`): a refused call is answered here with its status and never reaches a
//! handler; an admitted one carries its [`Caller`] in the request extensions.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready};
use tonic::body::Body;
use tower::{Layer, Service};

use super::{peer_certs, Authorizer, Presented};

#[derive(Clone)]
pub struct AuthLayer(pub Arc<Authorizer>);

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService { inner, auth: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authorizer>,
}

impl<S> Service<http::Request<Body>> for AuthService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<http::Response<Body>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let presented = Presented {
            path: req.uri().path(),
            authorization: req.headers().get(http::header::AUTHORIZATION).map(|v| v.as_bytes()),
            peer_certs: peer_certs(&req),
        };
        match self.auth.check(&presented, crate::clock::now_ms()) {
            Ok(caller) => {
                if let Some(c) = caller {
                    req.extensions_mut().insert(c);
                }
                Either::Left(self.inner.call(req))
            }
            Err(status) => Either::Right(futures::future::ready(Ok(status.into_http()))),
        }
    }
}
