//! The registry of kinds: names the API serves them under, printer columns, schema, and the
//! type-erased admission function (decode + validate + normalise).

use kube::CustomResourceExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::validate::{FieldError, Validate, check_name};
use crate::{
    Credential, Datacenter, GitSource, Node, Profile, Rack, ServiceInstance, ServiceStack,
};

pub const GROUP: &str = "groundwork.dev";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "groundwork.dev/v1alpha1";

/// A column of `kubectl get` output (a CRD `additionalPrinterColumns` entry).
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub name: &'static str,
    /// Dotted path into the object, e.g. `.status.phase`.
    pub json_path: &'static str,
    /// OpenAPI type: string, integer, number, boolean, date.
    pub type_: &'static str,
    /// 0 = shown always, 1 = shown with `-o wide`.
    pub priority: u8,
    pub description: &'static str,
}

/// The result of admitting an object: its normalised JSON and the unknown fields dropped.
pub type Admitted = Result<(Value, Vec<String>), Vec<FieldError>>;

/// Everything the server, the CLI and the schema generator need to know about one kind.
#[derive(Clone, Copy)]
pub struct KindInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub namespaced: bool,
    pub has_status: bool,
    pub columns: &'static [Column],
    /// Decodes, validates and normalises a whole object.
    pub admit: fn(Value) -> Admitted,
    /// The CRD for the kind (None for built-in kinds such as Event).
    pub crd: Option<fn() -> Value>,
}

impl std::fmt::Debug for KindInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.plural, self.group)
    }
}

impl KindInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// `nodes.groundwork.dev`, or `events` for the core group.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

fn admit_typed<T: DeserializeOwned + Serialize + Validate>(mut v: Value) -> Admitted {
    // An absent spec is an empty one (as for CRDs); required fields inside it are still named.
    if let Some(o) = v.as_object_mut()
        && o.get("spec").is_none_or(Value::is_null)
    {
        o.insert("spec".into(), Value::Object(Default::default()));
    }
    let written = v.get("spec").cloned();
    let d = crate::decode::<T>(v).map_err(|e| vec![e])?;
    let errs = d.object.validate();
    if !errs.is_empty() {
        return Err(errs);
    }
    let mut out = serde_json::to_value(&d.object)
        .map_err(|e| vec![FieldError::invalid("", e.to_string())])?;
    if let (Some(spec), Some(written)) = (out.get_mut("spec"), written.as_ref()) {
        keep_written(spec, written);
    }
    Ok((out, d.unknown_fields))
}

/// Drops from the re-serialised `spec` the keys the client did not write: defaults are
/// applied when an object is read, not stored, so what is stored is what the operator wrote
/// (minus unknown fields) and a second `kubectl apply` of the same file changes nothing
/// (see docs/decisions.md, "Store what was written").
fn keep_written(out: &mut Value, written: &Value) {
    match (out, written) {
        (Value::Object(o), Value::Object(w)) => {
            o.retain(|k, _| w.contains_key(k));
            for (k, v) in o.iter_mut() {
                keep_written(v, &w[k]);
            }
        }
        (Value::Array(o), Value::Array(w)) if o.len() == w.len() => {
            for (v, w) in o.iter_mut().zip(w) {
                keep_written(v, w);
            }
        }
        _ => {}
    }
}

