//! Which role may call which gRPC method: the one permission table. A path that is not here is
//! refused, so a method added to a `.proto` is unusable until someone decides who may call it
//! (and the descriptor test below fails until they do).
//!
//! | service | method | roles |
//! |---|---|---|
//! | grpc.health.v1.Health | Check, Watch | open (load balancers and supervisors probe it) |
//! | grpc.reflection.v1.ServerReflection | ServerReflectionInfo | viewer, operator, admin |
//! | Query | every method | viewer, operator, admin |
//! | Discovery | Watch | viewer, operator, admin, proxy |
//! | Discovery | Report | proxy |
//! | Admin | SetBackendWeight, SetBackendState (drain/enable/disable), UpdateSettings, DeleteSession | operator, admin |
//! | Admin | CreatePool, UpdatePool, DeletePool, AddBackend, RemoveBackend, SetRoute, DeleteRoute | admin |
//! | Admin | AddNode, PromoteNode, RemoveNode | admin |
//! | Admin | SaveSnapshot (a backup holds tokens' hashes and the affinity secret) | admin |
//! | Access | CreateToken, ListTokens, RevokeToken, ListAudit | admin |
//! | switchyard.raft.v1.Raft | every method (Raft RPCs, Forward, Initialized, Hold, Leader) | node |

use switchyard_model::tls::Role::{self, *};

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without credentials.
    Open,
    /// A caller holding one of these roles.
    Roles(&'static [Role]),
}

const READ: Access = Access::Roles(&[Viewer, Operator, Admin]);
const WATCH: Access = Access::Roles(&[Viewer, Operator, Admin, Proxy]);
const OPERATE: Access = Access::Roles(&[Operator, Admin]);
const ADMIN: Access = Access::Roles(&[Admin]);
const PROXY: Access = Access::Roles(&[Proxy]);
const PEER: Access = Access::Roles(&[Node]);

/// Every method served, by its full gRPC path.
pub const TABLE: &[(&str, Access)] = &[
    ("/grpc.health.v1.Health/Check", Access::Open),
    ("/grpc.health.v1.Health/Watch", Access::Open),
    ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", READ),
    ("/switchyard.v1.Query/GetTopology", READ),
    ("/switchyard.v1.Query/ListPools", READ),
    ("/switchyard.v1.Query/GetPool", READ),
    ("/switchyard.v1.Query/ListBackends", READ),
    ("/switchyard.v1.Query/ListRoutes", READ),
    ("/switchyard.v1.Query/GetSettings", READ),
    ("/switchyard.v1.Query/ListSessions", READ),
    ("/switchyard.v1.Query/GetSession", READ),
    ("/switchyard.v1.Query/ListProxies", READ),
    ("/switchyard.v1.Query/ClusterStatus", READ),
    ("/switchyard.v1.Discovery/Watch", WATCH),
    ("/switchyard.v1.Discovery/Report", PROXY),
    ("/switchyard.v1.Admin/SetBackendWeight", OPERATE),
    ("/switchyard.v1.Admin/SetBackendState", OPERATE),
    ("/switchyard.v1.Admin/UpdateSettings", OPERATE),
    ("/switchyard.v1.Admin/DeleteSession", OPERATE),
    ("/switchyard.v1.Admin/CreatePool", ADMIN),
    ("/switchyard.v1.Admin/UpdatePool", ADMIN),
    ("/switchyard.v1.Admin/DeletePool", ADMIN),
    ("/switchyard.v1.Admin/AddBackend", ADMIN),
    ("/switchyard.v1.Admin/RemoveBackend", ADMIN),
    ("/switchyard.v1.Admin/SetRoute", ADMIN),
    ("/switchyard.v1.Admin/DeleteRoute", ADMIN),
    ("/switchyard.v1.Admin/AddNode", ADMIN),
    ("/switchyard.v1.Admin/PromoteNode", ADMIN),
    ("/switchyard.v1.Admin/RemoveNode", ADMIN),
    ("/switchyard.v1.Admin/SaveSnapshot", ADMIN),
    ("/switchyard.v1.Access/CreateToken", ADMIN),
    ("/switchyard.v1.Access/ListTokens", ADMIN),
    ("/switchyard.v1.Access/RevokeToken", ADMIN),
    ("/switchyard.v1.Access/ListAudit", ADMIN),
    ("/switchyard.raft.v1.Raft/AppendEntries", PEER),
    ("/switchyard.raft.v1.Raft/AppendStream", PEER),
    ("/switchyard.raft.v1.Raft/Vote", PEER),
    ("/switchyard.raft.v1.Raft/InstallSnapshot", PEER),
    ("/switchyard.raft.v1.Raft/Forward", PEER),
    ("/switchyard.raft.v1.Raft/Initialized", PEER),
    ("/switchyard.raft.v1.Raft/Hold", PEER),
    ("/switchyard.raft.v1.Raft/Leader", PEER),
];

