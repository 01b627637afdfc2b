//! The GitSource controller: Git → the API, a straight chain of stages per pass.
//!
//! 1. **Gate**: suspended, or a `dependsOn` GitSource not Ready (the condition names which
//!    and why) → wait.
//! 2. **Fetch** the ref ([`git`]); an unreachable repository keeps the last applied commit.
//! 3. **Plan** (pure, [`plan`]): parse every manifest of the commit, check kinds and names,
//!    order them (Datacenter, Rack, Credential, Profile, Node, ServiceStack, then the rest;
//!    `groundwork.dev/apply-order` overrides).
//! 4. **Check** every object with a server-side dry run (the API's own admission) and refuse
//!    to take over an object the GitSource did not create. One failure and nothing of the
//!    commit is applied: the errors name the file, line and field, the last good commit
//!    stays live.
//! 5. **Apply** (client-side three-way merge against the last applied configuration kept
//!    on the object; drift in `report` mode is listed, not corrected), then **prune** what
//!    the inventory holds and the commit no longer has, only objects carrying this
//!    GitSource's annotation.
//! 6. **Report**: commits, inventory, errors, drift, conditions, Events.

pub mod git;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, stream};
use groundwork_types::{
    DriftMode, GITSOURCE_ANNOTATION, GitSource, GitSourceStatus, InventoryEntry,
    LAST_APPLIED_ANNOTATION, ManifestError, condition_is_true, set_condition,
};
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, ObjectMeta};
use kube::{Api, Resource, ResourceExt};
use serde_json::Value;

use crate::caches::{Caches, Change, Kinds};
use crate::events::EventType;
use crate::runtime::{Action, Ctx, Error, Owns, Reconciler, patch_status};

use plan::Planned;

/// What a GitSource's change is judged by: (generation, the webhook's request, Ready).
type Seen = (Option<i64>, Option<String>, bool);

pub struct GitSourceController {
    /// Where each GitSource's bare cache repository is kept (`DIR/NAME`).
    pub cache_dir: PathBuf,
    /// name → (generation, the webhook's request, Ready) last seen: its own status writes do
    /// not fetch again; a spec change, a webhook or a dependency's readiness does.
    seen: std::sync::Mutex<std::collections::HashMap<String, Seen>>,
    pub limits: git::Limits,
    /// The cluster CA (PEM): repositories served by the platform's own Gitea have
    /// certificates from it. Trusted besides the system's roots.
    pub cluster_ca: Option<String>,
}

impl GitSourceController {
    pub fn new(cache_dir: PathBuf, cluster_ca: Option<String>) -> Self {
        GitSourceController {
            cache_dir,
            seen: Default::default(),
            limits: git::Limits::default(),
            cluster_ca,
        }
    }

    /// The CA bundle git trusts: the system's roots and the cluster CA (written once).
    fn ca_bundle(&self) -> Option<PathBuf> {
        let ca = self.cluster_ca.as_ref()?;
        let path = self.cache_dir.join("ca-bundle.pem");
        if !path.exists() {
            let system =
                std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
            std::fs::create_dir_all(&self.cache_dir).ok()?;
            let tmp = path.with_extension("new");
            std::fs::write(&tmp, format!("{system}\n{ca}\n")).ok()?;
            std::fs::rename(&tmp, &path).ok()?;
        }
        Some(path)
    }
}

/// One write's outcome: the step's index in its rank, whether it changed anything, the
/// result.
type Written = (usize, bool, Result<(), kube::Error>);

fn resource(k: &groundwork_types::KindInfo) -> ApiResource {
    ApiResource {
        group: k.group.to_string(),
        version: k.version.to_string(),
        api_version: k.api_version(),
        kind: k.kind.to_string(),
        plural: k.plural.to_string(),
    }
}

fn api_of(ctx: &Ctx, k: &groundwork_types::KindInfo) -> Api<DynamicObject> {
    Api::all_with(ctx.client.clone(), &resource(k))
}

