//! The pure part of applying a commit: manifests into an ordered plan, the object sent for
//! each, and drift on the fields Git sets.

use std::collections::BTreeSet;

use groundwork_types::{
    APPLY_ORDER_ANNOTATION, GITSOURCE_ANNOTATION, LAST_APPLIED_ANNOTATION, ManifestError,
    REQUESTED_AT_ANNOTATION,
};
use serde_json::Value;

/// One object of the commit, where it came from and its place in the order.
#[derive(Clone, Debug)]
pub struct Planned {
    pub file: String,
    pub line: u32,
    pub kind: &'static str,
    pub name: String,
    pub object: Value,
    pub rank: i64,
}

impl Planned {
    pub fn error(&self, field: Option<String>, message: String) -> ManifestError {
        ManifestError {
            file: self.file.clone(),
            line: Some(self.line),
            object: Some(format!("{}/{}", self.kind, self.name)),
            field,
            message,
        }
    }
}

/// The default order: what later kinds refer to first.
fn kind_rank(kind: &str) -> i64 {
    match kind {
        "Datacenter" => 0,
        "Rack" => 10,
        "Credential" => 20,
        "Profile" => 30,
        "Node" => 40,
        "ServiceStack" => 50,
        _ => 60,
    }
}

/// The kinds a GitSource may manage when its spec names none.
fn default_kind(kind: &str) -> bool {
    !matches!(kind, "GitSource" | "ServiceInstance")
}

/// Every manifest of the commit, checked for what can be checked without the server (YAML,
/// apiVersion and kind, a name, no duplicates, an allowed kind), in apply order. Any error
/// and there is no plan: the errors, each naming its file and line.
pub fn plan(
    files: &[(String, String)],
    allowed: &[String],
) -> Result<Vec<Planned>, Vec<ManifestError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for (file, text) in files {
        let docs = match groundwork_types::manifests::parse_documents(text) {
            Ok(d) => d,
            Err(e) => {
                errors.push(ManifestError {
                    file: file.clone(),
                    line: None,
                    object: None,
                    field: None,
                    message: e,
                });
                continue;
            }
        };
        for d in docs {
            let err = |field: Option<&str>, message: String| ManifestError {
                file: file.clone(),
                line: Some(d.line),
                object: None,
                field: field.map(str::to_string),
                message,
            };
            let av = d
                .object
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            let kind = d.object.get("kind").and_then(Value::as_str).unwrap_or("");
            let Some(info) = groundwork_types::all_kinds()
                .iter()
                .find(|k| k.api_version() == av && k.kind == kind)
            else {
                errors.push(err(
                    Some("kind"),
                    format!("{av:?} {kind:?}: not a kind this server serves"),
                ));
                continue;
            };
            let ok = if allowed.is_empty() {
                default_kind(info.kind) && info.group == "groundwork.dev"
            } else {
                allowed.iter().any(|a| a == info.kind)
            };
            if !ok {
                errors.push(err(
                    Some("kind"),
                    format!("{kind}: not among the kinds this GitSource may manage (spec.kinds)"),
                ));
                continue;
            }
            let name = d
                .object
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if name.is_empty() {
                errors.push(err(Some("metadata.name"), "required".into()));
                continue;
            }
            if !seen.insert((info.kind, name.clone())) {
                errors.push(err(
                    Some("metadata.name"),
                    format!("{kind}/{name} is defined twice in this commit"),
                ));
                continue;
            }
            let rank = match d
                .object
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(APPLY_ORDER_ANNOTATION))
            {
                None => kind_rank(info.kind),
                Some(v) => match v.as_str().and_then(|s| s.parse::<i64>().ok()) {
                    Some(r) => r,
                    None => {
                        errors.push(err(
                            Some(&format!("metadata.annotations.{APPLY_ORDER_ANNOTATION}")),
                            format!("{v}: an integer in quotes (lower applies first)"),
                        ));
                        continue;
                    }
                },
            };
            out.push(Planned {
                file: file.clone(),
                line: d.line,
                kind: info.kind,
                name,
                object: d.object,
                rank,
            });
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    out.sort_by(|a, b| (a.rank, a.kind, &a.name).cmp(&(b.rank, b.kind, &b.name)));
    Ok(out)
}

/// The object sent for a manifest: what Git says (no status, no server fields), marked as
/// this GitSource's, with Git's version kept for the next three-way merge. A Credential's
/// password is never copied into that annotation.
pub fn desired(object: &Value, gitsource: &str) -> Value {
    let mut o = object.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("status");
    }
    if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
            "managedFields",
        ] {
            meta.remove(k);
        }
    }
    let mut recorded = o.clone();
    if let Some(spec) = recorded.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("password");
    }
    let annotations = o
        .as_object_mut()
        .and_then(|m| {
            m.entry("metadata")
                .or_insert_with(|| Value::Object(Default::default()))
                .as_object_mut()
        })
        .map(|meta| {
            meta.entry("annotations")
                .or_insert_with(|| Value::Object(Default::default()))
        });
    if let Some(Value::Object(a)) = annotations {
        a.insert(GITSOURCE_ANNOTATION.into(), gitsource.into());
        a.insert(
            LAST_APPLIED_ANNOTATION.into(),
            serde_json::to_string(&recorded).unwrap_or_default().into(),
        );
    }
    o
}

