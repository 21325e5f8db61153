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
/// The longest wait between tries of a load that keeps failing with nothing changed.
const RETRY_MAX: Duration = Duration::from_secs(300);

/// What the sources look like on disk: a change in any entry means reload. The inode and
/// change time are in it beside the mtime and size: a file replaced by one with the same
/// mtime (`cp -p`, `rsync -t`), or made readable by a `chmod`/`chown` after a load failed
/// on its permissions, changes only those.
pub type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64, u64, i64, i64)>;

pub fn fingerprint(src: &CertSources) -> Fingerprint {
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
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(&p).ok();
            let t = m.as_ref().and_then(|m| m.modified().ok());
            let (len, ino, ct, ctn) = m.map_or((0, 0, 0, 0), |m| (m.len(), m.ino(), m.ctime(), m.ctime_nsec()));
            (p, t, len, ino, ct, ctn)
        })
        .collect()
}

/// Loads the sources again and swaps the new set in; counts and logs the outcome. A set
/// that fails, or loads with problems (a directory pair left out or kept from before), is
/// tried again every poll; it is said and counted only when what is wrong differs from
/// `last` or the files `changed`: the same broken file is one warning, not one every poll.
pub fn reload(
    resolver: &SniResolver,
    src: &CertSources,
    state: &ProxyState,
    why: &str,
    changed: bool,
    last: &mut Option<String>,
) {
    let current = resolver.current();
    match CertSet::load_after(src, Some(&current)) {
        Ok(set) => {
            let problems = set.problems.join("; ");
            if !problems.is_empty() && !changed && last.as_deref() == Some(problems.as_str()) {
                return;
            }
            for gone in current.gone_in(&set) {
                tracing::warn!(file = %gone.display(), "a wss certificate left the directory: its names now get the default certificate");
            }
            if problems.is_empty() {
                tracing::info!(certificates = set.count, why, "wss certificates reloaded");
                *last = None;
                state.runtime.tls_reloads.fetch_add(1, Relaxed);
            } else {
                // Counted as failed only: a pair is not what it should be.
                tracing::warn!(certificates = set.count, why, "wss certificates reloaded, not all of them: {problems}");
                state.runtime.tls_reload_failures.fetch_add(1, Relaxed);
                *last = Some(problems);
            }
            resolver.swap(set);
        }
        Err(e) => {
            let e = e.to_string();
            if changed || last.as_deref() != Some(e.as_str()) {
                tracing::warn!(why, "wss certificate reload failed, still serving the previous certificates: {e}");
                state.runtime.tls_reload_failures.fetch_add(1, Relaxed);
            }
            *last = Some(e);
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

/// `seen`: the files as they were before the set in use was loaded.
pub fn spawn(resolver: Arc<SniResolver>, src: CertSources, mut seen: Fingerprint, state: Arc<ProxyState>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("no SIGHUP handler ({e}); certificates reload on file changes only");
                None
            }
        };
        // What was last wrong, while loads keep failing or leaving pairs out (the first one's
        // problems were said at start).
        let first = resolver.current().problems.join("; ");
        let mut failing = (!first.is_empty()).then_some(first);
        // While it keeps failing with nothing changed: the wait before the next try, doubled
        // each time up to RETRY_MAX (a load reads and checks every pair: a directory of a
        // thousand, every 2 s, for as long as one pair stays broken, is CPU for nothing).
        let mut backoff = POLL;
        let mut retry_at = tokio::time::Instant::now();
        loop {
            let why = tokio::select! {
                _ = state.runtime.shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL) => "files changed",
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
            };
            let now = fingerprint(&src);
            // A failed load is tried again (backing off) until one succeeds: what fixes it (a
            // permission, a label, a transient EIO) may change nothing the fingerprint sees.
            let changed = why == "SIGHUP" || now != seen;
            let retry = failing.is_some() && tokio::time::Instant::now() >= retry_at;
            if changed || retry {
                seen = now;
                let why = if changed { why } else { "retrying a failed load" };
                reload(&resolver, &src, &state, why, changed, &mut failing);
                backoff = if changed || failing.is_none() { POLL } else { (backoff * 2).min(RETRY_MAX) };
                retry_at = tokio::time::Instant::now() + backoff;
            }
        }
    });
}
