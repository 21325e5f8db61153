//! A linearizability checker for one register (Wing & Gong's search with Lowe's memo of
//! visited states): is there an order of the operations, each taking effect at one instant
//! between its invocation and its completion, in which every read returns the latest write?
//!
//! A write whose outcome is unknown (timed out, connection cut) may have taken effect at any
//! time after it was invoked, or never; a failed read is left out of the history, since it
//! returned nothing.

use std::collections::HashSet;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Write(u32),
    Read(u32),
}

/// One operation, with its times in microseconds since the run began.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    pub op: Op,
    pub invoked: u64,
    /// `None`: a write whose outcome is unknown.
    pub completed: Option<u64>,
}

/// Histories longer than this are refused rather than searched: the search is exponential
/// in the worst case, and the suite keeps each register's history short.
pub const MAX_CALLS: usize = 512;
/// Search states visited before the checker gives up and says so (an "undecided" history
/// counts as a failure: it is not known to be linearizable).
const MAX_STATES: usize = 2_000_000;

/// `Ok` when `history`, starting from a register holding `initial`, is linearizable; else a
/// description of the shortest unexplained part.
pub fn check(initial: u32, history: &[Call]) -> Result<(), String> {
    if history.len() > MAX_CALLS {
        return Err(format!("history of {} calls is longer than the checker takes ({MAX_CALLS})", history.len()));
    }
    // A write of unknown outcome whose value nobody read may as well never have applied
    // (values are unique): leaving it out keeps the search from trying it everywhere.
    let read: HashSet<u32> =
        history.iter().filter_map(|c| if let Op::Read(v) = c.op { Some(v) } else { None }).collect();
    let mut calls: Vec<Call> = history
        .iter()
        .filter(|c| c.completed.is_some() || matches!(c.op, Op::Write(v) if read.contains(&v)))
        .copied()
        .collect();
    calls.sort_by_key(|c| c.invoked);
    let n = calls.len();
    let end = |c: &Call| c.completed.unwrap_or(u64::MAX);
    let mut done = vec![false; n];
    let mut seen: HashSet<(Vec<u64>, u32)> = HashSet::new();
    // Depth-first over (done set, value); the stack holds the choices made so far.
    let mut stack: Vec<(usize, u32)> = Vec::new();
    let mut value = initial;
    let mut next_try = 0usize;
    let mut deepest = 0usize;
    loop {
        // Complete: every call that must have happened has happened.
        if calls.iter().zip(&done).all(|(c, d)| *d || c.completed.is_none()) {
            return Ok(());
        }
        // A call may go next only if it was invoked before every other pending call ended.
        let horizon = calls.iter().zip(&done).filter(|(_, d)| !**d).map(|(c, _)| end(c)).min().unwrap_or(u64::MAX);
        let mut chosen = None;
        for i in next_try..n {
            if done[i] || calls[i].invoked > horizon {
                continue;
            }
            let after = match calls[i].op {
                Op::Write(v) => v,
                Op::Read(v) if v == value => value,
                Op::Read(_) => continue,
            };
            done[i] = true;
            if seen.len() >= MAX_STATES {
                return Err(format!("undecided: the search passed {MAX_STATES} states"));
            }
            if seen.insert((bits(&done), after)) {
                chosen = Some((i, after));
                break;
            }
            done[i] = false;
        }
        match chosen {
            Some((i, after)) => {
                stack.push((i, value));
                value = after;
                next_try = 0;
                deepest = deepest.max(stack.len());
            }
            None => {
                let Some((i, before)) = stack.pop() else {
                    return Err(explain(initial, &calls, deepest));
                };
                done[i] = false;
                value = before;
                next_try = i + 1;
            }
        }
    }
}

fn bits(done: &[bool]) -> Vec<u64> {
    let mut out = vec![0u64; done.len().div_ceil(64)];
    for (i, d) in done.iter().enumerate() {
        if *d {
            out[i / 64] |= 1 << (i % 64);
        }
    }
    out
}

