//! The tower layer that checks every call's protocol version before authorization
//! ([`switchyard_model::version::check`]) and stamps this node's version on every reply,
//! refusals included, so a caller always learns what it talked to.
//!
//! Its own layer rather than part of [`crate::auth::layer`]: a caller of another major may
//! not even send credentials the way this node reads them, and the refusal should say
//! "versions" rather than "unauthenticated".

use std::task::{Context, Poll};

use futures::future::{Either, MapOk, Ready, TryFutureExt};
use switchyard_model::version;
use tonic::body::Body;
use tower::{Layer, Service};

#[derive(Clone, Copy, Default)]
pub struct VersionLayer;

impl<S> Layer<S> for VersionLayer {
    type Service = VersionService<S>;
    fn layer(&self, inner: S) -> VersionService<S> {
        VersionService { inner }
    }
}

#[derive(Clone)]
pub struct VersionService<S> {
    inner: S,
}

type Stamp = fn(http::Response<Body>) -> http::Response<Body>;

fn stamped(mut r: http::Response<Body>) -> http::Response<Body> {
    version::stamp(r.headers_mut());
    r
}

/// The answer to a call of another major version: FAILED_PRECONDITION naming both versions.
pub fn refusal(e: &version::Mismatch) -> http::Response<Body> {
    stamped(tonic::Status::failed_precondition(e.to_string()).into_http())
}

impl<S> Service<http::Request<Body>> for VersionService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Either<MapOk<S::Future, Stamp>, Ready<Result<http::Response<Body>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match version::check(req.headers()) {
            Ok(_) => Either::Left(self.inner.call(req).map_ok(stamped as Stamp)),
            Err(e) => Either::Right(futures::future::ready(Ok(refusal(&e)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service that answers every call with an empty OK reply.
    #[derive(Clone)]
    struct Ok200;
    impl Service<http::Request<Body>> for Ok200 {
        type Response = http::Response<Body>;
        type Error = std::convert::Infallible;
        type Future = Ready<Result<http::Response<Body>, Self::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            futures::future::ready(Ok(http::Response::new(Body::empty())))
        }
    }

    async fn call(protocol: Option<&str>) -> http::Response<Body> {
        let mut req = http::Request::builder().uri("/switchyard.v1.Query/ClusterStatus");
        if let Some(p) = protocol {
            req = req.header(version::PROTOCOL_KEY, p).header(version::VERSION_KEY, "9.0.0");
        }
        VersionLayer.layer(Ok200).call(req.body(Body::empty()).unwrap()).await.unwrap()
    }

    fn status(r: &http::Response<Body>) -> Option<tonic::Status> {
        tonic::Status::from_header_map(r.headers())
    }

    #[tokio::test]
    async fn another_major_is_refused_naming_both_versions_and_every_reply_is_stamped() {
        let r = call(Some("2.0")).await;
        let s = status(&r).expect("a refusal");
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        let theirs = "9.0.0 (protocol 2.0)";
        let ours = format!("{} (protocol {})", version::VERSION, version::PROTOCOL);
        assert!(s.message().contains(theirs) && s.message().contains(&ours), "{}", s.message());
        assert_eq!(r.headers().get(version::VERSION_KEY).unwrap(), version::VERSION);

        // Another minor, and no header at all (grpcurl), are served.
        let minor = format!("{}.{}", version::PROTOCOL.major, version::PROTOCOL.minor + 1);
        for p in [Some(minor.as_str()), None] {
            let r = call(p).await;
            assert!(status(&r).is_none(), "{p:?} refused");
            assert_eq!(r.headers().get(version::PROTOCOL_KEY).unwrap(), version::PROTOCOL.to_string().as_str());
        }
    }
}
