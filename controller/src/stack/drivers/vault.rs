//! Vault servers: the secrets layer.
//!
//! - `implementation: vault`: integrated raft storage on every member, `retry_join` to the
//!   others, so one `sys/init` initialises the cluster and the others join it once unsealed.
//! - `implementation: rustyVault`: RustyVault (Apache-2.0), Vault's HTTP API in part, with
//!   file storage: one member.
//! - Healthy means unsealed (`sys/seal-status` says `"sealed":false`): a member that comes
//!   back sealed is not Ready until the stack controller unseals it (`super::super::vault`).
//! - The binary comes from the artifact store (Vault is not packaged for Debian 12).

use groundwork_types::{
    Artifact, HealthCheck, InstanceFile, RunSpec, ServiceInstanceSpec, ServiceType, VaultConfig,
    VaultImplementation, VaultUnsealMode,
};

use super::consul::Generate;

/// The transit key name of a layer: `STACK-LAYER`.
pub fn transit_key_name(stack: &str, layer: &str) -> String {
    format!("{stack}-{layer}")
}

/// The Credentials a vault layer needs generated (transit mode: its key and token).
pub fn generated(
    stack: &str,
    layer: &groundwork_types::Layer,
) -> Vec<(String, &'static str, Generate)> {
    let cfg = config(layer);
    // Groundwork's own token (its ID chosen here, so creating it in Vault can be repeated).
    let mut out = vec![(
        token_credential(stack, &layer.name),
        "vault-groundwork",
        Generate::Uuid,
    )];
    for n in &cfg.app_role_policies {
        out.push((
            approle_credential(stack, &layer.name, n),
            "",
            Generate::AppRole,
        ));
    }
    if cfg.unseal.mode == VaultUnsealMode::Transit {
        let (key, token) =
            groundwork_types::transit::transit_credentials(&transit_key_name(stack, &layer.name));
        out.push((key, "vault-transit-key", Generate::GossipKey));
        out.push((token, "vault-transit-token", Generate::Uuid));
    }
    out
}

/// The Credential holding Groundwork's scoped Vault token (its ID), used instead of the root
/// token, which is revoked once this one works.
pub fn token_credential(stack: &str, layer: &str) -> String {
    format!("{stack}-{layer}-vault-token")
}

/// The Credential of an AppRole role: user name its role ID, password its secret ID.
pub fn approle_credential(stack: &str, layer: &str, role: &str) -> String {
    format!("{stack}-{layer}-approle-{role}")
}

use super::{RenderCtx, argv};

/// The layer's Vault configuration, defaults filled in.
pub fn config(layer: &groundwork_types::Layer) -> VaultConfig {
    layer.config.vault.clone().unwrap_or_default()
}

/// `https://ADDR:PORT` (`http` without TLS): where Groundwork and clients reach a member.
pub fn api_url(cfg: &VaultConfig, address: &str) -> String {
    let scheme = if cfg.tls { "https" } else { "http" };
    format!("{scheme}://{address}:{}", cfg.port)
}

/// The names on a member's certificate besides its address: Consul's names for the
/// service, and loopback for a client on the machine.
fn tls(cfg: &VaultConfig) -> Option<groundwork_types::InstanceTls> {
    cfg.tls.then(|| groundwork_types::InstanceTls {
        dns_names: vec![
            "vault.service.consul".into(),
            "active.vault.service.consul".into(),
            "localhost".into(),
        ],
        ip_addresses: vec!["127.0.0.1".into()],
    })
}

/// Transit mode: the members unseal themselves through Groundwork's agent API, with the
/// layer's generated token, trusting the cluster CA.
fn seal(ctx: &RenderCtx, cfg: &VaultConfig) -> String {
    if cfg.unseal.mode != VaultUnsealMode::Transit {
        return String::new();
    }
    let key = transit_key_name(ctx.stack, &ctx.layer.name);
    let (_, token) = groundwork_types::transit::transit_credentials(&key);
    format!(
        "
seal \"transit\" {{
  address         = \"https://{{agent_addr}}\"
  tls_server_name = \"{server}\"
  token           = \"{{secret:{token}}}\"
  key_name        = \"{key}\"
  mount_path      = \"transit/\"
  disable_renewal = \"true\"
  tls_ca_cert     = \"{{cluster_ca}}\"
}}
",
        server = groundwork_types::agent::AGENT_SERVER_NAME
    )
}