/// Git's fields whose live value differs: spec, labels and annotations Git sets (not this
/// controller's own annotations, not a write-only password). Defaulted and controller-
/// written fields are not in Git, so they never show.
pub fn drift(desired: &Value, live: &Value) -> Vec<(String, Value, Value)> {
    let mut git = serde_json::json!({
        "spec": desired.get("spec").cloned().unwrap_or(Value::Null),
        "metadata": {
            "labels": desired.pointer("/metadata/labels").cloned().unwrap_or(Value::Null),
            "annotations": desired.pointer("/metadata/annotations").cloned().unwrap_or(Value::Null),
        },
    });
    if let Some(a) = git
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        for k in [
            GITSOURCE_ANNOTATION,
            LAST_APPLIED_ANNOTATION,
            REQUESTED_AT_ANNOTATION,
        ] {
            a.remove(k);
        }
    }
    if let Some(spec) = git.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("password");
    }
    let mut out = Vec::new();
    let prune_null = |v: &mut Value| {
        if let Some(m) = v.as_object_mut() {
            m.retain(|_, x| !x.is_null());
        }
    };
    if let Some(meta) = git.get_mut("metadata") {
        prune_null(meta);
    }
    prune_null(&mut git);
    groundwork_types::manifests::differences(&git, live, "", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(name: &str, text: &str) -> (String, String) {
        (name.to_string(), text.to_string())
    }

    #[test]
    fn plans_in_dependency_order_and_names_every_bad_manifest() {
        let files = vec![
            f(
                "nodes.yaml",
                "apiVersion: groundwork.dev/v1alpha1\nkind: Node\nmetadata: {name: n1}\n",
            ),
            f(
                "dc.yaml",
                "apiVersion: groundwork.dev/v1alpha1\nkind: Datacenter\nmetadata: {name: dc1}\n---\napiVersion: groundwork.dev/v1alpha1\nkind: Rack\nmetadata:\n  name: r1\n  annotations: {groundwork.dev/apply-order: \"-5\"}\n",
            ),
        ];
        let p = plan(&files, &[]).unwrap();
        let order: Vec<&str> = p.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(order, ["r1", "dc1", "n1"]);
        assert_eq!((p[0].file.as_str(), p[0].line), ("dc.yaml", 5));
        let bad = vec![
            f(
                "a.yaml",
                "apiVersion: groundwork.dev/v1alpha1\nkind: Rack\nmetadata: {name: r}\n---\napiVersion: groundwork.dev/v1alpha1\nkind: Rack\nmetadata: {name: r}\n",
            ),
            f("b.yaml", "apiVersion: v9\nkind: Nope\n"),
            f("c.yaml", "a: [1\n"),
            f(
                "d.yaml",
                "apiVersion: groundwork.dev/v1alpha1\nkind: ServiceInstance\nmetadata: {name: x}\n",
            ),
        ];
        let e = plan(&bad, &[]).unwrap_err();
        let got: Vec<String> = e
            .iter()
            .map(|e| format!("{}:{} {:?}", e.file, e.line.unwrap_or(0), e.field))
            .collect();
        assert_eq!(
            got,
            [
                "a.yaml:5 Some(\"metadata.name\")",
                "b.yaml:1 Some(\"kind\")",
                "c.yaml:0 None",
                "d.yaml:1 Some(\"kind\")"
            ]
        );
        // Only the kinds it may manage.
        let e = plan(&files, &["Node".into()]).unwrap_err();
        assert_eq!(e.len(), 2);
    }

    #[test]
    fn desired_objects_carry_the_owner_and_never_a_password() {
        let o = json!({"apiVersion": "groundwork.dev/v1alpha1", "kind": "Credential",
            "metadata": {"name": "c", "resourceVersion": "9"},
            "spec": {"username": "u", "password": "hunter2"}, "status": {"x": 1}});
        let d = desired(&o, "infra");
        assert_eq!(d["metadata"]["annotations"][GITSOURCE_ANNOTATION], "infra");
        assert!(d.get("status").is_none() && d["metadata"].get("resourceVersion").is_none());
        let last = d["metadata"]["annotations"][LAST_APPLIED_ANNOTATION]
            .as_str()
            .unwrap();
        assert!(!last.contains("hunter2"), "{last}");
        assert_eq!(
            d["spec"]["password"], "hunter2",
            "sent, for the server to seal"
        );
    }

    #[test]
    fn drift_is_on_gits_fields_only() {
        let o = json!({"apiVersion": "groundwork.dev/v1alpha1", "kind": "Rack",
            "metadata": {"name": "r", "labels": {"a": "1"}},
            "spec": {"datacenter": "dc1", "units": 42}});
        let d = desired(&o, "infra");
        let mut live = d.clone();
        live["spec"]["powerBudgetWatts"] = json!(0);
        live["status"] = json!({"phase": "Ready"});
        live["metadata"]["resourceVersion"] = json!("12");
        live["metadata"]["annotations"][REQUESTED_AT_ANNOTATION] = json!("now");
        assert!(drift(&d, &live).is_empty(), "{:?}", drift(&d, &live));
        live["spec"]["units"] = json!(48);
        live["metadata"]["labels"]["a"] = json!("2");
        let got: Vec<String> = drift(&d, &live).into_iter().map(|x| x.0).collect();
        assert_eq!(got, ["metadata.labels.a", "spec.units"]);
    }
}