/// The field an API refusal names (`... is invalid: spec.x: Required value: ...`).
fn field_of(message: &str) -> Option<String> {
    let rest = message.split_once("is invalid: ")?.1;
    let field = rest.split_once(": ")?.0.trim();
    (!field.is_empty() && !field.contains(' ')).then(|| field.to_string())
}

fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// What one object of the commit becomes: the object to send (with this GitSource's
/// annotations) and, when it exists, the patch from the live object.
struct Step<'a> {
    p: &'a Planned,
    kind: &'static groundwork_types::KindInfo,
    live: Option<DynamicObject>,
    desired: Value,
}

impl Step<'_> {
    fn patch(&self) -> Option<serde_json::Map<String, Value>> {
        let live = self.live.as_ref()?;
        let live = serde_json::to_value(live).unwrap_or(Value::Null);
        let original: Value = live
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(LAST_APPLIED_ANNOTATION))
            .and_then(Value::as_str)
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or(Value::Null);
        Some(groundwork_types::manifests::three_way_merge_patch(
            &original,
            &self.desired,
            &live,
        ))
    }
}

impl GitSourceController {
    async fn write(
        &self,
        gs: &GitSource,
        status: &GitSourceStatus,
        ctx: &Ctx,
    ) -> Result<(), Error> {
        let mut v = serde_json::to_value(status).unwrap_or(Value::Null);
        // A merge patch: a list emptied must be sent as null, or the old one stays.
        if let Some(m) = v.as_object_mut() {
            for k in ["errors", "drift", "inventory"] {
                m.entry(k).or_insert(Value::Null);
            }
        }
        patch_status(&ctx.client, gs, v, Owns::AllConditions).await?;
        Ok(())
    }

    /// The live objects of the planned kinds, by (kind, name).
    async fn live(
        &self,
        kinds: &BTreeSet<&'static str>,
        ctx: &Ctx,
    ) -> Result<BTreeMap<(String, String), DynamicObject>, String> {
        let mut out = BTreeMap::new();
        for k in kinds {
            let info = groundwork_types::kind_by_kind(k).expect("planned kinds exist");
            let list = api_of(ctx, info)
                .list(&Default::default())
                .await
                .map_err(|e| format!("listing {}: {}", info.plural, api_message(&e)))?;
            for o in list.items {
                out.insert((k.to_string(), o.name_any()), o);
            }
        }
        Ok(out)
    }
}

impl Reconciler for GitSourceController {
    type K = GitSource;
    const NAME: &'static str = "gitsource";

    fn watches(kinds: Kinds) -> Kinds {
        kinds.watch::<groundwork_types::Credential>()
    }

