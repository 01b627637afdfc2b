//! `provisioning`: drives each Node through its life cycle.
//!
//! ```text
//! Registered ─(PXE once, power on)→ Discovering ─(agent: inventory)→ Inventoried
//!   ─(profile controller)→ Assigned ─(spec.provisioning: Provisioned)→ Provisioning
//!   ─(agent: image written, checksum verified, machine config written)→ Provisioned
//!   ─(boot device disk, reset; node agent heartbeat)→ Ready
//! Provisioned/Ready ─(spec.provisioning: Available or Deprovisioned)→ Deprovisioning
//!   ─(PXE once, reset; agent: disks wiped)→ Inventoried (powered off if Deprovisioned)
//! ```
//!
//! Every step is bounded: a machine that does not PXE-boot (no inventory in
//! `discover_timeout`), an agent that never picks up its task, an install that hangs, or an
//! installed system that never checks in is power-cycled again, up to `attempts` times per
//! phase, and then the Node is Failed with the reason. A Failed Node is retried when the
//! operator changes it or its Profile (fixing the cause), when its `groundwork.dev/retry`
//! annotation changes (`groundwork retry node/NAME`), and otherwise every `failed_retry`.
//! BMC errors are not failures: they are retried with the runtime's backoff and shown in the
//! `Provisioned` condition until the BMC answers.
//!
//! A transition is written first, with the cached resourceVersion as precondition and the
//! power action it needs as `status.provisioning.powerPending`; the action runs after, and
//! clears it. A conflict therefore never repeats a power action, and a BMC that fails keeps
//! the action pending until it answers. The controller remembers the resourceVersion of its
//! own last write per Node and does not act on a cache older than that.
//!
//! The agents' facts (task reports, heartbeats, boot contact) are written to
//! `status.provisioning` by the boot server (`bootscripts`); phases after Inventoried are
//! changed by this controller only. Every phase change is an Event, a log line on the Node
//! (`groundwork logs node/NAME`) and an entry in `status.provisioning.history`.

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;
use std::sync::Mutex;

use groundwork_bmc::{BootTarget, Power, PowerAction};
use groundwork_types::{Node, NodePhase, PhaseEntry, PowerIntent, ProvisioningState, TaskState};
use jiff::Timestamp;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::caches::{Caches, Change, ChangedObject};
use crate::events::EventType;
use crate::power::{bmc_endpoint, bmc_lock, ep_proto};
use crate::runtime::{Action, Ctx, Error, Reconciler, condition_with_event};

/// The annotation whose every new value retries a Failed Node.
pub const RETRY_ANNOTATION: &str = "groundwork.dev/retry";

/// How long each step may take, and how often it is tried.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Power-on through PXE → inventory reported.
    pub discover: Duration,
    /// Phase Provisioning or Deprovisioning → the agent reports it started the task. The
    /// first attempt counts on the ramdisk already running (after discovery) and waits
    /// `agent_grace`; later attempts PXE-boot it and wait this long.
    pub task_start: Duration,
    /// Quick check that a ramdisk left running after discovery picks up its task.
    pub agent_grace: Duration,
    /// Task started → finished.
    pub task: Duration,
    /// Reset into the installed system → its first heartbeat.
    pub boot: Duration,
    /// Tries per phase before Failed.
    pub attempts: u32,
    /// A Failed Node is tried again after this long even if nothing changed.
    pub failed_retry: Duration,
    /// A Ready Node whose last heartbeat is older than this gets `NodeAgentReady=False`
    /// (three heartbeat intervals).
    pub heartbeat_grace: Duration,
    /// Each BMC call.
    pub bmc_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            discover: Duration::from_secs(600),
            task_start: Duration::from_secs(600),
            agent_grace: Duration::from_secs(20),
            task: Duration::from_secs(3600),
            boot: Duration::from_secs(600),
            attempts: 3,
            failed_retry: Duration::from_secs(1800),
            heartbeat_grace: Duration::from_secs(90),
            bmc_timeout: Duration::from_secs(10),
        }
    }
}

