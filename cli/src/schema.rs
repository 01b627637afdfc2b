//! `groundwork schema`: JSON Schema and CRDs for every kind, generated from the Rust types.

use std::path::Path;

use anyhow::{Context, bail};
use groundwork_types::{KindInfo, all_kinds};
use serde_json::{Value, json};

use crate::commands::resolve_kind;
use crate::output::to_yaml;

/// The JSON Schema of a kind's whole object (for editors), from its CRD schema.
pub fn json_schema(k: &KindInfo) -> Option<Value> {
    let crd = (k.crd?)();
    let mut s = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    s["$schema"] = "http://json-schema.org/draft-07/schema#".into();
    s["$id"] = format!("https://groundwork.dev/schemas/{}.schema.json", k.singular).into();
    s["title"] = k.kind.into();
    if let Some(p) = s["properties"].as_object_mut() {
        p.insert("apiVersion".into(), json!({"const": k.api_version()}));
        p.insert("kind".into(), json!({"const": k.kind}));
        p.insert("metadata".into(), json!({
            "type": "object",
            "properties": {"name": {"type": "string"}, "labels": {"type": "object", "additionalProperties": {"type": "string"}}, "annotations": {"type": "object", "additionalProperties": {"type": "string"}}},
            "required": ["name"],
        }));
    }
    s["required"] = json!(["apiVersion", "kind", "metadata", "spec"]);
    Some(s)
}

/// Every generated file: (file name, contents).
pub fn schema_files() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for k in all_kinds() {
        if let (Some(schema), Some(crd)) = (json_schema(k), k.crd) {
            out.push((
                format!("{}.schema.json", k.singular),
                format!(
                    "{}\n",
                    serde_json::to_string_pretty(&schema).unwrap_or_default()
                ),
            ));
            out.push((format!("{}.crd.yaml", k.singular), to_yaml(&crd())));
        }
    }
    out
}

pub(crate) fn run(kind: Option<&str>, crd: bool, write: Option<&Path>) -> anyhow::Result<()> {
    if let Some(dir) = write {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, text) in schema_files() {
            let p = dir.join(&name);
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
            println!("wrote {}", p.display());
        }
        return Ok(());
    }
    let Some(kind) = kind else {
        bail!("name a kind (e.g. `groundwork schema Node`) or use --write DIR")
    };
    let k = resolve_kind(kind)?;
    let Some(crd_fn) = k.crd else {
        bail!(
            "{} is a built-in Kubernetes kind; see the Kubernetes API reference",
            k.kind
        )
    };
    if crd {
        print!("{}", to_yaml(&crd_fn()));
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&json_schema(k).expect("has a CRD"))?
        );
    }
    Ok(())
}
