//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) for the built-in
//! kinds the server serves, turned into the Kubernetes JSON the rest of the API admits.
//!
//! client-go's typed clients (kubectl's imperative `create clusterrolebinding`, `create role`
//! and friends; Go controllers' Lease updates) send these kinds as protobuf and do not fall
//! back to JSON on 415. Answers stay JSON: their Accept lists `application/json` too.
//!
//! The envelope (k8s.io/apimachinery, `runtime/serializer/protobuf`): the 4 bytes `k8s\0`,
//! then a `runtime.Unknown` whose `typeMeta` names the kind and whose `raw` is the object's own
//! message. The generated messages are `k8s-pb`'s; each is mapped field by field onto
//! k8s-openapi's type, whose serde form is exactly Kubernetes JSON (camelCase, RFC 3339 times,
//! absent fields omitted). Go writes its non-pointer fields even when empty, and `omitempty`
//! drops them from JSON: `s`/`nz` do the same here.

use std::collections::BTreeMap;

use k8s_openapi::api::{coordination::v1 as coord, core::v1 as core, rbac::v1 as rbac};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::jiff::Timestamp;
use k8s_pb::api::{coordination::v1 as pb_coord, core::v1 as pb_core, rbac::v1 as pb_rbac};
use k8s_pb::apimachinery::pkg::{apis::meta::v1 as pb_meta, runtime::Unknown};
use prost::Message;
use serde_json::Value;

/// The media type.
pub(crate) const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";
/// `protoEncodingPrefix`: "k8s" and the encoding style (only 0 is defined).
const MAGIC: &[u8; 4] = b"k8s\x00";

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProtobufError {
    #[error("the body does not start with the Kubernetes protobuf prefix \"k8s\\0\"")]
    NoPrefix,
    #[error("the protobuf body does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("contentEncoding {0:?} is not supported: send the object unencoded")]
    Encoded(String),
    #[error(
        "{kind} ({api_version}) is not accepted as protobuf: send application/json (built-in \
         kinds served as protobuf: ClusterRole, ClusterRoleBinding, Lease, Event, DeleteOptions)"
    )]
    Unsupported { api_version: String, kind: String },
    #[error("a time in the protobuf body is out of range")]
    Time,
    #[error("converting the object to JSON: {0}")]
    Json(#[from] serde_json::Error),
}

type Result<T> = std::result::Result<T, ProtobufError>;

/// Decodes a whole protobuf body into the object's Kubernetes JSON.
pub(crate) fn to_json(body: &[u8]) -> Result<Value> {
    let rest = body
        .strip_prefix(MAGIC.as_slice())
        .ok_or(ProtobufError::NoPrefix)?;
    let unknown = Unknown::decode(rest)?;
    if let Some(enc) = unknown.content_encoding.filter(|e| !e.is_empty()) {
        return Err(ProtobufError::Encoded(enc));
    }
    let tm = unknown.type_meta.unwrap_or_default();
    let (api_version, kind) = (
        tm.api_version.unwrap_or_default(),
        tm.kind.unwrap_or_default(),
    );
    let raw = unknown.raw.unwrap_or_default();
    let raw = raw.as_slice();
    Ok(match (api_version.as_str(), kind.as_str()) {
        ("v1", "Event") => serde_json::to_value(event(pb_core::Event::decode(raw)?)?)?,
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            serde_json::to_value(cluster_role(pb_rbac::ClusterRole::decode(raw)?)?)?
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => serde_json::to_value(
            cluster_role_binding(pb_rbac::ClusterRoleBinding::decode(raw)?)?,
        )?,
        ("coordination.k8s.io/v1", "Lease") => {
            serde_json::to_value(lease(pb_coord::Lease::decode(raw)?)?)?
        }
        (_, "DeleteOptions") => delete_options(pb_meta::DeleteOptions::decode(raw)?),
        _ => return Err(ProtobufError::Unsupported { api_version, kind }),
    })
}

fn s(v: Option<String>) -> Option<String> {
    v.filter(|v| !v.is_empty())
}
fn req(v: Option<String>) -> String {
    v.unwrap_or_default()
}
fn nz<T: Default + PartialEq>(v: Option<T>) -> Option<T> {
    v.filter(|v| *v != T::default())
}
fn list<T, U>(v: Vec<T>, f: impl FnMut(T) -> U) -> Option<Vec<U>> {
    (!v.is_empty()).then(|| v.into_iter().map(f).collect())
}
fn strs(v: Vec<String>) -> Option<Vec<String>> {
    list(v, |x| x)
}
fn map(m: BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!m.is_empty()).then_some(m)
}

/// A zero Go time is sent as an empty message: absent.
fn ts(seconds: Option<i64>, nanos: Option<i32>) -> Result<Option<Timestamp>> {
    if seconds.is_none() && nanos.is_none() {
        return Ok(None);
    }
    Timestamp::new(seconds.unwrap_or(0), nanos.unwrap_or(0))
        .map(Some)
        .map_err(|_| ProtobufError::Time)
}
fn time(t: Option<pb_meta::Time>) -> Result<Option<meta::Time>> {
    Ok(match t {
        Some(t) => ts(t.seconds, t.nanos)?.map(meta::Time),
        None => None,
    })
}
fn micro(t: Option<pb_meta::MicroTime>) -> Result<Option<meta::MicroTime>> {
    Ok(match t {
        Some(t) => ts(t.seconds, t.nanos)?.map(meta::MicroTime),
        None => None,
    })
}