pub struct ProvisionController {
    pub timing: Timing,
    /// resourceVersion of our last write per Node: a cache older than that is not acted on.
    written: Mutex<HashMap<String, u64>>,
}

impl ProvisionController {
    pub fn new(timing: Timing) -> Self {
        ProvisionController {
            timing,
            written: Mutex::default(),
        }
    }

    fn note_written(&self, node: &Node) {
        if let Some(rv) = node.resource_version().and_then(|r| r.parse().ok()) {
            self.written
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(node.name_any(), rv);
        }
    }

    /// The cache has not yet seen our own last write to this Node.
    fn stale(&self, node: &Node) -> bool {
        let have: u64 = node
            .resource_version()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node.name_any())
            .is_some_and(|w| have < *w)
    }
}

fn parse_ts(s: Option<&str>) -> Option<Timestamp> {
    s.and_then(|s| s.parse().ok())
}

fn elapsed(since: Option<Timestamp>) -> Duration {
    since
        .map(|t| {
            let d = Timestamp::now().duration_since(t);
            Duration::try_from(d).unwrap_or(Duration::ZERO)
        })
        .unwrap_or(Duration::MAX)
}

fn cond_reason(n: &Node) -> Option<String> {
    n.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Provisioned")
        .map(|c| c.reason.clone())
}

impl Reconciler for ProvisionController {
    type K = Node;
    const NAME: &'static str = "provisioning";

    fn store(c: &Caches) -> &Store<Node> {
        &c.nodes
    }

    fn map(&self, change: &Change, c: &Caches) -> Vec<String> {
        match &change.object {
            // Status too: agents' reports and heartbeats arrive there.
            ChangedObject::Node(n) => vec![n.name_any()],
            ChangedObject::Profile(p) if change.spec_changed => {
                let name = p.name_any();
                c.nodes
                    .state()
                    .iter()
                    .filter(|n| {
                        n.status.as_ref().and_then(|s| s.profile.as_deref()) == Some(name.as_str())
                    })
                    .map(|n| n.name_any())
                    .collect()
            }
            ChangedObject::Credential(cr) if change.spec_changed => {
                crate::power::nodes_with_credential(c, &cr.name_any())
            }
            _ => vec![],
        }
    }

