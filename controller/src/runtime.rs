//! The reconcile runtime every controller shares:
//!
//! watch (shared [`Caches`]) → map each change to object names → [`WorkQueue`] (one entry
//! per object, never two reconciles of one object at once) → workers call
//! [`Reconciler::reconcile`] → [`Action`] (requeue after, or wait for the next change) →
//! on error, retry after `max(per-object exponential backoff, shared token bucket)`.
//!
//! A controller acts only while it holds its Lease (see [`crate::lease`]); on gaining it, it
//! waits for the caches to sync and then reconciles every object once (level-triggered
//! resync), so nothing that changed while it was not leading is missed.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use groundwork_observe::{ControllerLabels, ReconcileLabels, metrics};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::caches::{Caches, Change, Kinds};
use crate::events::Recorder;
use crate::queue::WorkQueue;
use crate::retry::{Backoff, TokenBucket};

/// What to do after a successful reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Reconcile again after this long even if nothing changes.
    Requeue(Duration),
    /// Reconcile again when the object or something it depends on changes.
    AwaitChange,
}

/// Why a reconcile failed; the runtime retries it with backoff (a 409 sooner).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// A BMC did not do what was asked (the reason is in the object's conditions).
    #[error(transparent)]
    Bmc(#[from] crate::bmcpool::BmcFailure),
    /// Writes kept losing optimistic-concurrency races (as a 409 from the API).
    #[error("conflict: {0}")]
    Conflict(String),
    /// An object could not be encoded or a patch built (a bug, not the environment).
    #[error("encoding: {0}")]
    Encode(String),
    /// Something the reconcile needs did not answer (retried with backoff).
    #[error("{0}")]
    Unavailable(String),
}

impl Error {
    /// A write lost an optimistic-concurrency race (409): retry, nothing is wrong.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(s)) if s.code == 409)
            || matches!(self, Error::Conflict(_))
    }
}

/// What a reconcile can use.
pub struct Ctx {
    pub client: Client,
    pub caches: Caches,
    pub recorder: Recorder,
    /// Opens Credentials' sealed passwords (the API server's secret key).
    pub secret_key: Option<groundwork_types::secrets::SecretKey>,
    /// The one way to BMCs (the network in production, a simulator in tests).
    pub bmc: Arc<crate::bmcpool::BmcPool>,
    /// The cluster CA (PEM), which the services' certificates chain to: what Groundwork
    /// trusts when it calls them over TLS.
    pub cluster_ca: Option<String>,
}

/// One controller: its object kind, how changes map to its objects, and the reconcile.
pub trait Reconciler: Send + Sync + 'static {
    type K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static;
    /// Controller name: Lease name, metric label, log field.
    const NAME: &'static str;
    /// Changes mapped to an object within this long of the first are reconciled once, after
    /// it: for roll-ups whose reconcile reads every object, so that a stream of changes costs
    /// one pass per period, not one per change.
    const COALESCE: Duration = Duration::ZERO;
    /// The kinds this controller reads or maps from, besides its own `K` (declared to the
    /// process' caches).
    fn watches(kinds: Kinds) -> Kinds {
        kinds
    }
    /// Names of the objects to reconcile because `change` happened.
    fn map(&self, change: &Change, caches: &Caches) -> Vec<String>;
    fn reconcile(
        &self,
        obj: Arc<Self::K>,
        ctx: &Ctx,
    ) -> impl Future<Output = Result<Action, Error>> + Send;
}

/// Tuning of the runtime.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Reconciles of different objects running at once, per controller.
    pub workers: usize,
    pub backoff: Backoff,
    /// Retries per second across all objects of a controller, and the burst.
    pub retry_rate: f64,
    pub retry_burst: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            workers: 2,
            backoff: Backoff::default(),
            retry_rate: 10.0,
            retry_burst: 100,
        }
    }
}

/// `kind/name` as logs and `groundwork logs` name an object (lower-case kind).
pub fn object_key<K: Resource<DynamicType = ()>>(name: &str) -> String {
    format!("{}/{name}", K::kind(&()).to_ascii_lowercase())
}

