//! What runs on the machines, never on the server: the ramdisk agent (inventory, join,
//! install, wipe: [`ramdisk`], [`install`]) and the installed system's node agent (machine
//! config, heartbeats, certificate renewal: [`node`]). It speaks the agent API over TLS with
//! the machine's own certificate, and depends on the object types and the PKI only: never on
//! the API server, the controllers or the boot servers (a test checks `cargo tree`).

pub mod install;
pub mod node;
pub mod ramdisk;
pub(crate) mod seed;
pub mod services;
