//! `ServiceInstance`: one service on one machine, owned by its ServiceStack (as a Pod is by
//! its ReplicaSet). The ServiceStack controller writes the spec, fully rendered: what to
//! install, the files, the checker, the command, the health check. The node agent of the
//! Node it names converges the machine to it and writes the status.
//!
//! Paths and arguments may use placeholders the agent fills in: `{dir}` (the instance's own
//! directory), `{conf}` (the directory of this config version), `{data}` (`{dir}/data`),
//! `{artifact}` (the fetched artifact's path). Secret values are never in the spec: files
//! carry `{secret:CREDENTIAL}` (the password) or `{secret-user:CREDENTIAL}` (the user name),
//! `{secret-ssha:CREDENTIAL}` (the password as an LDAP `{SSHA}` hash),
//! `{secret-sql:CREDENTIAL}` (the password escaped for a single-quoted SQL string), which the
//! agent fetches for its own instances only.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::servicestack::{ArtifactSource, ServiceType, check_artifact};
use crate::validate::{FieldError, Validate, check_ref};

/// Labels every instance carries.
pub const STACK_LABEL: &str = "groundwork.dev/stack";
pub const LAYER_LABEL: &str = "groundwork.dev/layer";
pub const SERVICE_LABEL: &str = "groundwork.dev/service";
pub const NODE_LABEL: &str = "groundwork.dev/node";

#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "groundwork.dev",
    version = "v1alpha1",
    kind = "ServiceInstance",
    plural = "serviceinstances",
    shortname = "si",
    category = "groundwork",
    status = "ServiceInstanceStatus",
    doc = "One service of a ServiceStack layer on one Node: rendered by the controller, converged by the Node's agent.",
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceInstanceSpec {
    pub stack: String,
    pub layer: String,
    pub service: ServiceType,
    /// The Node that runs it.
    pub node: String,
    /// The member's address (the Node's), which peers and clients use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// What to install.
    #[serde(default)]
    pub artifact: Artifact,
    /// Config files, written under `{conf}` (a new directory per config version).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<InstanceFile>,
    /// Steps run once, before the first start, in order (initialise a data directory, load a
    /// base tree); each is skipped when the path it `creates` exists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub setup: Vec<SetupStep>,
    /// Idempotent steps run after the service is first healthy with each new config version
    /// (create databases and users, add directory entries); `creates` is ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after_start: Vec<SetupStep>,
    /// The service's own config checker (argv); a config it refuses never replaces the
    /// running one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub check: Vec<String>,
    /// Which config field each checker message points back to: the first rule whose
    /// `contains` is in the message names the field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub check_fields: Vec<CheckField>,
    pub run: RunSpec,
    #[serde(default)]
    pub health: HealthCheck,
    /// Start as the cluster's first member (e.g. Galera's `--wsrep-new-cluster`): set by the
    /// controller on exactly one member, only when it is safe.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bootstrap: bool,
    /// Files of `key: value` lines (placeholders allowed) the agent reports as facts
    /// (`FILE_NAME.key`), e.g. Galera's `{data}/grastate.dat`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fact_files: Vec<String>,
    /// Raised by the controller to start the service on empty data: the agent moves the
    /// data directory aside (`data.discarded-N`, never deleted) before it starts this
    /// version. Used only where Groundwork can prove the data holds nothing (a Vault
    /// initialised by an interrupted, never-committed init).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub data_epoch: u32,
    /// Credentials whose values the agent may fetch for this instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// A serving certificate from the cluster CA for these names: the agent makes the key
    /// on the machine (it never leaves it), has the certificate signed through the agent
    /// API, keeps both under the instance (`{tls_cert}`, `{tls_key}`) and renews it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<InstanceTls>,
    /// `sha256:HEX` over everything above but `bootstrap`: what a rollout changes.
    pub config_digest: String,
}

/// A Debian package (installed with apt where the OS has it, else it must be there) or a file
/// fetched from a URL and verified.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch: Option<ArtifactSource>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceFile {
    /// Relative to `{conf}`.
    pub path: String,
    pub content: String,
    /// Octal, default `0640`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SetupStep {
    pub name: String,
    pub command: Vec<String>,
    /// Skipped when this path exists; created by the agent (empty) after success unless the
    /// command made it.
    pub creates: String,
    /// Run as this user (default: the run user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CheckField {
    pub contains: String,
    pub field: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RunSpec {
    pub command: Vec<String>,
    /// Appended to `command` when `bootstrap` is set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bootstrap_args: Vec<String>,
    /// Run as this user (it must exist; the agent gives it `{dir}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The service starts as root (to bind a privileged port) and switches to `user` by
    /// itself (slapd's `-u`, HAProxy's `user`); `user` still owns `{dir}` and private files.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drops_privileges: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Seconds between SIGTERM and SIGKILL.
    #[serde(default = "stop_grace")]
    pub stop_grace_seconds: u32,
    /// Steps run before a healthy process is stopped for a new config or removal, to take
    /// it out of service first (Galera: desync, so the routers' checks fail and send new
    /// connections elsewhere); failures are reported, not fatal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_stop: Vec<SetupStep>,
    /// Seconds to wait after `preStop` before SIGTERM (long enough for the routers' checks
    /// to see the member down).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub drain_seconds: u32,
}

fn stop_grace() -> u32 {
    30
}