    async fn reconcile(&self, node: Arc<Node>, ctx: &Ctx) -> Result<Action, Error> {
        if node.spec.maintenance {
            return Ok(Action::AwaitChange);
        }
        if self.stale(&node) {
            return Ok(Action::Requeue(Duration::from_millis(100)));
        }
        let st = node.status.clone().unwrap_or_default();
        let p = st.provisioning.clone().unwrap_or_default();
        if let Some(intent) = p.power_pending {
            // Decided and recorded earlier; the BMC has not confirmed it yet.
            self.act(ctx, &node, intent).await?;
            return Ok(Action::Requeue(Duration::from_millis(100)));
        }
        let attempt = p.attempt.unwrap_or(1);
        let since = parse_ts(p.phase_since.as_deref());
        let in_phase = elapsed(since);
        let want = node.spec.provisioning;
        let t = &self.timing;
        let remaining = |limit: Duration| {
            Action::Requeue(
                limit
                    .saturating_sub(in_phase)
                    .max(Duration::from_millis(200)),
            )
        };
        let installed_wanted = want == ProvisioningState::Provisioned;

        match st.phase {
            None | Some(NodePhase::Registered) => {
                if node.spec.bmc.is_none() {
                    if st.phase.is_none() {
                        self.enter(ctx, &node, NodePhase::Registered, 1, None, json!({}), "registered; no BMC: power the machine on to PXE-boot it and it is discovered").await?;
                    }
                    return Ok(Action::AwaitChange);
                }
                if node.spec.online == Some(false) {
                    self.condition(
                        ctx,
                        &node,
                        false,
                        "PoweredOffBySpec",
                        "spec.online is false: not powering on to discover",
                    )
                    .await?;
                    return Ok(Action::AwaitChange);
                }
                self.enter(
                    ctx,
                    &node,
                    NodePhase::Discovering,
                    1,
                    Some(PowerIntent::Pxe),
                    json!({}),
                    "powering on to PXE-boot the discovery ramdisk",
                )
                .await?;
                Ok(Action::Requeue(t.discover))
            }
            Some(NodePhase::Discovering) => {
                if node.spec.bmc.is_none() {
                    return Ok(Action::AwaitChange);
                }
                if in_phase < t.discover {
                    return Ok(remaining(t.discover));
                }
                let contact = parse_ts(p.last_boot_contact.as_deref());
                let (reason, msg) = if contact.is_some() && contact >= since {
                    (
                        "NoInventory",
                        format!(
                            "the machine fetched its boot script but reported no inventory within {:?}",
                            t.discover
                        ),
                    )
                } else {
                    (
                        "NoPxeBoot",
                        format!(
                            "the machine did not PXE-boot (no boot script fetched) within {:?} of power-on",
                            t.discover
                        ),
                    )
                };
                self.again(
                    ctx,
                    &node,
                    NodePhase::Discovering,
                    attempt,
                    PowerIntent::Pxe,
                    reason,
                    &msg,
                )
                .await
            }
            Some(NodePhase::Inventoried | NodePhase::Assigned) => match want {
                ProvisioningState::Provisioned => {
                    let Some(profile) = st.profile.clone() else {
                        self.condition(ctx, &node, false, "NoProfile", "waiting for a Profile: set spec.profile or add a Profile whose selector matches").await?;
                        return Ok(Action::AwaitChange);
                    };
                    let prof = ctx.caches.profiles.get(&ObjectRef::new(&profile));
                    let Some(os) = prof.as_ref().and_then(|p| p.spec.os.clone()) else {
                        self.condition(
                            ctx,
                            &node,
                            false,
                            "NoImage",
                            &format!("Profile {profile:?} has no spec.os image to install"),
                        )
                        .await?;
                        return Ok(Action::AwaitChange);
                    };
                    let extra =
                        json!({"profileGeneration": prof.and_then(|p| p.metadata.generation)});
                    let msg = format!(
                        "installing Profile {profile} ({})",
                        groundwork_types::agent::redact_url(&os.url)
                    );
                    self.enter(ctx, &node, NodePhase::Provisioning, 1, None, extra, &msg)
                        .await?;
                    Ok(Action::Requeue(t.agent_grace))
                }
                ProvisioningState::Deprovisioned => {
                    if node.spec.bmc.is_none()
                        || cond_reason(&node).as_deref() == Some("PoweredOff")
                    {
                        return Ok(Action::AwaitChange);
                    }
                    if node.spec.online == Some(true) {
                        self.condition(
                            ctx,
                            &node,
                            false,
                            "LeftOnBySpec",
                            "deprovisioned; spec.online is true, so it stays powered on",
                        )
                        .await?;
                        return Ok(Action::AwaitChange);
                    }
                    let phase = st.phase.unwrap_or(NodePhase::Inventoried);
                    self.enter_with(
                        ctx,
                        &node,
                        phase,
                        1,
                        Some(PowerIntent::Off),
                        json!({}),
                        "PoweredOff",
                        "deprovisioned (spec.provisioning: Deprovisioned): powered off",
                        true,
                    )
                    .await?;
                    Ok(Action::AwaitChange)
                }
                ProvisioningState::Available => {
                    self.condition(
                        ctx,
                        &node,
                        false,
                        "Available",
                        "available: set spec.provisioning to Provisioned to install",
                    )
                    .await?;
                    Ok(Action::AwaitChange)
                }
            },
            Some(NodePhase::Provisioning) => {
                if !installed_wanted {
                    return self.deprovision(ctx, &node, "spec.provisioning is no longer Provisioned; wiping the partly written disk").await;
                }
                self.task_phase(
                    ctx,
                    &node,
                    NodePhase::Provisioning,
                    "install",
                    attempt,
                    in_phase,
                )
                .await
            }
            Some(NodePhase::Deprovisioning) => {
                self.task_phase(
                    ctx,
                    &node,
                    NodePhase::Deprovisioning,
                    "wipe",
                    attempt,
                    in_phase,
                )
                .await
            }
            Some(NodePhase::Provisioned) => {
                if !installed_wanted {
                    return self
                        .deprovision(
                            ctx,
                            &node,
                            &format!("spec.provisioning is {want:?}: wiping the disks"),
                        )
                        .await;
                }
                let beat = parse_ts(p.last_heartbeat.as_deref());
                if beat.is_some() && beat >= since {
                    self.enter(
                        ctx,
                        &node,
                        NodePhase::Ready,
                        1,
                        None,
                        json!({}),
                        "the installed system's node agent checked in",
                    )
                    .await?;
                    return Ok(Action::Requeue(t.heartbeat_grace));
                }
                if in_phase < t.boot {
                    return Ok(remaining(t.boot));
                }
                let msg = format!(
                    "the installed system did not check in within {:?} of the reset",
                    t.boot
                );
                self.again(
                    ctx,
                    &node,
                    NodePhase::Provisioned,
                    attempt,
                    PowerIntent::Disk,
                    "NeverCheckedIn",
                    &msg,
                )
                .await
            }
            Some(NodePhase::Ready) => {
                if !installed_wanted {
                    return self
                        .deprovision(
                            ctx,
                            &node,
                            &format!("spec.provisioning is {want:?}: wiping the disks"),
                        )
                        .await;
                }
                let age = elapsed(parse_ts(p.last_heartbeat.as_deref()));
                let mut conds = st.conditions.clone();
                let fresh = age <= t.heartbeat_grace;
                let msg = if fresh {
                    "the node agent heartbeats".to_string()
                } else {
                    format!("no heartbeat for {}s", age.as_secs())
                };
                condition_with_event(
                    ctx,
                    node.as_ref(),
                    &mut conds,
                    "NodeAgentReady",
                    fresh,
                    if fresh {
                        "Heartbeating"
                    } else {
                        "HeartbeatStale"
                    },
                    &msg,
                )
                .await;
                crate::runtime::patch_status(
                    &ctx.client,
                    node.as_ref(),
                    json!({"conditions": conds}),
                )
                .await?;
                Ok(Action::Requeue(t.heartbeat_grace))
            }
            Some(NodePhase::Failed) => self.failed(ctx, &node, in_phase).await,
            Some(NodePhase::Maintenance) => Ok(Action::AwaitChange),
        }
    }
}

