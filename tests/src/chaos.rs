//! The chaos suite: a 3-node control plane in network namespaces behind fault relays, two
//! proxy processes, three echo backends and clients, with faults injected on a seeded
//! schedule while invariants are checked (see README, "Chaos suite").

pub mod faults;
pub mod linear;
pub mod net;
pub mod nodes;
pub mod relay;
pub mod report;
pub mod rng;
pub mod run;
pub mod setup;
pub mod workload;
