//! Counts every gRPC call by service, method and code, outside the authorization layer so
//! refusals are counted too. The method label comes from the permission table, so a caller
//! cannot grow the label set with made-up paths (those count as `unknown`).
//!
//! The code is read from the response head: tonic answers an error as a trailers-only
//! response with `grpc-status` there; a head without it is a call that succeeded (for a
//! stream: one that started).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::Metrics;

#[derive(Clone)]
pub struct CallsLayer(pub Arc<Metrics>);

impl<S> Layer<S> for CallsLayer {
    type Service = CallsService<S>;
    fn layer(&self, inner: S) -> CallsService<S> {
        CallsService { inner, metrics: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct CallsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// `(service, method)` for a path in the permission table, else `("unknown", "unknown")`.
pub fn labels(path: &str) -> (&'static str, &'static str) {
    crate::auth::table::TABLE
        .iter()
        .find(|(p, _)| *p == path)
        .and_then(|(p, _)| p.strip_prefix('/')?.split_once('/'))
        .unwrap_or(("unknown", "unknown"))
}

/// The code's name as grpc-go and go-grpc-prometheus spell it (`OK`, `InvalidArgument`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

fn code_of(headers: &http::HeaderMap) -> tonic::Code {
    match headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|s| s.parse::<i32>().ok()) {
        None => tonic::Code::Ok,
        Some(c) => tonic::Code::from_i32(c),
    }
}

impl<S, B, R> Service<http::Request<B>> for CallsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (service, method) = labels(req.uri().path());
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            let code = match &res {
                Ok(r) => code_of(r.headers()),
                Err(_) => tonic::Code::Unavailable,
            };
            let l = vec![
                ("grpc_service", service.to_string()),
                ("grpc_method", method.to_string()),
                ("grpc_code", code_name(code).to_string()),
            ];
            metrics.calls.get_or_create(&l).inc();
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_table_paths_become_labels() {
        assert_eq!(labels("/switchyard.v1.Admin/CreatePool"), ("switchyard.v1.Admin", "CreatePool"));
        assert_eq!(labels("/switchyard.v1.Admin/Nope"), ("unknown", "unknown"));
        assert_eq!(labels("garbage"), ("unknown", "unknown"));
    }

    #[test]
    fn the_code_comes_from_the_head_and_a_head_without_one_is_ok() {
        let mut h = http::HeaderMap::new();
        assert_eq!(code_of(&h), tonic::Code::Ok);
        h.insert("grpc-status", "3".parse().unwrap());
        assert_eq!(code_name(code_of(&h)), "InvalidArgument");
    }
}
