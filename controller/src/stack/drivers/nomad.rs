//! Nomad servers: the scheduling layer.
//!
//! - The binary comes from the artifact store (not packaged for Debian 12); `nomad config
//!   validate` checks every config version before it replaces the running one.
//! - ACLs on; the management token is generated once as a Credential ([`generated`]) before
//!   any server starts and used as the `BootstrapSecret` of `POST /v1/acl/bootstrap` by the
//!   stack controller (`super::super::nomad`), so a retry after a crash verifies the stored
//!   token (`GET /v1/acl/token/self`) instead of bootstrapping twice.
//! - Consul and Vault of the same stack are rendered into the config (`consul.address` and
//!   its token, `vault.address`).

use groundwork_types::{
    Artifact, CheckField, InstanceFile, NomadConfig, RunSpec, ServiceInstanceSpec, ServiceType,
};
use serde_json::json;

use super::consul::Generate;
use super::{RenderCtx, argv};

/// The layer's Nomad configuration, defaults filled in.
pub fn config(layer: &groundwork_types::Layer) -> NomadConfig {
    layer.config.nomad.clone().unwrap_or_default()
}

/// The Credentials a nomad layer needs generated: the ACL management token's SecretID.
pub fn generated(stack: &str, layer: &str) -> Vec<(String, &'static str, Generate)> {
    vec![(
        format!("{stack}-{layer}-nomad-management"),
        "nomad-management",
        Generate::Uuid,
    )]
}

/// The Credential of the Nomad layer's own Consul token (its SecretID, generated first;
/// the stack controller creates the token in Consul with policy `nomad-LAYER`).
pub fn consul_token_credential(stack: &str, layer: &str) -> String {
    format!("{stack}-{layer}-consul-nomad")
}

/// What Nomad's agents need of Consul (Nomad's documented policy for servers and clients,
/// without `acl = "write"`, which only Consul Connect's service identity tokens need).
pub const CONSUL_RULES: &str = r#"agent_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }
service_prefix "" { policy = "write" }
key_prefix "" { policy = "read" }
"#;

