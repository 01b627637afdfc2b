//! Server-side apply: field ownership in `metadata.managedFields`, as Kubernetes keeps it
//! (entries of manager, operation `Apply` or `Update`, API version, time, and the fields in
//! `FieldsV1`), with the semantics `kubectl apply --server-side` and Terraform's
//! `kubernetes_manifest` rely on:
//!
//! - An apply by manager M sets what its configuration names, and removes what M applied
//!   before and no longer names (unless another manager also owns it).
//! - A field M names that another manager owns with a different value is a conflict (409
//!   naming the manager and the field), unless `force`, which moves the field to M.
//! - Any other write (PUT, PATCH) makes its manager the owner of the fields it changed.
//!
//! Fields are leaves: objects are descended, lists and scalars are owned whole (the
//! `atomic` list type of Kubernetes; Groundwork's schemas declare no list-map keys yet).
//! Server-owned parts (status, identity, server metadata) are never owned.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// A field: its path of object keys.
pub type Path = Vec<String>;

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub fields: BTreeSet<Path>,
}

/// A field another manager owns with a different value.
#[derive(Clone, Debug, PartialEq)]
pub struct Conflict {
    pub manager: String,
    pub field: String,
}

/// `.spec.location`, as Kubernetes names a field in a conflict.
pub fn dotted(p: &Path) -> String {
    p.iter().map(|s| format!(".{s}")).collect()
}

fn skip(path: &[String]) -> bool {
    match path {
        [k] => matches!(k.as_str(), "apiVersion" | "kind" | "status"),
        [m, k, ..] if m == "metadata" => !matches!(
            k.as_str(),
            "labels" | "annotations" | "finalizers" | "ownerReferences"
        ),
        _ => false,
    }
}

/// The owned leaves of an object.
pub fn leaves(v: &Value) -> BTreeSet<Path> {
    fn walk(v: &Value, at: &mut Path, out: &mut BTreeSet<Path>) {
        if !at.is_empty() && skip(at) {
            return;
        }
        match v {
            Value::Object(m) if !m.is_empty() || at.is_empty() => {
                for (k, x) in m {
                    at.push(k.clone());
                    walk(x, at, out);
                    at.pop();
                }
            }
            Value::Null => {}
            _ => {
                out.insert(at.clone());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

fn at<'a>(v: &'a Value, p: &Path) -> Option<&'a Value> {
    p.iter().try_fold(v, |v, k| v.get(k))
}

fn remove(v: &mut Value, p: &Path) {
    let Some((last, parents)) = p.split_last() else {
        return;
    };
    {
        let mut cur = &mut *v;
        for k in parents {
            match cur.get_mut(k) {
                Some(x) => cur = x,
                None => return,
            }
        }
        if let Some(m) = cur.as_object_mut() {
            m.remove(last);
        }
    }
    // Drop objects left empty by the removal (their parents' keys).
    if parents.len() > 1 {
        let parent: Path = parents.to_vec();
        if at(v, &parent).is_some_and(|x| x.as_object().is_some_and(Map::is_empty)) {
            remove(v, &parent);
        }
    }
}

/// Deep merge: objects merged key by key, anything else replaced.
fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(x) if x.is_object() && v.is_object() => merge(x, v),
                    _ => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (a, b) => *a = b.clone(),
    }
}

fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// The entries kept on an object.
pub fn entries(obj: &Value) -> Vec<Entry> {
    let Some(list) = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return vec![];
    };
    list.iter()
        .filter_map(|e| {
            let mut fields = BTreeSet::new();
            fields_from_v1(e.get("fieldsV1")?, &mut Vec::new(), &mut fields);
            Some(Entry {
                manager: e.get("manager")?.as_str()?.to_string(),
                operation: e
                    .get("operation")
                    .and_then(Value::as_str)
                    .unwrap_or("Update")
                    .to_string(),
                api_version: e
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                time: e
                    .get("time")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                fields,
            })
        })
        .collect()
}

/// FieldsV1: `{"f:spec": {"f:location": {}}}`; a leaf is an empty object.
fn fields_from_v1(v: &Value, at: &mut Path, out: &mut BTreeSet<Path>) {
    let Some(m) = v.as_object() else { return };
    if m.is_empty() && !at.is_empty() {
        out.insert(at.clone());
        return;
    }
    for (k, x) in m {
        if let Some(name) = k.strip_prefix("f:") {
            at.push(name.to_string());
            fields_from_v1(x, at, out);
            at.pop();
        }
    }
}

