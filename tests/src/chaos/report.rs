//! The table a run prints: per fault kind, how often it was injected and what the workload
//! saw while it was.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::faults::Fault;
use super::workload::Tally;

#[derive(Clone, Debug, Default)]
pub struct Row {
    pub faults: u64,
    pub acked: u64,
    pub lost: u64,
    pub stale: u64,
    pub max_convergence: Duration,
    pub dropped: u64,
}

#[derive(Default)]
pub struct Report {
    windows: BTreeMap<usize, Fault>,
    rows: BTreeMap<Fault, Row>,
}

impl Report {
    pub fn begin(&mut self, window: usize, fault: Fault) {
        self.windows.insert(window, fault);
        self.rows.entry(fault).or_default().faults += 1;
    }

    pub fn converged(&mut self, window: usize, took: Duration) {
        if let Some(f) = self.windows.get(&window) {
            let row = self.rows.entry(*f).or_default();
            row.max_convergence = row.max_convergence.max(took);
        }
    }

    /// Adds what window `window` counted (window 0, before the first fault, counts nowhere).
    pub fn add_tally(&mut self, window: usize, t: &Tally) {
        if let Some(f) = self.windows.get(&window) {
            let row = self.rows.entry(*f).or_default();
            row.acked += t.acked;
            row.lost += t.lost;
            row.stale += t.stale;
            row.dropped += t.dropped;
        }
    }

    pub fn rows(&self) -> Vec<(Fault, Row)> {
        self.rows.iter().map(|(f, r)| (*f, r.clone())).collect()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<20} {:>7} {:>7} {:>5} {:>6} {:>10} {:>8}",
            "fault", "faults", "acked", "lost", "stale", "max conv", "dropped"
        )?;
        let mut total = Row::default();
        for (fault, r) in &self.rows {
            writeln!(
                f,
                "{:<20} {:>7} {:>7} {:>5} {:>6} {:>9.2}s {:>8}",
                fault.name(),
                r.faults,
                r.acked,
                r.lost,
                r.stale,
                r.max_convergence.as_secs_f64(),
                r.dropped
            )?;
            total.faults += r.faults;
            total.acked += r.acked;
            total.lost += r.lost;
            total.stale += r.stale;
            total.dropped += r.dropped;
            total.max_convergence = total.max_convergence.max(r.max_convergence);
        }
        write!(
            f,
            "{:<20} {:>7} {:>7} {:>5} {:>6} {:>9.2}s {:>8}",
            "all",
            total.faults,
            total.acked,
            total.lost,
            total.stale,
            total.max_convergence.as_secs_f64(),
            total.dropped
        )
    }
}
