//! Harness for end-to-end tests: real `switchyard-control` processes on real sockets with
//! real sled dirs, killed by guards so a failing test leaves nothing behind.
//!
//! No port is picked, released and rebound: every process binds port 0 and reports the port
//! it got, except control-plane nodes, which must know each other's addresses before they
//! start. For those the harness binds the socket itself and hands it over as fd 3 (systemd
//! socket activation), keeping it for the test's whole life so a restarted node gets it back.

pub mod browser;
pub mod chaos;
pub mod conformance;
mod control;
mod data;
mod http_backend;
mod pki;
mod process;
mod relayed;
mod tls;

pub use control::*;
pub use data::*;
pub use http_backend::*;
pub use pki::*;
pub use process::*;
pub use relayed::*;
pub use tls::*;