impl ProvisionController {
    /// A Failed Node: retried at once when the cause may be fixed, else after `failed_retry`.
    async fn failed(
        &self,
        ctx: &Ctx,
        node: &Arc<Node>,
        in_phase: Duration,
    ) -> Result<Action, Error> {
        let t = &self.timing;
        let st = node.status.clone().unwrap_or_default();
        let p = st.provisioning.clone().unwrap_or_default();
        let failed_in = p.failed_in.unwrap_or(NodePhase::Discovering);
        let installed_wanted = node.spec.provisioning == ProvisioningState::Provisioned;
        let profile_gen = st
            .profile
            .as_ref()
            .and_then(|n| ctx.caches.profiles.get(&ObjectRef::new(n)))
            .and_then(|p| p.metadata.generation);
        let retry = node.annotations().get(RETRY_ANNOTATION).cloned();
        let why = if retry.is_some() && retry != p.retry_observed {
            "retry requested (groundwork.dev/retry)"
        } else if p.failed_generation.is_some() && node.metadata.generation != p.failed_generation {
            "the Node changed"
        } else if failed_in == NodePhase::Provisioning
            && p.profile_generation.is_some()
            && profile_gen != p.profile_generation
        {
            "the Profile changed"
        } else if in_phase >= t.failed_retry {
            "retrying after the failed-retry interval"
        } else {
            return Ok(Action::Requeue(
                t.failed_retry
                    .saturating_sub(in_phase)
                    .max(Duration::from_millis(200)),
            ));
        };
        let clear = json!({"failedIn": null, "failureReason": null, "failedGeneration": null});
        match failed_in {
            NodePhase::Provisioning if installed_wanted => {
                // The ramdisk that reported the failure usually still runs: it gets the task
                // again; if not, the grace period PXE-boots it.
                let mut extra = clear;
                extra["profileGeneration"] = json!(profile_gen);
                self.enter(
                    ctx,
                    node,
                    NodePhase::Provisioning,
                    1,
                    None,
                    extra,
                    &format!("{why}: installing again"),
                )
                .await?;
                Ok(Action::Requeue(t.agent_grace))
            }
            NodePhase::Provisioned if installed_wanted => {
                self.enter(
                    ctx,
                    node,
                    NodePhase::Provisioned,
                    1,
                    Some(PowerIntent::Disk),
                    clear,
                    &format!("{why}: booting the installed system again"),
                )
                .await?;
                Ok(Action::Requeue(t.boot))
            }
            NodePhase::Deprovisioning | NodePhase::Provisioning | NodePhase::Provisioned => {
                self.enter(
                    ctx,
                    node,
                    NodePhase::Deprovisioning,
                    1,
                    Some(PowerIntent::Pxe),
                    clear,
                    &format!("{why}: wiping again"),
                )
                .await?;
                Ok(Action::Requeue(t.task_start))
            }
            _ => {
                if node.spec.bmc.is_none() {
                    return Ok(Action::AwaitChange);
                }
                self.enter(
                    ctx,
                    node,
                    NodePhase::Discovering,
                    1,
                    Some(PowerIntent::Pxe),
                    clear,
                    &format!("{why}: PXE-booting again"),
                )
                .await?;
                Ok(Action::Requeue(t.discover))
            }
        }
    }

