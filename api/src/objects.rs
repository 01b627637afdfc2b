//! Object semantics, independent of HTTP: create, update, patch, status writes and graceful
//! deletion with Kubernetes' rules for metadata, generation, finalizers and optimistic
//! concurrency. Every write is admitted (decoded, validated, normalised) before it reaches the
//! store, so invalid input never changes stored state.

use axum::http::StatusCode;
use groundwork_store::{Json, Precondition, Store, StoredObject, WriteOp, set_resource_version};
use groundwork_types::{FieldError, KindInfo, check_object_name};
use jiff::Timestamp;
use serde_json::{Map, Value, json};

use crate::ApiError;
use crate::query::{FieldValidation, Params};

/// Where a request points: a kind, and the namespace for namespaced kinds ("" otherwise).
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub kind: &'static KindInfo,
    /// `None` lists across all namespaces.
    pub namespace: Option<String>,
}

impl Target {
    fn group_segment(&self) -> &'static str {
        if self.kind.group.is_empty() {
            "core"
        } else {
            self.kind.group
        }
    }
    pub fn key(&self, name: &str) -> String {
        format!(
            "{}/{}/{}/{}",
            self.group_segment(),
            self.kind.plural,
            self.namespace.as_deref().unwrap_or(""),
            name
        )
    }
    pub fn prefix(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{}/{}/", self.group_segment(), self.kind.plural, ns),
            None => format!("{}/{}/", self.group_segment(), self.kind.plural),
        }
    }
}

/// A successful write: the HTTP status, the object, and warnings for the client.
pub(crate) struct Written {
    pub code: StatusCode,
    pub object: Value,
    pub warnings: Vec<String>,
}

/// Which part of an object a write may change.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// Everything but `status` (the main resource).
    Main,
    /// Only `status` (the `/status` subresource).
    Status,
}

const MAX_RETRIES: usize = 16;

pub(crate) fn now() -> Timestamp {
    Timestamp::now()
}

fn now_string() -> String {
    jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", Timestamp::now()).unwrap_or_default()
}

fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

fn meta_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let o = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("the body must be a JSON object".into()))?;
    let m = o.entry("metadata").or_insert_with(|| json!({}));
    if !m.is_object() {
        return Err(ApiError::BadRequest("metadata must be an object".into()));
    }
    Ok(m.as_object_mut().expect("checked"))
}

pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj).and_then(|m| m.get(field)).and_then(Value::as_str)
}

fn finalizers(obj: &Value) -> Vec<String> {
    meta(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn generation(obj: &Value) -> i64 {
    meta(obj)
        .and_then(|m| m.get("generation"))
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

/// Whether two objects have the same desired part, whose changes bump `generation`:
/// everything but metadata, status and the type fields.
fn same_desired(a: &Value, b: &Value) -> bool {
    fields_eq(
        a,
        b,
        &["metadata", "status", "apiVersion", "kind"],
        &|_, x, y| x == y,
    )
}

/// Whether two objects are equal apart from `metadata.resourceVersion`.
fn same_but_rv(a: &Value, b: &Value) -> bool {
    fields_eq(a, b, &[], &|k, x, y| {
        if k == "metadata" {
            fields_eq(x, y, &["resourceVersion"], &|_, x, y| x == y)
        } else {
            x == y
        }
    })
}

/// Whether `a` and `b` (JSON objects) have the same fields, apart from those in `skip`, with
/// values equal by `eq` (field name, a's value, b's value); other values compare with `==`.
/// Compares in place: no copy of either object (updates run it on every write).
fn fields_eq(
    a: &Value,
    b: &Value,
    skip: &[&str],
    eq: &dyn Fn(&str, &Value, &Value) -> bool,
) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    let kept = |m: &'_ Map<String, Value>| m.keys().filter(|k| !skip.contains(&k.as_str())).count();
    kept(a) == kept(b)
        && a.iter()
            .filter(|(k, _)| !skip.contains(&k.as_str()))
            .all(|(k, x)| b.get(k).is_some_and(|y| eq(k, x, y)))
}

/// Checks (or fills in) `apiVersion` and `kind`.
fn check_type_meta(kind: &KindInfo, obj: &mut Value) -> Result<(), ApiError> {
    let o = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("the body must be a JSON object".into()))?;
    let want_av = kind.api_version();
    match o.get("apiVersion").and_then(Value::as_str) {
        None => {
            o.insert("apiVersion".into(), want_av.clone().into());
        }
        Some(av) if av == want_av => {}
        Some(av) => {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({av}) does not match the expected API version ({want_av})"
            )));
        }
    }
    match o.get("kind").and_then(Value::as_str) {
        None => {
            o.insert("kind".into(), kind.kind.into());
        }
        Some(k) if k == kind.kind => {}
        Some(k) => {
            return Err(ApiError::BadRequest(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                kind.kind
            )));
        }
    }
    Ok(())
}

