//! Service drivers: for each service Groundwork runs, a pure renderer from the layer's typed
//! configuration and its placed members to what the node agent converges (a
//! [`ServiceInstanceSpec`] without its identity fields): the artifact, the native config
//! files, the service's own checker, the command, the health check, the one-time setup.
//!
//! Paths use the agent's placeholders (`{dir}`, `{conf}`, `{data}`, `{artifact}`) and secrets
//! the `{secret:CREDENTIAL}` ones (see `groundwork_types::serviceinstance`).

pub mod consul;
pub mod gitea;
mod metrics;
pub mod mysql;
pub mod nomad;
mod openldap;
pub mod vault;

use std::collections::BTreeMap;

use groundwork_types::{Layer, ServiceInstanceSpec, ServiceType};

/// A machine a service of the layer is placed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub node: String,
    pub address: String,
    /// Stable within the layer's service: the lowest free one when the member was placed.
    pub ordinal: u32,
}

/// A metrics endpoint Prometheus scrapes: `job` is the service's name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ScrapeTarget {
    pub job: String,
    pub target: String,
    pub path: String,
    /// The member's node, as the `node` label.
    pub node: String,
}

/// Another layer's service a config points at: its members' addresses (`host:port`, or URLs)
/// and the Credential holding a token for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Upstream {
    /// The layer that runs it.
    pub layer: String,
    pub addresses: Vec<String>,
    pub token: Option<String>,
}

/// What a renderer reads.
pub struct RenderCtx<'a> {
    pub stack: &'a str,
    pub layer: &'a Layer,
    /// The layer's index in `spec.layers`, for field paths in messages.
    pub layer_index: usize,
    pub service: ServiceType,
    /// The member being rendered.
    pub me: &'a Member,
    /// The placed members of each of the layer's services, by ordinal.
    pub peers: &'a BTreeMap<ServiceType, Vec<Member>>,
    /// Every metrics endpoint of the stack's placed members.
    pub scrape: &'a [ScrapeTarget],
    /// Groundwork's own metrics endpoint (`host:port`, plain HTTP), when it serves one.
    pub groundwork_metrics: Option<&'a str>,
    /// The stack's Consul servers, when a layer runs them.
    pub consul: Option<&'a Upstream>,
    /// Every layer of the stack.
    pub stack_layers: &'a [&'a Layer],
    /// The stack's Vault members, when a layer runs them.
    pub vault: Option<&'a Upstream>,
}

/// Whether Groundwork can run `service` yet.
pub fn supported(service: ServiceType) -> bool {
    matches!(
        service,
        ServiceType::Prometheus
            | ServiceType::Alertmanager
            | ServiceType::NodeExporter
            | ServiceType::Openldap
            | ServiceType::Mysql
            | ServiceType::Haproxy
            | ServiceType::Consul
            | ServiceType::ConsulClient
            | ServiceType::Vault
            | ServiceType::Nomad
            | ServiceType::Gitea
    )
}

/// Services whose members form a quorum (Galera; later Vault, Consul and Nomad servers):
/// a lost member is replaced only while a majority of the members still runs, since a new
/// member can only join a cluster that has one.
pub fn quorum_based(service: ServiceType) -> bool {
    matches!(
        service,
        ServiceType::Mysql | ServiceType::Vault | ServiceType::Consul | ServiceType::Nomad
    )
}

/// Services that run on every machine of the layer's placement, whatever its `count`.
pub fn on_every_node(service: ServiceType) -> bool {
    matches!(
        service,
        ServiceType::NodeExporter | ServiceType::ConsulClient
    )
}