    /// Phases where the ramdisk agent runs a task (`install` in Provisioning, `wipe` in
    /// Deprovisioning), driven by its reports for the current task ID.
    async fn task_phase(
        &self,
        ctx: &Ctx,
        node: &Arc<Node>,
        phase: NodePhase,
        task: &str,
        attempt: u32,
        in_phase: Duration,
    ) -> Result<Action, Error> {
        let t = &self.timing;
        let p = node
            .status
            .as_ref()
            .and_then(|s| s.provisioning.clone())
            .unwrap_or_default();
        let report = p
            .report
            .filter(|r| r.task == task && r.task_id.is_some() && r.task_id == p.task_id);
        match report.as_ref().map(|r| r.state) {
            Some(TaskState::Succeeded) if phase == NodePhase::Provisioning => {
                let checksum = node
                    .status
                    .as_ref()
                    .and_then(|s| s.profile.as_ref())
                    .and_then(|n| ctx.caches.profiles.get(&ObjectRef::new(n)))
                    .and_then(|p| p.spec.os.clone())
                    .map(|o| o.checksum);
                self.enter(
                    ctx,
                    node,
                    NodePhase::Provisioned,
                    1,
                    Some(PowerIntent::Disk),
                    json!({"installedChecksum": checksum}),
                    "image written and verified; booting the installed system from disk",
                )
                .await?;
                Ok(Action::Requeue(t.boot))
            }
            Some(TaskState::Succeeded) => {
                let off = node.spec.provisioning == ProvisioningState::Deprovisioned
                    && node.spec.online != Some(true);
                let msg = if off {
                    "disks wiped; powered off"
                } else {
                    "disks wiped; available again (the ramdisk waits for the next task)"
                };
                let reason = if off { "PoweredOff" } else { "Inventoried" };
                self.enter_with(
                    ctx,
                    node,
                    NodePhase::Inventoried,
                    1,
                    off.then_some(PowerIntent::Off),
                    json!({"installedChecksum": null}),
                    reason,
                    msg,
                    true,
                )
                .await?;
                Ok(Action::AwaitChange)
            }
            Some(TaskState::Failed) => {
                let r = report.expect("matched");
                let reason = r.reason.clone().unwrap_or_else(|| "TaskFailed".into());
                let msg = format!("{task} failed: {}", r.message.clone().unwrap_or_default());
                // A wrong checksum will not fix itself by trying again.
                if reason == "ImageChecksumMismatch" {
                    return self.fail(ctx, node, phase, &reason, &msg).await;
                }
                self.again(ctx, node, phase, attempt, PowerIntent::Pxe, &reason, &msg)
                    .await
            }
            Some(TaskState::Started) => {
                let started = elapsed(parse_ts(report.as_ref().and_then(|r| r.at.as_deref())));
                if started < t.task {
                    return Ok(Action::Requeue(
                        t.task
                            .saturating_sub(started)
                            .max(Duration::from_millis(200)),
                    ));
                }
                let msg = format!("the {task} started but did not finish within {:?}", t.task);
                self.again(
                    ctx,
                    node,
                    phase,
                    attempt,
                    PowerIntent::Pxe,
                    "TaskTimeout",
                    &msg,
                )
                .await
            }
            None => {
                // Provisioning's first attempt counts on the ramdisk still running after
                // discovery; every other attempt PXE-booted it.
                let grace = phase == NodePhase::Provisioning && attempt == 1;
                let limit = if grace { t.agent_grace } else { t.task_start };
                if in_phase < limit {
                    return Ok(Action::Requeue(
                        limit
                            .saturating_sub(in_phase)
                            .max(Duration::from_millis(200)),
                    ));
                }
                let msg = if grace {
                    format!(
                        "no running ramdisk picked up the {task} within {:?}: PXE-booting one",
                        t.agent_grace
                    )
                } else {
                    format!(
                        "no agent started the {task} within {:?} of the PXE boot",
                        t.task_start
                    )
                };
                self.again(ctx, node, phase, attempt, PowerIntent::Pxe, "NoAgent", &msg)
                    .await
            }
        }
    }

