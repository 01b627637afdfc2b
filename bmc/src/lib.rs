//! Groundwork's BMC clients: IPMI 2.0 over LAN ([`ipmi`]) and Redfish ([`redfish`]) behind one
//! [`Bmc`] trait, so the power controller (and its tests) do not care which one a machine has.
//! Every call is bounded by timeouts; passwords never appear in `Debug` output or errors.

pub mod ipmi;
#[cfg(feature = "redfish")]
pub mod redfish;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Power {
    On,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    On,
    /// Hard power off.
    Off,
    /// Off, then on.
    Cycle,
    /// Hard reset.
    Reset,
    /// Ask the OS to shut down (ACPI).
    Soft,
}

impl std::str::FromStr for PowerAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            "cycle" => Ok(Self::Cycle),
            "reset" => Ok(Self::Reset),
            "soft" => Ok(Self::Soft),
            o => Err(format!("{o:?}: use on, off, cycle, reset or soft")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootTarget {
    Pxe,
    Disk,
    Cdrom,
    BiosSetup,
}

impl std::str::FromStr for BootTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pxe" => Ok(Self::Pxe),
            "disk" => Ok(Self::Disk),
            "cdrom" => Ok(Self::Cdrom),
            "bios" => Ok(Self::BiosSetup),
            o => Err(format!("{o:?}: use pxe, disk, cdrom or bios")),
        }
    }
}

/// What a BMC says about itself (and, for Redfish, the system).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BmcInfo {
    pub protocol: String,
    pub firmware: String,
    pub ipmi_version: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub uuid: Option<String>,
}

/// What the BMC knows of the machine (IPMI: the FRU; Redfish: the ComputerSystem), merged into
/// a Node's inventory where the in-band agent has not reported.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BmcInventory {
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub uuid: Option<String>,
    pub logical_processors: Option<u64>,
    pub memory_gib: Option<f64>,
    pub mac_addresses: Vec<String>,
    pub drives_bytes: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BmcError {
    /// Wrong user name or password, or a privilege the user lacks.
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("{command} failed: {text} (completion code {code:#04x})")]
    Completion {
        command: &'static str,
        code: u8,
        text: &'static str,
    },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("network: {0}")]
    Io(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("configuration: {0}")]
    Config(String),
}

/// One BMC. Object-safe so that the controllers can hold any implementation.
pub trait Bmc: Send + Sync {
    fn power_status(&self) -> BoxFuture<'_, Result<Power, BmcError>>;
    fn set_power(&self, action: PowerAction) -> BoxFuture<'_, Result<(), BmcError>>;
    /// Next boot device: `once` for the next boot only, else persistent; `efi` or legacy BIOS.
    fn set_boot(
        &self,
        target: BootTarget,
        once: bool,
        efi: bool,
    ) -> BoxFuture<'_, Result<(), BmcError>>;
    fn info(&self) -> BoxFuture<'_, Result<BmcInfo, BmcError>>;
    fn inventory(&self) -> BoxFuture<'_, Result<BmcInventory, BmcError>>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Ipmi,
    Redfish,
}

/// Where a BMC is and how to log in.
#[derive(Clone)]
pub struct Endpoint {
    pub protocol: Protocol,
    /// `host` or `host:port` (IPMI default port 623; Redfish: a URL or host[:port], https).
    pub address: String,
    pub username: String,
    pub password: String,
    /// IPMI cipher suite (3 or 17).
    pub cipher_suite: u8,
    /// Redfish: accept self-signed certificates (BMCs rarely have others).
    pub insecure_tls: bool,
    pub timeout: Duration,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("protocol", &self.protocol)
            .field("address", &self.address)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Builds a [`Bmc`] for an endpoint; the controllers get one in their context, tests can put
/// in a simulator.
pub trait Connector: Send + Sync {
    fn connect(&self, ep: &Endpoint) -> Result<Arc<dyn Bmc>, BmcError>;
}

/// The real thing: IPMI over UDP, Redfish over HTTPS.
#[derive(Clone, Default)]
pub struct NetConnector;

fn resolve(address: &str, default_port: u16) -> Result<SocketAddr, BmcError> {
    use std::net::ToSocketAddrs;
    let with_port = if address.parse::<std::net::IpAddr>().is_ok() || !address.contains(':') {
        if address.contains(':') {
            format!("[{address}]:{default_port}")
        } else {
            format!("{address}:{default_port}")
        }
    } else {
        address.to_string()
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| BmcError::Config(format!("BMC address {address:?}: {e}")))?
        .next()
        .ok_or_else(|| BmcError::Config(format!("BMC address {address:?} resolves to nothing")))
}

impl Connector for NetConnector {
    fn connect(&self, ep: &Endpoint) -> Result<Arc<dyn Bmc>, BmcError> {
        match ep.protocol {
            Protocol::Ipmi => {
                let mut cfg =
                    ipmi::IpmiConfig::new(resolve(&ep.address, 623)?, &ep.username, &ep.password);
                cfg.suite = ipmi::CipherSuite::from_id(ep.cipher_suite).ok_or_else(|| {
                    BmcError::Config(format!("cipher suite {}: use 3 or 17", ep.cipher_suite))
                })?;
                // Spread the time budget over the attempts.
                cfg.attempts = 3;
                cfg.attempt_timeout = (ep.timeout / 3).max(Duration::from_millis(200));
                Ok(Arc::new(ipmi::IpmiBmc::new(cfg)))
            }
            #[cfg(feature = "redfish")]
            Protocol::Redfish => Ok(Arc::new(redfish::RedfishBmc::new(ep)?)),
            #[cfg(not(feature = "redfish"))]
            Protocol::Redfish => Err(BmcError::Unsupported(
                "built without the redfish feature".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_get_default_ports() {
        assert_eq!(resolve("127.0.0.1", 623).unwrap().port(), 623);
        assert_eq!(resolve("127.0.0.1:6230", 623).unwrap().port(), 6230);
        assert_eq!(resolve("::1", 623).unwrap().port(), 623);
        assert!(resolve("256.1.1.1:x", 623).is_err());
    }

    #[test]
    fn passwords_stay_out_of_debug_output() {
        let ep = Endpoint {
            protocol: Protocol::Ipmi,
            address: "10.0.0.1".into(),
            username: "admin".into(),
            password: "hunter2".into(),
            cipher_suite: 3,
            insecure_tls: false,
            timeout: Duration::from_secs(1),
        };
        assert!(!format!("{ep:?}").contains("hunter2"));
        let c = ipmi::IpmiConfig::new("127.0.0.1:623".parse().unwrap(), "admin", "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
