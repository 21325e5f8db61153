//! Picking backends for one request in turn, for a WebSocket upgrade and a plain HTTP request
//! alike: the first the pool's algorithm (or the session's binding) names, then, each time one
//! fails, the next that has not failed, up to the attempt limit.

use std::net::IpAddr;

use super::streams::{eject_locally, BackendFail};
use super::Tuning;
use crate::handshake::{Reject, Upgrade};
use crate::state::ProxyState;
use crate::stats::Counted;
use crate::table::PoolTable;

pub(crate) struct Attempts<'a> {
    state: &'a ProxyState,
    pool: &'a PoolTable,
    tuning: &'a Tuning,
    /// The request's session key (hashed) and the backend it is bound to, if any.
    session: Option<&'a str>,
    bound: Option<&'a str>,
    failed: Vec<usize>,
    /// A backend failed TLS (its certificate did not verify, say): running out is then 502.
    tls_failed: bool,
    /// The backend being tried, counted against it until it fails or is taken.
    trying: Option<Counted>,
    /// See [`Attempts::keeping_draining_sessions`].
    keep_draining: bool,
}

impl<'a> Attempts<'a> {
    pub(crate) fn new(
        state: &'a ProxyState,
        pool: &'a PoolTable,
        tuning: &'a Tuning,
        session: Option<&'a str>,
        bound: Option<&'a str>,
    ) -> Self {
        Attempts {
            state,
            pool,
            tuning,
            session,
            bound,
            failed: Vec::new(),
            tls_failed: false,
            trying: None,
            keep_draining: false,
        }
    }

    /// For plain HTTP: a session bound to a draining backend keeps going there within the
    /// drain window (see `BackendStats::drain_until_ms`).
    pub(crate) fn keeping_draining_sessions(mut self) -> Self {
        self.keep_draining = true;
        self
    }

    /// The next backend to try (its index in the pool), or the answer once none is left. It
    /// counts as a connection to that backend from here (see [`Counted`]).
    pub(crate) fn next(&mut self, up: &Upgrade, client: IpAddr) -> Result<usize, Reject> {
        self.trying = None;
        if self.failed.len() >= self.tuning.max_attempts {
            return Err(self.none_left());
        }
        let now = self.state.registry.now_ms();
        let pick = |now: u64| match self.session {
            Some(k) => self.pool.pick_session(k, self.bound, now, &self.failed, self.keep_draining).map(|(i, _)| i),
            None => self.pool.pick(up, client, now, &self.failed),
        };
        // Every backend that could take it is ejected by this proxy: they are tried anyway,
        // ejection set aside (a clock at its end). An ejection is this proxy's guess from one
        // failed connect; refusing every client for its whole length would turn a one-second
        // restart of a lone backend, or a rolling deploy, into ten seconds of 503. NGINX never
        // marks a lone server down, and Envoy balances over every host of a pool below its
        // panic threshold.
        let choice = pick(now).or_else(|| pick(u64::MAX));
        let i = choice.ok_or_else(|| self.none_left())?;
        self.trying = Some(self.pool.backends[i].stats.count());
        Ok(i)
    }

    /// The count of the backend [`next`](Self::next) gave, for the connection that uses it.
    pub(crate) fn take(mut self) -> Counted {
        self.trying.take().expect("taken after next gave a backend")
    }

    /// Backend `i` could not be used: it is ejected by this proxy and not tried again for this
    /// request. `Err` when the shortage is the proxy's own (out of descriptors, say): no other
    /// backend would do better.
    pub(crate) fn failed(&mut self, i: usize, why: &BackendFail) -> Result<(), Reject> {
        self.trying = None;
        self.tls_failed |= matches!(why, BackendFail::Tls(_));
        eject_locally(self.state, &self.pool.backends[i], &self.pool.pool.name, self.tuning, why);
        if let BackendFail::Local(_) = why {
            return Err(Reject::OverCapacity);
        }
        self.failed.push(i);
        Ok(())
    }

    fn none_left(&self) -> Reject {
        if self.tls_failed {
            Reject::BadGateway
        } else {
            Reject::Unavailable
        }
    }
}
