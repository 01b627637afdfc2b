//! The cluster's PKI, shared by the server, the raft members, the CLI and the machines'
//! agents: the CA and what it issues ([`ca`]), certificate requests and their inspection,
//! and rustls configuration ([`tls`]). No network I/O; files only where a function says so.

mod ca;
pub mod tls;

pub use ca::*;

/// The group (certificate O) of operators who may do everything (as Kubernetes').
pub const MASTERS: &str = "system:masters";
/// The group of machines' certificates (`system:node:NAME`).
pub const NODES_GROUP: &str = "system:nodes";