/// Which of an object's conditions a status write carries: each controller writes its own
/// and never another's (docs/ARCHITECTURE.md, "Node.status ownership").
#[derive(Clone, Copy, Debug)]
pub enum Owns<'a> {
    /// The object's status is this controller's alone (Racks, Datacenters, Profiles).
    AllConditions,
    /// These condition types (a Node's status is shared by several controllers).
    Conditions(&'a [&'a str]),
}

/// Writes `status` (a strategic merge patch of the status: conditions are merged by type on
/// the server) if it changes anything, with the cached object's resourceVersion as
/// precondition (409 if the cache was stale). Only the conditions `owns` names are sent.
/// Returns whether it wrote.
pub async fn patch_status<K>(
    client: &Client,
    obj: &K,
    status: Value,
    owns: Owns<'_>,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + serde::Serialize,
{
    write_status(client, obj, status, owns, true).await
}

/// As [`patch_status`], without the precondition: for fields only this controller writes,
/// whose new values do not depend on anyone else's (a 409 there would only be churn).
pub async fn patch_own_status<K>(
    client: &Client,
    obj: &K,
    status: Value,
    owns: Owns<'_>,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + serde::Serialize,
{
    write_status(client, obj, status, owns, false).await
}

async fn write_status<K>(
    client: &Client,
    obj: &K,
    mut status: Value,
    owns: Owns<'_>,
    precondition: bool,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + serde::Serialize,
{
    if let (Owns::Conditions(types), Some(conds)) = (
        owns,
        status.get_mut("conditions").and_then(Value::as_array_mut),
    ) {
        conds.retain(|c| {
            c.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| types.contains(&t))
        });
    }
    let current = serde_json::to_value(obj)
        .map_err(|e| Error::Encode(e.to_string()))?
        .get("status")
        .cloned()
        .unwrap_or(Value::Null);
    if unchanged(&current, &status) {
        return Ok(false);
    }
    let mut patch = serde_json::json!({ "status": status });
    if precondition {
        patch["metadata"] = serde_json::json!({"resourceVersion": obj.resource_version()});
    }
    let api: kube::Api<K> = kube::Api::all(client.clone());
    api.patch_status(
        &obj.name_any(),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Strategic(&patch),
    )
    .await?;
    Ok(true)
}

/// Whether applying the status patch (conditions merged by type) would change nothing.
fn unchanged(current: &Value, patch: &Value) -> bool {
    let Some(fields) = patch.as_object() else {
        return false;
    };
    fields.iter().all(|(k, v)| {
        let cur = current.get(k).unwrap_or(&Value::Null);
        if k == "conditions" {
            let Some(items) = v.as_array() else {
                return cur.is_null() && v.is_null();
            };
            return items.iter().all(|c| {
                cur.as_array().is_some_and(|have| {
                    have.iter()
                        .any(|h| h.get("type") == c.get("type") && h == c)
                })
            });
        }
        let mut merged = serde_json::json!({ k.clone(): cur.clone() });
        json_patch::merge(&mut merged, &serde_json::json!({ k.clone(): v.clone() }));
        merged.get(k).unwrap_or(&Value::Null) == cur
    })
}

/// Runs controller `r` whenever `leading` is true, until `leading`'s sender is dropped.
pub async fn run<R: Reconciler>(
    r: Arc<R>,
    ctx: Arc<Ctx>,
    settings: Settings,
    mut leading: watch::Receiver<bool>,
) {
    let labels = ControllerLabels {
        controller: R::NAME.into(),
    };
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        metrics().leader.get_or_create(&labels).set(1);
        let queue = Arc::new(WorkQueue::new());
        let mut tasks = Vec::new();
        // Subscribe before the resync, so a change between the two is not missed.
        let mut changes = ctx.caches.subscribe();
        tasks.push(tokio::spawn({
            let (r, ctx, queue) = (r.clone(), ctx.clone(), queue.clone());
            async move {
                ctx.caches.wait_synced().await;
                // Changes received so far are in the caches already (an object is in the
                // cache before its change is sent, and the initial list before the caches
                // are synced): the resync covers them. Queued again after the resync, they
                // reconciled an object a second time at once, ahead of its backoff.
                loop {
                    match changes.try_recv() {
                        Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::TryRecvError::Empty) => break,
                        Err(tokio::sync::broadcast::error::TryRecvError::Closed) => return,
                    }
                }
                for o in ctx.caches.store::<R::K>().state() {
                    queue.add(&o.name_any());
                }
                tracing::info!(
                    controller = R::NAME,
                    objects = queue.len(),
                    "caches synced; reconciling"
                );
                loop {
                    match changes.recv().await {
                        Ok(c) => {
                            let at = Instant::now() + R::COALESCE;
                            for k in r.map(&c, &ctx.caches) {
                                queue.add_at(&k, at);
                            }
                        }
                        Err(RecvError::Lagged(n)) => {
                            tracing::warn!(
                                controller = R::NAME,
                                missed = n,
                                "fell behind the watch; resyncing all objects"
                            );
                            for o in ctx.caches.store::<R::K>().state() {
                                queue.add(&o.name_any());
                            }
                        }
                        Err(RecvError::Closed) => return,
                    }
                    metrics()
                        .queue_depth
                        .get_or_create(&ControllerLabels {
                            controller: R::NAME.into(),
                        })
                        .set(queue.len() as i64);
                }
            }
        }));
        let failures: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let bucket = Arc::new(TokenBucket::new(settings.retry_rate, settings.retry_burst));
        for _ in 0..settings.workers.max(1) {
            tasks.push(tokio::spawn(worker(
                r.clone(),
                ctx.clone(),
                queue.clone(),
                failures.clone(),
                bucket.clone(),
                settings.backoff,
            )));
        }
        let _ = leading.wait_for(|l| !*l).await;
        queue.close();
        for t in &tasks {
            t.abort();
        }
        metrics().leader.get_or_create(&labels).set(0);
        metrics().queue_depth.get_or_create(&labels).set(0);
        tracing::info!(controller = R::NAME, "stopped (not leading)");
    }
}