fn fields_v1(fields: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for p in fields {
        let mut cur = &mut root;
        for k in p {
            cur = cur
                .entry(format!("f:{k}"))
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("built as objects");
        }
    }
    Value::Object(root)
}

/// Writes `entries` into the object's `metadata.managedFields` (dropping empty ones).
pub fn set_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            json!({
                "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": fields_v1(&e.fields),
            })
        })
        .collect();
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn entry_mut<'a>(
    entries: &'a mut Vec<Entry>,
    manager: &str,
    operation: &str,
    api_version: &str,
    now: &str,
) -> &'a mut Entry {
    let i = match entries
        .iter()
        .position(|e| e.manager == manager && e.operation == operation)
    {
        Some(i) => i,
        None => {
            entries.push(Entry {
                manager: manager.to_string(),
                operation: operation.to_string(),
                api_version: api_version.to_string(),
                time: now.to_string(),
                fields: BTreeSet::new(),
            });
            entries.len() - 1
        }
    };
    let e = &mut entries[i];
    e.time = now.to_string();
    e.api_version = api_version.to_string();
    e
}

/// An apply of `config` by `manager` to `live`: the object to store (with its
/// managedFields) or the conflicts.
pub fn apply(
    live: &Value,
    config: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
    now: &str,
) -> Result<Value, Vec<Conflict>> {
    let mut config = config.clone();
    if let Some(m) = config.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
        m.remove("resourceVersion");
    }
    let mut entries = entries(live);
    let wanted = leaves(&config);
    let mut conflicts = Vec::new();
    for e in entries.iter().filter(|e| e.manager != manager) {
        for p in &wanted {
            for q in e.fields.iter().filter(|q| overlaps(p, q)) {
                let short = if p.len() <= q.len() { p } else { q };
                if at(live, short) != at(&config, short) {
                    conflicts.push(Conflict {
                        manager: e.manager.clone(),
                        field: dotted(q),
                    });
                }
            }
        }
    }
    conflicts.sort_by(|a, b| (&a.manager, &a.field).cmp(&(&b.manager, &b.field)));
    conflicts.dedup();
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    let mut obj = live.clone();
    // What this manager applied before and no longer names goes, unless another owns it.
    let before: BTreeSet<Path> = entries
        .iter()
        .find(|e| e.manager == manager && e.operation == "Apply")
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    for p in before.difference(&wanted) {
        let shared = entries
            .iter()
            .any(|e| !(e.manager == manager && e.operation == "Apply") && e.fields.contains(p));
        if !shared && !wanted.iter().any(|w| overlaps(w, p)) {
            remove(&mut obj, p);
        }
    }
    merge(&mut obj, &config);
    // Forced fields move to this manager; fields set to the same value stay shared.
    if force {
        for e in entries.iter_mut().filter(|e| e.manager != manager) {
            let lost: Vec<Path> = e
                .fields
                .iter()
                .filter(|q| {
                    wanted.iter().any(|p| {
                        let short = if p.len() <= q.len() { p } else { *q };
                        overlaps(p, q) && at(live, short) != at(&config, short)
                    })
                })
                .cloned()
                .collect();
            for q in lost {
                e.fields.remove(&q);
            }
        }
    }
    entry_mut(&mut entries, manager, "Apply", api_version, now).fields = wanted;
    entries.retain(|e| !e.fields.is_empty());
    set_entries(&mut obj, &entries);
    Ok(obj)
}

/// A write that is not an apply (PUT, PATCH, create): `manager` owns the fields whose value
/// it changed; fields it removed are no one's.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    now: &str,
) {
    let mut entries = old.map(entries).unwrap_or_default();
    let before = old.map(leaves).unwrap_or_default();
    let after = leaves(new);
    let changed: BTreeSet<Path> = after
        .iter()
        .filter(|p| old.and_then(|o| at(o, p)) != at(new, p))
        .cloned()
        .collect();
    let removed: BTreeSet<Path> = before.difference(&after).cloned().collect();
    for e in entries.iter_mut() {
        e.fields
            .retain(|q| !(removed.contains(q) || (e.manager != manager && changed.contains(q))));
    }
    if !changed.is_empty() {
        entry_mut(&mut entries, manager, "Update", api_version, now)
            .fields
            .extend(changed);
    }
    entries.retain(|e| !e.fields.is_empty());
    set_entries(new, &entries);
}

