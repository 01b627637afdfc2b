//! `Profile`: what a machine becomes. Matched to Nodes by labels and inventory facts.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::{FieldError, Validate, check_unique};

/// A machine profile: selector, boot, OS image, machine configuration, roles.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "groundwork.dev",
    version = "v1alpha1",
    kind = "Profile",
    plural = "profiles",
    shortname = "prof",
    category = "groundwork",
    status = "ProfileStatus",
    doc = "A machine profile: which Nodes it matches, how they boot, the OS image and machine configuration.",
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct ProfileSpec {
    /// Higher wins when several profiles match a Node; equal priorities are a conflict.
    #[serde(default)]
    pub priority: i32,
    /// Nodes whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Hardware facts a Node's inventory must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires: Option<HardwareRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<OsImage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_config: Option<MachineConfig>,
    /// ServiceStack layers machines with this profile run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HardwareRequirements {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cpu_threads: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_memory_gib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_disks: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_disk_gib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BootSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// An iPXE script template replacing the built-in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipxe_template: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OsImage {
    /// Where the install ramdisk fetches the image (http or https).
    pub url: String,
    /// `sha256:<64 hex digits>`; the image is refused when it does not match.
    pub checksum: String,
    /// Disk to write, e.g. `/dev/sda`, or `largest` / `smallest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_disk: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MachineConfig {
    /// Host name template; `{{name}}` is the Node's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<User>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<File>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<Unit>,
    /// cloud-init style user data passed through verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sudo: bool,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct File {
    pub path: String,
    pub content: String,
    /// Octal mode as a string, e.g. "0644".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Unit {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProfileStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes currently assigned this profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_nodes: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

const SELECTOR_OPS: [&str; 4] = ["In", "NotIn", "Exists", "DoesNotExist"];

impl Validate for Profile {
    fn validate(&self) -> Vec<FieldError> {
        let s = &self.spec;
        let mut errs = Vec::new();
        if let Some(sel) = &s.selector {
            for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
                let f = format!("spec.selector.matchExpressions[{i}]");
                if !SELECTOR_OPS.contains(&e.operator.as_str()) {
                    errs.push(FieldError {
                        field: format!("{f}.operator"),
                        kind: crate::FieldErrorKind::NotSupported,
                        message: format!(
                            "{:?}: supported values: {}",
                            e.operator,
                            SELECTOR_OPS.join(", ")
                        ),
                    });
                }
                let n = e.values.as_ref().map_or(0, Vec::len);
                match e.operator.as_str() {
                    "In" | "NotIn" if n == 0 => errs.push(FieldError::required(
                        format!("{f}.values"),
                        "In and NotIn need values",
                    )),
                    "Exists" | "DoesNotExist" if n > 0 => errs.push(FieldError::invalid(
                        format!("{f}.values"),
                        "Exists and DoesNotExist take no values",
                    )),
                    _ => {}
                }
            }
        }
        if let Some(os) = &s.os {
            if !(os.url.starts_with("http://") || os.url.starts_with("https://")) {
                errs.push(FieldError::invalid(
                    "spec.os.url",
                    format!("{:?}: must be an http:// or https:// URL", os.url),
                ));
            }
            let hex = os.checksum.strip_prefix("sha256:");
            if !hex.is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit())) {
                errs.push(FieldError::invalid(
                    "spec.os.checksum",
                    format!("{:?}: must be sha256:<64 hex digits>", os.checksum),
                ));
            }
        }
        if let Some(mc) = &s.machine_config {
            check_unique(
                "spec.machineConfig.users",
                mc.users.iter().map(|u| u.name.as_str()),
                &mut errs,
            );
            for (i, f) in mc.files.iter().enumerate() {
                if !f.path.starts_with('/') {
                    errs.push(FieldError::invalid(
                        format!("spec.machineConfig.files[{i}].path"),
                        format!("{:?}: must be absolute", f.path),
                    ));
                }
                if let Some(m) = &f.mode
                    && (m.len() != 4 || u32::from_str_radix(m, 8).is_err())
                {
                    errs.push(FieldError::invalid(
                        format!("spec.machineConfig.files[{i}].mode"),
                        format!("{m:?}: four octal digits, e.g. \"0644\""),
                    ));
                }
            }
            for (i, k) in mc.users.iter().enumerate() {
                for (j, key) in k.ssh_authorized_keys.iter().enumerate() {
                    let ok = key.starts_with("ssh-")
                        || key.starts_with("ecdsa-")
                        || key.starts_with("sk-");
                    if !ok {
                        errs.push(FieldError::invalid(
                            format!("spec.machineConfig.users[{i}].sshAuthorizedKeys[{j}]"),
                            "not an OpenSSH public key (ssh-ed25519 AAAA..., ssh-rsa ..., ecdsa-...)",
                        ));
                    }
                }
            }
        }
        errs
    }
}
