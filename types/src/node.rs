//! `Node`: one physical machine, its BMC, boot NICs, desired power and provisioning state,
//! and everything the controllers observe about it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::{
    FieldError, Validate, check_ip, check_mac, check_non_negative, check_ref, normalize_mac,
};

/// A machine in a rack.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "groundwork.dev",
    version = "v1alpha1",
    kind = "Node",
    plural = "nodes",
    shortname = "gn",
    category = "groundwork",
    status = "NodeStatus",
    doc = "A physical machine: rack position, BMC, boot NICs, desired power and provisioning state.",
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// Where the machine sits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<RackPlacement>,
    /// The machine's baseboard management controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc: Option<Bmc>,
    /// MAC addresses of the NICs the machine PXE-boots from.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "bootMACs")]
    pub boot_macs: Vec<String>,
    /// The machine's serial number (DMI), as the purchase record has it: a ramdisk joining
    /// for this Node must report the same. Without it, the serial reported at the first join
    /// is kept (`status.provisioning.agent.serial`) and later joins must match it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Fixed IPv4 address the boot network's DHCP server gives the first of `bootMACs`
    /// (inside the network's CIDR, in or outside its discovery pool). Without it, a known
    /// machine gets a pool address and keeps it across renewals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_address: Option<String>,
    /// Desired power: true = on, false = off, absent = leave as it is. (A boolean rather than
    /// On/Off, because YAML 1.1 reads an unquoted `On` as `true`.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// Device for the next boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_boot: Option<BootDevice>,
    /// Desired provisioning state.
    #[serde(default)]
    pub provisioning: ProvisioningState,
    /// Profile to install, overriding selector matching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Taken out of service: controllers leave the machine alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub maintenance: bool,
    /// Expected power draw in kW, for rack budgets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_draw_kw: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RackPlacement {
    /// Name of the Rack.
    pub name: String,
    /// Lowest rack unit the machine occupies, counted from 1 at the bottom.
    pub position: u32,
    /// Height in rack units.
    #[serde(default = "one")]
    pub height_u: u32,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BmcProtocol {
    /// IPMI 2.0 over LAN (RMCP+).
    #[default]
    Ipmi,
    /// DMTF Redfish over HTTPS.
    Redfish,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Bmc {
    /// Host name or IP address of the BMC.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default)]
    pub protocol: BmcProtocol,
    /// Name of the credentials object holding the BMC's user name and password.
    pub credentials_ref: String,
    /// IPMI cipher suite: 3 (SHA-1, the default) or 17 (SHA-256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher_suite: Option<u8>,
    /// Redfish: accept the BMC's self-signed certificate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_tls: bool,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum PowerState {
    On,
    Off,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum BootDevice {
    Pxe,
    Disk,
}

/// What the operator wants the machine to be.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum ProvisioningState {
    /// Discovered and inventoried, ready to be given a profile.
    #[default]
    Available,
    /// Installed with its profile and running.
    Provisioned,
    /// Wiped and handed back to the pool.
    Deprovisioned,
    /// Installed by someone else (a machine installed before Groundwork, a namespace machine
    /// of the lab): never powered, booted or wiped by Groundwork; Ready once its node agent
    /// joins with a join token (`groundwork pki machine-token`) and heartbeats.
    External,
}

/// Where a machine is in its life cycle (observed).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum NodePhase {
    Registered,
    Discovering,
    Inventoried,
    Assigned,
    Provisioning,
    Provisioned,
    Ready,
    Failed,
    Deprovisioning,
    Maintenance,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<NodePhase>,
    /// Power state last read from the BMC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<PowerState>,
    /// Name of the Profile assigned to the machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<Inventory>,
    /// Addresses the machine was seen with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// The last error the BMC returned, cleared on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_bmc_error: Option<String>,
    /// What the provisioning controller and the machine's agents recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning: Option<ProvisioningStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The provisioning state machine's bookkeeping (times are RFC 3339).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningStatus {
    /// Attempt within the current phase, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// When the current phase (or its current attempt) began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_since: Option<String>,
    /// Phase Failed: the phase that failed, and why (a machine-readable reason; the
    /// `Provisioned` condition has the message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_in: Option<NodePhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// Generation of the Node when it failed: a change (the operator fixing the cause)
    /// retries at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_generation: Option<i64>,
    /// Generation of the Profile the current or last install used: a change after a failed
    /// install retries at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_generation: Option<i64>,
    /// Identifies the current phase entry; the agent's task and its reports carry it, so a
    /// late report from an earlier entry is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// A power action decided and recorded but not yet confirmed by the BMC (written before
    /// acting, cleared after): it is retried until the BMC takes it, and never repeated once
    /// it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_pending: Option<PowerIntent>,
    /// When the power controller took the pending power action (it clears `powerPending` in
    /// the same write). The phase's time limits count from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_done_at: Option<String>,
    /// Value of the `groundwork.dev/retry` annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_observed: Option<String>,
    /// Last time the machine fetched its iPXE script (it did PXE-boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_boot_contact: Option<String>,
    /// The ramdisk agent's latest task report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<TaskReport>,
    /// The installed system's node agent: last heartbeat and its boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// Checksum of the image last installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_checksum: Option<String>,
    /// Phases entered, oldest first (the last 32).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<PhaseEntry>,
    /// The machine's credentials: which join token it used, and its certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentCredentialStatus>,
}

