//! Authorization: Kubernetes RBAC over ClusterRoles and ClusterRoleBindings (served by the API
//! like any kind), with built-in roles and two fixed rules:
//!
//! - the group `system:masters` may do everything;
//! - a machine identity (user `system:node:NAME` in group `system:nodes`) may read its own
//!   Node and write its own Node's status, nothing else;
//! - every authenticated user may read discovery and OpenAPI.
//!
//! Built-in ClusterRoles (used when no stored ClusterRole has the name): `cluster-admin`
//! (everything), `edit` (every verb on Groundwork's kinds, Events and Leases but `use`;
//! reading Credentials' sealed form), `view` (get, list, watch on everything but
//! Credentials). Setting a Node's `spec.bmc` also needs `use` on its Credential (see
//! `objects::check_credential_use`): grant it with a ClusterRole naming the Credentials.

use groundwork_store::Store;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};

use crate::auth::{Attributes, MASTERS, NODES_GROUP, UserInfo};

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    PolicyRule {
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

/// The built-in ClusterRoles.
pub fn builtin(name: &str) -> Option<Vec<PolicyRule>> {
    let read = ["get", "list", "watch"];
    let readable: Vec<String> = groundwork_types::all_kinds()
        .iter()
        .filter(|k| k.kind != "Credential")
        .flat_map(|k| {
            [
                k.plural.to_string(),
                format!("{}/status", k.plural),
                format!("{}/log", k.plural),
            ]
        })
        .collect();
    let readable: Vec<&str> = readable.iter().map(String::as_str).collect();
    match name {
        "cluster-admin" => Some(vec![
            rule(&["*"], &["*"], &["*"]),
            PolicyRule {
                verbs: vec!["*".into()],
                non_resource_urls: Some(vec!["*".into()]),
                ..Default::default()
            },
        ]),
        // Every verb but `use`: pointing a BMC at a Credential is granted separately.
        "edit" => Some(vec![rule(
            &[
                "get",
                "list",
                "watch",
                "create",
                "update",
                "patch",
                "delete",
                "deletecollection",
            ],
            &["groundwork.dev", "coordination.k8s.io", ""],
            &["*"],
        )]),
        "view" => Some(vec![rule(&read, &["*"], &readable)]),
        _ => None,
    }
}

fn matches(list: &Option<Vec<String>>, want: &str) -> bool {
    list.as_ref()
        .is_some_and(|l| l.iter().any(|x| x == "*" || x == want))
}

fn rule_allows(r: &PolicyRule, a: &Attributes) -> bool {
    if !r.verbs.iter().any(|v| v == "*" || *v == a.verb) {
        return false;
    }
    if let Some(path) = &a.path {
        return r.non_resource_urls.as_ref().is_some_and(|urls| {
            urls.iter().any(|u| {
                u == "*" || u == path || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
            })
        });
    }
    let base = a.resource.split('/').next().unwrap_or("");
    matches(&r.api_groups, &a.group)
        && (matches(&r.resources, &a.resource)
            || (a.resource == base && matches(&r.resources, base))
            || r.resources
                .as_ref()
                .is_some_and(|l| l.iter().any(|x| x == &format!("{base}/*"))))
        && r.resource_names
            .as_ref()
            .is_none_or(|n| n.is_empty() || (!a.name.is_empty() && n.contains(&a.name)))
}

/// Allows or refuses `a` for `user`; the refusal says why. Writing RBAC objects also needs
/// the `escalate` (ClusterRoles) or `bind` (ClusterRoleBindings) verb, as in Kubernetes, so
/// the right to write roles is not the right to grant oneself anything.
pub fn authorize(store: &Store, user: &UserInfo, a: &Attributes) -> Result<(), String> {
    authorize_one(store, user, a)?;
    let guard = match (a.group.as_str(), a.resource.as_str()) {
        ("rbac.authorization.k8s.io", "clusterroles") => Some("escalate"),
        ("rbac.authorization.k8s.io", "clusterrolebindings") => Some("bind"),
        _ => None,
    };
    match guard {
        Some(verb) if !matches!(a.verb.as_str(), "get" | "list" | "watch") => {
            let extra = Attributes {
                verb: verb.into(),
                ..a.clone()
            };
            authorize_one(store, user, &extra)
                .map_err(|_| format!("changing RBAC objects also needs the {verb:?} verb"))
        }
        _ => Ok(()),
    }
}

fn authorize_one(store: &Store, user: &UserInfo, a: &Attributes) -> Result<(), String> {
    if user.groups.iter().any(|g| g == MASTERS) {
        return Ok(());
    }
    if let Some(p) = &a.path
        && a.verb == "get"
        && crate::auth::is_discovery_path(p)
    {
        return Ok(());
    }
    if let Some(node) = user.name.strip_prefix("system:node:")
        && user.groups.iter().any(|g| g == NODES_GROUP)
    {
        let own = a.group == "groundwork.dev" && a.name == node;
        let ok = own
            && match a.resource.as_str() {
                "nodes" => a.verb == "get",
                "nodes/status" => matches!(a.verb.as_str(), "get" | "patch" | "update"),
                _ => false,
            };
        return if ok {
            Ok(())
        } else {
            Err(format!(
                "a machine identity may only read Node {node:?} and write its status"
            ))
        };
    }
    let bindings = store
        .list(
            "rbac.authorization.k8s.io/clusterrolebindings/",
            None,
            0,
            None,
        )
        .map_err(|e| format!("reading bindings: {e}"))?;
    for item in bindings.items {
        let Ok(b) = serde_json::from_value::<ClusterRoleBinding>(item.object) else {
            continue;
        };
        let bound = b.subjects.iter().flatten().any(|s| match s.kind.as_str() {
            "User" => s.name == user.name,
            "Group" => user.groups.contains(&s.name),
            _ => false,
        });
        if !bound || b.role_ref.kind != "ClusterRole" {
            continue;
        }
        // Built-in names cannot be redefined (admission refuses them; this is the backstop).
        let rules = match builtin(&b.role_ref.name) {
            Some(r) => r,
            None => store
                .get(&format!(
                    "rbac.authorization.k8s.io/clusterroles//{}",
                    b.role_ref.name
                ))
                .ok()
                .flatten()
                .and_then(|o| serde_json::from_value::<ClusterRole>(o.object).ok())
                .and_then(|r| r.rules)
                .unwrap_or_default(),
        };
        if rules.iter().any(|r| rule_allows(r, a)) {
            return Ok(());
        }
    }
    Err("no ClusterRoleBinding grants it".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(verb: &str, group: &str, resource: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn rules_match_verbs_groups_resources_subresources_and_names() {
        let view = builtin("view").unwrap();
        let ok = |a: &Attributes| view.iter().any(|r| rule_allows(r, a));
        assert!(ok(&attrs("get", "groundwork.dev", "nodes", "n1")));
        assert!(ok(&attrs("list", "groundwork.dev", "nodes/status", "")));
        assert!(!ok(&attrs("update", "groundwork.dev", "nodes", "n1")));
        assert!(!ok(&attrs("get", "groundwork.dev", "credentials", "c")));
        let named = PolicyRule {
            resource_names: Some(vec!["n1".into()]),
            ..rule(&["patch"], &["groundwork.dev"], &["nodes/status"])
        };
        assert!(rule_allows(
            &named,
            &attrs("patch", "groundwork.dev", "nodes/status", "n1")
        ));
        assert!(!rule_allows(
            &named,
            &attrs("patch", "groundwork.dev", "nodes/status", "n2")
        ));
        assert!(!rule_allows(
            &named,
            &attrs("patch", "groundwork.dev", "nodes", "n1")
        ));
        let metrics = PolicyRule {
            verbs: vec!["get".into()],
            non_resource_urls: Some(vec!["/metrics".into()]),
            ..Default::default()
        };
        let m = Attributes {
            verb: "get".into(),
            path: Some("/metrics".into()),
            ..Default::default()
        };
        assert!(rule_allows(&metrics, &m));
        assert!(!rule_allows(&metrics, &attrs("get", "", "metrics", "")));
    }
}