/// Who may call `path`; `None` (refused) for a path not in the table.
pub fn access(path: &str) -> Option<Access> {
    TABLE.iter().find(|(p, _)| *p == path).map(|(_, a)| *a)
}

/// `Service/Method` from a gRPC path, for messages and audit records.
pub fn method_name(path: &str) -> &str {
    let p = path.trim_start_matches('/');
    match p.split_once('/') {
        Some((service, method)) => {
            let short = service.rsplit('.').next().unwrap_or(service);
            // Borrowing keeps this allocation-free: return the tail starting at the short name.
            let start = p.len() - method.len() - 1 - short.len();
            &p[start..]
        }
        None => p,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message;

    use super::*;

    fn methods_of(fds: &[u8]) -> Vec<String> {
        let set = prost_types::FileDescriptorSet::decode(fds).expect("embedded descriptors decode");
        let mut out = Vec::new();
        for file in set.file {
            for svc in &file.service {
                for m in &svc.method {
                    out.push(format!("/{}.{}/{}", file.package(), svc.name(), m.name()));
                }
            }
        }
        out
    }

    /// Every method of every service the node serves has a row, and every row names a real
    /// method: a new RPC cannot be served unguarded, nor a stale row linger.
    #[test]
    fn every_served_method_is_in_the_table_and_nothing_else() {
        let mut served = BTreeSet::new();
        for fds in [
            switchyard_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        ] {
            served.extend(methods_of(fds));
        }
        assert!(served.len() > 30, "descriptors list {} methods", served.len());
        for m in &served {
            assert!(access(m).is_some(), "method {m} has no row in the permission table");
        }
        let rows: BTreeSet<String> = TABLE.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(rows.len(), TABLE.len(), "a path is listed twice");
        for r in &rows {
            assert!(served.contains(r), "table row {r} names no served method");
        }
    }

    #[test]
    fn roles_per_kind_of_call() {
        let roles = |p: &str| match access(p) {
            Some(Access::Roles(r)) => r.to_vec(),
            other => panic!("{p}: {other:?}"),
        };
        assert_eq!(access("/grpc.health.v1.Health/Check"), Some(Access::Open));
        assert_eq!(roles("/switchyard.v1.Admin/CreatePool"), [Admin]);
        assert_eq!(roles("/switchyard.v1.Admin/SetBackendState"), [Operator, Admin]);
        assert_eq!(roles("/switchyard.v1.Discovery/Report"), [Proxy]);
        assert_eq!(roles("/switchyard.raft.v1.Raft/Forward"), [Node]);
        assert!(!roles("/switchyard.v1.Query/ListPools").contains(&Proxy));
        assert_eq!(access("/switchyard.v1.Admin/Nope"), None);
        assert_eq!(access(""), None);
    }

    #[test]
    fn method_names_are_short() {
        assert_eq!(method_name("/switchyard.v1.Admin/CreatePool"), "Admin/CreatePool");
        assert_eq!(method_name("/switchyard.raft.v1.Raft/Vote"), "Raft/Vote");
        assert_eq!(method_name("/x"), "x");
    }
}
