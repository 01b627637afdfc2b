//! `ServiceStack`: the standard config file for services. Ordered platform layers (secrets,
//! connectivity, metrics, identity, database, ...), each a set of services with placement,
//! a rollout policy and a typed configuration per service, from which the controller renders
//! every service's native files (prometheus.yml, my.cnf, haproxy.cfg, slapd.conf, ...).
//! Secrets are referenced (`{credential: NAME}`), never inlined.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::{FieldError, Validate, check_name, check_ref, check_unique};

/// A stack of service layers with dependencies between them.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "groundwork.dev",
    version = "v1alpha1",
    kind = "ServiceStack",
    plural = "servicestacks",
    shortname = "stack",
    category = "groundwork",
    status = "ServiceStackStatus",
    doc = "The platform service layers (Vault, Consul, Prometheus, OpenLDAP, MariaDB, ...) in dependency order.",
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStackSpec {
    /// Name of the Datacenter the stack runs in: only Nodes in its racks are placed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacenter: Option<String>,
    /// The layers; a layer starts when every layer it depends on is Ready.
    pub layers: Vec<Layer>,
}

/// The services Groundwork knows.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    Deserialize,
    Serialize,
    JsonSchema,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceType {
    #[default]
    Vault,
    Consul,
    /// A Consul client agent on every machine of the layer that has no Consul server.
    ConsulClient,
    Nomad,
    Prometheus,
    Alertmanager,
    NodeExporter,
    Elastic,
    Grafana,
    StorageGateway,
    Boundary,
    Openldap,
    VaultSshCa,
    /// MariaDB with Galera (the MySQL protocol), as a multi-primary cluster.
    Mysql,
    /// HAProxy as the router in front of a layer's database members.
    Haproxy,
    Workers,
    Gitea,
    Jenkins,
}

impl ServiceType {
    /// The name as written in manifests (`node-exporter`).
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::Vault => "vault",
            ServiceType::Consul => "consul",
            ServiceType::ConsulClient => "consul-client",
            ServiceType::Nomad => "nomad",
            ServiceType::Prometheus => "prometheus",
            ServiceType::Alertmanager => "alertmanager",
            ServiceType::NodeExporter => "node-exporter",
            ServiceType::Elastic => "elastic",
            ServiceType::Grafana => "grafana",
            ServiceType::StorageGateway => "storage-gateway",
            ServiceType::Boundary => "boundary",
            ServiceType::Openldap => "openldap",
            ServiceType::VaultSshCa => "vault-ssh-ca",
            ServiceType::Mysql => "mysql",
            ServiceType::Haproxy => "haproxy",
            ServiceType::Workers => "workers",
            ServiceType::Gitea => "gitea",
            ServiceType::Jenkins => "jenkins",
        }
    }
}

impl std::fmt::Display for ServiceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    pub name: String,
    /// Service types the layer runs (a layer such as identity runs several).
    pub services: Vec<ServiceType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Where the layer's members run. Absent: every Ready Node of the datacenter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// How changes reach the members.
    #[serde(default)]
    pub rollout: Rollout,
    /// Names of layers that must be Ready first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Each service's configuration, under the service's name.
    #[serde(default, skip_serializing_if = "LayerConfig::is_empty")]
    pub config: LayerConfig,
}

/// How to spread a layer's members.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Spread {
    /// No two members in one rack while there are racks without one (the default).
    #[default]
    Rack,
    /// No two members in one availability zone while there are zones without one.
    Zone,
    /// Anywhere.
    None,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// How many members; absent means every matching Node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Failure domain to spread members over.
    #[serde(default)]
    pub spread: Spread,
    /// Machines the layer wants beyond `count`, to replace a member at once when one is lost
    /// or taken into maintenance (the n+1 rule: 3 members and 1 spare need 4 machines). With
    /// fewer, the layer runs but its `SpareAvailable` condition is False.
    #[serde(default = "one")]
    pub spares: u32,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// Members that may be changing (restarting with a new config) at once.
    #[serde(default = "one")]
    pub max_unavailable: u32,
    /// Never take down a member while that would leave fewer than a majority of the
    /// members Ready (the default for every layer).
    #[serde(default = "yes")]
    pub keep_quorum: bool,
}

fn yes() -> bool {
    true
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            max_unavailable: 1,
            keep_quorum: true,
        }
    }
}

/// A reference to a secret: the password (or user name) of a Credential. The node agent
/// fetches it over its own authenticated channel; it never appears in a ServiceInstance.
#[derive(
    Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, PartialOrd, Ord,
)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Credential.
    pub credential: String,
}

fn free_form(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "description": "Configuration for a service whose driver is not built yet: stored, not acted on."
    })
}

/// Free-form configuration of a service without a driver yet.
pub type Pending = BTreeMap<String, serde_json::Value>;

/// Each service's typed configuration. Only the services a layer runs are read.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LayerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alertmanager: Option<AlertmanagerConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_exporter: Option<NodeExporterConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openldap: Option<OpenldapConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mysql: Option<MysqlConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub haproxy: Option<HaproxyConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consul: Option<ConsulConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nomad: Option<NomadConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub elastic: Option<Pending>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub grafana: Option<Pending>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub storage_gateway: Option<Pending>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub boundary: Option<Pending>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub vault_ssh_ca: Option<Pending>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub workers: Option<Pending>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitea: Option<GiteaConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub jenkins: Option<Pending>,
}

impl LayerConfig {
    fn is_empty(&self) -> bool {
        *self == LayerConfig::default()
    }
}

/// Prometheus (Debian `prometheus`): scrapes Groundwork, every node exporter of the stack and
/// every other instance that exports metrics; targets are generated from the instances.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusConfig {
    #[serde(default = "prometheus_port")]
    pub port: u16,
    /// Prometheus duration, e.g. `15s`.
    #[serde(default = "fifteen_s")]
    pub scrape_interval: String,
    #[serde(default = "fifteen_d")]
    pub retention: String,
    /// Alerting and recording rules, checked with `promtool` before they replace the running
    /// ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rule_groups: Vec<RuleGroup>,
    /// More `host:port` targets to scrape (job `extra`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_targets: Vec<String>,
    /// Scrape Groundwork's own `/metrics` (default true).
    #[serde(default = "yes")]
    pub scrape_groundwork: bool,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            port: prometheus_port(),
            scrape_interval: fifteen_s(),
            retention: fifteen_d(),
            rule_groups: Vec::new(),
            extra_targets: Vec::new(),
            scrape_groundwork: true,
        }
    }
}