pub(super) fn render(ctx: &RenderCtx) -> Result<ServiceInstanceSpec, String> {
    let field = format!("{}.config.vault", ctx.field());
    let cfg = config(ctx.layer);
    let Some(artifact) = cfg.artifact.clone() else {
        return Err(format!(
            "{field}.artifact: required: Vault is not packaged for Debian 12; put the server \
             binary in the artifact store and name it here (url and sha256)"
        ));
    };
    let addr = &ctx.me.address;
    let api = api_url(&cfg, addr);
    let (file, content, command) = match cfg.implementation {
        VaultImplementation::Vault => {
            let joins: String = ctx
                .peers
                .get(&ServiceType::Vault)
                .into_iter()
                .flatten()
                .filter(|m| m.address != *addr)
                .map(|m| {
                    let ca = if cfg.tls {
                        "    leader_ca_cert_file = \"{cluster_ca}\"\n"
                    } else {
                        ""
                    };
                    format!(
                        "  retry_join {{\n    leader_api_addr = \"{}\"\n{ca}  }}\n",
                        api_url(&cfg, &m.address)
                    )
                })
                .collect();
            (
                "vault.hcl",
                format!(
                    "# Rendered by Groundwork from ServiceStack {stack}, layer {layer}.
storage \"raft\" {{
  path    = \"{{data}}\"
  node_id = \"{node}\"
{joins}}}

listener \"tcp\" {{
  address         = \"{addr}:{port}\"
  cluster_address = \"{addr}:{cport}\"
{listener_tls}}}

api_addr      = \"{api}\"
cluster_addr  = \"https://{addr}:{cport}\"
disable_mlock = true
ui            = false
{seal}",
                    stack = ctx.stack,
                    layer = ctx.layer.name,
                    node = ctx.me.node,
                    port = cfg.port,
                    cport = cfg.cluster_port,
                    seal = seal(ctx, &cfg),
                    listener_tls = if cfg.tls {
                        "  tls_cert_file   = \"{tls_cert}\"\n  tls_key_file    = \"{tls_key}\"\n  tls_min_version = \"tls12\"\n"
                    } else {
                        "  tls_disable     = true\n"
                    },
                ),
                argv(&["{artifact}", "server", "-config={conf}/vault.hcl"]),
            )
        }
        VaultImplementation::RustyVault => (
            "rvault.hcl",
            format!(
                "# Rendered by Groundwork from ServiceStack {stack}, layer {layer}.
storage \"file\" {{
  path = \"{{data}}\"
}}

listener \"tcp\" {{
  address     = \"{addr}:{port}\"
{listener_tls}}}