fn object_meta(m: Option<pb_meta::ObjectMeta>) -> Result<meta::ObjectMeta> {
    let m = m.unwrap_or_default();
    let mut managed = Vec::new();
    for f in m.managed_fields {
        managed.push(meta::ManagedFieldsEntry {
            api_version: s(f.api_version),
            fields_type: s(f.fields_type),
            manager: s(f.manager),
            operation: s(f.operation),
            subresource: s(f.subresource),
            time: time(f.time)?,
            // FieldsV1.Raw is the JSON text of the field set.
            fields_v1: match f.fields_v1.and_then(|v| v.raw) {
                Some(raw) => Some(meta::FieldsV1(serde_json::from_slice(&raw)?)),
                None => None,
            },
        });
    }
    Ok(meta::ObjectMeta {
        name: s(m.name),
        generate_name: s(m.generate_name),
        namespace: s(m.namespace),
        self_link: s(m.self_link),
        uid: s(m.uid),
        resource_version: s(m.resource_version),
        generation: nz(m.generation),
        creation_timestamp: time(m.creation_timestamp)?,
        deletion_timestamp: time(m.deletion_timestamp)?,
        deletion_grace_period_seconds: m.deletion_grace_period_seconds,
        labels: map(m.labels),
        annotations: map(m.annotations),
        finalizers: strs(m.finalizers),
        owner_references: list(m.owner_references, |o| meta::OwnerReference {
            api_version: req(o.api_version),
            kind: req(o.kind),
            name: req(o.name),
            uid: req(o.uid),
            controller: o.controller,
            block_owner_deletion: o.block_owner_deletion,
        }),
        managed_fields: (!managed.is_empty()).then_some(managed),
    })
}

fn label_selector(sel: pb_meta::LabelSelector) -> meta::LabelSelector {
    meta::LabelSelector {
        match_labels: map(sel.match_labels),
        match_expressions: list(sel.match_expressions, |e| meta::LabelSelectorRequirement {
            key: req(e.key),
            operator: req(e.operator),
            values: strs(e.values),
        }),
    }
}

fn cluster_role(r: pb_rbac::ClusterRole) -> Result<rbac::ClusterRole> {
    Ok(rbac::ClusterRole {
        metadata: object_meta(r.metadata)?,
        rules: list(r.rules, |p| rbac::PolicyRule {
            verbs: p.verbs,
            api_groups: strs(p.api_groups),
            resources: strs(p.resources),
            resource_names: strs(p.resource_names),
            non_resource_urls: strs(p.non_resource_ur_ls),
        }),
        aggregation_rule: r.aggregation_rule.map(|a| rbac::AggregationRule {
            cluster_role_selectors: list(a.cluster_role_selectors, label_selector),
        }),
    })
}

fn cluster_role_binding(b: pb_rbac::ClusterRoleBinding) -> Result<rbac::ClusterRoleBinding> {
    let rr = b.role_ref.unwrap_or_default();
    Ok(rbac::ClusterRoleBinding {
        metadata: object_meta(b.metadata)?,
        subjects: list(b.subjects, |x| rbac::Subject {
            kind: req(x.kind),
            name: req(x.name),
            api_group: s(x.api_group),
            namespace: s(x.namespace),
        }),
        role_ref: rbac::RoleRef {
            api_group: rr.api_group,
            kind: req(rr.kind),
            name: req(rr.name),
        },
    })
}

fn lease(l: pb_coord::Lease) -> Result<coord::Lease> {
    let spec = match l.spec {
        // Every LeaseSpec field is a Go pointer: kept as sent.
        Some(s) => Some(coord::LeaseSpec {
            holder_identity: s.holder_identity,
            lease_duration_seconds: s.lease_duration_seconds,
            acquire_time: micro(s.acquire_time)?,
            renew_time: micro(s.renew_time)?,
            lease_transitions: s.lease_transitions,
            strategy: s.strategy,
            preferred_holder: s.preferred_holder,
        }),
        None => None,
    };
    Ok(coord::Lease {
        metadata: object_meta(l.metadata)?,
        spec,
    })
}

fn object_ref(o: pb_core::ObjectReference) -> core::ObjectReference {
    core::ObjectReference {
        api_version: s(o.api_version),
        field_path: s(o.field_path),
        kind: s(o.kind),
        name: s(o.name),
        namespace: s(o.namespace),
        resource_version: s(o.resource_version),
        uid: s(o.uid),
    }
}