    /// Tries the phase again (attempt + 1, power-cycling into `intent`), or fails once
    /// `attempts` tries were made.
    #[allow(clippy::too_many_arguments)]
    async fn again(
        &self,
        ctx: &Ctx,
        node: &Arc<Node>,
        phase: NodePhase,
        attempt: u32,
        intent: PowerIntent,
        reason: &str,
        msg: &str,
    ) -> Result<Action, Error> {
        let n = self.timing.attempts;
        if attempt >= n {
            return self
                .fail(
                    ctx,
                    node,
                    phase,
                    reason,
                    &format!("{msg} (after {attempt} attempts)"),
                )
                .await;
        }
        let keep = node
            .status
            .as_ref()
            .and_then(|s| s.provisioning.as_ref())
            .map(|p| json!({"profileGeneration": p.profile_generation}))
            .unwrap_or(json!({}));
        let text = format!("{msg}; attempt {} of {n}", attempt + 1);
        self.enter_with(
            ctx,
            node,
            phase,
            attempt + 1,
            Some(intent),
            keep,
            reason,
            &text,
            false,
        )
        .await?;
        let t = &self.timing;
        Ok(Action::Requeue(match phase {
            NodePhase::Discovering => t.discover,
            NodePhase::Provisioned => t.boot,
            _ => t.task_start,
        }))
    }

    async fn fail(
        &self,
        ctx: &Ctx,
        node: &Arc<Node>,
        phase: NodePhase,
        reason: &str,
        msg: &str,
    ) -> Result<Action, Error> {
        let extra = json!({
            "failedIn": phase,
            "failureReason": reason,
            "failedGeneration": node.metadata.generation,
        });
        self.enter_with(
            ctx,
            node,
            NodePhase::Failed,
            1,
            None,
            extra,
            reason,
            msg,
            false,
        )
        .await?;
        Ok(Action::Requeue(self.timing.failed_retry))
    }

    async fn deprovision(&self, ctx: &Ctx, node: &Arc<Node>, msg: &str) -> Result<Action, Error> {
        self.enter(
            ctx,
            node,
            NodePhase::Deprovisioning,
            1,
            Some(PowerIntent::Pxe),
            json!({}),
            msg,
        )
        .await?;
        Ok(Action::Requeue(self.timing.task_start))
    }