/// How the agent decides the service is healthy.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// An http URL answering 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// `host:port` accepting a TCP connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// A command exiting 0.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// A command exiting 0 while the process is alive in the sense that waiting can help
    /// (a Galera donor is not healthy but alive; a member cut off in a non-primary view is
    /// neither). After `restartAfterSeconds` unhealthy with this failing too, the agent
    /// restarts the process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub liveness: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_after_seconds: Option<u32>,
}

/// Where an instance is, as its node agent reports it.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum InstancePhase {
    /// Not yet taken by the node agent.
    Pending,
    /// Fetching or installing the artifact, running setup.
    Installing,
    /// Started, not yet healthy.
    Starting,
    /// Running and healthy.
    Running,
    /// Running but failing its health check, or restarting after exits.
    Unhealthy,
    /// Cannot run as specified (artifact refused, setup failed, no good config).
    Failed,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceInstanceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<InstancePhase>,
    /// Running the spec's config and healthy.
    #[serde(default)]
    pub ready: bool,
    /// The config the running process was started with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_digest: Option<String>,
    /// The newest config the checker refused (the running one stays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The ServiceStack field a refusal came from, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default)]
    pub restarts: u32,
    /// When the agent last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_report: Option<String>,
    /// Service facts for the controller (e.g. Galera's `grastate.dat` seqno).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// `{secret:NAME}` and `{secret-user:NAME}` placeholders in `text`: the Credential names.
pub fn secret_placeholders(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for tag in ["{secret:", "{secret-user:", "{secret-ssha:", "{secret-sql:"] {
        let mut rest = text;
        while let Some(i) = rest.find(tag) {
            let after = &rest[i + tag.len()..];
            match after.find('}') {
                Some(j) => {
                    out.push(after[..j].to_string());
                    rest = &after[j..];
                }
                None => break,
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

impl Validate for ServiceInstance {
    fn validate(&self) -> Vec<FieldError> {
        let s = &self.spec;
        let mut errs = Vec::new();
        check_ref("spec.stack", &s.stack, &mut errs);
        check_ref("spec.layer", &s.layer, &mut errs);
        check_ref("spec.node", &s.node, &mut errs);
        if s.run.command.is_empty() {
            errs.push(FieldError::required(
                "spec.run.command",
                "the command that runs the service",
            ));
        }
        if let Some(f) = &s.artifact.fetch {
            check_artifact("spec.artifact.fetch", f, &mut errs);
        }
        for (i, f) in s.files.iter().enumerate() {
            let p = std::path::Path::new(&f.path);
            if f.path.is_empty()
                || p.is_absolute()
                || p.components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                errs.push(FieldError::invalid(
                    format!("spec.files[{i}].path"),
                    format!("{:?}: a relative path without .. or .", f.path),
                ));
            }
            if let Some(m) = &f.mode
                && u32::from_str_radix(m, 8).is_err()
            {
                errs.push(FieldError::invalid(
                    format!("spec.files[{i}].mode"),
                    format!("{m:?}: octal, such as 0640"),
                ));
            }
            for name in secret_placeholders(&f.content) {
                if !s.secrets.contains(&name) {
                    errs.push(FieldError::invalid(
                        format!("spec.files[{i}].content"),
                        format!("uses secret {name:?}, which spec.secrets does not list"),
                    ));
                }
            }
        }
        for (i, st) in s.setup.iter().enumerate() {
            if st.command.is_empty() {
                errs.push(FieldError::required(
                    format!("spec.setup[{i}].command"),
                    "a command",
                ));
            }
            if st.creates.is_empty() {
                errs.push(FieldError::required(
                    format!("spec.setup[{i}].creates"),
                    "the path that marks the step done",
                ));
            }
        }
        if !s.config_digest.starts_with("sha256:") {
            errs.push(FieldError::invalid(
                "spec.configDigest",
                "sha256:HEX of the rendered spec",
            ));
        }
        errs
    }
}

/// The subject alternative names of an instance's certificate (the instance's address is
/// always one of them).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceTls {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
}

impl ServiceInstanceSpec {
    /// The digest of everything a member runs (not `bootstrap`, nor the digest itself).
    pub fn digest(&self) -> String {
        let mut c = self.clone();
        c.bootstrap = false;
        c.config_digest = String::new();
        crate::agent::sha256_tag(&serde_json::to_vec(&c).unwrap_or_default())
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders() {
        assert_eq!(
            secret_placeholders(
                "a {secret:db-root} b {secret-user:app} {secret:db-root} {secret:x"
            ),
            vec!["app", "db-root"]
        );
    }

    #[test]
    fn files_must_stay_inside_the_config_directory() {
        let mut si = ServiceInstance::new(
            "x",
            ServiceInstanceSpec {
                stack: "s".into(),
                layer: "l".into(),
                service: ServiceType::Prometheus,
                node: "n".into(),
                run: RunSpec {
                    command: vec!["prometheus".into()],
                    ..Default::default()
                },
                files: vec![
                    InstanceFile {
                        path: "../etc/passwd".into(),
                        content: "{secret:root}".into(),
                        mode: Some("9".into()),
                    },
                    InstanceFile {
                        path: "rules/a.yml".into(),
                        content: String::new(),
                        mode: None,
                    },
                ],
                ..Default::default()
            },
        );
        si.spec.config_digest = si.spec.digest();
        let e: Vec<String> = si.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(
            e,
            vec![
                "spec.files[0].path",
                "spec.files[0].mode",
                "spec.files[0].content"
            ]
        );
    }
}