/// Decodes, validates and normalises; applies `fieldValidation` to unknown fields.
fn admit(
    kind: &'static KindInfo,
    obj: Value,
    fv: FieldValidation,
    name: &str,
) -> Result<(Value, Vec<String>), ApiError> {
    let (mut normalized, unknown) =
        (kind.admit)(obj).map_err(|errs| ApiError::invalid(kind, name, errs))?;
    if kind.kind == "Credential" {
        crate::secrets::seal_credential(kind, &mut normalized, name)?;
    }
    let mut warnings = Vec::new();
    if !unknown.is_empty() {
        let msgs: Vec<String> = unknown
            .iter()
            .map(|u| format!("unknown field \"{u}\""))
            .collect();
        match fv {
            FieldValidation::Strict => {
                return Err(ApiError::BadRequest(format!(
                    "strict decoding error: {}",
                    msgs.join(", ")
                )));
            }
            FieldValidation::Warn => warnings = msgs,
            FieldValidation::Ignore => {}
        }
    }
    Ok((normalized, warnings))
}

/// Checks that reach other objects: a Node must fit in its rack's height.
/// What a machine may change in its own Node's status: the facts it reports. The life
/// cycle's bookkeeping (phase, `provisioning`: its join record and the certificates it may
/// use) is the server's.
const MACHINE_STATUS_FIELDS: &[&str] = &["inventory", "addresses"];

fn check_machine_status(
    kind: &'static KindInfo,
    p: &Params,
    old: &Value,
    new: &Value,
) -> Result<(), ApiError> {
    let Some(user) = &p.user else {
        return Ok(());
    };
    if kind.kind != "Node"
        || !user.name.starts_with("system:node:")
        || !user.groups.iter().any(|g| g == crate::auth::NODES_GROUP)
    {
        return Ok(());
    }
    let empty = serde_json::Map::new();
    let field = |v: &Value| v.get("status").and_then(Value::as_object).cloned();
    let (a, b) = (field(old), field(new));
    let (a, b) = (a.as_ref().unwrap_or(&empty), b.as_ref().unwrap_or(&empty));
    let changed = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .find(|k| !MACHINE_STATUS_FIELDS.contains(&k.as_str()));
    match changed {
        Some(k) => Err(ApiError::Forbidden(format!(
            "nodes.groundwork.dev/status is forbidden: User {:?} may write only status.inventory and status.addresses, not status.{k}",
            user.name
        ))),
        None => Ok(()),
    }
}

/// Pointing a Node's BMC somewhere (a new address, port, protocol or Credential) makes the
/// power controller send that Credential's password there: it needs the `use` verb on the
/// Credential, which the built-in `edit` role does not grant. Otherwise anyone who may edit
/// Nodes could point a BMC at a host of theirs and receive the password.
fn check_credential_use(
    store: &Store,
    kind: &'static KindInfo,
    p: &Params,
    old: Option<&Value>,
    new: &Value,
) -> Result<(), ApiError> {
    if kind.kind != "Node" {
        return Ok(());
    }
    let Some(user) = &p.user else {
        return Ok(());
    };
    let bmc = new.pointer("/spec/bmc");
    if bmc.is_none() || bmc == old.and_then(|o| o.pointer("/spec/bmc")) {
        return Ok(());
    }
    let Some(cred) = bmc
        .and_then(|b| b.get("credentialsRef"))
        .and_then(Value::as_str)
    else {
        return Ok(());
    };
    let a = crate::auth::Attributes {
        verb: "use".into(),
        group: "groundwork.dev".into(),
        resource: "credentials".into(),
        name: cred.into(),
        ..Default::default()
    };
    crate::rbac::authorize(store, user, &a).map_err(|why| {
        ApiError::Forbidden(format!(
            "credentials.groundwork.dev {cred:?} is forbidden: User {:?} cannot use resource \"credentials\" in API group \"groundwork.dev\" at the cluster scope ({why}): setting spec.bmc sends its password to that BMC",
            user.name
        ))
    })
}