fn prometheus_port() -> u16 {
    9090
}
fn fifteen_s() -> String {
    "15s".into()
}
fn fifteen_d() -> String {
    "15d".into()
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RuleGroup {
    pub name: String,
    pub rules: Vec<Rule>,
}

/// One Prometheus rule: `alert` or `record`, with its PromQL expression.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    pub expr: String,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "for")]
    pub for_: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Alertmanager (Debian `prometheus-alertmanager`), which the stack's Prometheus sends to.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AlertmanagerConfig {
    #[serde(default = "alertmanager_port")]
    pub port: u16,
    /// Webhook receivers; the first is the default route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub receivers: Vec<Receiver>,
}

impl Default for AlertmanagerConfig {
    fn default() -> Self {
        AlertmanagerConfig {
            port: alertmanager_port(),
            receivers: Vec::new(),
        }
    }
}

fn alertmanager_port() -> u16 {
    9093
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Receiver {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhook_urls: Vec<String>,
}

/// node-exporter (Debian `prometheus-node-exporter`), on every Node of the layer's placement
/// regardless of `count`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeExporterConfig {
    #[serde(default = "node_exporter_port")]
    pub port: u16,
    /// Run this artifact (a static binary from Groundwork's artifact store) instead of the
    /// Debian package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactSource>,
}

impl Default for NodeExporterConfig {
    fn default() -> Self {
        NodeExporterConfig {
            port: node_exporter_port(),
            artifact: None,
        }
    }
}

fn node_exporter_port() -> u16 {
    9100
}

/// A file to fetch: an absolute http(s) URL (usually Groundwork's artifact store on the boot
/// HTTP server, `/artifacts/...`) and the sha256 it must have.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactSource {
    pub url: String,
    /// 64 hexadecimal digits (optionally `sha256:`-prefixed).
    pub sha256: String,
}

/// OpenLDAP slapd (Debian `slapd`): the directory part of the identity layer.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OpenldapConfig {
    #[serde(default = "ldap_port")]
    pub port: u16,
    /// Base DN, e.g. `dc=example,dc=org`.
    pub suffix: String,
    /// The directory manager's password (`cn=admin,SUFFIX`).
    pub admin_password: SecretRef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<LdapGroup>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<LdapUser>,
}

fn ldap_port() -> u16 {
    389
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LdapGroup {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LdapUser {
    /// `uid`, unique.
    pub uid: String,
    /// Full name (`cn`).
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<String>,
    /// Groups (by name) the user is a member of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The user's password (stored hashed by slapd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretRef>,
}

/// MariaDB with Galera 4 (Debian `mariadb-server`, `galera-4`): a multi-primary cluster.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MysqlConfig {
    #[serde(default = "mysql_port")]
    pub port: u16,
    /// `wsrep_cluster_name` (default: the stack's and layer's names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    /// The `root` account's password (over the local socket only otherwise).
    pub root_password: SecretRef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<DbUser>,
}

fn mysql_port() -> u16 {
    3306
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DbUser {
    pub name: String,
    pub password: SecretRef,
    /// Databases the user gets ALL PRIVILEGES on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<String>,
}

/// HAProxy (Debian `haproxy`) as the router in front of the layer's `mysql` members.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HaproxyConfig {
    /// Where clients connect.
    #[serde(default = "haproxy_port")]
    pub port: u16,
    /// HAProxy's stats and Prometheus page (`/stats`, `/metrics`).
    #[serde(default = "haproxy_stats_port")]
    pub stats_port: u16,
}

impl Default for HaproxyConfig {
    fn default() -> Self {
        HaproxyConfig {
            port: haproxy_port(),
            stats_port: haproxy_stats_port(),
        }
    }
}

fn haproxy_port() -> u16 {
    3307
}
fn haproxy_stats_port() -> u16 {
    8404
}

/// Consul servers (the connectivity layer). Consul is not packaged for Debian 12: its binary
/// comes from Groundwork's artifact store (Debian 11's consul 1.8.7 runs on Debian 12).
/// Groundwork generates the gossip key and the ACL management token once, as Credentials
/// `STACK-LAYER-consul-gossip` and `STACK-LAYER-consul-management`, before any server
/// starts, and renders them into every server's config (Consul 1.8 takes no
/// `BootstrapSecret`; `acl.tokens.master` is the official role's way).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConsulConfig {
    /// The `consul` binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactSource>,
    /// Consul's datacenter name (default: the stack's datacenter, else `dc1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacenter: Option<String>,
    /// HTTP API port (default 8500).
    #[serde(default = "consul_http_port")]
    pub http_port: u16,
    /// DNS port (default 8600); `dig @MEMBER -p 8600 NAME.service.consul`.
    #[serde(default = "consul_dns_port")]
    pub dns_port: u16,
    /// TLS (default true): RPC between agents verified both ways against the cluster CA
    /// (servers' certificates name `server.DC.consul`), the HTTP API over HTTPS on
    /// `httpsPort` on the member's address, plain HTTP on loopback only.
    #[serde(default = "yes")]
    pub tls: bool,
    /// HTTPS API port (default 8501), with `tls`.
    #[serde(default = "consul_https_port")]
    pub https_port: u16,
    /// ACLs on with a default-deny policy (default true). The anonymous token may read
    /// nodes and services, so DNS answers.
    #[serde(default = "yes")]
    pub acl_bootstrap: bool,
    /// The Connect CA provider (`vault` once the secrets layer runs); stored, not yet acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_ca: Option<String>,
    /// Envoy sidecars; stored, not yet acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy: Option<bool>,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            artifact: None,
            datacenter: None,
            http_port: consul_http_port(),
            dns_port: consul_dns_port(),
            tls: true,
            https_port: consul_https_port(),
            acl_bootstrap: true,
            connect_ca: None,
            envoy: None,
        }
    }
}

fn consul_http_port() -> u16 {
    8500
}
fn consul_dns_port() -> u16 {
    8600
}
fn consul_https_port() -> u16 {
    8501
}

/// Nomad servers: the scheduling layer. Groundwork generates the management token once (a
/// Credential, `STACK-LAYER-nomad-management`) before any server starts and bootstraps ACLs
/// with it as `BootstrapSecret` (Nomad 1.4+), so a retry verifies rather than repeats.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NomadConfig {
    /// The `nomad` binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactSource>,
    /// Nomad's datacenter (default `dc1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacenter: Option<String>,
    /// HTTP API port (default 4646); RPC 4647 and Serf 4648 follow Nomad's defaults.
    #[serde(default = "nomad_http_port")]
    pub http_port: u16,
    /// ACLs on and bootstrapped with the generated management token (default true).
    #[serde(default = "yes")]
    pub acl_bootstrap: bool,
    /// Namespaces kept in place (created or updated; never deleted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