fn event(e: pb_core::Event) -> Result<core::Event> {
    let series = match e.series {
        Some(x) => Some(core::EventSeries {
            count: nz(x.count),
            last_observed_time: micro(x.last_observed_time)?,
        }),
        None => None,
    };
    Ok(core::Event {
        metadata: object_meta(e.metadata)?,
        involved_object: object_ref(e.involved_object.unwrap_or_default()),
        related: e.related.map(object_ref),
        reason: s(e.reason),
        message: s(e.message),
        type_: s(e.r#type),
        action: s(e.action),
        source: e.source.map(|x| core::EventSource {
            component: s(x.component),
            host: s(x.host),
        }),
        first_timestamp: time(e.first_timestamp)?,
        last_timestamp: time(e.last_timestamp)?,
        event_time: micro(e.event_time)?,
        count: nz(e.count),
        series,
        reporting_component: s(e.reporting_component),
        reporting_instance: s(e.reporting_instance),
    })
}

/// The fields of DeleteOptions the server reads (a DELETE body of client-go's typed clients).
fn delete_options(d: pb_meta::DeleteOptions) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(p) = d.preconditions {
        let mut pre = serde_json::Map::new();
        if let Some(uid) = s(p.uid) {
            pre.insert("uid".into(), uid.into());
        }
        if let Some(rv) = s(p.resource_version) {
            pre.insert("resourceVersion".into(), rv.into());
        }
        out.insert("preconditions".into(), pre.into());
    }
    if !d.dry_run.is_empty() {
        out.insert("dryRun".into(), d.dry_run.into());
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::apimachinery::pkg::runtime::TypeMeta;
    use serde_json::json;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        }
        .encode(&mut out)
        .unwrap();
        out
    }

    /// As Go sends it: every non-pointer field present, empty ones as "" and an empty
    /// creationTimestamp message.
    fn go_meta(name: &str) -> pb_meta::ObjectMeta {
        pb_meta::ObjectMeta {
            name: Some(name.into()),
            generate_name: Some(String::new()),
            namespace: Some(String::new()),
            uid: Some(String::new()),
            resource_version: Some(String::new()),
            generation: Some(0),
            creation_timestamp: Some(pb_meta::Time::default()),
            ..Default::default()
        }
    }

    #[test]
    fn a_cluster_role_binding_as_kubectl_create_sends_it() {
        let b = pb_rbac::ClusterRoleBinding {
            metadata: Some(go_meta("ops-admin")),
            subjects: vec![pb_rbac::Subject {
                kind: Some("User".into()),
                api_group: Some("rbac.authorization.k8s.io".into()),
                name: Some("ops".into()),
                namespace: Some(String::new()),
            }],
            role_ref: Some(pb_rbac::RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: Some("ClusterRole".into()),
                name: Some("admin".into()),
            }),
        };
        let body = envelope(
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
            b.encode_to_vec(),
        );
        assert_eq!(
            to_json(&body).unwrap(),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "ops-admin"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "ops"}],
            })
        );
    }

    #[test]
    fn a_lease_keeps_microsecond_times_and_a_role_its_rules() {
        let l = pb_coord::Lease {
            metadata: Some(go_meta("ctl")),
            spec: Some(pb_coord::LeaseSpec {
                holder_identity: Some("a".into()),
                lease_duration_seconds: Some(15),
                renew_time: Some(pb_meta::MicroTime {
                    seconds: Some(1_700_000_001),
                    nanos: Some(123_456_000),
                }),
                ..Default::default()
            }),
        };
        let v = to_json(&envelope(
            "coordination.k8s.io/v1",
            "Lease",
            l.encode_to_vec(),
        ))
        .unwrap();
        assert_eq!(v["spec"]["renewTime"], "2023-11-14T22:13:21.123456Z");
        assert_eq!(v["spec"]["leaseDurationSeconds"], 15);
        assert!(v["metadata"].get("creationTimestamp").is_none(), "{v}");

        let r = pb_rbac::ClusterRole {
            metadata: Some(go_meta("viewer")),
            rules: vec![pb_rbac::PolicyRule {
                verbs: vec!["get".into()],
                non_resource_ur_ls: vec!["/healthz".into()],
                ..Default::default()
            }],
            aggregation_rule: None,
        };
        let v = to_json(&envelope(
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            r.encode_to_vec(),
        ))
        .unwrap();
        assert_eq!(
            v["rules"],
            json!([{"verbs": ["get"], "nonResourceURLs": ["/healthz"]}])
        );
    }

    #[test]
    fn other_kinds_garbage_and_encodings_are_refused_by_name() {
        let e = to_json(&envelope("apps/v1", "Deployment", vec![])).unwrap_err();
        assert!(e.to_string().contains("Deployment (apps/v1)"), "{e}");
        assert!(matches!(
            to_json(b"{\"kind\":\"Lease\"}"),
            Err(ProtobufError::NoPrefix)
        ));
        let mut truncated = envelope("v1", "Event", vec![1, 2, 3]);
        truncated.truncate(truncated.len() - 2);
        assert!(matches!(to_json(&truncated), Err(ProtobufError::Decode(_))));
        let mut gz = MAGIC.to_vec();
        Unknown {
            content_encoding: Some("gzip".into()),
            ..Default::default()
        }
        .encode(&mut gz)
        .unwrap();
        assert!(matches!(to_json(&gz), Err(ProtobufError::Encoded(_))));
    }
}