fn cross_check(
    store: &Store,
    kind: &'static KindInfo,
    obj: &Value,
    name: &str,
) -> Result<(), ApiError> {
    if kind.kind != "Node" {
        return Ok(());
    }
    let Some(rack_name) = obj.pointer("/spec/rack/name").and_then(Value::as_str) else {
        return Ok(());
    };
    let rack_kind = groundwork_types::kind_by_kind("Rack").expect("Rack is registered");
    let rack_target = Target {
        kind: rack_kind,
        namespace: None,
    };
    let Some(rack) = store
        .get(&rack_target.key(rack_name))
        .map_err(|e| ApiError::from_store(e, rack_kind, rack_name))?
    else {
        return Ok(());
    };
    let node: groundwork_types::Node = serde_json::from_value(obj.clone())
        .map_err(|e| ApiError::Internal(format!("admitted node does not decode: {e}")))?;
    let rack: groundwork_types::Rack = serde_json::from_value(rack.object).map_err(|e| {
        ApiError::Internal(format!("stored rack {rack_name:?} does not decode: {e}"))
    })?;
    let errs = groundwork_types::validate_node_in_rack(&node, &rack);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(kind, name, errs))
    }
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let id = uuid::Uuid::new_v4();
    id.as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// POST: creates an object.
pub(crate) async fn create(
    store: &Store,
    t: &Target,
    mut obj: Value,
    p: &Params,
) -> Result<Written, ApiError> {
    let kind = t.kind;
    check_type_meta(kind, &mut obj)?;
    let ns = t.namespace.clone().unwrap_or_default();
    let m = meta_mut(&mut obj)?;
    let mut name = m
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if name.is_empty()
        && let Some(g) = m.get("generateName").and_then(Value::as_str)
    {
        name = format!("{g}{}", random_suffix());
        m.insert("name".into(), name.clone().into());
    }
    if name.is_empty() {
        return Err(ApiError::invalid_one(
            kind,
            "",
            FieldError::required("metadata.name", "name or generateName is required"),
        ));
    }
    let errs = check_object_name(&name);
    if !errs.is_empty() {
        return Err(ApiError::invalid(kind, &name, errs));
    }
    if m.get("resourceVersion")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
    {
        return Err(ApiError::invalid_one(
            kind,
            &name,
            FieldError::invalid(
                "metadata.resourceVersion",
                "must not be set on objects to be created",
            ),
        ));
    }
    if kind.namespaced {
        match m.get("namespace").and_then(Value::as_str) {
            Some(n) if !n.is_empty() && n != ns => {
                return Err(ApiError::BadRequest(format!(
                    "the namespace of the provided object ({n}) does not match the namespace sent on the request ({ns})"
                )));
            }
            _ => {
                m.insert("namespace".into(), ns.clone().into());
            }
        }
    } else {
        m.remove("namespace");
    }
    m.insert("uid".into(), uuid::Uuid::new_v4().to_string().into());
    m.insert("creationTimestamp".into(), now_string().into());
    m.insert("generation".into(), 1.into());
    for k in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
    ] {
        m.remove(k);
    }
    if kind.has_status
        && let Some(o) = obj.as_object_mut()
    {
        o.remove("status");
    }
    // The creator owns what it wrote: as an apply when it came through server-side apply.
    let manager = p.manager();
    let now = now_string();
    if p.ssa {
        let fields = crate::ssa::leaves(&obj);
        let e = crate::ssa::Entry {
            manager,
            operation: "Apply".into(),
            api_version: kind.api_version(),
            time: now,
            fields,
        };
        crate::ssa::set_entries(&mut obj, &[e]);
    } else {
        crate::ssa::record_update(None, &mut obj, &manager, &kind.api_version(), &now);
    }
    let (obj, warnings) = admit(kind, obj, p.field_validation, &name)?;
    cross_check(store, kind, &obj, &name)?;
    check_credential_use(store, kind, p, None, &obj)?;
    if p.dry_run {
        return Ok(Written {
            code: StatusCode::CREATED,
            object: obj,
            warnings,
        });
    }
    let mut obj = obj;
    let c = store
        .write(WriteOp::Put {
            key: t.key(&name),
            value: stored_form(&mut obj),
            precondition: Precondition::MustNotExist,
        })
        .await
        .map_err(|e| ApiError::from_store(e, kind, &name))?;
    tracing::info!(kind = kind.kind, name, revision = c.revision, "created");
    set_resource_version(&mut obj, c.revision);
    Ok(Written {
        code: StatusCode::CREATED,
        object: obj,
        warnings,
    })
}

