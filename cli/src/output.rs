//! Printing: server-rendered Tables as aligned columns, objects as YAML or JSON.

use serde_json::Value;

/// Prints a `meta.k8s.io/v1` Table; `wide` includes columns with priority > 0.
pub(crate) fn print_table(table: &Value, wide: bool) {
    let cols: Vec<(usize, String)> = table["columnDefinitions"]
        .as_array()
        .map(|c| {
            c.iter()
                .enumerate()
                .filter(|(_, d)| wide || d["priority"].as_i64().unwrap_or(0) == 0)
                .map(|(i, d)| (i, d["name"].as_str().unwrap_or("").to_ascii_uppercase()))
                .collect()
        })
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = table["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| cols.iter().map(|(i, _)| cell(&r["cells"][*i])).collect())
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        eprintln!("No resources found");
        return;
    }
    let header: Vec<String> = cols.iter().map(|(_, n)| n.clone()).collect();
    print_aligned(&header, &rows);
}

pub(crate) fn print_aligned(header: &[String], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header);
    for r in rows {
        line(r);
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn to_yaml(v: &Value) -> String {
    serde_saphyr::to_string(v).unwrap_or_else(|e| format!("# cannot render YAML: {e}\n{v:#}"))
}
