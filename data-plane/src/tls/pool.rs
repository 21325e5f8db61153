//! TLS to each pool's backends, as the pool's setting says: compiled once per setting (a
//! table is rebuilt on every config change, and a client config rebuilt with it would lose
//! its TLS session cache, so every backend connection would pay a full handshake).

use std::collections::HashMap;
use std::sync::Mutex;

use switchyard_model::backend_tls;
use switchyard_proto::v1::BackendTls as Setting;

use super::BackendTls;

/// What TLS a connection to a pool's backends uses.
#[derive(Clone)]
pub enum PoolTls {
    /// The pool says nothing: the proxy's own `--backend-tls`, if any.
    Proxy,
    Off,
    On(BackendTls),
    /// A setting this proxy cannot compile (the control plane checked it, so a different
    /// build): its backends are not used, rather than used without the TLS asked for.
    Broken(String),
}

impl PoolTls {
    /// Tells apart connections made under different settings (for pooling them): equal only
    /// for the same compiled setting.
    pub fn tag(&self) -> u64 {
        match self {
            PoolTls::Proxy => 0,
            PoolTls::Off => 1,
            PoolTls::Broken(_) => 2,
            PoolTls::On(t) => t.id,
        }
    }
}

/// The compiled settings, by pool.
#[derive(Default)]
pub struct PoolTlsCache {
    compiled: Mutex<HashMap<String, (Setting, PoolTls)>>,
}

impl PoolTlsCache {
    pub fn get(&self, pool: &str, setting: Option<&Setting>) -> PoolTls {
        let Some(t) = setting else { return PoolTls::Proxy };
        if !t.enabled {
            return PoolTls::Off;
        }
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, tls)) = compiled.get(pool) {
            if seen == t {
                return tls.clone();
            }
        }
        let name = (!t.server_name.is_empty()).then(|| t.server_name.clone());
        let made = backend_tls::roots(&t.ca_pem)
            .and_then(|roots| BackendTls::new(backend_tls::client_config(roots), name).map_err(|e| e.0));
        let tls = match made {
            Ok(b) => PoolTls::On(b),
            Err(e) => {
                tracing::error!(pool, "cannot use the pool's backend TLS, its backends will not be used: {e}");
                PoolTls::Broken(e)
            }
        };
        compiled.insert(pool.to_string(), (t.clone(), tls.clone()));
        tls
    }

    /// Forgets pools that are gone.
    pub fn retain(&self, pools: &dyn Fn(&str) -> bool) {
        self.compiled.lock().unwrap_or_else(|e| e.into_inner()).retain(|p, _| pools(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem()
    }

    #[test]
    fn a_setting_is_compiled_once_and_again_only_when_it_changes() {
        let cache = PoolTlsCache::default();
        assert!(matches!(cache.get("p", None), PoolTls::Proxy));
        assert!(matches!(cache.get("p", Some(&Setting::default())), PoolTls::Off));
        let on = Setting { enabled: true, ca_pem: ca_pem(), server_name: "b.internal".into() };
        let (PoolTls::On(a), PoolTls::On(b)) = (cache.get("p", Some(&on)), cache.get("p", Some(&on))) else {
            panic!("not on")
        };
        assert!(std::sync::Arc::ptr_eq(&a.config, &b.config), "compiled once");
        assert_eq!(PoolTls::On(a.clone()).tag(), PoolTls::On(b).tag());
        assert_eq!(a.server_name.as_deref(), Some("b.internal"));
        let other = Setting { ca_pem: ca_pem(), ..on.clone() };
        let PoolTls::On(c) = cache.get("p", Some(&other)) else { panic!("not on") };
        assert!(!std::sync::Arc::ptr_eq(&a.config, &c.config), "a new CA is compiled anew");
        assert_ne!(PoolTls::On(a).tag(), PoolTls::On(c).tag());
        let broken = Setting { ca_pem: "garbage".into(), ..on };
        assert!(matches!(cache.get("p", Some(&broken)), PoolTls::Broken(_)));
        cache.retain(&|p| p != "p");
        assert!(cache.compiled.lock().unwrap().is_empty());
    }
}
