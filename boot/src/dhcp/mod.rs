//! DHCPv4 for boot networks: authoritative (addresses + boot options) or proxy (boot options
//! beside another server), relays, BIOS/UEFI/iPXE first stages, leases persisted before ACK.

pub mod engine;
pub mod leases;
pub mod server;

pub use engine::{BootFiles, Config, Engine, Mode};
pub use server::{ServeOptions, Stats, serve, serve_with_updates};