/// The port clients use, for the layer's endpoints.
pub fn main_port(service: ServiceType, layer: &Layer) -> Option<u16> {
    let c = &layer.config;
    Some(match service {
        ServiceType::Prometheus => c.prometheus.clone().unwrap_or_default().port,
        ServiceType::Alertmanager => c.alertmanager.clone().unwrap_or_default().port,
        ServiceType::NodeExporter => c.node_exporter.clone().unwrap_or_default().port,
        ServiceType::Openldap => c.openldap.as_ref()?.port,
        ServiceType::Mysql => c.mysql.as_ref()?.port,
        ServiceType::Haproxy => c.haproxy.clone().unwrap_or_default().port,
        ServiceType::Consul | ServiceType::ConsulClient => {
            let k = c.consul.clone().unwrap_or_default();
            if k.tls { k.https_port } else { k.http_port }
        }
        ServiceType::Vault => c.vault.clone().unwrap_or_default().port,
        ServiceType::Nomad => c.nomad.clone().unwrap_or_default().http_port,
        ServiceType::Gitea => c.gitea.clone().unwrap_or_default().http_port,
        _ => return None,
    })
}

/// Where the service exports Prometheus metrics: `(port, path)`.
pub fn metrics_endpoint(service: ServiceType, layer: &Layer) -> Option<(u16, &'static str)> {
    let c = &layer.config;
    match service {
        ServiceType::Prometheus => {
            Some((c.prometheus.clone().unwrap_or_default().port, "/metrics"))
        }
        ServiceType::Alertmanager => {
            Some((c.alertmanager.clone().unwrap_or_default().port, "/metrics"))
        }
        ServiceType::NodeExporter => {
            Some((c.node_exporter.clone().unwrap_or_default().port, "/metrics"))
        }
        ServiceType::Haproxy => {
            Some((c.haproxy.clone().unwrap_or_default().stats_port, "/metrics"))
        }
        _ => None,
    }
}

/// The rendered instance (identity fields and digest left empty), or why it cannot be.
pub fn render(ctx: &RenderCtx) -> Result<ServiceInstanceSpec, String> {
    let mut spec = render_service(ctx)?;
    // The credentials the agent fetches: exactly those the files name.
    let mut secrets: Vec<String> = spec
        .files
        .iter()
        .flat_map(|f| groundwork_types::secret_placeholders(&f.content))
        .collect();
    secrets.sort();
    secrets.dedup();
    spec.secrets = secrets;
    Ok(spec)
}

fn render_service(ctx: &RenderCtx) -> Result<ServiceInstanceSpec, String> {
    match ctx.service {
        ServiceType::Prometheus => Ok(metrics::prometheus(ctx)),
        ServiceType::Alertmanager => Ok(metrics::alertmanager(ctx)),
        ServiceType::NodeExporter => Ok(metrics::node_exporter(ctx)),
        ServiceType::Openldap => openldap::render(ctx),
        ServiceType::Mysql => mysql::render_mysql(ctx),
        ServiceType::Haproxy => mysql::render_haproxy(ctx),
        ServiceType::Consul => consul::render(ctx),
        ServiceType::ConsulClient => consul::render_client(ctx),
        ServiceType::Vault => vault::render(ctx),
        ServiceType::Nomad => nomad::render(ctx),
        ServiceType::Gitea => gitea::render(ctx),
        other => Err(format!(
            "Groundwork has no driver for {other} yet: the layer is stored, not run"
        )),
    }
}

/// YAML for a config file from a JSON value (JSON is YAML; Prometheus and Alertmanager read
/// either).
pub(crate) fn yaml(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

/// Healthy when the HTTP API at `http` (Consul's or Nomad's) knows a raft leader.
pub(crate) fn knows_a_leader(http: &str) -> groundwork_types::HealthCheck {
    groundwork_types::HealthCheck {
        command: vec![
            "sh".into(),
            "-c".into(),
            format!("curl -sf --max-time 2 {http}/v1/status/leader | grep -q ':'"),
        ],
        ..Default::default()
    }
}

/// The host of `scheme://host:port` or `host:port`.
pub(crate) fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.rsplit_once(':').map(|(h, _)| h).unwrap_or(rest)
}

pub(crate) fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

impl RenderCtx<'_> {
    /// `spec.layers[i]`: where the layer's fields are.
    pub fn field(&self) -> String {
        format!("spec.layers[{}]", self.layer_index)
    }
}
