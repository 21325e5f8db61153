//! Reloading the wss certificates while serving: on SIGHUP, and when any of the files (or the
//! directory) changes, polled every [`POLL`]. Polling mtimes is a few `stat`s every two
//! seconds and sees changes however they are made (editors, `mv` into place, Kubernetes
//! secret volumes' symlink swaps), which inotify-based watchers get wrong without care.
//! A set that fails to load leaves the one in use in place.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{CertSet, CertSources, SniResolver};
use crate::state::ProxyState;

pub const POLL: Duration = Duration::from_secs(2);

/// What the sources look like on disk: a change in any entry means reload.
type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

fn fingerprint(src: &CertSources) -> Fingerprint {
    let mut paths: Vec<PathBuf> = src.dir.iter().cloned().collect();
    if let Ok(files) = src.files() {
        for (c, k) in files {
            paths.push(c);
            paths.push(k);
        }
    }
    paths
        .into_iter()
        .map(|p| {
            // `metadata` follows symlinks, so a swapped link target counts as a change.
            let m = std::fs::metadata(&p).ok();
            let t = m.as_ref().and_then(|m| m.modified().ok());
            (p, t, m.map_or(0, |m| m.len()))
        })
        .collect()
}

/// Loads the sources again and swaps the new set in; counts and logs the outcome.
pub fn reload(resolver: &SniResolver, src: &CertSources, state: &ProxyState, why: &str) {
    match CertSet::load(src) {
        Ok(set) => {
            tracing::info!(certificates = set.count, why, "wss certificates reloaded");
            resolver.swap(set);
            state.runtime.tls_reloads.fetch_add(1, Relaxed);
        }
        Err(e) => {
            tracing::warn!(why, "wss certificate reload failed, still serving the previous certificates: {e}");
            state.runtime.tls_reload_failures.fetch_add(1, Relaxed);
        }
    }
}

/// Watches until shutdown.
/// For a proxy without wss: SIGHUP is taken and ignored. Its default action ends the process
/// (and a supervisor counts that as a clean exit, so it stays down): a `systemctl reload`, or
/// a HUP sent to every proxy after a certificate renewal, would stop this one.
pub fn ignore_hangup(state: Arc<ProxyState>) {
    use tokio::signal::unix::{signal, SignalKind};
    // Taken now, not in the task: a HUP right after start would otherwise still end it.
    let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = state.runtime.shutdown.cancelled() => return,
                _ = hup.recv() => tracing::info!("SIGHUP: this proxy has no wss certificate to reload"),
            }
        }
    });
}

pub fn spawn(resolver: Arc<SniResolver>, src: CertSources, state: Arc<ProxyState>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("no SIGHUP handler ({e}); certificates reload on file changes only");
                None
            }
        };
        let mut seen = fingerprint(&src);
        loop {
            let why = tokio::select! {
                _ = state.runtime.shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL) => "files changed",
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
            };
            let now = fingerprint(&src);
            if why == "SIGHUP" || now != seen {
                // Remembered even when the load fails, so a broken file is reported once, not
                // every poll; fixing it changes the fingerprint again.
                seen = now;
                reload(&resolver, &src, &state, why);
            }
        }
    });
}