fn admit_event(v: Value) -> Admitted {
    let d = crate::decode::<crate::Event>(v).map_err(|e| vec![e])?;
    let mut errs = Vec::new();
    let ev = &d.object;
    if ev.involved_object.name.as_deref().unwrap_or("").is_empty() {
        errs.push(FieldError::required(
            "involvedObject.name",
            "name the object the event is about",
        ));
    }
    if ev.reason.as_deref().unwrap_or("").is_empty() {
        errs.push(FieldError::required("reason", "a short CamelCase reason"));
    }
    if let Some(t) = &ev.type_
        && t != "Normal"
        && t != "Warning"
    {
        errs.push(FieldError::invalid(
            "type",
            format!("{t:?}: Normal or Warning"),
        ));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let out = serde_json::to_value(&d.object)
        .map_err(|e| vec![FieldError::invalid("", e.to_string())])?;
    Ok((out, d.unknown_fields))
}

const AGE: Column = Column {
    name: "Age",
    json_path: ".metadata.creationTimestamp",
    type_: "date",
    priority: 0,
    description: "",
};

const DATACENTER_COLUMNS: &[Column] = &[
    Column {
        name: "Zones",
        json_path: ".spec.availabilityZones[*].name",
        type_: "string",
        priority: 0,
        description: "Availability zones",
    },
    Column {
        name: "Racks",
        json_path: ".status.racks",
        type_: "integer",
        priority: 0,
        description: "Racks in the datacenter",
    },
    Column {
        name: "Nodes",
        json_path: ".status.nodes",
        type_: "integer",
        priority: 0,
        description: "Nodes in the datacenter",
    },
    Column {
        name: "Power-Used",
        json_path: ".status.powerUsedKw",
        type_: "number",
        priority: 1,
        description: "kW drawn",
    },
    AGE,
];
const RACK_COLUMNS: &[Column] = &[
    Column {
        name: "Datacenter",
        json_path: ".spec.datacenter",
        type_: "string",
        priority: 0,
        description: "",
    },
    Column {
        name: "Zone",
        json_path: ".spec.availabilityZone",
        type_: "string",
        priority: 0,
        description: "",
    },
    Column {
        name: "Height",
        json_path: ".spec.heightU",
        type_: "integer",
        priority: 0,
        description: "Rack units",
    },
    Column {
        name: "Used",
        json_path: ".status.unitsUsed",
        type_: "integer",
        priority: 0,
        description: "Rack units in use",
    },
    Column {
        name: "Power-Budget",
        json_path: ".spec.powerBudgetKw",
        type_: "number",
        priority: 1,
        description: "kW",
    },
    AGE,
];
const NODE_COLUMNS: &[Column] = &[
    Column {
        name: "Phase",
        json_path: ".status.phase",
        type_: "string",
        priority: 0,
        description: "Life-cycle phase",
    },
    Column {
        name: "Power",
        json_path: ".status.power",
        type_: "string",
        priority: 0,
        description: "Observed power",
    },
    Column {
        name: "Rack",
        json_path: ".spec.rack.name",
        type_: "string",
        priority: 0,
        description: "",
    },
    Column {
        name: "U",
        json_path: ".spec.rack.position",
        type_: "integer",
        priority: 1,
        description: "Lowest rack unit",
    },
    Column {
        name: "Profile",
        json_path: ".status.profile",
        type_: "string",
        priority: 0,
        description: "Assigned profile",
    },
    Column {
        name: "BMC",
        json_path: ".spec.bmc.address",
        type_: "string",
        priority: 1,
        description: "",
    },
    Column {
        name: "Online",
        json_path: ".spec.online",
        type_: "boolean",
        priority: 1,
        description: "Desired power",
    },
    AGE,
];
const PROFILE_COLUMNS: &[Column] = &[
    Column {
        name: "Priority",
        json_path: ".spec.priority",
        type_: "integer",
        priority: 0,
        description: "",
    },
    Column {
        name: "Roles",
        json_path: ".spec.roles",
        type_: "string",
        priority: 0,
        description: "",
    },
    Column {
        name: "Assigned",
        json_path: ".status.assignedNodes",
        type_: "integer",
        priority: 0,
        description: "Nodes with this profile",
    },
    AGE,
];
const GITSOURCE_COLUMNS: &[Column] = &[
    Column {
        name: "URL",
        json_path: ".spec.url",
        type_: "string",
        priority: 0,
        description: "",
    },
    Column {
        name: "Applied",
        json_path: ".status.lastAppliedCommit",
        type_: "string",
        priority: 0,
        description: "The commit whose manifests are live",
    },
    Column {
        name: "Message",
        json_path: ".status.lastAppliedMessage",
        type_: "string",
        priority: 1,
        description: "",
    },
    AGE,
];
const STACK_COLUMNS: &[Column] = &[
    Column {
        name: "Phase",
        json_path: ".status.phase",
        type_: "string",
        priority: 0,
        description: "The least advanced layer's phase",
    },
    Column {
        name: "Layers-Ready",
        json_path: ".status.layersReady",
        type_: "string",
        priority: 0,
        description: "Ready layers of all",
    },
    Column {
        name: "Layers",
        json_path: ".spec.layers[*].name",
        type_: "string",
        priority: 1,
        description: "",
    },
    Column {
        name: "Datacenter",
        json_path: ".spec.datacenter",
        type_: "string",
        priority: 1,
        description: "",
    },
    AGE,
];
const INSTANCE_COLUMNS: &[Column] = &[
    Column {
        name: "Layer",
        json_path: ".spec.layer",
        type_: "string",
        priority: 0,
        description: "",
    },
    Column {
        name: "Service",
        json_path: ".spec.service",
        type_: "string",
        priority: 0,
        description: "",
    },
    Column {
        name: "Node",
        json_path: ".spec.node",
        type_: "string",
        priority: 0,
        description: "",
    },
    Column {
        name: "Phase",
        json_path: ".status.phase",
        type_: "string",
        priority: 0,
        description: "As the node agent reports it",
    },
    Column {
        name: "Ready",
        json_path: ".status.ready",
        type_: "boolean",
        priority: 0,
        description: "Running the current config and healthy",
    },
    Column {
        name: "Address",
        json_path: ".spec.address",
        type_: "string",
        priority: 1,
        description: "",
    },
    Column {
        name: "Message",
        json_path: ".status.message",
        type_: "string",
        priority: 1,
        description: "",
    },
    AGE,
];
const CREDENTIAL_COLUMNS: &[Column] = &[
    Column {
        name: "Username",
        json_path: ".spec.username",
        type_: "string",
        priority: 0,
        description: "",
    },
    AGE,
];
const AGE_ONLY: &[Column] = &[AGE];
const BINDING_COLUMNS: &[Column] = &[
    Column {
        name: "Role",
        json_path: ".roleRef.name",
        type_: "string",
        priority: 0,
        description: "",
    },
    AGE,
];
const LEASE_COLUMNS: &[Column] = &[
    Column {
        name: "Holder",
        json_path: ".spec.holderIdentity",
        type_: "string",
        priority: 0,
        description: "",
    },
    AGE,
];
const EVENT_COLUMNS: &[Column] = &[
    Column {
        name: "Type",
        json_path: ".type",
        type_: "string",
        priority: 0,
        description: "",
    },
    Column {
        name: "Reason",
        json_path: ".reason",
        type_: "string",
        priority: 0,
        description: "",
    },
    Column {
        name: "Object",
        json_path: ".involvedObject.name",
        type_: "string",
        priority: 0,
        description: "",
    },
    Column {
        name: "Message",
        json_path: ".message",
        type_: "string",
        priority: 0,
        description: "",
    },
    AGE,
];

macro_rules! crd_kind {
    ($ty:ty, $kind:literal, $plural:literal, $singular:literal, [$($short:literal),*], $cols:expr) => {
        KindInfo {
            group: GROUP,
            version: VERSION,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            short_names: &[$($short),*],
            namespaced: false,
            has_status: true,
            columns: $cols,
            admit: admit_typed::<$ty>,
            crd: Some(|| crd_with_columns(serde_json::to_value(<$ty>::crd()).expect("CRD serialises"), $cols)),
        }
    };
}

static KINDS: &[KindInfo] = &[
    crd_kind!(
        Datacenter,
        "Datacenter",
        "datacenters",
        "datacenter",
        ["dc"],
        DATACENTER_COLUMNS
    ),
    crd_kind!(Rack, "Rack", "racks", "rack", ["rk"], RACK_COLUMNS),
    crd_kind!(Node, "Node", "nodes", "node", ["gn"], NODE_COLUMNS),
    crd_kind!(
        Profile,
        "Profile",
        "profiles",
        "profile",
        ["prof"],
        PROFILE_COLUMNS
    ),
    crd_kind!(
        ServiceStack,
        "ServiceStack",
        "servicestacks",
        "servicestack",
        ["stack"],
        STACK_COLUMNS
    ),
    crd_kind!(
        GitSource,
        "GitSource",
        "gitsources",
        "gitsource",
        ["gs"],
        GITSOURCE_COLUMNS
    ),
    crd_kind!(
        ServiceInstance,
        "ServiceInstance",
        "serviceinstances",
        "serviceinstance",
        ["si"],
        INSTANCE_COLUMNS
    ),
    KindInfo {
        has_status: false,
        ..crd_kind!(
            Credential,
            "Credential",
            "credentials",
            "credential",
            ["cred"],
            CREDENTIAL_COLUMNS
        )
    },
    KindInfo {
        group: "",
        version: "v1",
        kind: "Event",
        plural: "events",
        singular: "event",
        short_names: &["ev"],
        namespaced: true,
        has_status: false,
        columns: EVENT_COLUMNS,
        admit: admit_event,
        crd: None,
    },
    KindInfo {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "ClusterRole",
        plural: "clusterroles",
        singular: "clusterrole",
        short_names: &[],
        namespaced: false,
        has_status: false,
        columns: AGE_ONLY,
        admit: admit_cluster_role,
        crd: None,
    },
    KindInfo {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "ClusterRoleBinding",
        plural: "clusterrolebindings",
        singular: "clusterrolebinding",
        short_names: &[],
        namespaced: false,
        has_status: false,
        columns: BINDING_COLUMNS,
        admit: admit_cluster_role_binding,
        crd: None,
    },
    KindInfo {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
        singular: "lease",
        short_names: &[],
        namespaced: true,
        has_status: false,
        columns: LEASE_COLUMNS,
        admit: admit_lease,
        crd: None,
    },
];

/// Every kind the API serves.
pub fn all_kinds() -> &'static [KindInfo] {
    KINDS
}

