//! Gitea: the source-control layer.
//!
//! - The binary comes from the artifact store (Gitea is in no reachable registry); one
//!   member with SQLite under `{data}`.
//! - `app.ini` is rendered whole: HTTPS with the instance's certificate from the cluster CA,
//!   install locked, registration off, sign-in required, and `[webhook] ALLOWED_HOST_LIST`
//!   (Gitea's default refuses private addresses, where Groundwork is).
//! - Gitea's own secrets and the administrator's password are generated once as Credentials
//!   ([`generated`]) before the member is placed; a setup step creates the administrator
//!   once (`gitea admin user create`, from a 0700 script so the password is in no argv).
//! - The stack controller (`super::super::gitea`) then makes the platform repository, its
//!   push webhook to Groundwork and a GitSource following it.

use groundwork_types::{
    Artifact, GiteaConfig, HealthCheck, InstanceFile, RunSpec, ServiceInstanceSpec, SetupStep,
};

use super::consul::Generate;
use super::{RenderCtx, argv};

pub fn config(layer: &groundwork_types::Layer) -> GiteaConfig {
    layer.config.gitea.clone().unwrap_or_default()
}

/// The Credentials a gitea layer needs generated: (name, user name, what).
pub fn generated(stack: &str, layer: &groundwork_types::Layer) -> Vec<(String, String, Generate)> {
    let cfg = config(layer);
    let l = &layer.name;
    vec![
        (
            admin_credential(stack, l),
            cfg.admin.clone(),
            Generate::GossipKey,
        ),
        (
            webhook_credential(stack, l),
            "gitea-webhook".into(),
            Generate::GossipKey,
        ),
        (
            format!("{stack}-{l}-gitea-secret-key"),
            "gitea-secret-key".into(),
            Generate::GossipKey,
        ),
        (
            format!("{stack}-{l}-gitea-internal-token"),
            "gitea-internal-token".into(),
            Generate::GossipKey,
        ),
    ]
}

/// The administrator: user name and password (HTTP Basic for the API and for Git).
pub fn admin_credential(stack: &str, layer: &str) -> String {
    format!("{stack}-{layer}-gitea-admin")
}

/// The push webhook's shared secret.
pub fn webhook_credential(stack: &str, layer: &str) -> String {
    format!("{stack}-{layer}-gitea-webhook")
}

/// `https://ADDR:PORT`: where Groundwork and Git clients reach the member.
pub fn url(cfg: &GiteaConfig, address: &str) -> String {
    format!("https://{address}:{}", cfg.http_port)
}

