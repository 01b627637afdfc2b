//! `groundwork apply`: kubectl's client-side apply. The last applied configuration is kept in
//! the same annotation kubectl uses, so the two tools can take turns on one object.

use std::path::PathBuf;

use anyhow::bail;
use groundwork_types::{KindInfo, all_kinds};
use serde_json::{Map, Value};

use crate::client::{self, collection_path, item_path};
use crate::manifests::{Manifest, read_manifests};

pub(crate) const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

pub use groundwork_types::manifests::three_way_merge_patch;

fn kind_of(m: &Manifest) -> anyhow::Result<&'static KindInfo> {
    let av = m
        .object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = m.object.get("kind").and_then(Value::as_str).unwrap_or("");
    if av.is_empty() || kind.is_empty() {
        bail!("{}: apiVersion and kind are required", m.source);
    }
    all_kinds()
        .iter()
        .find(|k| k.api_version() == av && k.kind == kind)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{}: unknown kind {kind:?} in apiVersion {av:?} (known: {})",
                m.source,
                all_kinds()
                    .iter()
                    .map(|k| format!("{}/{}", k.api_version(), k.kind))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// Objects others refer to go first, so references resolve on the first apply.
fn rank(k: &KindInfo) -> usize {
    ["Datacenter", "Rack", "Profile", "Node", "ServiceStack"]
        .iter()
        .position(|x| *x == k.kind)
        .unwrap_or(9)
}

pub(crate) async fn run(
    kubeconfig: Option<PathBuf>,
    files: &[PathBuf],
    dry_run: bool,
) -> anyhow::Result<()> {
    let manifests = read_manifests(files)?;
    let api = client::connect(kubeconfig).await?;
    let mut items = Vec::new();
    let mut failures = 0;
    for m in manifests {
        match kind_of(&m) {
            Ok(k) => items.push((k, m)),
            Err(e) => {
                eprintln!("error: {e:#}");
                failures += 1;
            }
        }
    }
    items.sort_by_key(|(k, _)| rank(k));
    for (kind, m) in items {
        match apply_one(&api, kind, &m, dry_run).await {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("error: {}: {e:#}", m.source);
                failures += 1;
            }
        }
    }
    if failures > 0 {
        bail!("{failures} object(s) not applied");
    }
    Ok(())
}

async fn apply_one(
    api: &client::Api,
    kind: &'static KindInfo,
    m: &Manifest,
    dry_run: bool,
) -> anyhow::Result<String> {
    let name = m
        .object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if name.is_empty() {
        bail!("metadata.name is required");
    }
    let ns = kind.namespaced.then(|| {
        m.object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string()
    });
    let label = format!("{}/{name}", kind.singular);
    // What the file says, plus the annotation recording it.
    let mut modified = m.object.clone();
    // Recorded exactly as kubectl records it (an empty annotations map stays), so kubectl
    // and groundwork agree on what was last applied.
    let mut recorded = m.object.clone();
    if let Some(meta) = recorded.get_mut("metadata").and_then(Value::as_object_mut) {
        let a = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(a) = a.as_object_mut() {
            a.remove(LAST_APPLIED);
        }
    }
    let recorded_text = format!("{}\n", serde_json::to_string(&recorded)?);
    let meta = modified
        .as_object_mut()
        .and_then(|o| o.get_mut("metadata"))
        .and_then(Value::as_object_mut)
        .expect("name checked");
    let ann = meta
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(a) = ann.as_object_mut() {
        a.insert(LAST_APPLIED.into(), Value::String(recorded_text));
    }
    let suffix = if dry_run { " (server dry run)" } else { "" };
    let q = if dry_run {
        "?fieldManager=groundwork&fieldValidation=Strict&dryRun=All"
    } else {
        "?fieldManager=groundwork&fieldValidation=Strict"
    };
    let item = item_path(kind, ns.as_deref(), &name);
    let current = api.get(&item).await.map_err(client::explain)?;
    match current {
        None => {
            let uri = format!("{}{q}", collection_path(kind, ns.as_deref()));
            api.json(
                http::Method::POST,
                &uri,
                Some("application/json"),
                None,
                Some(&modified),
            )
            .await
            .map_err(client::explain)?;
            Ok(format!("{label} created{suffix}"))
        }
        Some(cur) => {
            let original = cur
                .pointer(&format!(
                    "/metadata/annotations/{}",
                    LAST_APPLIED.replace('/', "~1")
                ))
                .and_then(Value::as_str)
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
                .unwrap_or(Value::Null);
            let patch = three_way_merge_patch(&original, &modified, &cur);
            if patch.is_empty() {
                return Ok(format!("{label} unchanged"));
            }
            let uri = format!("{item}{q}");
            api.json(
                http::Method::PATCH,
                &uri,
                Some("application/merge-patch+json"),
                None,
                Some(&Value::Object(patch)),
            )
            .await
            .map_err(client::explain)?;
            Ok(format!("{label} configured{suffix}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn three_way() {
        let original = json!({"spec": {"a": 1, "b": 2, "list": [1]}});
        let modified = json!({"spec": {"a": 1, "list": [1, 2]}});
        let current =
            json!({"spec": {"a": 1, "b": 2, "c": "server", "list": [1]}, "status": {"x": 1}});
        let p = three_way_merge_patch(&original, &modified, &current);
        assert_eq!(
            Value::Object(p),
            json!({"spec": {"b": null, "list": [1, 2]}})
        );
        assert!(
            three_way_merge_patch(&modified, &modified, &current.clone())
                .get("spec")
                .is_some()
        );
        let same = json!({"spec": {"a": 1.0, "list": [1, 2], "extra": 3}});
        assert!(three_way_merge_patch(&modified, &modified, &same).is_empty());
    }
}