pub(super) fn render(ctx: &RenderCtx) -> Result<ServiceInstanceSpec, String> {
    let field = format!("{}.config.nomad", ctx.field());
    let cfg = config(ctx.layer);
    let Some(artifact) = cfg.artifact.clone() else {
        return Err(format!(
            "{field}.artifact: required: Nomad is not packaged for Debian 12; put the nomad \
             binary in the artifact store and name it here (url and sha256)"
        ));
    };
    let addr = &ctx.me.address;
    let peers: Vec<String> = ctx
        .peers
        .get(&ServiceType::Nomad)
        .into_iter()
        .flatten()
        .filter(|m| m.address != *addr)
        .map(|m| format!("{}:4648", m.address))
        .collect();
    let expect = ctx
        .peers
        .get(&ServiceType::Nomad)
        .map(Vec::len)
        .unwrap_or(1);
    let mut conf = json!({
        "name": ctx.me.node,
        "datacenter": cfg.datacenter.clone().unwrap_or_else(|| "dc1".into()),
        "data_dir": "{data}",
        "bind_addr": addr,
        "advertise": {"http": addr, "rpc": addr, "serf": addr},
        "ports": {"http": cfg.http_port, "rpc": 4647, "serf": 4648},
        "server": {
            "enabled": true,
            "bootstrap_expect": expect,
            "server_join": {"retry_join": peers},
        },
        "acl": {"enabled": cfg.acl_bootstrap},
        "disable_update_check": true,
        "leave_on_terminate": false,
    });
    if let Some(c) = ctx.consul
        && let Some(first) = c.addresses.first()
    {
        // Nomad takes Consul's address without a scheme, and `ssl` for HTTPS.
        match first.strip_prefix("https://") {
            Some(hostport) => {
                conf["consul"] =
                    json!({"address": hostport, "ssl": true, "ca_file": "{cluster_ca}"})
            }
            None => {
                conf["consul"] = json!({"address": first.strip_prefix("http://").unwrap_or(first)})
            }
        }
        if c.token.is_some() {
            let t = consul_token_credential(ctx.stack, &ctx.layer.name);
            conf["consul"]["token"] = json!(format!("{{secret:{t}}}"));
        }
    }
    if let Some(v) = ctx.vault
        && let Some(first) = v.addresses.first()
    {
        conf["vault"] = json!({"enabled": true, "address": first});
        if first.starts_with("https://") {
            conf["vault"]["ca_file"] = json!("{cluster_ca}");
        }
    }
    let http = format!("http://{addr}:{}", cfg.http_port);
    Ok(ServiceInstanceSpec {
        artifact: Artifact {
            packages: vec![],
            fetch: Some(artifact),
        },
        files: vec![InstanceFile {
            path: "nomad.json".into(),
            content: serde_json::to_string_pretty(&conf).unwrap_or_default() + "\n",
            mode: Some("0600".into()),
        }],
        check: argv(&["{artifact}", "config", "validate", "{conf}/nomad.json"]),
        check_fields: vec![CheckField {
            contains: "port".into(),
            field: format!("{field}.httpPort"),
        }],
        run: RunSpec {
            command: argv(&["{artifact}", "agent", "-config={conf}/nomad.json"]),
            stop_grace_seconds: 15,
            ..Default::default()
        },
        // Healthy: this server knows a leader.
        health: super::knows_a_leader(&http),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use groundwork_types::{ArtifactSource, Layer, LayerConfig};

    use super::super::{Member, Upstream};
    use super::*;

    #[test]
    fn servers_join_each_other_and_point_at_consul_and_vault() {
        let l = Layer {
            name: "scheduling".into(),
            services: vec![ServiceType::Nomad],
            config: LayerConfig {
                nomad: Some(NomadConfig {
                    artifact: Some(ArtifactSource {
                        url: "http://10.0.0.1:8080/artifacts/nomad".into(),
                        sha256: "0".repeat(64),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let m = |i: u32| Member {
            node: format!("n{i}"),
            address: format!("10.0.0.{}", 10 + i),
            ordinal: i,
        };
        let peers: BTreeMap<ServiceType, Vec<Member>> =
            [(ServiceType::Nomad, vec![m(0), m(1), m(2)])].into();
        let consul = Upstream {
            layer: "connectivity".into(),
            addresses: vec!["https://10.0.0.20:8501".into()],
            token: Some("p-connectivity-consul-management".into()),
        };
        let vault = Upstream {
            layer: "secrets".into(),
            addresses: vec!["https://10.0.0.30:8200".into()],
            token: None,
        };
        let spec = super::super::render(&RenderCtx {
            stack: "p",
            layer: &l,
            layer_index: 1,
            service: ServiceType::Nomad,
            me: &peers[&ServiceType::Nomad][0],
            peers: &peers,
            scrape: &[],
            groundwork_metrics: None,
            consul: Some(&consul),
            vault: Some(&vault),
            stack_layers: &[],
        })
        .unwrap();
        let c: serde_json::Value = serde_json::from_str(&spec.files[0].content).unwrap();
        assert_eq!(c["server"]["bootstrap_expect"], 3);
        assert_eq!(
            c["server"]["server_join"]["retry_join"],
            json!(["10.0.0.11:4648", "10.0.0.12:4648"])
        );
        assert_eq!(c["acl"]["enabled"], true);
        assert_eq!(c["consul"]["address"], "10.0.0.20:8501");
        assert_eq!(c["consul"]["ssl"], true);
        assert_eq!(c["consul"]["ca_file"], "{cluster_ca}");
        // Its own Consul token, never the management token.
        assert_eq!(c["consul"]["token"], "{secret:p-scheduling-consul-nomad}");
        assert_eq!(c["vault"]["address"], "https://10.0.0.30:8200");
        assert_eq!(c["vault"]["ca_file"], "{cluster_ca}");
        assert_eq!(spec.secrets, vec!["p-scheduling-consul-nomad"]);
        assert_eq!(spec.check[1], "config");
    }
}