impl Default for NomadConfig {
    fn default() -> Self {
        NomadConfig {
            artifact: None,
            datacenter: None,
            http_port: nomad_http_port(),
            acl_bootstrap: true,
            namespaces: vec![],
        }
    }
}

fn nomad_http_port() -> u16 {
    4646
}

/// Gitea: the source-control layer (one member, SQLite). Groundwork generates the admin's
/// password and Gitea's own secrets, creates the admin once, then the platform repository
/// and its push webhook to Groundwork through Gitea's API, and a GitSource following it.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GiteaConfig {
    /// The `gitea` binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactSource>,
    /// HTTPS port (default 3000), with a certificate from the cluster CA.
    #[serde(default = "gitea_port")]
    pub http_port: u16,
    /// The administrator Groundwork creates (default `groundwork`); its password is the
    /// Credential `STACK-LAYER-gitea-admin`.
    #[serde(default = "gitea_admin")]
    pub admin: String,
    #[serde(default = "gitea_admin_email")]
    pub admin_email: String,
    /// The platform repository, owned by the administrator (default `platform`).
    #[serde(default = "gitea_repository")]
    pub repository: String,
    /// Groundwork's API as Gitea reaches it (`https://ADDR:PORT`): the push webhook goes to
    /// `GROUNDWORK_URL/hooks/gitsource/NAME`. Without it no webhook is made (the GitSource
    /// polls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groundwork_url: Option<String>,
    /// `[webhook] ALLOWED_HOST_LIST`: where Gitea may deliver webhooks (default `private`:
    /// Gitea's default refuses private addresses, which is where Groundwork is).
    #[serde(default = "gitea_allowed_hosts")]
    pub allowed_host_list: String,
    /// Make a GitSource following the repository (default true), named `STACK-LAYER`.
    #[serde(default = "yes")]
    pub git_source: bool,
    /// The GitSource's directory in the repository (default: the whole repository).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub git_source_path: String,
}

impl Default for GiteaConfig {
    fn default() -> Self {
        GiteaConfig {
            artifact: None,
            http_port: gitea_port(),
            admin: gitea_admin(),
            admin_email: gitea_admin_email(),
            repository: gitea_repository(),
            groundwork_url: None,
            allowed_host_list: gitea_allowed_hosts(),
            git_source: true,
            git_source_path: String::new(),
        }
    }
}

fn gitea_port() -> u16 {
    3000
}
fn gitea_admin() -> String {
    "groundwork".into()
}
fn gitea_admin_email() -> String {
    "groundwork@localhost".into()
}
fn gitea_repository() -> String {
    "platform".into()
}
fn gitea_allowed_hosts() -> String {
    "private".into()
}

/// Vault servers: the secrets layer. Groundwork initialises Vault once (journalled: the
/// intent is stored before `sys/init`, the whole answer sealed in one write after it),
/// unseals every member after every restart, and keeps the mounts, policies and AppRole
/// roles below in place (created when missing, never regenerated).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VaultConfig {
    /// The server binary (`vault`, or RustyVault's `rvault`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactSource>,
    /// `vault` (default: integrated raft storage, 3 members) or `rustyVault` (RustyVault,
    /// Apache-2.0: Vault's HTTP API in part, file storage, a single member, KV version 1).
    #[serde(default)]
    pub implementation: VaultImplementation,
    /// API port (default 8200).
    #[serde(default = "vault_port")]
    pub port: u16,
    /// Raft cluster port (default 8201).
    #[serde(default = "vault_cluster_port")]
    pub cluster_port: u16,
    /// TLS on the API listener with a certificate from the cluster CA, made on each member
    /// (default true). Off only for a lab that must speak plain HTTP.
    #[serde(default = "yes")]
    pub tls: bool,
    #[serde(default)]
    pub unseal: VaultUnseal,
    #[serde(default)]
    pub kv: VaultKv,
    /// A PKI root, created once (`pki/root/generate/internal`) and never regenerated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pki: Option<VaultPki>,
    /// Copy the connectivity layer's Consul gossip key into KV (`PATH/consul/gossip`), once.
    #[serde(default)]
    pub consul_gossip_key: bool,
    /// For each name: a policy reading `PATH/NAME/*`, an AppRole role bound to it, and its
    /// role ID and secret ID generated by Groundwork (Credential `STACK-LAYER-approle-NAME`:
    /// user name the role ID, password the secret ID) and set in Vault once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_role_policies: Vec<String>,
    /// An SSH certificate authority for the identity layer: a signing key generated in
    /// Vault once (never regenerated) and a role signing user certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_ca: Option<VaultSshCa>,
}

/// Vault's SSH secrets engine as a user-certificate CA.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VaultSshCa {
    /// Mount path (default `ssh`).
    #[serde(default = "vault_ssh_path")]
    pub path: String,
    /// The signing role (default `users`), signing user certificates.
    #[serde(default = "vault_ssh_role")]
    pub role: String,
    /// Principals the role may sign for (default `*`).
    #[serde(default = "vault_ssh_users")]
    pub allowed_users: String,
    /// A signed certificate's lifetime (default `8h`).
    #[serde(default = "vault_ssh_ttl")]
    pub ttl: String,
}

impl Default for VaultSshCa {
    fn default() -> Self {
        VaultSshCa {
            path: vault_ssh_path(),
            role: vault_ssh_role(),
            allowed_users: vault_ssh_users(),
            ttl: vault_ssh_ttl(),
        }
    }
}

fn vault_ssh_path() -> String {
    "ssh".into()
}
fn vault_ssh_role() -> String {
    "users".into()
}
fn vault_ssh_users() -> String {
    "*".into()
}
fn vault_ssh_ttl() -> String {
    "8h".into()
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            artifact: None,
            implementation: VaultImplementation::default(),
            port: vault_port(),
            cluster_port: vault_cluster_port(),
            tls: true,
            unseal: VaultUnseal::default(),
            kv: VaultKv::default(),
            pki: None,
            consul_gossip_key: false,
            app_role_policies: vec![],
            ssh_ca: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum VaultImplementation {
    #[default]
    Vault,
    RustyVault,
}

/// How members unseal.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VaultUnseal {
    /// `shamir` (default): Groundwork keeps the key shares sealed in its store and unseals
    /// every member that comes back sealed; `transit`: members unseal themselves through
    /// Groundwork's transit endpoints.
    #[serde(default)]
    pub mode: VaultUnsealMode,
    /// Key shares (default 5).
    #[serde(default = "vault_shares")]
    pub shares: u8,
    /// Shares needed to unseal (default 3).
    #[serde(default = "vault_threshold")]
    pub threshold: u8,
}