    /// Sets the `Provisioned` condition (with the cached resourceVersion as precondition).
    async fn condition(
        &self,
        ctx: &Ctx,
        node: &Arc<Node>,
        ok: bool,
        reason: &str,
        msg: &str,
    ) -> Result<(), Error> {
        let mut conds = node
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        condition_with_event(
            ctx,
            node.as_ref(),
            &mut conds,
            "Provisioned",
            ok,
            reason,
            msg,
        )
        .await;
        crate::runtime::patch_status(&ctx.client, node.as_ref(), json!({"conditions": conds}))
            .await?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn enter(
        &self,
        ctx: &Ctx,
        node: &Arc<Node>,
        phase: NodePhase,
        attempt: u32,
        intent: Option<PowerIntent>,
        extra: Value,
        msg: &str,
    ) -> Result<(), Error> {
        let reason = format!("{phase:?}");
        self.enter_with(ctx, node, phase, attempt, intent, extra, &reason, msg, true)
            .await
    }

    /// Records the transition to `phase` (attempt `attempt`, a new task ID, the report
    /// cleared, the power action to take) with the cached resourceVersion as precondition,
    /// with an Event, a log line, the `Provisioned` condition and a history entry; then takes
    /// the power action.
    #[allow(clippy::too_many_arguments)]
    async fn enter_with(
        &self,
        ctx: &Ctx,
        node: &Arc<Node>,
        phase: NodePhase,
        attempt: u32,
        intent: Option<PowerIntent>,
        extra: Value,
        reason: &str,
        msg: &str,
        ok: bool,
    ) -> Result<(), Error> {
        let st = node.status.clone().unwrap_or_default();
        let now = Timestamp::now();
        let mut history = st
            .provisioning
            .as_ref()
            .map(|p| p.history.clone())
            .unwrap_or_default();
        let from = st.phase;
        if from != Some(phase) {
            history.push(PhaseEntry {
                phase,
                at: now.to_string(),
            });
            let excess = history.len().saturating_sub(32);
            history.drain(..excess);
        }
        let mut prov = json!({
            "attempt": attempt,
            "phaseSince": now.to_string(),
            "taskId": format!("{}-{}", now.as_millisecond(), attempt),
            "report": null,
            "powerPending": intent,
            "history": history,
            "retryObserved": node.annotations().get(RETRY_ANNOTATION),
        });
        if let (Some(m), Some(e)) = (prov.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                m.insert(k.clone(), v.clone());
            }
        }
        let mut conds = st.conditions.clone();
        groundwork_types::set_condition(
            &mut conds,
            "Provisioned",
            phase == NodePhase::Ready,
            reason,
            msg,
            node.metadata.generation,
            now,
        );
        let patch = json!({
            "metadata": {"resourceVersion": node.resource_version()},
            "status": {"phase": phase, "provisioning": prov, "conditions": conds},
        });
        let written = kube::Api::<Node>::all(ctx.client.clone())
            .patch_status(
                &node.name_any(),
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await?;
        self.note_written(&written);
        let t = if ok {
            EventType::Normal
        } else {
            EventType::Warning
        };
        if ok {
            tracing::info!(from = ?from, to = ?phase, attempt, "{msg}");
        } else {
            tracing::warn!(from = ?from, to = ?phase, attempt, reason, "{msg}");
        }
        ctx.recorder
            .publish(&node.object_ref(&()), t, reason, msg)
            .await;
        if let Some(intent) = intent {
            self.act(ctx, &Arc::new(written), intent).await?;
        }
        Ok(())
    }

    /// Takes the pending power action through the Node's BMC, then clears it (and restarts
    /// the phase's clock, so time limits count from the action). Errors are shown in the
    /// `Provisioned` condition and retried by the runtime; the action stays pending.
    async fn act(&self, ctx: &Ctx, node: &Arc<Node>, intent: PowerIntent) -> Result<(), Error> {
        match self.power(ctx, node, intent).await {
            Ok(()) => {
                let patch = json!({"status": {"provisioning": {"powerPending": null, "phaseSince": Timestamp::now().to_string()}}});
                let written = kube::Api::<Node>::all(ctx.client.clone())
                    .patch_status(
                        &node.name_any(),
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(&patch),
                    )
                    .await?;
                self.note_written(&written);
                Ok(())
            }
            Err((reason, msg)) => {
                let mut conds = node
                    .status
                    .as_ref()
                    .map(|s| s.conditions.clone())
                    .unwrap_or_default();
                condition_with_event(
                    ctx,
                    node.as_ref(),
                    &mut conds,
                    "Provisioned",
                    false,
                    &reason,
                    &msg,
                )
                .await;
                // Only when it changes something (with the precondition): a failing BMC must not
                // turn into a stream of writes, each waking every controller of the Node.
                let _ = crate::runtime::patch_status(
                    &ctx.client,
                    node.as_ref(),
                    json!({"conditions": conds}),
                )
                .await;
                Err(Error::Other(msg))
            }
        }
    }

    /// Sets the boot device and power-cycles (or powers on, or off) through the Node's BMC.
    async fn power(
        &self,
        ctx: &Ctx,
        node: &Arc<Node>,
        intent: PowerIntent,
    ) -> Result<(), (String, String)> {
        let Some(bmc) = &node.spec.bmc else {
            // No BMC: the agents reboot the machine themselves (reboot task, heartbeat reply).
            return Ok(());
        };
        if node.spec.online == Some(false) && intent != PowerIntent::Off {
            // The operator wants it off: do not fight the power controller. A change of
            // spec.online maps back here at once.
            return Err((
                "PoweredOffBySpec".into(),
                "spec.online is false: not powering the machine on for this step".into(),
            ));
        }
        let (ep, address) = bmc_endpoint(ctx, bmc, self.timing.bmc_timeout)
            .map_err(|(reason, msg)| (format!("Bmc{reason}"), format!("BMC: {msg}")))?;
        let lock = bmc_lock(&address);
        let _one = lock.lock().await;
        let b = ctx.bmc.connect(&ep).map_err(|e| {
            (
                format!("Bmc{}", crate::power::reason_of(&e)),
                format!("BMC: {e}"),
            )
        })?;
        let status = self.bmc_call("power status", b.power_status()).await?;
        match intent {
            PowerIntent::Off => {
                if status == Power::On {
                    self.bmc_call("power off", b.set_power(PowerAction::Off))
                        .await?;
                }
            }
            PowerIntent::Pxe | PowerIntent::Disk => {
                let (target, once) = if intent == PowerIntent::Pxe {
                    (BootTarget::Pxe, true)
                } else {
                    (BootTarget::Disk, false)
                };
                self.bmc_call("set boot device", b.set_boot(target, once, false))
                    .await?;
                let action = if status == Power::On {
                    PowerAction::Reset
                } else {
                    PowerAction::On
                };
                self.bmc_call("power", b.set_power(action)).await?;
            }
        }
        let what = match (intent, status) {
            (PowerIntent::Off, _) => "powered off",
            (PowerIntent::Pxe, Power::On) => "reset into PXE (once)",
            (PowerIntent::Pxe, _) => "powered on into PXE (once)",
            (PowerIntent::Disk, Power::On) => "reset into the local disk",
            (PowerIntent::Disk, _) => "powered on from the local disk",
        };
        tracing::info!(bmc = %address, "{what} through {}", ep_proto(&ep));
        Ok(())
    }

    async fn bmc_call<T>(
        &self,
        what: &'static str,
        f: futures::future::BoxFuture<'_, Result<T, groundwork_bmc::BmcError>>,
    ) -> Result<T, (String, String)> {
        match tokio::time::timeout(self.timing.bmc_timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err((
                format!("Bmc{}", crate::power::reason_of(&e)),
                format!("BMC: {what}: {e}"),
            )),
            Err(_) => Err((
                "BmcTimeout".to_string(),
                format!("BMC: {what}: no answer in {:?}", self.timing.bmc_timeout),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use groundwork_types::agent::redact_url;

    #[test]
    fn urls_lose_credentials_and_queries() {
        assert_eq!(
            redact_url("http://10.0.0.1:8080/os.img"),
            "http://10.0.0.1:8080/os.img"
        );
        assert_eq!(
            redact_url("https://u:pw@host/a/b.img?X-Sig=abc#f"),
            "https://host/a/b.img"
        );
        assert_eq!(redact_url("https://u:pw@host"), "https://host");
    }
}
