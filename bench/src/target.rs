//! One client connection to either system: a put of a new key, reading keys back, and
//! finding the leader.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::Result;
use switchyard_proto::v1 as sy;
use tonic::transport::{Channel, Endpoint};

pub mod etcd {
    #![allow(clippy::all)]
    tonic::include_proto!("etcdserverpb");
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub client: u64,
    pub seq: u64,
}

impl Key {
    /// Switchyard: a new backend in pool `bench`, named by the key.
    fn backend(&self) -> String {
        format!("c{}-{}.bench:80", self.client, self.seq)
    }
    fn etcd(&self) -> Vec<u8> {
        format!("k/{}/{}", self.client, self.seq).into_bytes()
    }
}

pub struct Conn {
    system: String,
    channel: Channel,
}

/// The client's TLS, for runs where both systems serve mTLS (set once, before any channel).
pub static TLS: std::sync::OnceLock<tonic::transport::ClientTlsConfig> = std::sync::OnceLock::new();

fn channel(addr: &str) -> Channel {
    let (scheme, tls) = match TLS.get() {
        Some(t) => ("https", Some(t.clone())),
        None => ("http", None),
    };
    let mut e = Endpoint::from_shared(format!("{scheme}://{addr}")).expect("uri");
    if let Some(t) = tls {
        e = e.tls_config(t).expect("TLS config");
    }
    e.connect_timeout(Duration::from_millis(300)).timeout(Duration::from_secs(5)).tcp_nodelay(true).connect_lazy()
}

/// Switchyard needs the pool the bench writes backends into.
pub async fn prepare(system: &str, client_addrs: &[String]) -> Result<()> {
    if system == "switchyard" {
        let mut a = sy::admin_client::AdminClient::new(channel(&client_addrs[0]));
        a.create_pool(sy::CreatePoolRequest { pool: Some(sy::Pool { name: "bench".into(), ..Default::default() }) })
            .await?;
    }
    Ok(())
}

impl Conn {
    pub fn new(system: &str, addr: &str) -> Conn {
        Conn { system: system.into(), channel: channel(addr) }
    }

    /// Writes a new key with `value` (durably, acknowledged by a quorum).
    pub async fn put(&self, key: &Key, value: &[u8]) -> Result<(), tonic::Status> {
        if self.system == "switchyard" {
            let mut a = sy::admin_client::AdminClient::new(self.channel.clone());
            let labels = BTreeMap::from([("v".to_string(), String::from_utf8_lossy(value).into_owned())]);
            let b = sy::Backend {
                pool: "bench".into(),
                address: key.backend(),
                weight: 1,
                labels: labels.into_iter().collect(),
                ..Default::default()
            };
            a.add_backend(sy::AddBackendRequest { backend: Some(b) }).await?;
        } else {
            let mut kv = etcd::kv_client::KvClient::new(self.channel.clone());
            kv.put(etcd::PutRequest { key: key.etcd(), value: value.to_vec(), lease: 0 }).await?;
        }
        Ok(())
    }

    /// How many of `keys` a linearizable read lacks. A read that meets an election right after
    /// the failover ("leader changed", UNAVAILABLE) is tried again, for up to 10 s.
    pub async fn count_missing(&self, keys: &[Key]) -> Result<usize> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match self.count_missing_once(keys).await {
                Err(e)
                    if std::time::Instant::now() < deadline
                        && e.downcast_ref::<tonic::Status>().is_some_and(|s| s.code() == tonic::Code::Unavailable) =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    async fn count_missing_once(&self, keys: &[Key]) -> Result<usize> {
        let present: HashSet<String> = if self.system == "switchyard" {
            let mut q = sy::query_client::QueryClient::new(self.channel.clone()).max_decoding_message_size(1 << 30);
            let r = q
                .list_backends(sy::ListBackendsRequest {
                    consistency: sy::Consistency::Linearizable as i32,
                    pool: "bench".into(),
                })
                .await?
                .into_inner();
            r.backends.into_iter().map(|b| b.address).collect()
        } else {
            let mut kv = etcd::kv_client::KvClient::new(self.channel.clone()).max_decoding_message_size(1 << 30);
            let r = kv
                .range(etcd::RangeRequest {
                    key: b"k/".to_vec(),
                    range_end: b"k0".to_vec(),
                    keys_only: true,
                    ..Default::default()
                })
                .await?
                .into_inner();
            r.kvs.into_iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect()
        };
        Ok(keys
            .iter()
            .filter(|k| {
                let name = if self.system == "switchyard" {
                    k.backend()
                } else {
                    String::from_utf8_lossy(&k.etcd()).into_owned()
                };
                !present.contains(&name)
            })
            .count())
    }

    /// The Raft term this member is in: it rises with every election.
    pub async fn term(&self) -> Option<u64> {
        if self.system == "switchyard" {
            let mut q = sy::query_client::QueryClient::new(self.channel.clone());
            Some(q.cluster_status(sy::ClusterStatusRequest {}).await.ok()?.into_inner().term)
        } else {
            let mut m = etcd::maintenance_client::MaintenanceClient::new(self.channel.clone());
            Some(m.status(etcd::StatusRequest {}).await.ok()?.into_inner().raft_term)
        }
    }

    /// The leader's position (0, 1, 2) as this member sees it.
    pub async fn leader_index(&self) -> Option<usize> {
        if self.system == "switchyard" {
            let mut q = sy::query_client::QueryClient::new(self.channel.clone());
            let s = q.cluster_status(sy::ClusterStatusRequest {}).await.ok()?.into_inner();
            (s.leader_id != 0).then(|| s.leader_id as usize - 1)
        } else {
            // etcd member ids are random: ask each member for its own id by position.
            let mut m = etcd::maintenance_client::MaintenanceClient::new(self.channel.clone());
            let s = m.status(etcd::StatusRequest {}).await.ok()?.into_inner();
            if s.leader == 0 {
                return None;
            }
            etcd_position(s.leader)
        }
    }
}

static ETCD_MEMBERS: std::sync::Mutex<Vec<(String, u64)>> = std::sync::Mutex::new(Vec::new());

/// Records each etcd member's id by position, once all answer.
pub async fn learn_etcd_ids(addrs: &[String]) -> bool {
    let mut ids = Vec::new();
    for a in addrs {
        let mut m = etcd::maintenance_client::MaintenanceClient::new(channel(a));
        match m.status(etcd::StatusRequest {}).await {
            Ok(s) => ids.push((a.clone(), s.into_inner().header.map_or(0, |h| h.member_id))),
            Err(_) => return false,
        }
    }
    *ETCD_MEMBERS.lock().unwrap() = ids;
    true
}

pub fn etcd_position(id: u64) -> Option<usize> {
    ETCD_MEMBERS.lock().unwrap().iter().position(|(_, m)| *m == id)
}
