//! Picking a backend: weighted round robin, least connections, client-IP hash, Maglev
//! consistent hash and power of two choices. Selection walks candidates and skips the unfit
//! (draining, disabled, unhealthy, ejected, full); which candidates are fit is decided by the
//! caller's predicate, so balancing and health stay separate.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use switchyard_proto::v1::Algorithm;

use crate::hash::{hash64, mix};

/// Maglev lookup table size: a prime well above any pool size, as the paper suggests.
pub const MAGLEV_SIZE: usize = 65_537;

/// Maglev's lookup table (Eisenbud et al., NSDI 2016), with weights: each backend claims
/// slots in proportion to its weight. Adding or removing one of N backends moves about 1/N
/// of the keys.
pub struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    /// `backends`: (identity, weight) in any order; identities must be unique.
    pub fn new(backends: &[(&str, u32)]) -> Option<Maglev> {
        let live: Vec<(usize, u64, u64, u32)> = backends
            .iter()
            .enumerate()
            .filter(|(_, (_, w))| *w > 0)
            .map(|(i, (id, w))| {
                let offset = hash64(&[id.as_bytes(), b"offset"]) % MAGLEV_SIZE as u64;
                let skip = hash64(&[id.as_bytes(), b"skip"]) % (MAGLEV_SIZE as u64 - 1) + 1;
                (i, offset, skip, *w)
            })
            .collect();
        if live.is_empty() {
            return None;
        }
        let max_w = live.iter().map(|l| l.3).max().unwrap_or(1) as u64;
        let mut table = vec![u32::MAX; MAGLEV_SIZE];
        let mut next = vec![0u64; live.len()];
        let mut credit = vec![0u64; live.len()];
        let mut filled = 0;
        'fill: loop {
            for (k, &(idx, offset, skip, w)) in live.iter().enumerate() {
                credit[k] += w as u64;
                if credit[k] < max_w {
                    continue;
                }
                credit[k] -= max_w;
                loop {
                    let slot = ((offset + next[k] * skip) % MAGLEV_SIZE as u64) as usize;
                    next[k] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = idx as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == MAGLEV_SIZE {
                    break 'fill;
                }
            }
        }
        Some(Maglev { table })
    }

    /// Backends for `key` in preference order: the owner of its slot, then owners of the
    /// following slots, so a key whose backend is unfit moves to the same next choice on
    /// every proxy.
    pub fn candidates(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        let start = (key % MAGLEV_SIZE as u64) as usize;
        (0..MAGLEV_SIZE).map(move |i| self.table[(start + i) % MAGLEV_SIZE] as usize)
    }
}

/// A pool's balancer: built once per config change, shared by all connections.
pub struct Balancer {
    pub algorithm: Algorithm,
    weights: Vec<u32>,
    /// Each backend's identity hashed, for client-IP hashing: a client's backend must not
    /// depend on where the others sit in the pool's order.
    ids: Vec<u64>,
    maglev: Option<std::sync::Arc<Maglev>>,
    /// Smooth weighted round robin state (NGINX's algorithm), one slot per backend.
    swrr: Mutex<Vec<i64>>,
    counter: AtomicU64,
}

/// What a pick may use: the hash key (for consistent hash), the client IP hash, and each
/// backend's load.
pub struct PickInput<'a> {
    pub key: Option<u64>,
    pub ip: u64,
    pub load: &'a dyn Fn(usize) -> u64,
    pub fit: &'a dyn Fn(usize) -> bool,
}

impl Balancer {
    /// `backends`: (identity, weight) in the pool's stable order.
    pub fn new(algorithm: Algorithm, backends: &[(&str, u32)]) -> Balancer {
        let maglev =
            if algorithm == Algorithm::ConsistentHash { Maglev::new(backends).map(std::sync::Arc::new) } else { None };
        Balancer {
            algorithm,
            weights: backends.iter().map(|b| b.1).collect(),
            ids: backends.iter().map(|b| hash64(&[b.0.as_bytes(), b"rendezvous"])).collect(),
            maglev,
            swrr: Mutex::new(vec![0; backends.len()]),
            counter: AtomicU64::new(0),
        }
    }

    /// The consistent-hash table, for a pool's session affinity to share (the same backends
    /// and weights: the same table, built once).
    pub fn maglev(&self) -> Option<&std::sync::Arc<Maglev>> {
        self.maglev.as_ref()
    }

