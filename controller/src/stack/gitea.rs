//! Gitea's bootstrap, level-triggered, with the administrator Groundwork created: the
//! platform repository (`POST /api/v1/user/repos` when `GET /api/v1/repos/OWNER/NAME`
//! answers 404), its push webhook to Groundwork (`POST .../hooks` when no hook has that URL;
//! the secret is a generated Credential, shared with the GitSource), and the GitSource
//! following the repository (created when missing, owned by the stack). Every step finds
//! what exists before making anything, so a repeat after a crash makes nothing twice.

use groundwork_types::{GitSource, GitSourceSpec, ServiceStack};
use kube::api::PostParams;
use kube::core::ObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};

use super::drivers::gitea::{admin_credential, config, url, webhook_credential};
use super::vault::Outcome;
use crate::runtime::Ctx;

/// The GitSource a gitea layer makes: `STACK-LAYER`.
pub fn gitsource_name(stack: &str, layer: &str) -> String {
    format!("{stack}-{layer}")
}

pub async fn converge(
    stack: &ServiceStack,
    layer: &groundwork_types::Layer,
    address: &str,
    ctx: &Ctx,
) -> Outcome {
    let mut out = Outcome::default();
    let name = stack.name_any();
    let cfg = config(layer);
    let admin = admin_credential(&name, &layer.name);
    let user = ctx
        .caches
        .store::<groundwork_types::Credential>()
        .get(&ObjectRef::new(&admin))
        .map(|c| c.spec.username.clone());
    let (Some(user), Some(password)) = (user, super::credential_value(ctx, &admin)) else {
        out.waiting = Some(format!("the administrator's Credential {admin}"));
        return out;
    };
    let c = super::http_client(ctx);
    let base = url(&cfg, address);
    let call = |m: reqwest::Method, p: &str| {
        c.request(m, format!("{base}/api/v1/{p}"))
            .basic_auth(&user, Some(&password))
    };
    let status = |r: &Result<reqwest::Response, reqwest::Error>| {
        r.as_ref().map(|r| r.status().as_u16()).unwrap_or(0)
    };
    // The repository.
    let repo = format!("repos/{}/{}", cfg.admin, cfg.repository);
    let r = call(reqwest::Method::GET, &repo).send().await;
    match status(&r) {
        200 => {}
        404 => {
            let r = call(reqwest::Method::POST, "user/repos")
                .json(&json!({
                    "name": cfg.repository, "private": true, "auto_init": true,
                    "default_branch": "main",
                    "description": format!("Groundwork: the datacenter (ServiceStack {name})"),
                }))
                .send()
                .await;
            match status(&r) {
                201 | 409 => {
                    tracing::info!(repository = %cfg.repository, "gitea: the platform repository created")
                }
                code => {
                    out.waiting = Some(format!(
                        "creating the repository {}: HTTP {code}",
                        cfg.repository
                    ));
                    return out;
                }
            }
        }
        code => {
            out.waiting = Some(format!("Gitea's API at {base}: HTTP {code}"));
            return out;
        }
    }
    out.done
        .push(format!("repository {}/{}", cfg.admin, cfg.repository));
    let gs = gitsource_name(&name, &layer.name);
    // The push webhook to Groundwork.
    if let Some(gw) = &cfg.groundwork_url {
        let target = format!("{gw}/hooks/gitsource/{gs}");
        let hooks: Vec<Value> = match call(reqwest::Method::GET, &format!("{repo}/hooks"))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
            Ok(r) => {
                out.waiting = Some(format!("listing the webhooks: HTTP {}", r.status()));
                return out;
            }
            Err(e) => {
                out.waiting = Some(format!("listing the webhooks: {}", e.without_url()));
                return out;
            }
        };
        if !hooks.iter().any(|h| h["config"]["url"] == target.as_str()) {
            let Some(secret) =
                super::credential_value(ctx, &webhook_credential(&name, &layer.name))
            else {
                out.waiting = Some("the webhook secret's Credential".into());
                return out;
            };
            let r = call(reqwest::Method::POST, &format!("{repo}/hooks"))
                .json(&json!({
                    "type": "gitea", "active": true, "events": ["push"], "branch_filter": "main",
                    "config": {"url": target, "content_type": "json", "secret": secret},
                }))
                .send()
                .await;
            // Never the body: it echoes the secret.
            match status(&r) {
                201 => tracing::info!(%target, "gitea: the push webhook to Groundwork created"),
                code => {
                    out.waiting = Some(format!("creating the webhook: HTTP {code}"));
                    return out;
                }
            }
        }
        out.done.push(format!("push webhook to {target}"));
    }
    // The GitSource following the repository.
    if cfg.git_source {
        let api: Api<GitSource> = Api::all(ctx.client.clone());
        if ctx
            .caches
            .store::<GitSource>()
            .get(&ObjectRef::new(&gs))
            .is_none()
        {
            let g = GitSource {
                metadata: ObjectMeta {
                    name: Some(gs.clone()),
                    labels: Some(
                        [(groundwork_types::STACK_LABEL.to_string(), name.clone())].into(),
                    ),
                    owner_references: Some(vec![
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                            api_version: ServiceStack::api_version(&()).to_string(),
                            kind: ServiceStack::kind(&()).to_string(),
                            name: name.clone(),
                            uid: stack.uid().unwrap_or_default(),
                            controller: Some(true),
                            block_owner_deletion: Some(true),
                        },
                    ]),
                    ..Default::default()
                },
                spec: GitSourceSpec {
                    url: format!("{base}/{}/{}.git", cfg.admin, cfg.repository),
                    path: cfg.git_source_path.clone(),
                    interval_seconds: 60,
                    credential: Some(admin.clone()),
                    webhook_secret: Some(webhook_credential(&name, &layer.name)),
                    prune: true,
                    ..Default::default()
                },
                status: None,
            };
            match api.create(&PostParams::default(), &g).await {
                Ok(_) => {
                    tracing::info!(gitsource = %gs, "gitea: a GitSource follows the platform repository")
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => {
                    out.waiting = Some(format!("creating GitSource {gs}: {e}"));
                    return out;
                }
            }
        }
        out.done.push(format!("GitSource {gs}"));
    }
    out
}
