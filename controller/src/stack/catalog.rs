//! Applying a [`CatalogPlan`]: every ServiceInstance registered in Consul's catalog, with a
//! check whose status is the instance's health as its node agent reports it.
//!
//! Instances are registered through the catalog API on an external node per machine
//! (`NODE-groundwork`, node meta `groundwork: true`): a Consul agent's anti-entropy removes
//! catalog entries of its own node that it did not register itself, and Groundwork, not a
//! Consul agent, is the authority on these members' health. Entries of instances that are
//! gone are deregistered. Nothing is sent while the plan is the one last applied.

use serde_json::json;

use super::decide::CatalogPlan;

/// The external node that holds `node`'s registrations.
pub fn catalog_node(node: &str) -> String {
    format!("{node}-groundwork")
}

pub async fn sync(
    client: &reqwest::Client,
    plan: &CatalogPlan,
    token: &str,
) -> Result<usize, String> {
    let call = |method: reqwest::Method, path: &str| {
        client
            .request(method, format!("{}{path}", plan.consul))
            .header("X-Consul-Token", token)
    };
    let ok = |r: Result<reqwest::Response, reqwest::Error>, what: &str| -> Result<(), String> {
        match r {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("{what}: HTTP {}", r.status())),
            Err(e) => Err(format!("{what}: {}", e.without_url())),
        }
    };
    for e in &plan.entries {
        let body = json!({
            "Node": catalog_node(&e.node),
            "Address": e.address,
            "NodeMeta": {"groundwork": "true", "external-node": "true"},
            "Service": {
                "ID": e.id,
                "Service": e.service,
                "Address": e.address,
                "Port": e.port,
                "Meta": {"groundwork-node": e.node},
            },
            "Check": {
                "CheckID": format!("groundwork:{}", e.id),
                "Name": "Groundwork node agent's health check",
                "Status": if e.passing { "passing" } else { "critical" },
                "ServiceID": e.id,
            },
            "SkipNodeUpdate": false,
        });
        ok(
            call(reqwest::Method::PUT, "/v1/catalog/register")
                .json(&body)
                .send()
                .await,
            &format!("registering {}", e.id),
        )?;
    }
    // What Groundwork registered before and is no longer wanted.
    let nodes: Vec<serde_json::Value> = call(
        reqwest::Method::GET,
        "/v1/catalog/nodes?node-meta=groundwork:true",
    )
    .send()
    .await
    .map_err(|e| format!("listing nodes: {}", e.without_url()))?
    .json()
    .await
    .map_err(|e| format!("listing nodes: {e}"))?;
    let mut removed = 0;
    for n in nodes {
        let Some(node) = n["Node"].as_str() else {
            continue;
        };
        let services: serde_json::Value =
            call(reqwest::Method::GET, &format!("/v1/catalog/node/{node}"))
                .send()
                .await
                .map_err(|e| format!("reading node {node}: {}", e.without_url()))?
                .json()
                .await
                .map_err(|e| format!("reading node {node}: {e}"))?;
        let ids: Vec<String> = services["Services"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let wanted: Vec<&str> = plan
            .entries
            .iter()
            .filter(|e| catalog_node(&e.node) == node)
            .map(|e| e.id.as_str())
            .collect();
        if wanted.is_empty() {
            ok(
                call(reqwest::Method::PUT, "/v1/catalog/deregister")
                    .json(&json!({"Node": node}))
                    .send()
                    .await,
                &format!("deregistering node {node}"),
            )?;
            removed += ids.len();
            continue;
        }
        for id in ids.iter().filter(|i| !wanted.contains(&i.as_str())) {
            ok(
                call(reqwest::Method::PUT, "/v1/catalog/deregister")
                    .json(&json!({"Node": node, "ServiceID": id}))
                    .send()
                    .await,
                &format!("deregistering {id}"),
            )?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// A Consul ACL token Groundwork makes sure of: its caller-chosen AccessorID and SecretID
/// (generated and stored first), bound to one policy with these rules. No `Debug`: it
/// holds a secret.
#[derive(Clone)]
pub struct ConsulToken {
    pub accessor: String,
    pub secret: String,
    pub policy: String,
    pub rules: String,
    /// What it is for (the token's and the policy's description).
    pub purpose: String,
}

/// Makes sure each token exists with its policy (the AccessorID and SecretID chosen by
/// Groundwork); a token found by its AccessorID is left alone. How many were created.
pub async fn ensure_tokens(
    client: &reqwest::Client,
    consul: &str,
    management: &str,
    tokens: &[ConsulToken],
) -> Result<usize, String> {
    let call = |method: reqwest::Method, path: &str| {
        client
            .request(method, format!("{consul}{path}"))
            .header("X-Consul-Token", management)
    };
    let mut created = 0;
    for t in tokens {
        let found = call(
            reqwest::Method::GET,
            &format!("/v1/acl/token/{}", t.accessor),
        )
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
        if found.status().is_success() {
            continue;
        }
        let r = call(reqwest::Method::PUT, "/v1/acl/policy")
            .json(&json!({"Name": t.policy, "Description": format!("Groundwork: {}", t.purpose), "Rules": t.rules}))
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !r.status().is_success() {
            let body = r.text().await.unwrap_or_default();
            if !body.contains("already exists") {
                return Err(format!("policy {}: {}", t.policy, body.trim()));
            }
        }
        let r = call(reqwest::Method::PUT, "/v1/acl/token")
            .json(&json!({
                "AccessorID": t.accessor,
                "SecretID": t.secret,
                "Description": format!("Groundwork: {}", t.purpose),
                "Policies": [{"Name": t.policy}],
                "Local": false,
            }))
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !r.status().is_success() {
            // Never the body of a token call: it could echo the SecretID.
            return Err(format!("the token for {}: HTTP {}", t.purpose, r.status()));
        }
        created += 1;
    }
    Ok(created)
}