fn explain(initial: u32, calls: &[Call], deepest: usize) -> String {
    let fmt = |c: &Call| {
        let end = c.completed.map_or("?".to_string(), |e| format!("{:.3}", e as f64 / 1e6));
        format!("{:?} [{:.3}s, {end}s]", c.op, c.invoked as f64 / 1e6)
    };
    let lines: Vec<String> = calls.iter().map(fmt).collect();
    format!(
        "not linearizable (initial value {initial}; at most {deepest} of {} calls could be ordered): {}",
        calls.len(),
        lines.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(op: Op, invoked: u64, completed: u64) -> Call {
        Call { op, invoked, completed: Some(completed) }
    }

    #[test]
    fn sequential_reads_of_the_last_write_pass() {
        let h = [call(Op::Write(2), 0, 10), call(Op::Read(2), 20, 30), call(Op::Write(3), 40, 50)];
        assert!(check(1, &h).is_ok());
        assert!(check(1, &[call(Op::Read(1), 0, 5)]).is_ok());
    }

    #[test]
    fn a_read_of_an_overwritten_value_after_the_overwrite_completed_fails() {
        let h = [call(Op::Write(2), 0, 10), call(Op::Write(3), 20, 30), call(Op::Read(2), 40, 50)];
        let e = check(1, &h).unwrap_err();
        assert!(e.contains("not linearizable"), "{e}");
    }

    #[test]
    fn concurrent_calls_may_take_effect_in_either_order() {
        // The read overlaps both writes: 2 or 3 are both fine, 1 too if it went first.
        for v in [1, 2, 3] {
            let h = [call(Op::Write(2), 0, 100), call(Op::Write(3), 10, 100), call(Op::Read(v), 5, 100)];
            assert!(check(1, &h).is_ok(), "read {v}");
        }
        let h = [call(Op::Write(2), 0, 100), call(Op::Read(9), 5, 100)];
        assert!(check(1, &h).is_err());
    }

    #[test]
    fn a_lost_acknowledged_write_fails() {
        // Acknowledged at 10, yet a read that began after it sees the initial value.
        let h = [call(Op::Write(2), 0, 10), call(Op::Read(1), 20, 30)];
        assert!(check(1, &h).is_err());
    }

    #[test]
    fn a_write_of_unknown_outcome_may_apply_late_or_never() {
        let unknown = Call { op: Op::Write(2), invoked: 0, completed: None };
        assert!(check(1, &[unknown, call(Op::Read(1), 10, 20)]).is_ok(), "never applied");
        assert!(check(1, &[unknown, call(Op::Read(1), 10, 20), call(Op::Read(2), 30, 40)]).is_ok(), "applied late");
        // Once seen, it cannot be unseen.
        let h = [unknown, call(Op::Read(2), 10, 20), call(Op::Read(1), 30, 40)];
        assert!(check(1, &h).is_err());
    }

    #[test]
    fn many_writes_of_unknown_outcome_nobody_read_are_decided_quickly() {
        // As after kill -9 of every node: every write times out.
        let mut h: Vec<Call> =
            (0..60u64).map(|i| Call { op: Op::Write(i as u32 + 2), invoked: i * 10, completed: None }).collect();
        h.push(call(Op::Read(30), 700, 710));
        h.push(call(Op::Read(30), 720, 730));
        let t = std::time::Instant::now();
        assert!(check(1, &h).is_ok());
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "took {:?}", t.elapsed());
    }

    #[test]
    fn a_long_concurrent_history_is_decided_quickly() {
        let mut h = Vec::new();
        for i in 0..200u64 {
            h.push(call(Op::Write(i as u32 + 2), i * 10, i * 10 + 25));
            h.push(call(Op::Read(i as u32 + 2), i * 10 + 5, i * 10 + 40));
        }
        let t = std::time::Instant::now();
        assert!(check(1, &h).is_ok());
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "took {:?}", t.elapsed());
    }
}