pub fn kind_by_plural(group: &str, plural: &str) -> Option<&'static KindInfo> {
    KINDS
        .iter()
        .find(|k| k.group == group && k.plural == plural)
}

/// Looks a kind up by `Kind`, plural, singular or short name (case-insensitive), as the CLI
/// accepts them; `nodes.groundwork.dev` also works.
pub fn kind_by_kind(name: &str) -> Option<&'static KindInfo> {
    let lower = name.to_ascii_lowercase();
    let (base, group) = match lower.split_once('.') {
        Some((b, g)) => (b.to_string(), Some(g.to_string())),
        None => (lower.clone(), None),
    };
    KINDS.iter().find(|k| {
        group.as_deref().is_none_or(|g| g == k.group)
            && (k.kind.eq_ignore_ascii_case(&base)
                || k.plural == base
                || k.singular == base
                || k.short_names.contains(&base.as_str()))
    })
}

fn admit_lease(v: Value) -> Admitted {
    let d = crate::decode::<crate::Lease>(v).map_err(|e| vec![e])?;
    let mut errs = Vec::new();
    if let Some(spec) = &d.object.spec {
        if let Some(s) = spec.lease_duration_seconds
            && s <= 0
        {
            errs.push(FieldError::invalid(
                "spec.leaseDurationSeconds",
                format!("{s}: must be greater than 0"),
            ));
        }
        if let Some(t) = spec.lease_transitions
            && t < 0
        {
            errs.push(FieldError::invalid(
                "spec.leaseTransitions",
                format!("{t}: must be 0 or more"),
            ));
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let out = serde_json::to_value(&d.object)
        .map_err(|e| vec![FieldError::invalid("", e.to_string())])?;
    Ok((out, d.unknown_fields))
}

/// The distinct (group, version) pairs the API serves, core ("", "v1") first.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    for k in KINDS {
        if !out.contains(&(k.group, k.version)) {
            out.push((k.group, k.version));
        }
    }
    out.sort_by_key(|(g, _)| !g.is_empty());
    out
}

