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
    let docs = groundwork_types::manifests::parse_documents(text)
        .map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    Ok(docs
        .into_iter()
        .map(|d| Manifest {
            source: format!("{source} (document {}, line {})", d.index, d.line),
            object: d.object,
        })
        .collect())
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