async fn worker<R: Reconciler>(
    r: Arc<R>,
    ctx: Arc<Ctx>,
    queue: Arc<WorkQueue>,
    failures: Arc<Mutex<HashMap<String, u32>>>,
    bucket: Arc<TokenBucket>,
    backoff: Backoff,
) {
    let m = metrics();
    let labels = ControllerLabels {
        controller: R::NAME.into(),
    };
    let result = |result: &str| ReconcileLabels {
        controller: R::NAME.into(),
        result: result.into(),
    };
    while let Some(key) = queue.next().await {
        m.queue_depth.get_or_create(&labels).set(queue.len() as i64);
        let Some(obj) = ctx.caches.store::<R::K>().get(&ObjectRef::new(&key)) else {
            // Deleted: nothing of it is left to reconcile.
            failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            queue.done(&key);
            continue;
        };
        let span = tracing::info_span!(
            "reconcile",
            controller = R::NAME,
            object = %object_key::<R::K>(&key),
            resource_version = obj.resource_version().unwrap_or_default(),
        );
        let start = Instant::now();
        let res = r.reconcile(obj, &ctx).instrument(span.clone()).await;
        m.reconcile_duration
            .get_or_create(&labels)
            .observe(start.elapsed().as_secs_f64());
        let next = match res {
            Ok(action) => {
                failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
                match action {
                    Action::Requeue(d) => {
                        m.reconciles.get_or_create(&result("requeue")).inc();
                        Some(Instant::now() + d)
                    }
                    Action::AwaitChange => {
                        m.reconciles.get_or_create(&result("success")).inc();
                        None
                    }
                }
            }
            Err(e) if e.is_conflict() => {
                // Someone wrote the object after our cache saw it. Its newer version is on the
                // way through the watch and triggers a reconcile (or already did: then the key
                // was parked and is due now). The requeue is only a safety net.
                m.reconciles.get_or_create(&result("conflict")).inc();
                span.in_scope(|| {
                    tracing::debug!("stale cache (409 Conflict); waiting for the newer version")
                });
                Some(Instant::now() + Duration::from_secs(1))
            }
            Err(e) => {
                m.reconciles.get_or_create(&result("error")).inc();
                m.reconcile_errors.get_or_create(&labels).inc();
                let n = {
                    let mut f = failures.lock().unwrap_or_else(|p| p.into_inner());
                    let n = f.entry(key.clone()).or_insert(0);
                    *n += 1;
                    *n
                };
                let delay = backoff.delay(n).max(bucket.reserve());
                let retry_in_ms = delay.as_millis() as u64;
                span.in_scope(|| {
                    tracing::warn!(error = %e, attempt = n, retry_in_ms, "reconcile failed");
                });
                Some(Instant::now() + delay)
            }
        };
        queue.done(&key);
        if let Some(at) = next {
            queue.add_at(&key, at);
        }
        m.queue_depth.get_or_create(&labels).set(queue.len() as i64);
    }
}