/// What the server issued a machine: the join token it last used (a token is good once, and
/// never after a newer one was used) and the serial numbers of the certificates it accepts
/// (the newest and the one before, so a renewal whose answer was lost does not lock the
/// machine out). Clearing it revokes the machine's certificates.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct AgentCredentialStatus {
    pub join_token_id: String,
    /// When that token was issued (Unix seconds).
    pub join_token_issued: i64,
    pub joined_at: String,
    /// The serial number the machine reported at its first join: later joins must report
    /// the same (unless `spec.serial` says otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Hex serial numbers, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<String>,
}

/// `Discovering 31.2s, Inventoried 0.1s, ..., Ready`: the time spent in each phase of a
/// history (the last phase is the current one).
pub fn phase_times(h: &[PhaseEntry]) -> String {
    let ts: Vec<Option<jiff::Timestamp>> = h.iter().map(|e| e.at.parse().ok()).collect();
    h.iter()
        .enumerate()
        .map(|(i, e)| match (ts[i], ts.get(i + 1).copied().flatten()) {
            (Some(a), Some(b)) => {
                format!("{:?} {:.1}s", e.phase, b.duration_since(a).as_secs_f64())
            }
            _ => format!("{:?}", e.phase),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the provisioning controller asks of a machine's BMC.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum PowerIntent {
    /// Boot device PXE (next boot only), then power on or reset: the ramdisk.
    Pxe,
    /// Boot device disk (persistent), then power on or reset: the installed system.
    Disk,
    /// Power off.
    Off,
}

/// A phase the Node entered, and when.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PhaseEntry {
    pub phase: NodePhase,
    pub at: String,
}

/// Where an agent task stands.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum TaskState {
    Started,
    Succeeded,
    Failed,
}

/// What the ramdisk agent says about a task (`POST /agent/report`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskReport {
    /// `install` or `wipe`.
    pub task: String,
    /// The attempt the task was handed out for.
    pub attempt: u32,
    /// The task's `taskId` (the Node's `status.provisioning.taskId` when handed out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    pub state: TaskState,
    /// Failed: a machine-readable reason, e.g. `ImageChecksumMismatch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Set by the server when it took the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

/// Hardware facts reported by the discovery agent and the BMC.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<SystemInfo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpus: Vec<Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<Disk>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<Nic>,
    /// Extra facts (free-form key/value) for profile selectors.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SystemInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Cpu {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotational: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Nic {
    pub name: String,
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_mbps: Option<u32>,
}

impl Node {
    /// Boot MACs in canonical form (lower-case, colon-separated); invalid ones are skipped.
    pub fn normalized_boot_macs(&self) -> Vec<String> {
        self.spec
            .boot_macs
            .iter()
            .filter_map(|m| normalize_mac(m))
            .collect()
    }
}

impl Validate for Node {
    fn validate(&self) -> Vec<FieldError> {
        let s = &self.spec;
        let mut errs = Vec::new();
        if let Some(r) = &s.rack {
            check_ref("spec.rack.name", &r.name, &mut errs);
            if r.position == 0 {
                errs.push(FieldError::invalid(
                    "spec.rack.position",
                    "0: rack units count from 1 at the bottom",
                ));
            }
            if r.height_u == 0 || r.height_u > 60 {
                errs.push(FieldError::invalid(
                    "spec.rack.heightU",
                    format!("{}: must be between 1 and 60", r.height_u),
                ));
            }
        }
        if let Some(b) = &s.bmc {
            if let Some(c) = b.cipher_suite
                && c != 3
                && c != 17
            {
                errs.push(FieldError::invalid(
                    "spec.bmc.cipherSuite",
                    format!("{c}: supported cipher suites are 3 and 17"),
                ));
            }
            if b.address.is_empty() {
                errs.push(FieldError::required(
                    "spec.bmc.address",
                    "the BMC's host name or IP address",
                ));
            } else if b.address.chars().any(|c| c.is_whitespace() || c == '/') {
                errs.push(FieldError::invalid(
                    "spec.bmc.address",
                    format!("{:?}: a host name or IP address", b.address),
                ));
            } else if b.address.chars().next().is_some_and(|c| c.is_ascii_digit())
                && !b.address.contains(':')
            {
                check_ip("spec.bmc.address", &b.address, &mut errs);
            }
            check_ref("spec.bmc.credentialsRef", &b.credentials_ref, &mut errs);
        }
        if let Some(a) = &s.boot_address {
            if a.parse::<std::net::Ipv4Addr>().is_err() {
                errs.push(FieldError::invalid(
                    "spec.bootAddress",
                    format!("{a:?}: an IPv4 address"),
                ));
            } else if s.boot_macs.is_empty() {
                errs.push(FieldError::required(
                    "spec.bootMACs",
                    "the NIC that gets spec.bootAddress",
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, m) in s.boot_macs.iter().enumerate() {
            let before = errs.len();
            check_mac(&format!("spec.bootMACs[{i}]"), m, &mut errs);
            if errs.len() == before && !seen.insert(normalize_mac(m)) {
                errs.push(FieldError::duplicate(
                    format!("spec.bootMACs[{i}]"),
                    format!("{m:?}"),
                ));
            }
        }
        if let Some(p) = &s.profile {
            check_ref("spec.profile", p, &mut errs);
        }
        check_non_negative("spec.powerDrawKw", s.power_draw_kw, &mut errs);
        if let Some(inv) = self.status.as_ref().and_then(|st| st.inventory.as_ref()) {
            for (i, n) in inv.nics.iter().enumerate() {
                check_mac(
                    &format!("status.inventory.nics[{i}].mac"),
                    &n.mac,
                    &mut errs,
                );
            }
        }
        errs
    }
}