    fn map(&self, change: &Change, c: &Caches) -> Vec<String> {
        let Some(g) = change.get::<GitSource>() else {
            return vec![];
        };
        let name = g.name_any();
        let ready = g
            .status
            .as_ref()
            .is_some_and(|s| condition_is_true(&s.conditions, "Ready"));
        let now = (
            g.metadata.generation,
            g.annotations()
                .get(groundwork_types::REQUESTED_AT_ANNOTATION)
                .cloned(),
            ready,
        );
        let before = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), now.clone());
        let mut out = Vec::new();
        let deleted = g.metadata.deletion_timestamp.is_some();
        // Itself on a spec change or a webhook's request (not its own status writes) ...
        if before
            .as_ref()
            .is_none_or(|b| (&b.0, &b.1) != (&now.0, &now.1))
            || deleted
        {
            out.push(name.clone());
        }
        // ... and the GitSources that wait for it when its readiness changes.
        if before.as_ref().is_none_or(|b| b.2 != now.2) {
            out.extend(
                c.store::<GitSource>()
                    .state()
                    .iter()
                    .filter(|o| o.spec.depends_on.contains(&name))
                    .map(|o| o.name_any()),
            );
        }
        out
    }

    async fn reconcile(&self, gs: Arc<GitSource>, ctx: &Ctx) -> Result<Action, Error> {
        let name = gs.name_any();
        let generation = gs.metadata.generation;
        let mut status = gs.status.clone().unwrap_or_default();
        status.webhook_path = Some(format!("/hooks/gitsource/{name}"));
        let interval = Duration::from_secs(gs.spec.interval_seconds.max(5) as u64);
        let oref = gs.object_ref(&());
        // 1. Gate.
        if gs.spec.suspend {
            setc(
                &mut status.conditions,
                generation,
                "Ready",
                false,
                "Suspended",
                "spec.suspend is set: nothing is fetched, applied, pruned or corrected",
            );
            self.write(&gs, &status, ctx).await?;
            return Ok(Action::AwaitChange);
        }
        if let Some(why) = waiting_for(&gs, ctx) {
            setc(
                &mut status.conditions,
                generation,
                "Ready",
                false,
                "DependencyNotReady",
                &why,
            );
            setc(
                &mut status.conditions,
                generation,
                "Stalled",
                true,
                "DependencyNotReady",
                &why,
            );
            self.write(&gs, &status, ctx).await?;
            return Ok(Action::Requeue(Duration::from_secs(10)));
        }
        setc(
            &mut status.conditions,
            generation,
            "Stalled",
            false,
            "NotStalled",
            "",
        );
        // 2. Fetch.
        let basic = match &gs.spec.credential {
            Some(c) => {
                let user = ctx
                    .caches
                    .store::<groundwork_types::Credential>()
                    .get(&kube::runtime::reflector::ObjectRef::new(c))
                    .map(|x| x.spec.username.clone());
                match (user, crate::stack::credential_value(ctx, c)) {
                    (Some(u), Some(p)) => Some((u, p)),
                    _ => {
                        let why = format!(
                            "Credential {c} (spec.credential) is not there or cannot be opened"
                        );
                        setc(
                            &mut status.conditions,
                            generation,
                            "Ready",
                            false,
                            "CredentialMissing",
                            &why,
                        );
                        self.write(&gs, &status, ctx).await?;
                        return Ok(Action::Requeue(Duration::from_secs(10)));
                    }
                }
            }
            None => None,
        };
        let cache = self.cache_dir.join(&name);
        let fetched = git::fetch(
            &cache,
            &gs.spec.url,
            &gs.spec.git_ref,
            &gs.spec.path,
            match (&basic, &gs.spec.ssh_known_hosts) {
                (Some((_, key)), Some(kh)) if gs.spec.url.starts_with("ssh://") => git::Auth::Ssh {
                    key,
                    known_hosts: kh,
                },
                (Some((u, p)), _) => git::Auth::Basic(u, p),
                (None, _) => git::Auth::None,
            },
            self.ca_bundle().as_deref(),
            self.limits,
        )
        .await;
        let fetched = match fetched {
            Ok(f) => f,
            Err(e) => {
                let why = format!(
                    "{e}; {} stays applied",
                    status
                        .last_applied_commit
                        .as_deref()
                        .map(short)
                        .unwrap_or("nothing")
                );
                tracing::warn!(gitsource = %name, error = %e, "fetch failed");
                setc(
                    &mut status.conditions,
                    generation,
                    "Fetched",
                    false,
                    "FetchFailed",
                    &why,
                );
                if status.last_applied_commit.is_none() {
                    setc(
                        &mut status.conditions,
                        generation,
                        "Ready",
                        false,
                        "FetchFailed",
                        &why,
                    );
                }
                self.write(&gs, &status, ctx).await?;
                return Ok(Action::Requeue(interval.min(Duration::from_secs(10))));
            }
        };
        setc(
            &mut status.conditions,
            generation,
            "Fetched",
            true,
            "Fetched",
            &format!("{} {}", short(&fetched.commit), fetched.message),
        );
        let new_commit = status.last_fetched_commit.as_deref() != Some(&fetched.commit);
        status.last_fetched_commit = Some(fetched.commit.clone());
        // 3. Plan.
        let planned = match plan::plan(&fetched.files, &gs.spec.kinds) {
            Ok(p) => p,
            Err(errors) => {
                return self
                    .refuse(&gs, status, &fetched, errors, new_commit, ctx, interval)
                    .await;
            }
        };
        // 4. Check: the live objects, then a dry run of each change.
        let kinds: BTreeSet<&'static str> = planned.iter().map(|p| p.kind).collect();
        let mut live = match self.live(&kinds, ctx).await {
            Ok(l) => l,
            Err(e) => return Err(Error::Unavailable(e)),
        };
        let mut steps = Vec::new();
        let mut errors = Vec::new();
        for p in &planned {
            let kind = groundwork_types::kind_by_kind(p.kind).expect("planned");
            let l = live.remove(&(p.kind.to_string(), p.name.clone()));
            if let Some(o) = &l {
                let owner = o.annotations().get(GITSOURCE_ANNOTATION);
                if owner.map(String::as_str) != Some(name.as_str()) {
                    errors.push(p.error(
                        None,
                        match owner {
                            Some(other) => format!(
                                "{}/{} is managed by GitSource {other}: one GitSource per object",
                                p.kind, p.name
                            ),
                            None => format!(
                                "{}/{} exists and was not created by this GitSource; it is never \
                                 taken over silently: annotate it {GITSOURCE_ANNOTATION}={name} to \
                                 hand it over",
                                p.kind, p.name
                            ),
                        },
                    ));
                    continue;
                }
            }
            steps.push(Step {
                p,
                kind,
                live: l,
                desired: plan::desired(&p.object, &name),
            });
        }
        let checks: Vec<BoxFuture<'_, (usize, Result<(), kube::Error>)>> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| async move { (i, send(s, ctx, true).await) }.boxed())
            .collect();
        let dry: Vec<(usize, Result<(), kube::Error>)> =
            stream::iter(checks).buffer_unordered(16).collect().await;
        for (i, r) in dry {
            if let Err(e) = r {
                let m = api_message(&e);
                errors.push(steps[i].p.error(field_of(&m), m));
            }
        }
        if !errors.is_empty() {
            return self
                .refuse(&gs, status, &fetched, errors, new_commit, ctx, interval)
                .await;
        }
        // 5. Apply, rank by rank (a rank's objects in parallel), unless only reporting drift
        // on a commit already applied.
        let applied_before = status.last_applied_commit.as_deref() == Some(&fetched.commit);
        // Drift: only on a commit already applied (a new commit's changes are not drift).
        let mut drift = Vec::new();
        for s in steps.iter().filter(|_| applied_before) {
            if let Some(l) = &s.live {
                let live = serde_json::to_value(l).unwrap_or(Value::Null);
                for (field, g, v) in plan::drift(&s.desired, &live) {
                    drift.push(groundwork_types::Drift {
                        object: format!("{}/{}", s.p.kind, s.p.name),
                        field,
                        git: g.to_string(),
                        live: v.to_string(),
                    });
                }
            }
        }
        let report_only = applied_before && gs.spec.drift == DriftMode::Report;
        let mut failed = Vec::new();
        let mut written = 0usize;
        if !report_only {
            let mut ranks: BTreeMap<i64, Vec<&Step>> = BTreeMap::new();
            for s in &steps {
                ranks.entry(s.p.rank).or_default().push(s);
            }
            for (_, group) in ranks {
                let writes: Vec<BoxFuture<'_, Written>> = group
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let s: &Step = s;
                        async move {
                            let changes =
                                s.live.is_none() || s.patch().is_some_and(|p| !p.is_empty());
                            let r = if changes {
                                send(s, ctx, false).await
                            } else {
                                Ok(())
                            };
                            (i, changes, r)
                        }
                        .boxed()
                    })
                    .collect();
                let results: Vec<Written> =
                    stream::iter(writes).buffer_unordered(16).collect().await;
                for (i, changed, r) in results {
                    match r {
                        Ok(()) => written += changed as usize,
                        Err(e) => {
                            let m = api_message(&e);
                            failed.push(group[i].p.error(field_of(&m), m));
                        }
                    }
                }
            }
        }
        // Prune: what the inventory held and the commit no longer has.
        let keep: BTreeSet<InventoryEntry> = planned
            .iter()
            .map(|p| InventoryEntry {
                kind: p.kind.to_string(),
                name: p.name.clone(),
            })
            .collect();
        let mut pruned = Vec::new();
        if gs.spec.prune && !report_only {
            for old in status.inventory.iter().filter(|e| !keep.contains(e)) {
                let Some(kind) = groundwork_types::kind_by_kind(&old.kind) else {
                    continue;
                };
                let api = api_of(ctx, kind);
                match api.get_opt(&old.name).await {
                    Ok(Some(o))
                        if o.annotations()
                            .get(GITSOURCE_ANNOTATION)
                            .map(String::as_str)
                            == Some(name.as_str()) =>
                    {
                        match api.delete(&old.name, &DeleteParams::default()).await {
                            Ok(_) => pruned.push(format!("{}/{}", old.kind, old.name)),
                            Err(e) => failed.push(ManifestError {
                                file: String::new(),
                                line: None,
                                object: Some(format!("{}/{}", old.kind, old.name)),
                                field: None,
                                message: format!("pruning: {}", api_message(&e)),
                            }),
                        }
                    }
                    // Gone, or no longer this GitSource's: dropped from the inventory only.
                    Ok(_) => {}
                    Err(e) => {
                        return Err(Error::Unavailable(format!("pruning: {}", api_message(&e))));
                    }
                }
            }
        }
        // 6. Report.
        status.inventory = keep.into_iter().collect();
        if !failed.is_empty() {
            let why = format!(
                "commit {}: {} object(s) failed to apply (see status.errors)",
                short(&fetched.commit),
                failed.len()
            );
            status.errors = failed;
            setc(
                &mut status.conditions,
                generation,
                "Ready",
                false,
                "ApplyFailed",
                &why,
            );
            ctx.recorder
                .publish(&oref, EventType::Warning, "ApplyFailed", &why)
                .await;
            self.write(&gs, &status, ctx).await?;
            return Ok(Action::Requeue(interval.min(Duration::from_secs(30))));
        }
        status.errors.clear();
        let corrected = !report_only && !drift.is_empty() && applied_before;
        // Listed only while it stands: in mode correct it was just set back.
        let first = drift.first().map(|d| format!("{} {}", d.object, d.field));
        let drifted = drift.len();
        status.drift = if report_only { drift } else { Vec::new() };
        if !applied_before {
            status.last_applied_commit = Some(fetched.commit.clone());
            status.last_applied_message = Some(fetched.message.clone());
            status.last_applied_at = Some(jiff::Timestamp::now().to_string());
            let msg = format!(
                "applied {} \"{}\": {} objects ({} written), {} pruned",
                short(&fetched.commit),
                fetched.message,
                steps.len(),
                written,
                pruned.len()
            );
            tracing::info!(gitsource = %name, commit = %fetched.commit, objects = steps.len(), written, pruned = pruned.len(), "applied");
            ctx.recorder
                .publish(&oref, EventType::Normal, "Applied", &msg)
                .await;
        } else if corrected {
            let msg = format!(
                "drift corrected on {drifted} field(s), e.g. {}",
                first.unwrap_or_default()
            );
            tracing::info!(gitsource = %name, fields = drifted, "drift corrected");
            ctx.recorder
                .publish(&oref, EventType::Normal, "DriftCorrected", &msg)
                .await;
        }
        let ready_msg = match (report_only, status.drift.len()) {
            (true, n) if n > 0 => format!(
                "{} applied; {n} field(s) drifted from Git (drift: report; see status.drift)",
                short(&fetched.commit)
            ),
            _ => format!("{} applied", short(&fetched.commit)),
        };
        setc(
            &mut status.conditions,
            generation,
            "Ready",
            true,
            "Applied",
            &ready_msg,
        );
        self.write(&gs, &status, ctx).await?;
        Ok(Action::Requeue(interval))
    }
}