/// Sets condition `type_` and records an Event when its status flips (or is first set to
/// False), with a log line; not on every reconcile.
pub async fn condition_with_event<K: Resource<DynamicType = ()>>(
    ctx: &Ctx,
    obj: &K,
    conds: &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
) {
    let before = conds
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status == "True");
    groundwork_types::set_condition(
        conds,
        type_,
        ok,
        reason,
        message,
        obj.meta().generation,
        jiff::Timestamp::now(),
    );
    if before != Some(ok) && (before.is_some() || !ok) {
        let t = if ok {
            crate::events::EventType::Normal
        } else {
            crate::events::EventType::Warning
        };
        ctx.recorder
            .publish(&obj.object_ref(&()), t, reason, message)
            .await;
        if ok {
            tracing::info!(condition = type_, reason, "{message}");
        } else {
            tracing::warn!(condition = type_, reason, "{message}");
        }
    }
}

/// Where an object stands with respect to a controller's finalizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finalizing {
    /// Live, and carries the finalizer: reconcile normally.
    Apply,
    /// Being deleted while carrying the finalizer: clean up, then [`remove_finalizer`].
    Cleanup,
    /// Being deleted without our finalizer: nothing of ours to clean up.
    Gone,
}

fn finalizers_patch(obj: &impl Resource, ops: Vec<Value>) -> Value {
    // `test` first: if the list changed since the cache saw it, the patch fails (422) and the
    // reconcile is retried on fresh data, as kube-runtime's finalizer helper does.
    let current = obj.meta().finalizers.clone().unwrap_or_default();
    let mut all =
        vec![serde_json::json!({"op": "test", "path": "/metadata/finalizers", "value": current})];
    if obj.meta().finalizers.is_none() {
        all = vec![serde_json::json!({"op": "add", "path": "/metadata/finalizers", "value": []})];
    }
    all.extend(ops);
    Value::Array(all)
}

/// Makes sure a live object carries finalizer `name` (adding it if needed) and says what the
/// reconcile should do.
pub async fn finalizer_step<K>(client: &Client, obj: &K, name: &str) -> Result<Finalizing, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + serde::Serialize,
{
    let has = obj.finalizers().iter().any(|f| f == name);
    if obj.meta().deletion_timestamp.is_some() {
        return Ok(if has {
            Finalizing::Cleanup
        } else {
            Finalizing::Gone
        });
    }
    if !has {
        let patch = finalizers_patch(
            obj,
            vec![serde_json::json!({"op": "add", "path": "/metadata/finalizers/-", "value": name})],
        );
        let patch: json_patch::Patch =
            serde_json::from_value(patch).map_err(|e| Error::Encode(e.to_string()))?;
        kube::Api::<K>::all(client.clone())
            .patch(
                &obj.name_any(),
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Json::<()>(patch),
            )
            .await?;
    }
    Ok(Finalizing::Apply)
}

/// Removes finalizer `name` after cleanup; the API deletes the object once none remain.
pub async fn remove_finalizer<K>(client: &Client, obj: &K, name: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + serde::Serialize,
{
    let Some(i) = obj.finalizers().iter().position(|f| f == name) else {
        return Ok(());
    };
    let patch = finalizers_patch(
        obj,
        vec![serde_json::json!({"op": "remove", "path": format!("/metadata/finalizers/{i}")})],
    );
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(|e| Error::Encode(e.to_string()))?;
    match kube::Api::<K>::all(client.clone())
        .patch(
            &obj.name_any(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