    pub fn pick(&self, inp: &PickInput) -> Option<usize> {
        let n = self.weights.len();
        let fit = |i: usize| self.weights[i] > 0 && (inp.fit)(i);
        match self.algorithm {
            Algorithm::ConsistentHash => match (inp.key, &self.maglev) {
                // Nothing fit (all at their limit, draining, ejected): known in n looks, not
                // after a walk of every slot of the table.
                (Some(k), Some(m)) => (0..n).any(fit).then(|| m.candidates(k).take(MAGLEV_SIZE).find(|&i| fit(i)))?,
                _ => self.round_robin(&fit),
            },
            Algorithm::IpHash => {
                // Weighted rendezvous hashing on the client IP: stable when others change.
                (0..n).filter(|&i| fit(i)).max_by(|&a, &b| self.hrw(inp.ip, a).total_cmp(&self.hrw(inp.ip, b)))
            }
            Algorithm::LeastConnections => {
                // The least load per unit of weight; ties (all idle, often) go by weighted
                // round robin among the tied, as NGINX's and HAProxy's least-connections do.
                // Nothing is allocated: this runs for every connection and plain request.
                let mut best: Option<usize> = None;
                let mut tied = 0;
                for i in (0..n).filter(|&i| fit(i)) {
                    match best {
                        Some(b) if self.less_loaded(inp, b, i) => {}
                        Some(b) if !self.less_loaded(inp, i, b) => tied += 1,
                        _ => (best, tied) = (Some(i), 1),
                    }
                }
                let b = best?;
                if tied == 1 {
                    return best;
                }
                self.round_robin(&|i| fit(i) && !self.less_loaded(inp, i, b) && !self.less_loaded(inp, b, i))
            }
            Algorithm::P2c => {
                // Two candidates drawn in proportion to weight, the less loaded per unit of
                // weight taken: with equal loads the picks follow the weights.
                let fits: Vec<usize> = (0..n).filter(|&i| fit(i)).collect();
                match fits.len() {
                    0 => None,
                    1 => Some(fits[0]),
                    _ => {
                        let r = mix(self.counter.fetch_add(1, Relaxed) ^ 0x5eed);
                        let a = self.weighted(&fits, r, None);
                        let b = self.weighted(&fits, mix(r), Some(a));
                        Some(if self.less_loaded(inp, b, a) { b } else { a })
                    }
                }
            }
            Algorithm::RoundRobin | Algorithm::Unspecified => self.round_robin(&fit),
        }
    }

    /// One of `fits` (all of weight above 0), but `except`, drawn by `r` in proportion to weight.
    fn weighted(&self, fits: &[usize], r: u64, except: Option<usize>) -> usize {
        let pool = || fits.iter().copied().filter(|&i| Some(i) != except);
        let total: u64 = pool().map(|i| u64::from(self.weights[i])).sum();
        let mut at = r % total.max(1);
        for i in pool() {
            let w = u64::from(self.weights[i]);
            if at < w {
                return i;
            }
            at -= w;
        }
        pool().next_back().unwrap_or(fits[0])
    }

    /// Whether `a` carries less load per unit of weight than `b`.
    fn less_loaded(&self, inp: &PickInput, a: usize, b: usize) -> bool {
        ((inp.load)(a) as u128) * (self.weights[b] as u128) < ((inp.load)(b) as u128) * (self.weights[a] as u128)
    }

    fn hrw(&self, ip: u64, i: usize) -> f64 {
        let h = mix(ip ^ self.ids[i]);
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        -(self.weights[i] as f64) / u.ln()
    }

