//! Manifests as operators write them: multi-document YAML (or JSON), and kubectl's
//! three-way merge for client-side apply. Shared by `groundwork apply` and the GitSource
//! controller.

use serde_json::{Map, Value};

/// One object of a manifest file, with where it starts.
#[derive(Clone, Debug)]
pub struct Document {
    /// The YAML document it came from (1-based).
    pub index: usize,
    /// The line that document starts on (1-based).
    pub line: u32,
    pub object: Value,
}

/// Parses YAML text holding one or more documents; empty documents are skipped, and a
/// `kind: List` is flattened into its items. The error says what is wrong (not where the
/// file is: the caller names it).
pub fn parse_documents(text: &str) -> Result<Vec<Document>, String> {
    // A datacenter is thousands of objects in one file: lift the parser's document and node
    // caps (1,024 and 250,000 by default); the other alias/depth guards stay.
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: 1_000_000,
            max_nodes: 50_000_000,
            max_events: 200_000_000,
        },
    };
    let docs: Vec<Value> = serde_saphyr::from_str_multiple_with_options(text, options)
        .map_err(|e| format!("invalid YAML: {e}"))?;
    let starts = document_lines(text);
    let mut out = Vec::new();
    for (i, d) in docs.into_iter().enumerate() {
        let line = starts.get(i).copied().unwrap_or(1);
        match d {
            Value::Null => {}
            Value::Object(ref m) if m.get("kind").and_then(Value::as_str) == Some("List") => {
                for item in m
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
                {
                    out.push(Document {
                        index: i + 1,
                        line,
                        object: item,
                    });
                }
            }
            Value::Object(_) => out.push(Document {
                index: i + 1,
                line,
                object: d,
            }),
            other => {
                return Err(format!(
                    "document {} (line {line}): expected an object with apiVersion and kind, found {other}",
                    i + 1
                ));
            }
        }
    }
    Ok(out)
}

/// The first content line of each YAML document with content (the parser returns no
/// document for an empty one): documents are separated by `---` markers.
fn document_lines(text: &str) -> Vec<u32> {
    let mut starts = Vec::new();
    let mut open = true;
    for (n, l) in text.lines().enumerate() {
        if l == "---" || l.starts_with("--- ") {
            open = true;
            continue;
        }
        if open && !l.trim().is_empty() && !l.trim_start().starts_with('#') {
            starts.push(n as u32 + 1);
            open = false;
        }
    }
    starts
}

/// The patch that takes `current` to `modified`, deleting what `original` (the last applied
/// configuration) had and `modified` no longer has. Lists are replaced whole (JSON merge
/// patch semantics, as for custom resources in Kubernetes).
pub fn three_way_merge_patch(
    original: &Value,
    modified: &Value,
    current: &Value,
) -> Map<String, Value> {
    let mut patch = Map::new();
    let (Some(m), cur) = (modified.as_object(), current.as_object()) else {
        return patch;
    };
    for (k, mv) in m {
        let cv = cur.and_then(|c| c.get(k));
        match (mv, cv) {
            (Value::Object(_), Some(cv @ Value::Object(_))) => {
                let sub = three_way_merge_patch(original.get(k).unwrap_or(&Value::Null), mv, cv);
                if !sub.is_empty() {
                    patch.insert(k.clone(), Value::Object(sub));
                }
            }
            _ if cv.is_some_and(|cv| same_json(cv, mv)) => {}
            _ => {
                patch.insert(k.clone(), mv.clone());
            }
        }
    }
    if let Some(o) = original.as_object() {
        for k in o.keys() {
            if !m.contains_key(k) && cur.is_some_and(|c| c.contains_key(k)) {
                patch.insert(k.clone(), Value::Null);
            }
        }
    }
    patch
}

/// JSON equality with numbers compared by value (the server may render 10 as 10.0).
pub fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// Every leaf of `git` (objects descended, lists and scalars compared whole) whose value in
/// `live` differs: (dotted path, Git's value, the live value or null).
pub fn differences(git: &Value, live: &Value, prefix: &str, out: &mut Vec<(String, Value, Value)>) {
    match git {
        Value::Object(m) => {
            for (k, v) in m {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                differences(v, live.get(k).unwrap_or(&Value::Null), &path, out);
            }
        }
        _ if same_json(git, live) => {}
        _ => out.push((prefix.to_string(), git.clone(), live.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_know_their_lines() {
        let text = "# a comment\nkind: Rack\nmetadata: {name: a}\n---\nkind: Node\n---\n\n---\nkind: List\nitems:\n- {kind: Rack}\n";
        let d = parse_documents(text).unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!((d[0].index, d[0].line), (1, 2));
        assert_eq!((d[1].index, d[1].line), (2, 5));
        assert_eq!(d[2].line, 9);
        assert!(parse_documents("- a\n- b\n").is_err());
        assert!(
            parse_documents("a: [1, 2\n")
                .unwrap_err()
                .contains("invalid YAML")
        );
    }

    #[test]
    fn differences_are_on_gits_fields_only() {
        let git = serde_json::json!({"spec": {"a": 1, "b": {"c": [1, 2]}}});
        let live = serde_json::json!({"spec": {"a": 1.0, "b": {"c": [1, 3]}, "defaulted": true}, "status": {"x": 1}});
        let mut out = Vec::new();
        differences(&git, &live, "", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, "spec.b.c");
    }
}