/// How an update derives the desired object from the current one.
pub(crate) enum Change<'a> {
    /// PUT: the whole object.
    Replace(&'a Value),
    /// RFC 7386 merge patch.
    Merge(&'a Value),
    /// Strategic merge patch: a merge patch in which `conditions` lists are merged by
    /// `type` ([`crate::strategic`]), so that a controller writes its own conditions and
    /// leaves the others' alone.
    Strategic(&'a Value),
    /// Server-side apply, applied as a merge patch. A missing object is reported without
    /// first catching up with the leader: the caller creates it instead, and the create's
    /// must-not-exist precondition, checked in log order, is what decides (when the create
    /// fails, the caller updates as for [`Change::Merge`], which catches up first).
    Apply(&'a Value),
    /// RFC 6902 JSON patch.
    Json(&'a json_patch::Patch),
}

impl Change<'_> {
    fn desired(&self, current: &Value) -> Result<Value, String> {
        match self {
            Change::Replace(v) => Ok((*v).clone()),
            Change::Merge(p) | Change::Apply(p) => {
                let mut v = current.clone();
                json_patch::merge(&mut v, p);
                Ok(v)
            }
            Change::Strategic(p) => {
                let mut v = current.clone();
                crate::strategic::merge(&mut v, p);
                Ok(v)
            }
            Change::Json(p) => {
                let mut v = current.clone();
                json_patch::patch(&mut v, p).map_err(|e| e.to_string())?;
                Ok(v)
            }
        }
    }
}

/// PUT or PATCH of the main resource or of `/status`, with retries on concurrent writes when
/// the client did not ask for a specific resourceVersion.
pub(crate) async fn update(
    store: &Store,
    t: &Target,
    name: &str,
    change: Change<'_>,
    part: Part,
    p: &Params,
) -> Result<Written, ApiError> {
    let kind = t.kind;
    let key = t.key(name);
    let mut caught_up = false;
    for _ in 0..MAX_RETRIES {
        let confirm_missing =
            !(matches!(change, Change::Apply(_)) && part == Part::Main && !p.dry_run) || caught_up;
        let current = current_object(store, &key, kind, name, confirm_missing).await?;
        let manager = p.manager();
        let now = now_string();
        let mut desired = match (&change, part) {
            // Server-side apply: field ownership decides (and may refuse with conflicts).
            (Change::Apply(config), Part::Main) => crate::ssa::apply(
                &current.object,
                config,
                &manager,
                p.force,
                &kind.api_version(),
                &now,
            )
            .map_err(|c| ApiError::ApplyConflict {
                kind,
                name: name.to_string(),
                conflicts: c,
            })?,
            _ => change.desired(&current.object).map_err(|e| {
                ApiError::invalid_one(
                    kind,
                    name,
                    FieldError::invalid("", format!("the patch does not apply: {e}")),
                )
            })?,
        };
        let applied_fields = desired.pointer("/metadata/managedFields").cloned();
        check_type_meta(kind, &mut desired)?;
        // A resourceVersion in the request (or left by a patch) is a precondition.
        let explicit = match meta_str(&desired, "resourceVersion") {
            Some(s) if !s.is_empty() => Some(s.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "metadata.resourceVersion: {s:?} is not a valid resource version"
                ))
            })?),
            _ => None,
        };
        if let Some(rv) = explicit
            && rv > current.revision
            && !caught_up
        {
            // This member may be behind the revision the client saw: catch up, then decide.
            catch_up(store, kind, name).await?;
            caught_up = true;
            continue;
        }
        if let Some(rv) = explicit
            && rv != current.revision
        {
            return Err(ApiError::conflict(
                kind,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let mut next = merge_server_fields(kind, &current, desired, part, name)?;
        if part == Part::Main {
            match (&change, applied_fields) {
                (Change::Apply(_), Some(f)) => {
                    meta_mut(&mut next)?.insert("managedFields".into(), f);
                }
                _ => crate::ssa::record_update(
                    Some(&current.object),
                    &mut next,
                    &manager,
                    &kind.api_version(),
                    &now,
                ),
            }
        }
        let (mut next, warnings) = admit(kind, next, p.field_validation, name)?;
        if part == Part::Status {
            check_machine_status(kind, p, &current.object, &next)?;
        }
        if part == Part::Main {
            cross_check(store, kind, &next, name)?;
            check_credential_use(store, kind, p, Some(&current.object), &next)?;
            if !same_desired(&next, &current.object) {
                meta_mut(&mut next)?.insert(
                    "generation".into(),
                    (generation(&current.object) + 1).into(),
                );
            }
        }
        if same_but_rv(&next, &current.object) {
            return Ok(Written {
                code: StatusCode::OK,
                object: current.object,
                warnings,
            });
        }
        let deleting = meta_str(&next, "deletionTimestamp").is_some();
        if p.dry_run {
            return Ok(Written {
                code: StatusCode::OK,
                object: next,
                warnings,
            });
        }
        let op = if deleting && finalizers(&next).is_empty() {
            WriteOp::Delete {
                key: key.clone(),
                precondition: Precondition::Revision(current.revision),
            }
        } else {
            WriteOp::Put {
                key: key.clone(),
                value: stored_form(&mut next),
                precondition: Precondition::Revision(current.revision),
            }
        };
        let is_delete = matches!(op, WriteOp::Delete { .. });
        match store.write(op).await {
            Ok(c) => {
                if is_delete {
                    tracing::info!(
                        kind = kind.kind,
                        name,
                        revision = c.revision,
                        "last finalizer removed; deleted"
                    );
                } else {
                    tracing::debug!(kind = kind.kind, name, revision = c.revision, "updated");
                }
                let object = if is_delete {
                    decoded(&c)?
                } else {
                    set_resource_version(&mut next, c.revision);
                    next
                };
                return Ok(Written {
                    code: StatusCode::OK,
                    object,
                    warnings,
                });
            }
            Err(groundwork_store::StoreError::Conflict { .. })
                if explicit.is_none()
                    || matches!(
                        change,
                        Change::Merge(_)
                            | Change::Strategic(_)
                            | Change::Apply(_)
                            | Change::Json(_)
                    ) =>
            {
                // Someone wrote in between (or this member is behind): catch up, read again
                // and re-apply.
                catch_up(store, kind, name).await?;
                caught_up = true;
                continue;
            }
            Err(e) => return Err(ApiError::from_store(e, kind, name)),
        }
    }
    Err(ApiError::conflict(
        kind,
        name,
        "too many concurrent writes to this object; retry",
    ))
}

/// The text the store keeps for `obj`, which is left without `metadata.resourceVersion` (the
/// revision it is stored at: the caller sets it from the write's result).
fn stored_form(obj: &mut Value) -> Json {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    Json::encode(obj)
}

/// The object a write returned, at its revision.
fn decoded(c: &groundwork_store::Committed) -> Result<Value, ApiError> {
    c.object
        .decode(c.revision)
        .map_err(|e| ApiError::Internal(format!("the stored object does not parse: {e}")))
}

/// Waits until this member has applied everything the leader had committed (a read index;
/// nothing on a single server).
async fn catch_up(store: &Store, kind: &'static KindInfo, name: &str) -> Result<(), ApiError> {
    store
        .linearize()
        .await
        .map_err(|e| ApiError::from_store(e, kind, name))
}

/// The stored object to change. A member that does not have it may be a follower still
/// catching up (after a restart, or a partition): with `confirm_missing`, it reads again
/// after catching up before answering 404.
async fn current_object(
    store: &Store,
    key: &str,
    kind: &'static KindInfo,
    name: &str,
    confirm_missing: bool,
) -> Result<StoredObject, ApiError> {
    let read = || {
        store
            .get(key)
            .map_err(|e| ApiError::from_store(e, kind, name))
    };
    if let Some(c) = read()? {
        return Ok(c);
    }
    if !confirm_missing {
        return Err(ApiError::not_found(kind, name));
    }
    catch_up(store, kind, name).await?;
    read()?.ok_or_else(|| ApiError::not_found(kind, name))
}

/// Carries server-owned fields over from the current object and keeps writes to their part.
fn merge_server_fields(
    kind: &'static KindInfo,
    current: &StoredObject,
    desired: Value,
    part: Part,
    name: &str,
) -> Result<Value, ApiError> {
    let cur_meta = meta(&current.object).cloned().unwrap_or_default();
    let mut next = match part {
        Part::Main => {
            let mut next = desired;
            if let Some(n) = meta_str(&next, "name")
                && n != name
            {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            if let (Some(u), Some(cu)) = (
                meta_str(&next, "uid"),
                cur_meta.get("uid").and_then(Value::as_str),
            ) && !u.is_empty()
                && u != cu
            {
                return Err(ApiError::invalid_one(
                    kind,
                    name,
                    FieldError::invalid("metadata.uid", format!("{u:?}: field is immutable")),
                ));
            }
            if kind.has_status {
                let o = next
                    .as_object_mut()
                    .ok_or_else(|| ApiError::BadRequest("the body must be a JSON object".into()))?;
                match current.object.get("status") {
                    Some(s) => o.insert("status".into(), s.clone()),
                    None => o.remove("status"),
                };
            }
            if cur_meta.contains_key("deletionTimestamp") {
                let old = finalizers(&current.object);
                if let Some(f) = finalizers(&next).into_iter().find(|f| !old.contains(f)) {
                    return Err(ApiError::invalid_one(
                        kind,
                        name,
                        FieldError::invalid(
                            "metadata.finalizers",
                            format!(
                                "{f:?}: no new finalizers can be added if the object is being deleted"
                            ),
                        ),
                    ));
                }
            }
            next
        }
        Part::Status => {
            let mut next = current.object.clone();
            let o = next
                .as_object_mut()
                .ok_or_else(|| ApiError::Internal("stored object is not a JSON object".into()))?;
            match desired.get("status") {
                Some(s) if !s.is_null() => o.insert("status".into(), s.clone()),
                _ => o.remove("status"),
            };
            next
        }
    };
    let m = meta_mut(&mut next)?;
    m.insert("name".into(), name.into());
    for k in [
        "uid",
        "creationTimestamp",
        "generation",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "namespace",
    ] {
        match cur_meta.get(k) {
            Some(v) => m.insert(k.into(), v.clone()),
            None => m.remove(k),
        };
    }
    m.remove("resourceVersion");
    // Ownership is the server's to keep: never what a client sends.
    match cur_meta.get("managedFields") {
        Some(v) => m.insert("managedFields".into(), v.clone()),
        None => m.remove("managedFields"),
    };
    Ok(next)
}

/// Options a DELETE may carry in its body.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeleteOptions {
    #[serde(default)]
    pub preconditions: Option<Preconditions>,
    #[serde(default)]
    pub dry_run: Option<Vec<String>>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

/// DELETE: removes the object, or marks it for deletion while finalizers remain.
pub(crate) async fn delete(
    store: &Store,
    t: &Target,
    name: &str,
    opts: &DeleteOptions,
    p: &Params,
) -> Result<Written, ApiError> {
    let kind = t.kind;
    let key = t.key(name);
    let dry_run = p.dry_run
        || opts
            .dry_run
            .as_ref()
            .is_some_and(|d| d.iter().any(|x| x == "All"));
    let pre = opts.preconditions.as_ref();
    for _ in 0..MAX_RETRIES {
        let current = current_object(store, &key, kind, name, true).await?;
        if let Some(uid) = pre.and_then(|p| p.uid.as_deref())
            && meta_str(&current.object, "uid") != Some(uid)
        {
            return Err(ApiError::conflict(
                kind,
                name,
                format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&current.object, "uid").unwrap_or("")
                ),
            ));
        }
        if let Some(rv) = pre.and_then(|p| p.resource_version.as_deref())
            && rv != current.revision.to_string()
        {
            return Err(ApiError::conflict(
                kind,
                name,
                format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    current.revision
                ),
            ));
        }
        let op = if finalizers(&current.object).is_empty() {
            WriteOp::Delete {
                key: key.clone(),
                precondition: Precondition::Revision(current.revision),
            }
        } else if meta_str(&current.object, "deletionTimestamp").is_some() {
            return Ok(Written {
                code: StatusCode::ACCEPTED,
                object: current.object,
                warnings: vec![],
            });
        } else {
            let mut next = current.object.clone();
            let g = generation(&next);
            let m = meta_mut(&mut next)?;
            m.insert("deletionTimestamp".into(), now_string().into());
            m.insert("deletionGracePeriodSeconds".into(), 0.into());
            m.insert("generation".into(), (g + 1).into());
            WriteOp::Put {
                key: key.clone(),
                value: stored_form(&mut next),
                precondition: Precondition::Revision(current.revision),
            }
        };
        let graceful = matches!(op, WriteOp::Put { .. });
        if dry_run {
            return Ok(Written {
                code: StatusCode::OK,
                object: current.object,
                warnings: vec![],
            });
        }
        match store.write(op).await {
            Ok(c) => {
                tracing::info!(
                    kind = kind.kind,
                    name,
                    revision = c.revision,
                    graceful,
                    "delete"
                );
                let code = if graceful {
                    StatusCode::ACCEPTED
                } else {
                    StatusCode::OK
                };
                return Ok(Written {
                    code,
                    // The object as stored (graceful) or its last state (deleted).
                    object: decoded(&c)?,
                    warnings: vec![],
                });
            }
            Err(groundwork_store::StoreError::Conflict { .. })
                if pre.is_none_or(|p| p.resource_version.is_none()) =>
            {
                catch_up(store, kind, name).await?;
                continue;
            }
            Err(e) => return Err(ApiError::from_store(e, kind, name)),
        }
    }
    Err(ApiError::conflict(
        kind,
        name,
        "too many concurrent writes to this object; retry",
    ))
}

#[cfg(test)]
mod compare_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn comparisons_ignore_only_what_they_name() {
        let a = json!({"kind": "Node", "metadata": {"name": "a", "resourceVersion": "5"},
                       "spec": {"x": 1}, "status": {"s": 1}});
        let b = json!({"kind": "Node", "metadata": {"name": "a", "resourceVersion": "9"},
                       "spec": {"x": 1}, "status": {"s": 1}});
        assert!(same_but_rv(&a, &b));
        let mut c = b.clone();
        c["metadata"]["labels"] = json!({"l": "v"});
        assert!(!same_but_rv(&a, &c), "another metadata field differs");
        let mut d = b.clone();
        d["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("resourceVersion");
        assert!(same_but_rv(&a, &d), "resourceVersion absent on one side");
        let mut e = b.clone();
        e["status"]["s"] = json!(2);
        assert!(!same_but_rv(&a, &e));
        assert!(same_desired(&a, &e), "status is not desired state");
        e["spec"]["x"] = json!(2);
        assert!(!same_desired(&a, &e));
        let mut f = a.clone();
        f["extra"] = json!(true);
        assert!(!same_desired(&a, &f), "a top-level field only on one side");
        assert!(!same_but_rv(&f, &a));
    }
}