    fn round_robin(&self, fit: &dyn Fn(usize) -> bool) -> Option<usize> {
        let mut cur = self.swrr.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in 0..self.weights.len() {
            if !fit(i) {
                continue;
            }
            let w = self.weights[i] as i64;
            cur[i] += w;
            total += w;
            if best.is_none_or(|b| cur[i] > cur[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            cur[b] -= total;
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(b: &Balancer, n: usize, picks: usize, key: impl Fn(usize) -> Option<u64>) -> Vec<usize> {
        let mut c = vec![0; n];
        for p in 0..picks {
            let inp = PickInput { key: key(p), ip: p as u64, load: &|_| 0, fit: &|_| true };
            c[b.pick(&inp).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn weighted_round_robin_is_exact_and_smooth() {
        let b = Balancer::new(Algorithm::RoundRobin, &[("a", 5), ("b", 1), ("c", 1)]);
        assert_eq!(counts(&b, 3, 700, |_| None), vec![500, 100, 100]);
        let inp = PickInput { key: None, ip: 0, load: &|_| 0, fit: &|_| true };
        let seq: Vec<usize> = (0..7).map(|_| b.pick(&inp).unwrap()).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0], "interleaved, not 5 in a row");
    }

    #[test]
    fn unfit_backends_are_skipped() {
        let b = Balancer::new(Algorithm::RoundRobin, &[("a", 1), ("b", 1)]);
        let inp = PickInput { key: None, ip: 0, load: &|_| 0, fit: &|i| i == 1 };
        assert!((0..10).all(|_| b.pick(&inp) == Some(1)));
        let none = PickInput { key: None, ip: 0, load: &|_| 0, fit: &|_| false };
        assert_eq!(b.pick(&none), None);
    }

    #[test]
    fn maglev_is_weighted_and_moves_about_one_nth_on_growth() {
        let ids: Vec<String> = (0..5).map(|i| format!("10.0.0.{i}:80")).collect();
        let five: Vec<(&str, u32)> = ids.iter().map(|s| (s.as_str(), 1)).collect();
        let m5 = Maglev::new(&five).unwrap();
        let mut six = five.clone();
        six.push(("10.0.0.9:80", 1));
        let m6 = Maglev::new(&six).unwrap();
        let keys = 20_000u64;
        let moved = (0..keys).filter(|k| {
            let h = mix(*k);
            m5.candidates(h).next() != m6.candidates(h).next()
        });
        let frac = moved.count() as f64 / keys as f64;
        assert!((0.10..0.25).contains(&frac), "moved {frac} of keys, ideal 1/6");

        let w = Maglev::new(&[("a", 3), ("b", 1)]).unwrap();
        let a = (0..keys).filter(|k| w.candidates(mix(*k)).next() == Some(0)).count() as f64 / keys as f64;
        assert!((0.70..0.80).contains(&a), "weight 3:1 gave {a}");
    }

    #[test]
    fn least_connections_and_p2c_prefer_the_idle() {
        let loads = [10u64, 0, 10];
        for algo in [Algorithm::LeastConnections, Algorithm::P2c] {
            let b = Balancer::new(algo, &[("a", 1), ("b", 1), ("c", 1)]);
            let inp = PickInput { key: None, ip: 0, load: &|i| loads[i], fit: &|_| true };
            let c = (0..300).filter(|_| b.pick(&inp) == Some(1)).count();
            assert!(c >= 190, "{algo:?} picked the idle backend {c}/300 times");
        }
    }

    /// With every backend idle the picks follow the weights, and an unfit backend's turn
    /// goes to no one in particular (it used to fall to the one after it, doubling its share).
    #[test]
    fn least_connections_and_p2c_follow_weights_when_loads_tie() {
        for algo in [Algorithm::LeastConnections, Algorithm::P2c] {
            let b = Balancer::new(algo, &[("a", 1), ("b", 3), ("c", 0)]);
            let c = counts(&b, 3, 4000, |_| None);
            let share = c[1] as f64 / 4000.0;
            assert!((0.70..0.80).contains(&share), "{algo:?}: weight 3 of 4 took {c:?}");
            assert_eq!(c[2], 0, "{algo:?}: weight 0 takes nothing");
            let b = Balancer::new(algo, &[("a", 1), ("b", 1), ("c", 1)]);
            let inp = PickInput { key: None, ip: 0, load: &|_| 0, fit: &|i| i != 1 };
            let mut c = [0usize; 3];
            (0..3000).for_each(|_| c[b.pick(&inp).unwrap()] += 1);
            assert!(c[0].abs_diff(c[2]) < 300 && c[1] == 0, "{algo:?}: {c:?}");
        }
        // Load per unit of weight decides before the tie-break: 4 on weight 4 beats 2 on 1.
        let b = Balancer::new(Algorithm::LeastConnections, &[("a", 1), ("b", 4)]);
        let loads = [2u64, 4];
        let inp = PickInput { key: None, ip: 0, load: &|i| loads[i], fit: &|_| true };
        assert!((0..10).all(|_| b.pick(&inp) == Some(1)));
    }

    #[test]
    fn ip_hash_is_sticky_and_spread() {
        let b = Balancer::new(Algorithm::IpHash, &[("a", 1), ("b", 1), ("c", 1)]);
        let c = counts(&b, 3, 3000, |_| None);
        assert!(c.iter().all(|&x| x > 800), "{c:?}");
        let inp = PickInput { key: None, ip: 42, load: &|_| 0, fit: &|_| true };
        let first = b.pick(&inp);
        assert!((0..20).all(|_| b.pick(&inp) == first));
    }

    /// A client stays where it was when another backend is removed, added or reordered (it
    /// moved when clients were hashed against each backend's place in the pool).
    #[test]
    fn ip_hash_follows_backends_not_their_places() {
        let ids = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"];
        let pick = |pool: &[&'static str], ip: u64| -> &'static str {
            let b = Balancer::new(Algorithm::IpHash, &pool.iter().map(|a| (*a, 1)).collect::<Vec<_>>());
            let inp = PickInput { key: None, ip: mix(ip), load: &|_| 0, fit: &|_| true };
            pool[b.pick(&inp).unwrap()]
        };
        let without_second = [ids[0], ids[2], ids[3]];
        let reordered = [ids[3], ids[1], ids[0], ids[2]];
        let mut kept = 0;
        for ip in 0..2000 {
            let was = pick(&ids, ip);
            assert_eq!(pick(&reordered, ip), was, "order alone moved client {ip}");
            if was != ids[1] {
                assert_eq!(pick(&without_second, ip), was, "client {ip} moved off a backend that stayed");
                kept += 1;
            }
        }
        assert!((1300..1700).contains(&kept), "the removed backend had {} of 2000", 2000 - kept);
    }
}