impl GitSourceController {
    /// A commit that cannot be applied: nothing of it is, the last good one stays.
    #[allow(clippy::too_many_arguments)]
    async fn refuse(
        &self,
        gs: &GitSource,
        mut status: GitSourceStatus,
        fetched: &git::Fetched,
        errors: Vec<ManifestError>,
        new_commit: bool,
        ctx: &Ctx,
        interval: Duration,
    ) -> Result<Action, Error> {
        let generation = gs.metadata.generation;
        let first = &errors[0];
        let why = format!(
            "commit {} not applied: {} invalid manifest(s), e.g. {}{}: {}; {} stays applied",
            short(&fetched.commit),
            errors.len(),
            first.file,
            first.line.map(|l| format!(":{l}")).unwrap_or_default(),
            first.message,
            status
                .last_applied_commit
                .as_deref()
                .map(short)
                .unwrap_or("nothing")
        );
        status.errors = errors;
        setc(
            &mut status.conditions,
            generation,
            "Ready",
            false,
            "InvalidCommit",
            &why,
        );
        if new_commit {
            tracing::warn!(gitsource = %gs.name_any(), commit = %fetched.commit, "{why}");
            ctx.recorder
                .publish(
                    &gs.object_ref(&()),
                    EventType::Warning,
                    "InvalidCommit",
                    &why,
                )
                .await;
        }
        self.write(gs, &status, ctx).await?;
        Ok(Action::Requeue(interval))
    }
}