pub(super) fn render(ctx: &RenderCtx) -> Result<ServiceInstanceSpec, String> {
    let field = format!("{}.config.gitea", ctx.field());
    let cfg = config(ctx.layer);
    let Some(artifact) = cfg.artifact.clone() else {
        return Err(format!(
            "{field}.artifact: required: Gitea is not packaged for Debian 12; put the gitea \
             binary in the artifact store and name it here (url and sha256)"
        ));
    };
    let (stack, layer) = (ctx.stack, &ctx.layer.name);
    let addr = &ctx.me.address;
    let base = url(&cfg, addr);
    let app_ini = format!(
        "; Rendered by Groundwork from ServiceStack {stack}, layer {layer}.
APP_NAME = Groundwork platform
RUN_MODE = prod
WORK_PATH = {{data}}

[server]
PROTOCOL = https
HTTP_ADDR = {addr}
HTTP_PORT = {port}
ROOT_URL = {base}/
CERT_FILE = {{tls_cert}}
KEY_FILE = {{tls_key}}
DISABLE_SSH = true
OFFLINE_MODE = true

[database]
DB_TYPE = sqlite3
PATH = {{data}}/gitea.db

[repository]
ROOT = {{data}}/repositories
DEFAULT_BRANCH = main

[security]
INSTALL_LOCK = true
SECRET_KEY = {{secret:{stack}-{layer}-gitea-secret-key}}
INTERNAL_TOKEN = {{secret:{stack}-{layer}-gitea-internal-token}}

[service]
DISABLE_REGISTRATION = true
REQUIRE_SIGNIN_VIEW = true

[webhook]
ALLOWED_HOST_LIST = {allowed}
DELIVER_TIMEOUT = 5

[log]
MODE = console
LEVEL = Info
",
        port = cfg.http_port,
        allowed = cfg.allowed_host_list,
    );
    let admin = admin_credential(stack, layer);
    let create_admin = format!(
        "#!/bin/sh
# Creates Gitea's administrator once (the setup step runs while {{data}}/.admin-created is
# missing): the password is the Credential {admin}, read here, never on a command line.
set -eu
'{{artifact}}' migrate --config '{{conf}}/app.ini' >/dev/null
'{{artifact}}' admin user create --admin --username '{user}' --email '{email}' \\
  --must-change-password=false --password \"$(cat '{{conf}}/admin.password')\" \\
  --config '{{conf}}/app.ini' >/dev/null
touch '{{data}}/.admin-created'
",
        user = cfg.admin,
        email = cfg.admin_email,
    );
    Ok(ServiceInstanceSpec {
        artifact: Artifact {
            packages: vec![],
            fetch: Some(artifact),
        },
        files: vec![
            InstanceFile {
                path: "app.ini".into(),
                content: app_ini,
                mode: Some("0600".into()),
            },
            InstanceFile {
                path: "admin.password".into(),
                content: format!("{{secret:{admin}}}"),
                mode: Some("0600".into()),
            },
            InstanceFile {
                path: "create-admin.sh".into(),
                content: create_admin,
                mode: Some("0700".into()),
            },
        ],
        setup: vec![SetupStep {
            name: "Gitea's database and administrator, once".into(),
            command: argv(&["sh", "{conf}/create-admin.sh"]),
            creates: "{data}/.admin-created".into(),
            user: None,
        }],
        run: RunSpec {
            command: argv(&["{artifact}", "web", "--config", "{conf}/app.ini"]),
            // Gitea delivers webhooks to Groundwork's API: trust the cluster CA.
            env: [("SSL_CERT_FILE".to_string(), "{cluster_ca}".to_string())].into(),
            stop_grace_seconds: 10,
            ..Default::default()
        },
        health: HealthCheck {
            command: vec![
                "sh".into(),
                "-c".into(),
                format!("curl -sf --max-time 2 --cacert {{cluster_ca}} {base}/api/healthz"),
            ],
            ..Default::default()
        },
        tls: Some(groundwork_types::InstanceTls {
            dns_names: vec!["gitea.service.consul".into(), "localhost".into()],
            ip_addresses: vec!["127.0.0.1".into()],
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use groundwork_types::{ArtifactSource, Layer, LayerConfig, ServiceType};

    use super::super::Member;
    use super::*;

    #[test]
    fn app_ini_allows_groundwork_and_keeps_secrets_out_of_argv() {
        let l = Layer {
            name: "source-control".into(),
            services: vec![ServiceType::Gitea],
            config: LayerConfig {
                gitea: Some(GiteaConfig {
                    artifact: Some(ArtifactSource {
                        url: "http://10.0.0.1:8080/artifacts/gitea".into(),
                        sha256: "0".repeat(64),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let me = Member {
            node: "n0".into(),
            address: "10.0.0.10".into(),
            ordinal: 0,
        };
        let peers: BTreeMap<ServiceType, Vec<Member>> =
            [(ServiceType::Gitea, vec![me.clone()])].into();
        let spec = render(&RenderCtx {
            stack: "p",
            layer: &l,
            layer_index: 0,
            service: ServiceType::Gitea,
            me: &me,
            peers: &peers,
            scrape: &[],
            groundwork_metrics: None,
            consul: None,
            vault: None,
            stack_layers: &[],
        })
        .unwrap();
        let ini = &spec.files[0].content;
        for want in [
            "PROTOCOL = https",
            "HTTP_ADDR = 10.0.0.10",
            "CERT_FILE = {tls_cert}",
            "INSTALL_LOCK = true",
            "SECRET_KEY = {secret:p-source-control-gitea-secret-key}",
            "ALLOWED_HOST_LIST = private",
            "REQUIRE_SIGNIN_VIEW = true",
        ] {
            assert!(ini.contains(want), "{want} not in\n{ini}");
        }
        // The administrator's password: in a 0600 file, never in a command line.
        assert_eq!(
            spec.files[1].content,
            "{secret:p-source-control-gitea-admin}"
        );
        assert!(spec.setup[0].command.iter().all(|a| !a.contains("secret:")));
        assert_eq!(spec.setup[0].creates, "{data}/.admin-created");
        assert!(spec.tls.is_some());
        assert_eq!(spec.run.env["SSL_CERT_FILE"], "{cluster_ca}");
        let names: Vec<String> = generated("p", &l).into_iter().map(|g| g.0).collect();
        assert_eq!(
            names,
            [
                "p-source-control-gitea-admin",
                "p-source-control-gitea-webhook",
                "p-source-control-gitea-secret-key",
                "p-source-control-gitea-internal-token"
            ]
        );
        // No artifact: the error names the field.
        let mut bare = l.clone();
        bare.config.gitea.as_mut().unwrap().artifact = None;
        let e = render(&RenderCtx {
            stack: "p",
            layer: &bare,
            layer_index: 2,
            service: ServiceType::Gitea,
            me: &me,
            peers: &peers,
            scrape: &[],
            groundwork_metrics: None,
            consul: None,
            vault: None,
            stack_layers: &[],
        })
        .unwrap_err();
        assert!(
            e.starts_with("spec.layers[2].config.gitea.artifact: required"),
            "{e}"
        );
    }
}
