//! The boot-network protocol between the server and the agents on the machines: the ramdisk
//! agent asks for its next task (`GET /agent/next`) and reports on it (`POST /agent/report`,
//! a [`crate::TaskReport`]); the installed system's node agent heartbeats
//! (`POST /agent/heartbeat`). Every call carries the machine's MAC and is made over TLS with
//! the machine's own certificate ([`MachineCredentials`]), obtained at join.

use serde::{Deserialize, Serialize};

use crate::{File, Unit, User};

/// The ramdisk agent's next task.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "task", rename_all = "camelCase")]
pub enum Task {
    /// Nothing to do: ask again after this long.
    Wait { seconds: u32 },
    /// Write the image to the disk, verify its checksum, then add the machine config as a
    /// cloud-init NoCloud seed partition.
    #[serde(rename_all = "camelCase")]
    Install {
        attempt: u32,
        task_id: String,
        /// Absolute http(s) URL.
        image_url: String,
        /// `sha256:<hex>`.
        checksum: String,
        /// `/dev/NAME`, `NAME`, `largest` or `smallest`; absent = the first disk.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target_disk: Option<String>,
        config: Box<MachineFile>,
        /// The Profile's `machineConfig.userData`, a second part of the cloud-init user data.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_data: Option<String>,
    },
    /// Destroy every partition table and file system signature on every disk.
    #[serde(rename_all = "camelCase")]
    Wipe { attempt: u32, task_id: String },
    /// Reboot (machines without a BMC, once their image is installed).
    #[serde(rename_all = "camelCase")]
    Reboot { task_id: String },
}

/// The node agent's config: its join material, and the machine config it applies itself on
/// systems without cloud-init. The installer puts it in the cloud-init seed
/// (`CIDATA/groundwork/machine.json`, and `/var/lib/groundwork/machine.json` through
/// `write_files`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MachineFile {
    pub node: String,
    /// The boot server the node agent heartbeats to.
    pub url: String,
    pub mac: String,
    /// How the node agent reaches the agent API, and the machine's certificate for it: filled
    /// in by the ramdisk agent (the server never sees the machine's key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<MachineCredentials>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<User>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<File>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<Unit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// `sha256:HEX` of some bytes: how checksums and pins are written.
pub fn sha256_tag(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// `sha256:HEX` of a whole CA bundle (PEM text), as heartbeats report what they trust.
pub fn bundle_digest(pem: &str) -> String {
    sha256_tag(pem.trim().as_bytes())
}

/// The agent API's address and the machine's identity for it (PEM). `Debug` hides the key.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MachineCredentials {
    /// `HOST:PORT` of the agent API (its certificate names `groundwork-boot`).
    pub agent: String,
    /// The cluster CA.
    pub ca: String,
    /// The machine's certificate (`system:node:NAME`) and its private key.
    pub certificate: String,
    pub key: String,
}

impl std::fmt::Debug for MachineCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineCredentials")
            .field("agent", &self.agent)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The node agent's heartbeat.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    /// SHA-256 (`sha256:HEX` of the whole PEM) of the CA bundle the machine trusts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    pub node: String,
    /// Changes at every boot (the kernel's boot_id).
    pub boot_id: String,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub uptime_seconds: u64,
    /// Machine config items applied at this boot, and ones the system cannot apply.
    #[serde(default)]
    pub applied: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

/// The server's answer to a heartbeat.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatReply {
    pub interval_seconds: u32,
    /// Reboot now (a machine without a BMC that is to be deprovisioned: it PXE-boots into the
    /// ramdisk, which wipes it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reboot: bool,
    /// The certificate was issued by a CA being rotated out: renew it now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub renew: bool,
    /// The cluster's CA bundle (PEM), when it is not what the machine trusts: during a CA
    /// rotation, so the machine trusts the new CA before it issues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

/// The name the agent API's certificate carries: agents pin the cluster CA and connect under
/// this name, whatever address they reached the server at.
pub const AGENT_SERVER_NAME: &str = "groundwork-boot";

/// A machine's request for its certificate (`POST /agent/join?mac=..`).
#[derive(Clone, Deserialize, Serialize)]
pub struct JoinRequest {
    /// The one-time join token from the kernel command line.
    pub token: String,
    /// The machine's serial number (DMI), checked against what the Node already knows.
    #[serde(default)]
    pub serial: Option<String>,
    /// A PKCS#10 certificate request (PEM); the machine keeps its key.
    pub csr: String,
}

impl std::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRequest")
            .field("token", &"<redacted>")
            .field("serial", &self.serial)
            .finish()
    }
}

/// The machine's certificate (`POST /agent/join` and `POST /agent/renew`).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct JoinReply {
    pub node: String,
    pub certificate: String,
    /// The cluster's CA bundle now (it changes during a CA rotation).
    #[serde(default)]
    pub ca: String,
}

/// `scheme://host/path` of a URL: no user, password or query (which may carry credentials).
pub fn redact_url(u: &str) -> String {
    let (scheme, rest) = u.split_once("://").unwrap_or(("", u));
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let rest = match rest.split_once('/') {
        Some((auth, path)) => format!("{}/{path}", auth.rsplit('@').next().unwrap_or(auth)),
        None => rest.rsplit('@').next().unwrap_or(rest).to_string(),
    };
    if scheme.is_empty() {
        rest
    } else {
        format!("{scheme}://{rest}")
    }
}

/// The ServiceInstances of one machine (`GET /agent/instances`), with a version that changes
/// whenever any of them does: the agent passes it back as `known` and the call waits (up to
/// `wait` seconds) until there is something new.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceSet {
    pub version: String,
    pub instances: Vec<AssignedInstance>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AssignedInstance {
    pub name: String,
    pub spec: crate::ServiceInstanceSpec,
}

/// The node agent's report on its instances (`POST /agent/instances`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceReports {
    pub reports: Vec<InstanceReport>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceReport {
    pub name: String,
    /// The spec digest the report is about (a report on an older spec is still recorded).
    pub config_digest: String,
    pub status: crate::ServiceInstanceStatus,
}

/// A Credential's values for one of the machine's instances (`GET /agent/secret`): sent
/// only over the machine's own TLS channel, for a credential its instance lists.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretValue {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValue")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}