#[cfg(test)]
mod tests {
    use super::*;

    const AV: &str = "groundwork.dev/v1alpha1";

    fn obj(spec: Value) -> Value {
        json!({"apiVersion": AV, "kind": "Rack", "metadata": {"name": "r"}, "spec": spec})
    }

    #[test]
    fn two_managers_conflict_on_a_field_and_force_takes_it() {
        let a = apply(
            &Value::Null,
            &obj(json!({"location": "row A", "heightU": 42})),
            "alice",
            false,
            AV,
            "t1",
        )
        .unwrap();
        // bob sets another field: no conflict; a field alice owns with another value: 409.
        let b = apply(&a, &obj(json!({"coolingKw": 8})), "bob", false, AV, "t2").unwrap();
        assert_eq!(b["spec"]["location"], "row A");
        assert_eq!(b["spec"]["coolingKw"], 8);
        let e = apply(
            &b,
            &obj(json!({"location": "row B"})),
            "bob",
            false,
            AV,
            "t3",
        )
        .unwrap_err();
        assert_eq!(
            e,
            vec![Conflict {
                manager: "alice".into(),
                field: ".spec.location".into()
            }]
        );
        // The same value is no conflict: both own it.
        apply(
            &b,
            &obj(json!({"coolingKw": 8, "location": "row A"})),
            "bob",
            false,
            AV,
            "t3",
        )
        .unwrap();
        // Forced: bob owns it now, and alice's next apply of her value conflicts with bob.
        let f = apply(
            &b,
            &obj(json!({"coolingKw": 8, "location": "row B"})),
            "bob",
            true,
            AV,
            "t4",
        )
        .unwrap();
        assert_eq!(f["spec"]["location"], "row B");
        let e = apply(
            &f,
            &obj(json!({"location": "row A", "heightU": 42})),
            "alice",
            false,
            AV,
            "t5",
        )
        .unwrap_err();
        assert_eq!(e[0].manager, "bob");
    }

    #[test]
    fn an_apply_removes_what_its_manager_no_longer_names() {
        let a = apply(
            &Value::Null,
            &obj(json!({"location": "x", "coolingKw": 8})),
            "alice",
            false,
            AV,
            "t",
        )
        .unwrap();
        let b = apply(&a, &obj(json!({"location": "x"})), "alice", false, AV, "t").unwrap();
        assert!(b["spec"].get("coolingKw").is_none(), "{b}");
        // Unless another manager owns it too.
        let mut c = apply(&a, &obj(json!({"coolingKw": 8})), "bob", false, AV, "t").unwrap();
        c = apply(&c, &obj(json!({"location": "x"})), "alice", false, AV, "t").unwrap();
        assert_eq!(c["spec"]["coolingKw"], 8);
    }

    #[test]
    fn an_update_takes_the_fields_it_changes_and_round_trips() {
        let a = apply(
            &Value::Null,
            &obj(json!({"location": "x", "heightU": 42})),
            "alice",
            false,
            AV,
            "t",
        )
        .unwrap();
        let mut edited = a.clone();
        edited["spec"]["location"] = json!("y");
        record_update(Some(&a), &mut edited, "kubectl-edit", AV, "t2");
        let es = entries(&edited);
        let alice = es.iter().find(|e| e.manager == "alice").unwrap();
        let edit = es.iter().find(|e| e.manager == "kubectl-edit").unwrap();
        assert!(
            !alice
                .fields
                .contains(&vec!["spec".to_string(), "location".to_string()])
        );
        assert_eq!(edit.fields.len(), 1);
        // alice applying her value again now conflicts with the editor.
        let e = apply(
            &edited,
            &obj(json!({"location": "x", "heightU": 42})),
            "alice",
            false,
            AV,
            "t3",
        )
        .unwrap_err();
        assert_eq!(e[0].manager, "kubectl-edit");
        assert_eq!(e[0].field, ".spec.location");
        // No identity, status or server metadata is owned.
        assert!(leaves(&json!({"apiVersion": "v", "kind": "k", "metadata": {"name": "n", "uid": "u", "labels": {"a": "b"}}, "status": {"x": 1}}))
            .into_iter()
            .eq([vec!["metadata".to_string(), "labels".into(), "a".into()]]));
    }
}
