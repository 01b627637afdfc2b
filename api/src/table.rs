//! `meta.k8s.io/v1` Table rendering for `kubectl get`: one row per object with the kind's
//! printer columns, ages rendered on the server as kubectl expects.

use groundwork_types::{Column, KindInfo};
use jiff::Timestamp;
use serde_json::{Value, json};

pub(crate) const TABLE_CONTENT_TYPE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

/// Whether the Accept header asks for a Table.
pub(crate) fn wants_table(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',')
            .next()
            .is_some_and(|first| first.contains("as=Table"))
    })
}

pub(crate) fn column_definitions(kind: &KindInfo) -> Value {
    let mut cols = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name of the object", "priority": 0}),
    ];
    for c in kind.columns {
        cols.push(json!({
            "name": c.name,
            "type": if c.type_ == "date" { "string" } else { c.type_ },
            "format": if c.type_ == "date" { "date" } else { "" },
            "description": c.description,
            "priority": c.priority,
        }));
    }
    Value::Array(cols)
}

pub(crate) fn row(kind: &KindInfo, obj: &Value, now: Timestamp) -> Value {
    let mut cells = vec![
        obj.pointer("/metadata/name")
            .cloned()
            .unwrap_or(Value::Null),
    ];
    for c in kind.columns {
        cells.push(cell(c, obj, now));
    }
    json!({
        "cells": cells,
        "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))},
    })
}

pub(crate) fn table(kind: &KindInfo, objs: &[Value], meta: Value, now: Timestamp) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": column_definitions(kind),
        "rows": objs.iter().map(|o| row(kind, o, now)).collect::<Vec<_>>(),
    })
}

fn cell(c: &Column, obj: &Value, now: Timestamp) -> Value {
    let values = lookup(obj, c.json_path);
    if c.type_ == "date" {
        return match values
            .first()
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Timestamp>().ok())
        {
            Some(t) => Value::String(human_duration(now.duration_since(t).as_secs())),
            None => Value::String("<unknown>".into()),
        };
    }
    match values.len() {
        0 => Value::Null,
        1 => match &values[0] {
            Value::Array(a) => Value::String(a.iter().map(scalar).collect::<Vec<_>>().join(",")),
            v => v.clone(),
        },
        _ => Value::String(values.iter().map(scalar).collect::<Vec<_>>().join(",")),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Follows `.a.b[*].c` through an object; `[*]` fans out over arrays.
fn lookup(obj: &Value, path: &str) -> Vec<Value> {
    let mut cur = vec![obj.clone()];
    for seg in path.trim_start_matches('.').split('.') {
        let (name, fan) = match seg.strip_suffix("[*]") {
            Some(n) => (n, true),
            None => (seg, false),
        };
        let mut next = Vec::new();
        for v in cur {
            if let Some(x) = v.get(name) {
                match (fan, x) {
                    (true, Value::Array(items)) => next.extend(items.iter().cloned()),
                    (_, x) => next.push(x.clone()),
                }
            }
        }
        cur = next;
    }
    cur
}

/// Kubernetes' `duration.HumanDuration`: "45s", "3m12s", "5h20m", "3d4h", "2y30d".
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let m = s / 60;
    let h = s / 3600;
    let d = h / 24;
    let y = d / 365;
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        if d % 365 == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{}d", d % 365)
        }
    } else {
        format!("{y}y")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_kubectl() {
        for (s, want) in [
            (0, "0s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 7200, "3d2h"),
            (400 * 86400, "400d"),
            (3 * 365 * 86400 + 86400, "3y1d"),
        ] {
            assert_eq!(human_duration(s), want, "{s}");
        }
    }

    #[test]
    fn columns_follow_paths() {
        let kind = groundwork_types::kind_by_kind("Node").unwrap();
        let obj = json!({"metadata": {"name": "n1", "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"rack": {"name": "r1", "position": 3}}, "status": {"phase": "Ready"}});
        let now: Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        let r = row(kind, &obj, now);
        let cells = r["cells"].as_array().unwrap();
        assert_eq!(cells[0], "n1");
        assert_eq!(cells[1], "Ready");
        assert_eq!(cells[2], Value::Null);
        assert_eq!(cells[3], "r1");
        assert_eq!(cells.last().unwrap(), "5m");
        let dc = groundwork_types::kind_by_kind("Datacenter").unwrap();
        let obj = json!({"metadata": {"name": "d"}, "spec": {"availabilityZones": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(row(dc, &obj, now)["cells"][1], "a,b");
    }
}
