//! Discovery: /version, /api, /apis (legacy and aggregated v2), /apis/<g>, /apis/<g>/<v>.

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use groundwork_types::{KindInfo, all_kinds, group_versions};
use serde_json::{Value, json};

use crate::ApiError;

const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
const AGGREGATED_BETA: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

pub(crate) fn version() -> Value {
    json!({
        "major": "1", "minor": "32",
        "gitVersion": concat!("v1.32.0-groundwork.", env!("CARGO_PKG_VERSION")),
        "gitCommit": "", "gitTreeState": "clean", "buildDate": "",
        "goVersion": "", "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}

/// Which aggregated form the client accepts, if any (the exact Content-Type is load-bearing).
fn aggregated_accept(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    for part in accept.split(',') {
        let p: String = part.split(';').map(str::trim).collect::<Vec<_>>().join(";");
        if p.contains("g=apidiscovery.k8s.io") && p.contains("as=APIGroupDiscoveryList") {
            return Some(if p.contains("v=v2beta1") {
                AGGREGATED_BETA
            } else {
                AGGREGATED
            });
        }
    }
    None
}

fn kinds_in(group: &str) -> impl Iterator<Item = &'static KindInfo> + '_ {
    all_kinds().iter().filter(move |k| k.group == group)
}

fn aggregated_resource(k: &KindInfo) -> Value {
    let rk = json!({"group": k.group, "version": k.version, "kind": k.kind});
    let mut r = json!({
        "resource": k.plural, "responseKind": rk, "scope": if k.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": k.singular, "verbs": VERBS, "shortNames": k.short_names,
    });
    if !k.group.is_empty() {
        r["categories"] = json!(["groundwork"]);
    }
    if k.has_status {
        r["subresources"] = json!([{"subresource": "status", "responseKind": rk, "verbs": ["get", "patch", "update"]}]);
    }
    r
}

/// The aggregated discovery document for the core group (`core`) or every named group.
fn aggregated_list(core: bool, api_version: &str) -> Value {
    let items: Vec<Value> = group_versions()
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(group, version)| {
            let resources: Vec<Value> = kinds_in(group)
                .filter(|k| k.version == version)
                .map(aggregated_resource)
                .collect();
            json!({"metadata": {"name": group}, "versions": [{"version": version, "resources": resources, "freshness": "Current"}]})
        })
        .collect();
    let mut items = items;
    if !core {
        let rk = json!({"group": CRD_GROUP, "version": "v1", "kind": "CustomResourceDefinition"});
        items.push(json!({"metadata": {"name": CRD_GROUP}, "versions": [{"version": "v1", "resources": [
            {"resource": "customresourcedefinitions", "responseKind": rk, "scope": "Cluster",
             "singularResource": "customresourcedefinition", "verbs": ["get", "list"], "shortNames": ["crd", "crds"]}
        ], "freshness": "Current"}]}));
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": api_version, "metadata": {}, "items": items})
}

/// The read-only group describing Groundwork's kinds as CustomResourceDefinitions (what
/// Terraform's `kubernetes_manifest` reads their schemas from).
pub(crate) const CRD_GROUP: &str = "apiextensions.k8s.io";

fn respond(value: Value, content_type: &'static str) -> Response {
    let mut resp = axum::Json(value).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

pub(crate) fn api(headers: &HeaderMap) -> Response {
    match aggregated_accept(headers) {
        Some(ct) => respond(aggregated_list(true, api_version_of(ct)), ct),
        None => respond(
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]}),
            "application/json",
        ),
    }
}

fn api_version_of(ct: &str) -> &'static str {
    if ct == AGGREGATED_BETA {
        "apidiscovery.k8s.io/v2beta1"
    } else {
        "apidiscovery.k8s.io/v2"
    }
}

fn group_entry(group: &str) -> Option<Value> {
    if group == CRD_GROUP {
        let v = json!({"groupVersion": format!("{CRD_GROUP}/v1"), "version": "v1"});
        return Some(json!({"name": group, "versions": [v.clone()], "preferredVersion": v}));
    }
    let versions: Vec<Value> = group_versions()
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first()?.clone();
    Some(json!({"name": group, "versions": versions, "preferredVersion": preferred}))
}