fn crd_with_columns(mut crd: Value, cols: &[Column]) -> Value {
    let cols: Vec<Value> = cols
        .iter()
        .map(|c| {
            let mut v =
                serde_json::json!({"name": c.name, "jsonPath": c.json_path, "type": c.type_});
            if c.priority > 0 {
                v["priority"] = c.priority.into();
            }
            if !c.description.is_empty() {
                v["description"] = c.description.into();
            }
            v
        })
        .collect();
    if let Some(versions) = crd
        .pointer_mut("/spec/versions")
        .and_then(Value::as_array_mut)
    {
        for v in versions {
            v["additionalPrinterColumns"] = Value::Array(cols.clone());
        }
    }
    crd
}

/// The CRD of every Groundwork kind, as YAML-ready JSON values (for `schemas/`).
pub fn crd_yaml_documents() -> Vec<(&'static str, Value)> {
    KINDS
        .iter()
        .filter_map(|k| k.crd.map(|f| (k.kind, f())))
        .collect()
}

/// Checks `metadata.name` of an object about to be stored.
pub fn check_object_name(name: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    check_name("metadata.name", name, &mut errs);
    errs
}

fn admit_cluster_role(v: Value) -> Admitted {
    let d = crate::decode::<k8s_openapi::api::rbac::v1::ClusterRole>(v).map_err(|e| vec![e])?;
    let mut errs = Vec::new();
    if let Some(n) = d.object.metadata.name.as_deref()
        && matches!(n, "cluster-admin" | "edit" | "view")
    {
        errs.push(FieldError::invalid(
            "metadata.name",
            format!("{n:?} is a built-in ClusterRole and cannot be redefined"),
        ));
    }
    for (i, r) in d.object.rules.iter().flatten().enumerate() {
        if r.verbs.is_empty() {
            errs.push(FieldError::required(
                format!("rules[{i}].verbs"),
                "at least one verb, or \"*\"",
            ));
        }
        let resources = r.resources.as_ref().is_some_and(|x| !x.is_empty());
        let urls = r.non_resource_urls.as_ref().is_some_and(|x| !x.is_empty());
        if resources == urls {
            errs.push(FieldError::invalid(
                format!("rules[{i}]"),
                "a rule names either resources (with apiGroups) or nonResourceURLs",
            ));
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let out = serde_json::to_value(&d.object)
        .map_err(|e| vec![FieldError::invalid("", e.to_string())])?;
    Ok((out, d.unknown_fields))
}

fn admit_cluster_role_binding(v: Value) -> Admitted {
    let d =
        crate::decode::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>(v).map_err(|e| vec![e])?;
    let mut errs = Vec::new();
    let b = &d.object;
    if b.role_ref.kind != "ClusterRole" {
        errs.push(FieldError::invalid(
            "roleRef.kind",
            format!("{:?}: must be ClusterRole", b.role_ref.kind),
        ));
    }
    if b.role_ref.name.is_empty() {
        errs.push(FieldError::required(
            "roleRef.name",
            "the ClusterRole's name",
        ));
    }
    for (i, s) in b.subjects.iter().flatten().enumerate() {
        if !matches!(s.kind.as_str(), "User" | "Group" | "ServiceAccount") {
            errs.push(FieldError::invalid(
                format!("subjects[{i}].kind"),
                format!("{:?}: must be User, Group or ServiceAccount", s.kind),
            ));
        }
        if s.name.is_empty() {
            errs.push(FieldError::required(
                format!("subjects[{i}].name"),
                "who is bound",
            ));
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let out = serde_json::to_value(&d.object)
        .map_err(|e| vec![FieldError::invalid("", e.to_string())])?;
    Ok((out, d.unknown_fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lookup_by_any_name() {
        for n in ["Node", "nodes", "node", "gn", "nodes.groundwork.dev"] {
            assert_eq!(kind_by_kind(n).map(|k| k.kind), Some("Node"), "{n}");
        }
        assert!(kind_by_kind("nodes.example.com").is_none());
    }

    #[test]
    fn admission_rejects_bad_mac_with_path() {
        let v = json!({"apiVersion": API_VERSION, "kind": "Node", "metadata": {"name": "n1"},
            "spec": {"bootMACs": ["52:54:00:00:00:01", "zz:54:00:00:00:01"]}});
        let errs = (kind_by_kind("Node").unwrap().admit)(v).unwrap_err();
        assert_eq!(errs[0].field, "spec.bootMACs[1]");
        let v = json!({"apiVersion": API_VERSION, "kind": "Node", "metadata": {"name": "n1"},
            "spec": {"bootMACs": ["52:54:00:00:00:01"], "bootAddress": "10.0.0.300"}});
        let errs = (kind_by_kind("Node").unwrap().admit)(v).unwrap_err();
        assert_eq!(errs[0].field, "spec.bootAddress");
        let v = json!({"apiVersion": API_VERSION, "kind": "Node", "metadata": {"name": "n1"},
            "spec": {"bootAddress": "10.0.0.3"}});
        let errs = (kind_by_kind("Node").unwrap().admit)(v).unwrap_err();
        assert_eq!(errs[0].field, "spec.bootMACs");
    }

    #[test]
    fn admission_stores_what_was_written_not_defaults() {
        let spec = json!({"layers": [
            {"name": "db", "services": ["mysql"],
             "placement": {"count": 3},
             "rollout": {"maxUnavailable": 1, "keepQuorum": true},
             "config": {"mysql": {"rootPassword": {"credential": "db-root"}}}}]});
        let v = json!({"apiVersion": API_VERSION, "kind": "ServiceStack",
            "metadata": {"name": "s"}, "spec": spec.clone(), "bogus": 1});
        let (out, unknown) = (kind_by_kind("ServiceStack").unwrap().admit)(v).unwrap();
        assert_eq!(
            out["spec"], spec,
            "defaults (spread, spares, port) were stored"
        );
        assert_eq!(unknown, vec!["bogus".to_string()]);
        // Defaults still apply when the object is read.
        let s: crate::ServiceStack = serde_json::from_value(out).unwrap();
        let p = s.spec.layers[0].placement.as_ref().unwrap();
        assert_eq!(p.spares, 1);
        assert_eq!(s.spec.layers[0].config.mysql.as_ref().unwrap().port, 3306);
    }

    #[test]
    fn absent_spec_is_empty_but_required_fields_are_named() {
        let p = json!({"apiVersion": API_VERSION, "kind": "Profile", "metadata": {"name": "p"}});
        assert!((kind_by_kind("Profile").unwrap().admit)(p).is_ok());
        let r = json!({"apiVersion": API_VERSION, "kind": "Rack", "metadata": {"name": "r"}});
        let errs = (kind_by_kind("Rack").unwrap().admit)(r).unwrap_err();
        assert!(errs[0].message.contains("datacenter"), "{errs:?}");
    }

    #[test]
    fn crds_have_schema_and_columns() {
        let docs = crd_yaml_documents();
        assert_eq!(docs.len(), 8);
        for (_, crd) in docs {
            let v = &crd["spec"]["versions"][0];
            assert!(v["schema"]["openAPIV3Schema"]["properties"]["spec"].is_object());
            assert!(
                v["additionalPrinterColumns"]
                    .as_array()
                    .is_some_and(|c| !c.is_empty())
            );
        }
    }
}
