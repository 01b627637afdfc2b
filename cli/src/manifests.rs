//! Reading manifests: multi-document YAML (or JSON) from files, directories and stdin.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

/// One object read from a manifest, with where it came from (for error messages).
#[derive(Debug, Clone)]
pub struct Manifest {
    pub source: String,
    pub object: Value,
}

fn is_manifest(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn files_in(p: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if p.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .with_context(|| format!("reading directory {}", p.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            if e.is_dir() {
                files_in(&e, out)?;
            } else if is_manifest(&e) {
                out.push(e);
            }
        }
    } else {
        out.push(p.to_path_buf());
    }
    Ok(())
}

/// Parses YAML text holding one or more documents; empty documents are skipped, and a
/// `kind: List` is flattened into its items.
pub fn parse_documents(text: &str, source: &str) -> anyhow::Result<Vec<Manifest>> {
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
        .map_err(|e| anyhow::anyhow!("{source}: invalid YAML: {e}"))?;
    let mut out = Vec::new();
    for (i, d) in docs.into_iter().enumerate() {
        match d {
            Value::Null => {}
            Value::Object(ref m) if m.get("kind").and_then(Value::as_str) == Some("List") => {
                for item in m
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
                {
                    out.push(Manifest {
                        source: format!("{source} (document {})", i + 1),
                        object: item,
                    });
                }
            }
            Value::Object(_) => out.push(Manifest {
                source: format!("{source} (document {})", i + 1),
                object: d,
            }),
            other => bail!(
                "{source} (document {}): expected an object with apiVersion and kind, found {other}",
                i + 1
            ),
        }
    }
    Ok(out)
}

/// Reads every manifest under the given paths (`-` is stdin).
pub fn read_manifests(paths: &[PathBuf]) -> anyhow::Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading stdin")?;
            out.extend(parse_documents(&text, "<stdin>")?);
            continue;
        }
        if !p.exists() {
            bail!("{}: no such file or directory", p.display());
        }
        let mut files = Vec::new();
        files_in(p, &mut files)?;
        for f in files {
            let text =
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            out.extend(parse_documents(&text, &f.display().to_string())?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_and_lists() {
        let text = "---\napiVersion: v1\nkind: List\nitems:\n- {kind: Rack, metadata: {name: a}}\n- {kind: Rack, metadata: {name: b}}\n---\n---\nkind: Node\nmetadata: {name: n}\n";
        let docs = parse_documents(text, "t").unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[2].object["kind"], "Node");
        assert!(parse_documents("- a\n- b\n", "t").is_err());
        assert!(
            parse_documents("a: [1, 2\n", "t")
                .unwrap_err()
                .to_string()
                .contains("invalid YAML")
        );
    }

    #[test]
    fn thousands_of_documents_in_one_file() {
        let text: String = (0..5000)
            .map(|i| format!("---\nkind: Node\nmetadata: {{name: n{i}}}\nspec: {{online: true}}\n"))
            .collect();
        assert_eq!(parse_documents(&text, "t").unwrap().len(), 5000);
    }
}