impl Default for VaultUnseal {
    fn default() -> Self {
        VaultUnseal {
            mode: VaultUnsealMode::default(),
            shares: vault_shares(),
            threshold: vault_threshold(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum VaultUnsealMode {
    /// Groundwork keeps the key shares sealed in its store and unseals members itself.
    #[default]
    Shamir,
    /// Members unseal themselves through Groundwork's transit endpoints
    /// (`AGENT_API/v1/transit/encrypt|decrypt/STACK-LAYER`, a key and a token generated
    /// once as Credentials); init returns recovery shares, which Groundwork keeps.
    Transit,
}

/// The KV secrets engine.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VaultKv {
    /// Mount path (default `secret`).
    #[serde(default = "vault_kv_path")]
    pub path: String,
    /// 2 (default; versioned) or 1.
    #[serde(default = "vault_kv_version")]
    pub version: u8,
}

impl Default for VaultKv {
    fn default() -> Self {
        VaultKv {
            path: vault_kv_path(),
            version: vault_kv_version(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VaultPki {
    /// Mount path (default `pki`).
    #[serde(default = "vault_pki_path")]
    pub path: String,
    pub common_name: String,
    /// The root's lifetime (default `87600h`).
    #[serde(default = "vault_pki_ttl")]
    pub ttl: String,
    /// An intermediate CA signed by the root, created once: the issuer services use, so the
    /// root's key signs only intermediates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intermediate: Option<VaultPkiIntermediate>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VaultPkiIntermediate {
    /// Mount path (default `pki_int`).
    #[serde(default = "vault_pki_int_path")]
    pub path: String,
    pub common_name: String,
    /// The intermediate's lifetime (default `43800h`).
    #[serde(default = "vault_pki_int_ttl")]
    pub ttl: String,
}

fn vault_pki_int_path() -> String {
    "pki_int".into()
}
fn vault_pki_int_ttl() -> String {
    "43800h".into()
}

fn vault_port() -> u16 {
    8200
}
fn vault_cluster_port() -> u16 {
    8201
}
fn vault_shares() -> u8 {
    5
}
fn vault_threshold() -> u8 {
    3
}
fn vault_kv_path() -> String {
    "secret".into()
}
fn vault_kv_version() -> u8 {
    2
}
fn vault_pki_path() -> String {
    "pki".into()
}
fn vault_pki_ttl() -> String {
    "87600h".into()
}

/// A layer's phase, and the stack's (its least advanced layer's).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum LayerPhase {
    /// Waiting for a dependency, or for machines to place members on.
    Pending,
    /// Members are being placed, installed, started or changed.
    Progressing,
    /// Every member runs the current config and is healthy.
    Ready,
    /// Was Ready; a member is lost or unhealthy.
    Degraded,
    /// Cannot go on without the operator (e.g. a config a checker refused).
    Failed,
}

/// One member of a layer, as the controller last saw it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// The ServiceInstance.
    pub instance: String,
    pub service: String,
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Running the current config and healthy.
    pub ready: bool,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LayerStatus {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<LayerPhase>,
    /// What the layer waits for, when it waits: a layer, machines, a member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// `address:port` of each member's main port, per service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bootstrap_steps_done: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStackStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The least advanced layer's phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<LayerPhase>,
    /// `READY/ALL` layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers_ready: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl ServiceStackSpec {
    /// Layer names in an order that respects `dependsOn` (dependencies first), or the layers
    /// that take part in a cycle.
    pub fn topological_order(&self) -> Result<Vec<&str>, Vec<&str>> {
        let mut done: BTreeSet<&str> = BTreeSet::new();
        let mut order = Vec::new();
        let known: BTreeSet<&str> = self.layers.iter().map(|l| l.name.as_str()).collect();
        loop {
            let before = order.len();
            for l in &self.layers {
                if !done.contains(l.name.as_str())
                    && l.depends_on
                        .iter()
                        .all(|d| done.contains(d.as_str()) || !known.contains(d.as_str()))
                {
                    done.insert(&l.name);
                    order.push(l.name.as_str());
                }
            }
            if order.len() == self.layers.len() {
                return Ok(order);
            }
            if order.len() == before {
                return Err(self
                    .layers
                    .iter()
                    .map(|l| l.name.as_str())
                    .filter(|n| !done.contains(n))
                    .collect());
            }
        }
    }
}

/// A Prometheus duration: digits and a unit (`ms s m h d w y`), possibly several (`1h30m`).
pub fn is_prometheus_duration(s: &str) -> bool {
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|u| rest.starts_with(u));
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

fn check_port(field: String, port: u16, errs: &mut Vec<FieldError>) {
    if port == 0 {
        errs.push(FieldError::invalid(field, "0: a port from 1 to 65535"));
    }
}

fn check_secret(field: String, r: &SecretRef, errs: &mut Vec<FieldError>) {
    check_ref(&format!("{field}.credential"), &r.credential, errs);
}

/// A SQL identifier Groundwork writes unquoted into statements: letters, digits, `_`.
fn check_sql_name(field: String, name: &str, errs: &mut Vec<FieldError>) {
    if name.is_empty()
        || name.len() > 64
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        errs.push(FieldError::invalid(
            field,
            format!("{name:?}: 1 to 64 letters, digits or '_'"),
        ));
    }
}

/// An LDAP attribute value Groundwork writes into LDIF and DNs: no DN or LDIF specials.
fn check_ldap_value(field: String, v: &str, errs: &mut Vec<FieldError>) {
    if v.is_empty()
        || v.starts_with([' ', ':', '<', '#'])
        || v.chars()
            .any(|c| c.is_control() || ",+\"\\<>;=".contains(c))
    {
        errs.push(FieldError::invalid(
            field,
            format!("{v:?}: not empty, no control characters and none of , + \" \\ < > ; ="),
        ));
    }
}

impl Layer {
    fn validate_config(&self, at: &str, errs: &mut Vec<FieldError>) {
        let c = &self.config;
        let runs = |s: ServiceType| self.services.contains(&s);
        // A section for a service the layer does not run is almost always a mistake.
        let present: [(ServiceType, bool); 17] = [
            (ServiceType::Prometheus, c.prometheus.is_some()),
            (ServiceType::Alertmanager, c.alertmanager.is_some()),
            (ServiceType::NodeExporter, c.node_exporter.is_some()),
            (ServiceType::Openldap, c.openldap.is_some()),
            (ServiceType::Mysql, c.mysql.is_some()),
            (ServiceType::Haproxy, c.haproxy.is_some()),
            (ServiceType::Vault, c.vault.is_some()),
            (
                ServiceType::Consul,
                c.consul.is_some() && !runs(ServiceType::ConsulClient),
            ),
            (ServiceType::Nomad, c.nomad.is_some()),
            (ServiceType::Elastic, c.elastic.is_some()),
            (ServiceType::Grafana, c.grafana.is_some()),
            (ServiceType::StorageGateway, c.storage_gateway.is_some()),
            (ServiceType::Boundary, c.boundary.is_some()),
            (ServiceType::VaultSshCa, c.vault_ssh_ca.is_some()),
            (ServiceType::Workers, c.workers.is_some()),
            (ServiceType::Gitea, c.gitea.is_some()),
            (ServiceType::Jenkins, c.jenkins.is_some()),
        ];
        for (s, has) in present {
            if has && !runs(s) {
                let key = serde_json::to_value(s)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let camel = camel(&key);
                errs.push(FieldError::invalid(
                    format!("{at}.config.{camel}"),
                    format!("the layer does not run {key}: add it to services or remove this"),
                ));
            }
        }
        if let Some(v) = &c.vault {
            let f = format!("{at}.config.vault");
            check_port(format!("{f}.port"), v.port, errs);
            check_port(format!("{f}.clusterPort"), v.cluster_port, errs);
            if let Some(a) = &v.artifact {
                check_artifact(&format!("{f}.artifact"), a, errs);
            }
            let u = &v.unseal;
            if u.shares == 0 || u.threshold == 0 || u.threshold > u.shares {
                errs.push(FieldError::invalid(
                    format!("{f}.unseal.threshold"),
                    format!(
                        "{} of {} shares: at least 1 and at most the shares",
                        u.threshold, u.shares
                    ),
                ));
            } else if u.shares > 1 && u.threshold == 1 {
                errs.push(FieldError::invalid(
                    format!("{f}.unseal.threshold"),
                    "1 of several shares: any one share would unseal; use 1 share or a threshold of 2 or more",
                ));
            }
            let mount = |field: String, p: &str, errs: &mut Vec<FieldError>| {
                if p.is_empty()
                    || p.starts_with("sys")
                    || p.starts_with("auth")
                    || !p
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
                {
                    errs.push(FieldError::invalid(
                        field,
                        format!(
                            "{p:?}: a mount path of letters, digits, - and _ (not sys or auth)"
                        ),
                    ));
                }
            };
            mount(format!("{f}.kv.path"), &v.kv.path, errs);
            if !matches!(v.kv.version, 1 | 2) {
                errs.push(FieldError::invalid(
                    format!("{f}.kv.version"),
                    format!("{}: 1 or 2", v.kv.version),
                ));
            }
            if let Some(p) = &v.pki {
                mount(format!("{f}.pki.path"), &p.path, errs);
                if p.path == v.kv.path {
                    errs.push(FieldError::invalid(
                        format!("{f}.pki.path"),
                        "the same path as kv.path",
                    ));
                }
                if p.common_name.is_empty() {
                    errs.push(FieldError::required(
                        format!("{f}.pki.commonName"),
                        "the root certificate's common name",
                    ));
                }
                if let Some(i) = &p.intermediate {
                    mount(format!("{f}.pki.intermediate.path"), &i.path, errs);
                    if i.path == p.path || i.path == v.kv.path {
                        errs.push(FieldError::invalid(
                            format!("{f}.pki.intermediate.path"),
                            "the same path as pki.path or kv.path",
                        ));
                    }
                    if i.common_name.is_empty() {
                        errs.push(FieldError::required(
                            format!("{f}.pki.intermediate.commonName"),
                            "the intermediate certificate's common name",
                        ));
                    }
                }
            }
            if let Some(s) = &v.ssh_ca {
                mount(format!("{f}.sshCa.path"), &s.path, errs);
                let taken = [Some(&v.kv.path), v.pki.as_ref().map(|p| &p.path)];
                if taken.contains(&Some(&s.path)) {
                    errs.push(FieldError::invalid(
                        format!("{f}.sshCa.path"),
                        "the same path as another mount",
                    ));
                }
                check_name(&format!("{f}.sshCa.role"), &s.role, errs);
            }
            check_unique(
                &format!("{f}.appRolePolicies"),
                v.app_role_policies.iter().map(String::as_str),
                errs,
            );
            for (j, n) in v.app_role_policies.iter().enumerate() {
                check_name(&format!("{f}.appRolePolicies[{j}]"), n, errs);
            }
            if v.implementation == VaultImplementation::RustyVault {
                if self.placement.as_ref().and_then(|p| p.count) != Some(1) {
                    errs.push(FieldError::invalid(
                        format!("{at}.placement.count"),
                        "RustyVault keeps its data in local files (no raft): set count: 1",
                    ));
                }
                if v.kv.version != 1 {
                    errs.push(FieldError::invalid(
                        format!("{f}.kv.version"),
                        "RustyVault has KV version 1 only: set version: 1",
                    ));
                }
                if v.unseal.mode == VaultUnsealMode::Transit {
                    errs.push(FieldError::invalid(
                        format!("{f}.unseal.mode"),
                        "RustyVault has no transit seal: use shamir",
                    ));
                }
                if v.pki.as_ref().is_some_and(|p| p.intermediate.is_some()) {
                    errs.push(FieldError::invalid(
                        format!("{f}.pki.intermediate"),
                        "RustyVault cannot sign an intermediate CA: remove it",
                    ));
                }
                if v.ssh_ca.is_some() {
                    errs.push(FieldError::invalid(
                        format!("{f}.sshCa"),
                        "RustyVault has no SSH secrets engine: remove it",
                    ));
                }
            }
        }
        if let Some(g) = &c.gitea {
            let f = format!("{at}.config.gitea");
            check_port(format!("{f}.httpPort"), g.http_port, errs);
            if let Some(a) = &g.artifact {
                check_artifact(&format!("{f}.artifact"), a, errs);
            }
            check_name(&format!("{f}.admin"), &g.admin, errs);
            if matches!(g.admin.as_str(), "admin" | "root") {
                errs.push(FieldError::invalid(
                    format!("{f}.admin"),
                    format!("{:?}: a name Gitea reserves", g.admin),
                ));
            }
            check_name(&format!("{f}.repository"), &g.repository, errs);
            if !g.admin_email.contains('@') {
                errs.push(FieldError::invalid(
                    format!("{f}.adminEmail"),
                    format!("{:?}: an email address", g.admin_email),
                ));
            }
            if let Some(u) = &g.groundwork_url
                && (!u.starts_with("https://") || u.ends_with('/') || u.contains('@'))
            {
                errs.push(FieldError::invalid(
                    format!("{f}.groundworkUrl"),
                    format!("{u:?}: https://ADDR:PORT, Groundwork's API (no path, no user)"),
                ));
            }
            if g.allowed_host_list.is_empty() || g.allowed_host_list.contains(char::is_whitespace) {
                errs.push(FieldError::invalid(
                    format!("{f}.allowedHostList"),
                    "a comma-separated list (private, loopback, external, *, hosts, CIDRs)",
                ));
            }
            if g.git_source_path.starts_with('/') || g.git_source_path.split('/').any(|p| p == "..")
            {
                errs.push(FieldError::invalid(
                    format!("{f}.gitSourcePath"),
                    "a relative path inside the repository",
                ));
            }
            if self.placement.as_ref().and_then(|p| p.count) != Some(1) {
                errs.push(FieldError::invalid(
                    format!("{at}.placement.count"),
                    "Gitea keeps its data in SQLite on one machine: set count: 1",
                ));
            }
        }
        if let Some(n) = &c.nomad {
            let f = format!("{at}.config.nomad");
            check_port(format!("{f}.httpPort"), n.http_port, errs);
            if let Some(a) = &n.artifact {
                check_artifact(&format!("{f}.artifact"), a, errs);
            }
            check_unique(
                &format!("{f}.namespaces"),
                n.namespaces.iter().map(String::as_str),
                errs,
            );
            for (j, ns) in n.namespaces.iter().enumerate() {
                check_name(&format!("{f}.namespaces[{j}]"), ns, errs);
            }
        }
        if let Some(k) = &c.consul {
            let f = format!("{at}.config.consul");
            check_port(format!("{f}.httpPort"), k.http_port, errs);
            check_port(format!("{f}.dnsPort"), k.dns_port, errs);
            check_port(format!("{f}.httpsPort"), k.https_port, errs);
            if k.tls && k.https_port == k.http_port {
                errs.push(FieldError::invalid(
                    format!("{f}.httpsPort"),
                    format!("{}: the same as httpPort", k.https_port),
                ));
            }
            if let Some(d) = &k.datacenter
                && (d.is_empty()
                    || !d
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'))
            {
                errs.push(FieldError::invalid(
                    format!("{f}.datacenter"),
                    format!("{d:?}: letters, digits, - and _ (a DNS label)"),
                ));
            }
        }
        if let Some(p) = &c.prometheus {
            let f = format!("{at}.config.prometheus");
            check_port(format!("{f}.port"), p.port, errs);
            for (name, v) in [
                ("scrapeInterval", &p.scrape_interval),
                ("retention", &p.retention),
            ] {
                if !is_prometheus_duration(v) {
                    errs.push(FieldError::invalid(
                        format!("{f}.{name}"),
                        format!("{v:?}: a Prometheus duration such as 15s, 5m or 15d"),
                    ));
                }
            }
            check_unique(
                &format!("{f}.ruleGroups"),
                p.rule_groups.iter().map(|g| g.name.as_str()),
                errs,
            );
            for (i, g) in p.rule_groups.iter().enumerate() {
                let gf = format!("{f}.ruleGroups[{i}]");
                if g.name.is_empty() {
                    errs.push(FieldError::required(format!("{gf}.name"), "name the group"));
                }
                for (j, r) in g.rules.iter().enumerate() {
                    let rf = format!("{gf}.rules[{j}]");
                    if r.alert.is_some() == r.record.is_some() {
                        errs.push(FieldError::invalid(
                            rf.clone(),
                            "exactly one of alert or record",
                        ));
                    }
                    if r.expr.trim().is_empty() {
                        errs.push(FieldError::required(
                            format!("{rf}.expr"),
                            "a PromQL expression",
                        ));
                    }
                    if let Some(d) = &r.for_
                        && !is_prometheus_duration(d)
                    {
                        errs.push(FieldError::invalid(
                            format!("{rf}.for"),
                            format!("{d:?}: a Prometheus duration such as 5m"),
                        ));
                    }
                }
            }
            for (i, t) in p.extra_targets.iter().enumerate() {
                let ok = t
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
                if !ok {
                    errs.push(FieldError::invalid(
                        format!("{f}.extraTargets[{i}]"),
                        format!("{t:?}: host:port"),
                    ));
                }
            }
        }
        if let Some(a) = &c.alertmanager {
            let f = format!("{at}.config.alertmanager");
            check_port(format!("{f}.port"), a.port, errs);
            check_unique(
                &format!("{f}.receivers"),
                a.receivers.iter().map(|r| r.name.as_str()),
                errs,
            );
            for (i, r) in a.receivers.iter().enumerate() {
                for (j, u) in r.webhook_urls.iter().enumerate() {
                    if !(u.starts_with("http://") || u.starts_with("https://")) {
                        errs.push(FieldError::invalid(
                            format!("{f}.receivers[{i}].webhookUrls[{j}]"),
                            format!("{u:?}: an http(s) URL"),
                        ));
                    }
                }
            }
        }
        if let Some(n) = &c.node_exporter {
            let f = format!("{at}.config.nodeExporter");
            check_port(format!("{f}.port"), n.port, errs);
            if let Some(a) = &n.artifact {
                check_artifact(&format!("{f}.artifact"), a, errs);
            }
        }
        match &c.openldap {
            Some(l) => {
                let f = format!("{at}.config.openldap");
                check_port(format!("{f}.port"), l.port, errs);
                let rdns: Vec<&str> = l.suffix.split(',').collect();
                if l.suffix.is_empty()
                    || !rdns.iter().all(|r| {
                        r.split_once('=').is_some_and(|(a, v)| {
                            !a.trim().is_empty()
                                && a.trim().chars().all(|c| c.is_ascii_alphanumeric())
                                && !v.trim().is_empty()
                                && !v.chars().any(|c| "+\"\\<>;=".contains(c) || c.is_control())
                        })
                    })
                {
                    errs.push(FieldError::invalid(
                        format!("{f}.suffix"),
                        format!("{:?}: a DN such as dc=example,dc=org", l.suffix),
                    ));
                }
                check_secret(format!("{f}.adminPassword"), &l.admin_password, errs);
                check_unique(
                    &format!("{f}.groups"),
                    l.groups.iter().map(|g| g.name.as_str()),
                    errs,
                );
                for (i, g) in l.groups.iter().enumerate() {
                    check_ldap_value(format!("{f}.groups[{i}].name"), &g.name, errs);
                }
                let groups: BTreeSet<&str> = l.groups.iter().map(|g| g.name.as_str()).collect();
                let mut uids = BTreeSet::new();
                for (i, u) in l.users.iter().enumerate() {
                    let uf = format!("{f}.users[{i}]");
                    check_ldap_value(format!("{uf}.uid"), &u.uid, errs);
                    check_ldap_value(format!("{uf}.name"), &u.name, errs);
                    if !uids.insert(u.uid.as_str()) {
                        errs.push(FieldError::duplicate(
                            format!("{uf}.uid"),
                            format!("{:?}", u.uid),
                        ));
                    }
                    for (j, g) in u.groups.iter().enumerate() {
                        if !groups.contains(g.as_str()) {
                            errs.push(FieldError::invalid(
                                format!("{uf}.groups[{j}]"),
                                format!("{g:?}: no group of that name in groups"),
                            ));
                        }
                    }
                    if let Some(p) = &u.password {
                        check_secret(format!("{uf}.password"), p, errs);
                    }
                }
            }
            None if runs(ServiceType::Openldap) => errs.push(FieldError::required(
                format!("{at}.config.openldap"),
                "openldap needs at least suffix and adminPassword",
            )),
            None => {}
        }
        match &c.mysql {
            Some(m) => {
                let f = format!("{at}.config.mysql");
                check_port(format!("{f}.port"), m.port, errs);
                check_secret(format!("{f}.rootPassword"), &m.root_password, errs);
                if let Some(n) = &m.cluster_name {
                    check_sql_name(format!("{f}.clusterName"), n, errs);
                }
                for (i, d) in m.databases.iter().enumerate() {
                    check_sql_name(format!("{f}.databases[{i}]"), d, errs);
                }
                check_unique(
                    &format!("{f}.users"),
                    m.users.iter().map(|u| u.name.as_str()),
                    errs,
                );
                for (i, u) in m.users.iter().enumerate() {
                    let uf = format!("{f}.users[{i}]");
                    check_sql_name(format!("{uf}.name"), &u.name, errs);
                    check_secret(format!("{uf}.password"), &u.password, errs);
                    for (j, d) in u.databases.iter().enumerate() {
                        if !m.databases.contains(d) {
                            errs.push(FieldError::invalid(
                                format!("{uf}.databases[{j}]"),
                                format!("{d:?}: not in databases"),
                            ));
                        }
                    }
                }
            }
            None if runs(ServiceType::Mysql) => errs.push(FieldError::required(
                format!("{at}.config.mysql"),
                "mysql needs at least rootPassword",
            )),
            None => {}
        }
        if runs(ServiceType::Haproxy) && !runs(ServiceType::Mysql) {
            errs.push(FieldError::invalid(
                format!("{at}.services"),
                "haproxy routes to the layer's mysql members: add mysql to the layer",
            ));
        }
        if let Some(h) = &c.haproxy {
            let f = format!("{at}.config.haproxy");
            check_port(format!("{f}.port"), h.port, errs);
            check_port(format!("{f}.statsPort"), h.stats_port, errs);
            if h.port == h.stats_port {
                errs.push(FieldError::invalid(
                    format!("{f}.statsPort"),
                    "the same as port: choose another",
                ));
            }
            if let Some(m) = &c.mysql
                && m.port == h.port
            {
                errs.push(FieldError::invalid(
                    format!("{f}.port"),
                    format!(
                        "{}: mysql listens there on the same machines; choose another",
                        h.port
                    ),
                ));
            }
        }
    }
}

/// `storage-gateway` → `storageGateway`.
fn camel(kebab: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for c in kebab.chars() {
        if c == '-' {
            up = true;
        } else if up {
            out.push(c.to_ascii_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// An artifact's URL and checksum.
pub fn check_artifact(field: &str, a: &ArtifactSource, errs: &mut Vec<FieldError>) {
    if !(a.url.starts_with("http://") || a.url.starts_with("https://")) {
        errs.push(FieldError::invalid(
            format!("{field}.url"),
            format!("{:?}: an absolute http(s) URL", a.url),
        ));
    }
    let hex = a.sha256.strip_prefix("sha256:").unwrap_or(&a.sha256);
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        errs.push(FieldError::invalid(
            format!("{field}.sha256"),
            "64 hexadecimal digits (the artifact's SHA-256)",
        ));
    }
}

impl Validate for ServiceStack {
    fn validate(&self) -> Vec<FieldError> {
        let s = &self.spec;
        let mut errs = Vec::new();
        if s.layers.is_empty() {
            errs.push(FieldError::required(
                "spec.layers",
                "a stack needs at least one layer",
            ));
        }
        if let Some(dc) = &s.datacenter {
            check_ref("spec.datacenter", dc, &mut errs);
        }
        check_unique(
            "spec.layers",
            s.layers.iter().map(|l| l.name.as_str()),
            &mut errs,
        );
        let names: BTreeSet<&str> = s.layers.iter().map(|l| l.name.as_str()).collect();
        for (i, l) in s.layers.iter().enumerate() {
            let at = format!("spec.layers[{i}]");
            check_name(&format!("{at}.name"), &l.name, &mut errs);
            if l.services.is_empty() {
                errs.push(FieldError::required(
                    format!("{at}.services"),
                    "name at least one service",
                ));
            }
            let mut seen = BTreeSet::new();
            for (j, sv) in l.services.iter().enumerate() {
                if !seen.insert(*sv) {
                    errs.push(FieldError::duplicate(
                        format!("{at}.services[{j}]"),
                        format!("{sv} is listed twice"),
                    ));
                }
            }
            for (j, d) in l.depends_on.iter().enumerate() {
                if !names.contains(d.as_str()) {
                    errs.push(FieldError::invalid(
                        format!("{at}.dependsOn[{j}]"),
                        format!("{d:?}: no layer of that name"),
                    ));
                } else if d == &l.name {
                    errs.push(FieldError::invalid(
                        format!("{at}.dependsOn[{j}]"),
                        "a layer cannot depend on itself",
                    ));
                }
            }
            if l.placement.as_ref().and_then(|p| p.count) == Some(0) {
                errs.push(FieldError::invalid(
                    format!("{at}.placement.count"),
                    "0: omit count to run on every matching node",
                ));
            }
            if l.rollout.max_unavailable == 0 {
                errs.push(FieldError::invalid(
                    format!("{at}.rollout.maxUnavailable"),
                    "0: at least 1, or no change could ever roll out",
                ));
            }
            l.validate_config(&at, &mut errs);
        }
        if let Err(cycle) = s.topological_order() {
            errs.push(FieldError::invalid(
                "spec.layers",
                format!("dependency cycle among layers: {}", cycle.join(", ")),
            ));
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: &str, deps: &[&str]) -> Layer {
        Layer {
            name: name.into(),
            services: vec![ServiceType::Vault],
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn order_and_cycles() {
        let spec = ServiceStackSpec {
            datacenter: None,
            layers: vec![layer("b", &["a"]), layer("a", &[]), layer("c", &["b", "a"])],
        };
        assert_eq!(spec.topological_order().unwrap(), vec!["a", "b", "c"]);
        let cyc = ServiceStackSpec {
            datacenter: None,
            layers: vec![layer("a", &["b"]), layer("b", &["a"]), layer("c", &[])],
        };
        assert_eq!(cyc.topological_order().unwrap_err(), vec!["a", "b"]);
        let st = ServiceStack::new("s", cyc);
        let errs = st.validate();
        assert!(errs.iter().any(|e| e.message.contains("cycle")), "{errs:?}");
    }

    #[test]
    fn durations() {
        for ok in ["15s", "1h30m", "500ms", "15d", "1y"] {
            assert!(is_prometheus_duration(ok), "{ok}");
        }
        for bad in ["", "15", "s", "1.5s", "15 s", "-1s", "1x"] {
            assert!(!is_prometheus_duration(bad), "{bad}");
        }
    }

    fn errors(yaml: serde_json::Value) -> Vec<String> {
        let st: ServiceStack = serde_json::from_value(serde_json::json!({
            "apiVersion": "groundwork.dev/v1alpha1", "kind": "ServiceStack",
            "metadata": {"name": "s"}, "spec": {"layers": [yaml]}
        }))
        .unwrap();
        st.validate()
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = errors(serde_json::json!({"name": "m", "services": ["prometheus"],
            "config": {"prometheus": {"scrapeInterval": "15", "ruleGroups": [{"name": "g",
              "rules": [{"expr": "up == 0"}, {"alert": "A", "expr": "up", "for": "soon"}]}]},
              "openldap": {"suffix": "dc=x", "adminPassword": {"credential": "a"}}}}));
        let want = [
            "spec.layers[0].config.prometheus.scrapeInterval: ",
            "spec.layers[0].config.prometheus.ruleGroups[0].rules[0]: exactly one",
            "spec.layers[0].config.prometheus.ruleGroups[0].rules[1].for: ",
            "spec.layers[0].config.openldap: the layer does not run openldap",
        ];
        for w in want {
            assert!(e.iter().any(|x| x.starts_with(w)), "{w} not in {e:#?}");
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
        let e = errors(
            serde_json::json!({"name": "d", "services": ["mysql", "haproxy"],
            "config": {"mysql": {"rootPassword": {"credential": "Root"}, "databases": ["app"],
              "users": [{"name": "app;drop", "password": {"credential": "p"}, "databases": ["other"]}]},
              "haproxy": {"port": 3306}}}),
        );
        for w in [
            "spec.layers[0].config.mysql.rootPassword.credential: ",
            "spec.layers[0].config.mysql.users[0].name: ",
            "spec.layers[0].config.mysql.users[0].databases[0]: ",
            "spec.layers[0].config.haproxy.port: 3306: mysql listens",
        ] {
            assert!(e.iter().any(|x| x.starts_with(w)), "{w} not in {e:#?}");
        }
        let e = errors(serde_json::json!({"name": "c", "services": ["consul"],
            "config": {"consul": {"datacenter": "dc 1", "dnsPort": 0}}}));
        for w in [
            "spec.layers[0].config.consul.datacenter: ",
            "spec.layers[0].config.consul.dnsPort: ",
        ] {
            assert!(e.iter().any(|x| x.starts_with(w)), "{w} not in {e:#?}");
        }
        let e = errors(serde_json::json!({"name": "s", "services": ["vault"],
            "placement": {"count": 3},
            "config": {"vault": {"implementation": "rustyVault",
              "unseal": {"shares": 3, "threshold": 4}, "kv": {"path": "sys"},
              "pki": {"path": "pki", "commonName": "",
                      "intermediate": {"path": "pki", "commonName": ""}},
              "sshCa": {"path": "pki", "role": "No Such"},
              "appRolePolicies": ["a", "a"]}}}));
        for w in [
            "spec.layers[0].config.vault.pki.intermediate.path: the same path",
            "spec.layers[0].config.vault.pki.intermediate.commonName: ",
            "spec.layers[0].config.vault.pki.intermediate: RustyVault",
            "spec.layers[0].config.vault.sshCa.path: the same path",
            "spec.layers[0].config.vault.sshCa.role: ",
            "spec.layers[0].config.vault.sshCa: RustyVault",
            "spec.layers[0].config.vault.unseal.threshold: 4 of 3",
            "spec.layers[0].config.vault.kv.path: ",
            "spec.layers[0].config.vault.pki.commonName: ",
            "spec.layers[0].config.vault.appRolePolicies",
            "spec.layers[0].placement.count: RustyVault",
            "spec.layers[0].config.vault.kv.version: RustyVault",
        ] {
            assert!(e.iter().any(|x| x.starts_with(w)), "{w} not in {e:#?}");
        }
        let e = errors(serde_json::json!({"name": "g", "services": ["gitea"],
            "config": {"gitea": {"admin": "admin", "adminEmail": "nobody",
              "groundworkUrl": "http://gw:6443/", "allowedHostList": "",
              "gitSourcePath": "../x"}}}));
        for w in [
            "spec.layers[0].config.gitea.admin: ",
            "spec.layers[0].config.gitea.adminEmail: ",
            "spec.layers[0].config.gitea.groundworkUrl: ",
            "spec.layers[0].config.gitea.allowedHostList: ",
            "spec.layers[0].config.gitea.gitSourcePath: ",
            "spec.layers[0].placement.count: Gitea",
        ] {
            assert!(e.iter().any(|x| x.starts_with(w)), "{w} not in {e:#?}");
        }
        let e = errors(serde_json::json!({"name": "s", "services": ["vault"],
            "config": {"vault": {"unseal": {"shares": 5, "threshold": 1}}}}));
        assert!(
            e.iter().any(
                |x| x.starts_with("spec.layers[0].config.vault.unseal.threshold: 1 of several")
            ),
            "{e:#?}"
        );
        let e = errors(serde_json::json!({"name": "i", "services": ["openldap"]}));
        assert_eq!(
            e,
            vec![
                "spec.layers[0].config.openldap: openldap needs at least suffix and adminPassword"
            ]
        );
    }
}