api_addr  = \"{api}\"
work_dir  = \"{{dir}}/work\"
# Warnings only: RustyVault's info level logs every request path, and some paths carry a
# token (auth/token/revoke/TOKEN: it has no revoke-self).
log_level = \"warn\"
daemon    = \"false\"
",
                stack = ctx.stack,
                layer = ctx.layer.name,
                port = cfg.port,
                listener_tls = if cfg.tls {
                    "  tls_disable   = \"false\"\n  tls_cert_file = \"{tls_cert}\"\n  tls_key_file  = \"{tls_key}\"\n  tls_disable_client_certs = \"true\"\n"
                } else {
                    "  tls_disable = \"true\"\n"
                },
            ),
            argv(&["{artifact}", "server", "--config", "{conf}/rvault.hcl"]),
        ),
    };
    Ok(ServiceInstanceSpec {
        artifact: Artifact {
            packages: vec![],
            fetch: Some(artifact),
        },
        files: vec![InstanceFile {
            path: file.into(),
            content,
            mode: Some("0600".into()),
        }],
        run: RunSpec {
            command,
            stop_grace_seconds: 10,
            ..Default::default()
        },
        // Healthy: running and unsealed.
        health: HealthCheck {
            command: vec![
                "sh".into(),
                "-c".into(),
                format!(
                    "curl -sf --max-time 2 --cacert {{cluster_ca}} {api}/v1/sys/seal-status | grep -q '\"sealed\":false'"
                ),
            ],
            ..Default::default()
        },
        tls: tls(&cfg),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use groundwork_types::{ArtifactSource, Layer, LayerConfig};

    use super::super::Member;
    use super::*;

    fn layer(implementation: VaultImplementation) -> Layer {
        Layer {
            name: "secrets".into(),
            services: vec![ServiceType::Vault],
            config: LayerConfig {
                vault: Some(VaultConfig {
                    artifact: Some(ArtifactSource {
                        url: "http://10.0.0.1:8080/artifacts/vault".into(),
                        sha256: "0".repeat(64),
                    }),
                    implementation,
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn members() -> BTreeMap<ServiceType, Vec<Member>> {
        let m = |i: u32| Member {
            node: format!("n{i}"),
            address: format!("10.0.0.{}", 10 + i),
            ordinal: i,
        };
        [(ServiceType::Vault, vec![m(0), m(1), m(2)])].into()
    }

    fn render_for(l: &Layer, peers: &BTreeMap<ServiceType, Vec<Member>>) -> ServiceInstanceSpec {
        let me = &peers[&ServiceType::Vault][0];
        render(&RenderCtx {
            stack: "platform",
            layer: l,
            layer_index: 0,
            service: ServiceType::Vault,
            me,
            peers,
            scrape: &[],
            groundwork_metrics: None,
            consul: None,
            vault: None,
            stack_layers: &[],
        })
        .unwrap()
    }

    #[test]
    fn raft_members_join_each_other_and_health_means_unsealed() {
        let peers = members();
        let spec = render_for(&layer(VaultImplementation::Vault), &peers);
        let hcl = &spec.files[0].content;
        assert!(hcl.contains("storage \"raft\""), "{hcl}");
        assert!(hcl.contains("node_id = \"n0\""), "{hcl}");
        assert!(
            !hcl.contains("leader_api_addr = \"https://10.0.0.10:8200\""),
            "not itself"
        );
        for a in ["10.0.0.11", "10.0.0.12"] {
            assert!(
                hcl.contains(&format!("leader_api_addr = \"https://{a}:8200\"")),
                "{hcl}"
            );
        }
        assert!(
            hcl.contains("cluster_address = \"10.0.0.10:8201\""),
            "{hcl}"
        );
        // TLS by default: the member's own certificate (made on the machine), peers and
        // health checked against the cluster CA.
        assert!(hcl.contains("tls_cert_file   = \"{tls_cert}\""), "{hcl}");
        assert!(
            hcl.contains("leader_ca_cert_file = \"{cluster_ca}\""),
            "{hcl}"
        );
        assert!(!hcl.contains("tls_disable"), "{hcl}");
        assert!(
            spec.tls
                .as_ref()
                .unwrap()
                .dns_names
                .contains(&"vault.service.consul".into())
        );
        assert!(spec.health.command[2].contains("\"sealed\":false"));
        assert!(spec.health.command[2].contains("--cacert {cluster_ca} https://10.0.0.10:8200"));
        assert_eq!(spec.run.command[1], "server");
        // Off: plain HTTP, no certificate asked for.
        let mut l = layer(VaultImplementation::Vault);
        l.config.vault.as_mut().unwrap().tls = false;
        let spec = render_for(&l, &peers);
        assert!(spec.files[0].content.contains("tls_disable     = true"));
        assert!(spec.tls.is_none());
    }

    #[test]
    fn transit_mode_points_the_seal_at_groundwork() {
        let peers = members();
        let mut l = layer(VaultImplementation::Vault);
        l.config.vault.as_mut().unwrap().unseal.mode = VaultUnsealMode::Transit;
        let spec = super::super::render(&RenderCtx {
            stack: "platform",
            layer: &l,
            layer_index: 0,
            service: ServiceType::Vault,
            me: &peers[&ServiceType::Vault][0],
            peers: &peers,
            scrape: &[],
            groundwork_metrics: None,
            consul: None,
            vault: None,
            stack_layers: &[],
        })
        .unwrap();
        let hcl = &spec.files[0].content;
        assert!(hcl.contains("seal \"transit\""), "{hcl}");
        assert!(
            hcl.contains("address         = \"https://{agent_addr}\""),
            "{hcl}"
        );
        assert!(
            hcl.contains("tls_server_name = \"groundwork-boot\""),
            "{hcl}"
        );
        assert!(
            hcl.contains("key_name        = \"platform-secrets\""),
            "{hcl}"
        );
        assert!(
            hcl.contains("{secret:platform-secrets-vault-transit-token}"),
            "{hcl}"
        );
        // The agent fetches exactly the token, never the key.
        assert_eq!(spec.secrets, vec!["platform-secrets-vault-transit-token"]);
        let names: Vec<String> = generated("platform", &l).into_iter().map(|g| g.0).collect();
        assert_eq!(
            names,
            [
                "platform-secrets-vault-token",
                "platform-secrets-vault-transit-key",
                "platform-secrets-vault-transit-token"
            ]
        );
        // Shamir: no seal stanza, nothing generated.
        let spec = render_for(&layer(VaultImplementation::Vault), &peers);
        assert!(
            !spec.files[0].content.contains("seal"),
            "{}",
            spec.files[0].content
        );
        // Shamir: Groundwork's own token only.
        let names: Vec<String> = generated("platform", &layer(VaultImplementation::Vault))
            .into_iter()
            .map(|g| g.0)
            .collect();
        assert_eq!(names, ["platform-secrets-vault-token"]);
    }

    #[test]
    fn rustyvault_keeps_files_and_no_raft() {
        let peers = members();
        let spec = render_for(&layer(VaultImplementation::RustyVault), &peers);
        let hcl = &spec.files[0].content;
        assert!(hcl.contains("storage \"file\""), "{hcl}");
        assert!(!hcl.contains("raft"), "{hcl}");
        assert!(hcl.contains("address     = \"10.0.0.10:8200\""), "{hcl}");
        assert_eq!(spec.run.command[2], "--config");
    }

    #[test]
    fn no_artifact_names_the_field() {
        let mut l = layer(VaultImplementation::Vault);
        l.config.vault.as_mut().unwrap().artifact = None;
        let peers = members();
        let e = render(&RenderCtx {
            stack: "platform",
            layer: &l,
            layer_index: 2,
            service: ServiceType::Vault,
            me: &peers[&ServiceType::Vault][0],
            peers: &peers,
            scrape: &[],
            groundwork_metrics: None,
            consul: None,
            vault: None,
            stack_layers: &[],
        })
        .unwrap_err();
        assert!(e.starts_with("spec.layers[2].config.vault.artifact"), "{e}");
    }
}