pub(crate) fn apis(headers: &HeaderMap) -> Response {
    match aggregated_accept(headers) {
        Some(ct) => respond(aggregated_list(false, api_version_of(ct)), ct),
        None => respond(
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": group_versions()
                .into_iter()
                .filter(|(g, _)| !g.is_empty())
                .map(|(g, _)| g)
                .fold(Vec::<&str>::new(), |mut acc, g| {
                    if !acc.contains(&g) {
                        acc.push(g);
                    }
                    acc
                })
                .into_iter()
                .chain([CRD_GROUP])
                .filter_map(group_entry)
                .collect::<Vec<_>>()}),
            "application/json",
        ),
    }
}

pub(crate) fn api_group(group: &str) -> Result<Value, ApiError> {
    let Some(mut g) = group_entry(group).filter(|_| !group.is_empty()) else {
        return Err(ApiError::NotFound {
            what: format!("API group {group:?}"),
            kind: None,
            name: group.into(),
        });
    };
    g["kind"] = "APIGroup".into();
    g["apiVersion"] = "v1".into();
    Ok(g)
}

pub(crate) fn resource_list(group: &str, version: &str) -> Result<Value, ApiError> {
    if group == CRD_GROUP && version == "v1" {
        return Ok(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{CRD_GROUP}/v1"),
            "resources": [{"name": "customresourcedefinitions", "singularName": "customresourcedefinition",
                "namespaced": false, "kind": "CustomResourceDefinition", "verbs": ["get", "list"],
                "shortNames": ["crd", "crds"]}]}),
        );
    }
    let kinds: Vec<&KindInfo> = kinds_in(group).filter(|k| k.version == version).collect();
    if kinds.is_empty() {
        return Err(ApiError::NotFound {
            what: format!("API version {group}/{version}"),
            kind: None,
            name: version.into(),
        });
    }
    let mut resources = Vec::new();
    for k in kinds {
        let mut r = json!({
            "name": k.plural, "singularName": k.singular, "namespaced": k.namespaced, "kind": k.kind,
            "verbs": VERBS, "shortNames": k.short_names,
        });
        if !k.group.is_empty() {
            r["categories"] = json!(["groundwork"]);
        }
        resources.push(r);
        if k.has_status {
            resources.push(json!({"name": format!("{}/status", k.plural), "singularName": "", "namespaced": k.namespaced, "kind": k.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Ok(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

/// `GET /apis/apiextensions.k8s.io/v1/customresourcedefinitions[/NAME]`: every Groundwork
/// kind as the CustomResourceDefinition it would be in Kubernetes (schema and columns), read
/// only: the kinds are built in.
pub(crate) fn crds(name: Option<&str>) -> Result<Value, ApiError> {
    let all: Vec<Value> = groundwork_types::crd_yaml_documents()
        .into_iter()
        .map(|(_, mut crd)| {
            crd["metadata"]["resourceVersion"] = "1".into();
            crd["metadata"]["uid"] = format!("00000000-0000-4000-8000-{:012x}", {
                let n = crd["metadata"]["name"].as_str().unwrap_or("").to_string();
                n.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)) & 0xffff_ffff_ffff
            })
            .into();
            crd["status"] = json!({"acceptedNames": crd["spec"]["names"].clone(),
                "storedVersions": [crd["spec"]["versions"][0]["name"].clone()],
                "conditions": [{"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                                "message": "the initial names have been accepted", "lastTransitionTime": "1970-01-01T00:00:00Z"}]});
            crd
        })
        .collect();
    match name {
        None => Ok(
            json!({"kind": "CustomResourceDefinitionList", "apiVersion": format!("{CRD_GROUP}/v1"),
            "metadata": {"resourceVersion": "1"}, "items": all}),
        ),
        Some(n) => all
            .into_iter()
            .find(|c| c["metadata"]["name"] == n)
            .ok_or_else(|| ApiError::NotFound {
                what: format!("customresourcedefinitions.{CRD_GROUP} {n:?}"),
                kind: None,
                name: n.into(),
            }),
    }
}

/// `GET /openapi/v2`: a Swagger 2.0 document. Groundwork's kinds are described as
/// CustomResourceDefinitions (above), which is where Terraform's provider takes custom
/// resources' schemas from; the document itself carries the API's identity only.
pub(crate) fn openapi_v2() -> Value {
    json!({
        "swagger": "2.0",
        "info": {"title": "Groundwork", "version": concat!("v1.32.0-groundwork.", env!("CARGO_PKG_VERSION"))},
        "paths": {},
        "definitions": {},
    })
}
