//! Admission control against reconnect storms: a cap on new handshakes per second for the
//! whole proxy (a token bucket, with a slow-start ramp over the first seconds after the proxy
//! starts so a restarted proxy is not flooded at once), and a cap per client IP. Over either,
//! the handshake gets 503 with a jittered `Retry-After`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the handshake cap ramps from 10% to 100% after the proxy starts.
pub const SLOW_START: Duration = Duration::from_secs(10);

pub struct Admission {
    started: Instant,
    bucket: Mutex<(f64, Instant)>,
    per_ip: Mutex<(u64, HashMap<IpAddr, u32>)>,
}

/// Why a handshake was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    ProxyBusy,
    ClientRate,
}

impl From<Refusal> for crate::handshake::Reject {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::ProxyBusy => crate::handshake::Reject::OverCapacity,
            Refusal::ClientRate => crate::handshake::Reject::ClientRate,
        }
    }
}

impl Default for Admission {
    fn default() -> Self {
        let now = Instant::now();
        Admission { started: now, bucket: Mutex::new((0.0, now)), per_ip: Mutex::new((0, HashMap::new())) }
    }
}

impl Admission {
    /// Takes a slot for one handshake from `ip`, under the caps in force (0 = no cap).
    pub fn admit(&self, ip: IpAddr, per_sec: u32, per_ip_per_sec: u32) -> Result<(), Refusal> {
        self.admit_at(ip, per_sec, per_ip_per_sec, Instant::now())
    }

    fn admit_at(&self, ip: IpAddr, per_sec: u32, per_ip_per_sec: u32, now: Instant) -> Result<(), Refusal> {
        if per_ip_per_sec > 0 {
            // Fixed one-second windows: cheap, and good enough to stop one client's storm.
            let second = now.duration_since(self.started).as_secs();
            let mut w = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if w.0 != second {
                *w = (second, HashMap::new());
            }
            let n = w.1.entry(ip).or_default();
            if *n >= per_ip_per_sec {
                return Err(Refusal::ClientRate);
            }
            *n += 1;
        }
        if per_sec > 0 {
            let ramp = (now.duration_since(self.started).as_secs_f64() / SLOW_START.as_secs_f64()).clamp(0.1, 1.0);
            let rate = per_sec as f64 * ramp;
            let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
            let (tokens, last) = *b;
            // Refill at the current rate; hold at most one second's worth.
            let tokens = (tokens + now.duration_since(last).as_secs_f64() * rate).min(rate.max(1.0));
            if tokens < 1.0 {
                *b = (tokens, now);
                return Err(Refusal::ProxyBusy);
            }
            *b = (tokens - 1.0, now);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_cap_counts_per_second() {
        let a = Admission::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            a.admit(ip, 0, 3).unwrap();
        }
        assert_eq!(a.admit(ip, 0, 3), Err(Refusal::ClientRate));
        a.admit(other, 0, 3).unwrap();
    }

    #[test]
    fn proxy_cap_is_a_bucket() {
        let a = Admission::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = a.started;
        // Starting empty during slow start: the first request waits for tokens.
        assert_eq!(a.admit_at(ip, 100, 0, t0), Err(Refusal::ProxyBusy));
        // 200 ms at 10% of 100/s (slow start): 2 tokens.
        let t = t0 + Duration::from_millis(200);
        let ok = (0..10).filter(|_| a.admit_at(ip, 100, 0, t).is_ok()).count();
        assert_eq!(ok, 2);
        // After slow start, the full rate, and at most one second's worth at once.
        let t = t0 + SLOW_START + Duration::from_secs(5);
        let ok = (0..500).filter(|_| a.admit_at(ip, 100, 0, t).is_ok()).count();
        assert_eq!(ok, 100);
        assert!(a.admit_at(ip, 0, 0, t).is_ok(), "no cap, no refusal");
    }
}
