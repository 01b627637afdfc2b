//! OpenAPI v3 for the kinds, generated from the Rust types (schemars, via the CRD schema).
//! kubectl needs a PATCH operation with a `fieldValidation` parameter to hand validation to the
//! server, and component schemas tagged with their group-version-kind for `kubectl explain`.

use std::sync::OnceLock;

use groundwork_types::{KindInfo, all_kinds};
use serde_json::{Value, json};

use crate::ApiError;

fn schema_name(k: &KindInfo) -> String {
    if k.group.is_empty() {
        format!("io.k8s.api.core.{}.{}", k.version, k.kind)
    } else {
        let rev: Vec<&str> = k.group.split('.').rev().collect();
        format!("{}.{}.{}", rev.join("."), k.version, k.kind)
    }
}

fn kind_schema(k: &KindInfo) -> Value {
    let mut schema = match k.crd {
        Some(crd) => crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone(),
        None => json!({
            "type": "object",
            "description": format!("{} ({}), as in Kubernetes.", k.kind, k.api_version()),
            "x-kubernetes-preserve-unknown-fields": true,
        }),
    };
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        props.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
        props.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
        props.insert("metadata".into(), json!({"type": "object", "description": "Standard object's metadata (ObjectMeta).", "x-kubernetes-preserve-unknown-fields": true}));
    }
    schema["x-kubernetes-group-version-kind"] =
        json!([{"group": k.group, "version": k.version, "kind": k.kind}]);
    schema
}

/// Query parameters (all strings, optional).
fn params(names: &[&str]) -> Value {
    Value::Array(
        names
            .iter()
            .map(|n| json!({"name": n, "in": "query", "schema": {"type": "string"}}))
            .collect(),
    )
}

/// The path parameters of a path item, declared once on the item as Kubernetes does, so every
/// operation under `.../{name}` has its `name` (and `namespace`) defined.
fn path_params(namespaced: bool, item: bool) -> Value {
    let mut out = Vec::new();
    if item {
        out.push(json!({"name": "name", "in": "path", "required": true, "description": "name of the object", "schema": {"type": "string"}}));
    }
    if namespaced {
        out.push(json!({"name": "namespace", "in": "path", "required": true, "description": "object name and auth scope", "schema": {"type": "string"}}));
    }
    Value::Array(out)
}

fn operations(k: &KindInfo, prefix: &str) -> Vec<(String, Value)> {
    let gvk = json!({"group": k.group, "version": k.version, "kind": k.kind});
    let reference = json!({"$ref": format!("#/components/schemas/{}", schema_name(k))});
    let body = json!({"required": true, "content": {"application/json": {"schema": reference}}});
    let ok = json!({"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}});
    let write_params = params(&["dryRun", "fieldManager", "fieldValidation"]);
    let patch_body = json!({"required": true, "content": {
        "application/merge-patch+json": {"schema": {"type": "object"}},
        "application/json-patch+json": {"schema": {"type": "object"}},
        "application/apply-patch+yaml": {"schema": {"type": "object"}},
    }});
    // Operation IDs are unique in a document, named as Kubernetes names them:
    // VERB[Namespaced]KIND[Status], e.g. `patchNodeStatus`, `listNamespacedEvent`.
    let scope = if k.namespaced { "Namespaced" } else { "" };
    // No strategic-merge-patch here, as for real custom resources: kubectl then computes a
    // JSON merge patch (from the last-applied annotation) instead of a strategic one.
    let op = |verb: &str, suffix: &str, action: &str, extra: Value| {
        let mut o = json!({
            "operationId": format!("{verb}{scope}{}{suffix}", k.kind), "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk, "responses": ok,
        });
        if let (Some(o), Some(e)) = (o.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        o
    };
    let ns = if k.namespaced {
        "/namespaces/{namespace}"
    } else {
        ""
    };
    let collection = format!("{prefix}{ns}/{}", k.plural);
    let item = format!("{collection}/{{name}}");
    let mut out = vec![
        (
            collection,
            json!({
                "parameters": path_params(k.namespaced, false),
                "get": op("list", "", "list", json!({"parameters": params(&["labelSelector", "fieldSelector", "limit", "continue", "resourceVersion", "watch", "allowWatchBookmarks", "timeoutSeconds"])})),
                "post": op("create", "", "post", json!({"parameters": write_params, "requestBody": body})),
            }),
        ),
        (
            item.clone(),
            json!({
                "parameters": path_params(k.namespaced, true),
                "get": op("read", "", "get", json!({})),
                "put": op("replace", "", "put", json!({"parameters": write_params, "requestBody": body})),
                "patch": op("patch", "", "patch", json!({"parameters": params(&["dryRun", "fieldManager", "fieldValidation", "force"]), "requestBody": patch_body})),
                "delete": op("delete", "", "delete", json!({"parameters": params(&["dryRun"])})),
            }),
        ),
    ];
    if k.has_status {
        out.push((
            format!("{item}/status"),
            json!({
                "parameters": path_params(k.namespaced, true),
                "get": op("read", "Status", "get", json!({})),
                "put": op("replace", "Status", "put", json!({"parameters": write_params, "requestBody": body})),
                "patch": op("patch", "Status", "patch", json!({"parameters": params(&["dryRun", "fieldManager", "fieldValidation", "force"]), "requestBody": patch_body})),
            }),
        ));
    }
    out
}

fn document(group: &str, version: &str) -> Value {
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for k in all_kinds()
        .iter()
        .filter(|k| k.group == group && k.version == version)
    {
        for (p, ops) in operations(k, &prefix) {
            paths.insert(p, ops);
        }
        schemas.insert(schema_name(k), kind_schema(k));
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Groundwork", "version": version},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// One OpenAPI document per group-version, with its hash (clients cache by it).
fn docs() -> &'static Vec<(String, Value, String)> {
    static DOCS: OnceLock<Vec<(String, Value, String)>> = OnceLock::new();
    DOCS.get_or_init(|| {
        groundwork_types::group_versions()
            .into_iter()
            .map(|(g, v)| {
                let path = if g.is_empty() {
                    format!("api/{v}")
                } else {
                    format!("apis/{g}/{v}")
                };
                let doc = document(g, v);
                let hash = {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    doc.to_string().hash(&mut h);
                    format!("{:016X}", h.finish())
                };
                (path, doc, hash)
            })
            .collect()
    })
}

pub(crate) fn index() -> Value {
    let paths: serde_json::Map<String, Value> = docs()
        .iter()
        .map(|(path, _, hash)| {
            (
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
            )
        })
        .collect();
    json!({ "paths": paths })
}

pub(crate) fn group_version(path: &str) -> Result<Value, ApiError> {
    docs()
        .iter()
        .find(|(p, _, _)| p == path)
        .map(|(_, doc, _)| doc.clone())
        .ok_or_else(|| ApiError::NotFound {
            what: format!("OpenAPI document {path:?}"),
            kind: None,
            name: path.into(),
        })
}