/// Why this GitSource waits for another, if it does.
fn waiting_for(gs: &GitSource, ctx: &Ctx) -> Option<String> {
    for d in &gs.spec.depends_on {
        let other = ctx
            .caches
            .store::<GitSource>()
            .get(&kube::runtime::reflector::ObjectRef::new(d));
        let Some(other) = other else {
            return Some(format!("waiting for GitSource {d}: it does not exist"));
        };
        let conds = other
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        if !condition_is_true(&conds, "Ready") {
            let c = conds.iter().find(|c| c.type_ == "Ready");
            return Some(match c {
                Some(c) => format!(
                    "waiting for GitSource {d}: Ready={} ({}: {})",
                    c.status, c.reason, c.message
                ),
                None => format!("waiting for GitSource {d}: not reconciled yet"),
            });
        }
    }
    None
}

/// Creates or patches one object (`dry_run`: the API checks it and stores nothing).
async fn send(s: &Step<'_>, ctx: &Ctx, dry_run: bool) -> Result<(), kube::Error> {
    let api = api_of(ctx, s.kind);
    match s.patch() {
        None => {
            let mut obj: DynamicObject =
                serde_json::from_value(s.desired.clone()).map_err(kube::Error::SerdeError)?;
            obj.metadata = ObjectMeta {
                resource_version: None,
                ..obj.metadata
            };
            let pp = PostParams {
                dry_run,
                field_manager: Some("groundwork-gitsource".into()),
            };
            api.create(&pp, &obj).await.map(|_| ())
        }
        Some(p) if p.is_empty() => Ok(()),
        Some(p) => {
            let pp = PatchParams {
                dry_run,
                field_manager: Some("groundwork-gitsource".into()),
                ..Default::default()
            };
            api.patch(&s.p.name, &pp, &Patch::Merge(Value::Object(p)))
                .await
                .map(|_| ())
        }
    }
}

fn setc(
    c: &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    generation: Option<i64>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
) {
    set_condition(
        c,
        type_,
        ok,
        reason,
        message,
        generation,
        jiff::Timestamp::now(),
    );
}

fn short(c: &str) -> &str {
    &c[..12.min(c.len())]
}
