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
//! The agents' facts (task reports, heartbeats, boot contact) are written to
//! `status.provisioning` by the boot server (`bootscripts`); phases after Inventoried are
//! changed by this controller only. Every phase change is an Event, a log line on the Node
//! (`groundwork logs node/NAME`) and an entry in `status.provisioning.history`.

use std::sync::Arc;
use std::time::Duration;

use groundwork_bmc::{BootTarget, Power, PowerAction};
use groundwork_types::{Node, NodePhase, PhaseEntry, ProvisioningState, TaskState};
use jiff::Timestamp;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::caches::{Caches, Change, ChangedObject};
use crate::events::EventType;
use crate::power::{bmc_endpoint, bmc_lock, ep_proto};
use crate::runtime::{Action, Ctx, Error, Reconciler, condition_with_event, patch_status};

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
    /// A Ready Node whose last heartbeat is older than this gets `NodeAgentReady=False`.
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

/// What the machine should boot next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Boot {
    /// PXE, once: the ramdisk.
    Pxe,
    /// The local disk, persistently: the installed system.
    Disk,
    /// Power off.
    Off,
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
                let name = cr.name_any();
                c.nodes
                    .state()
                    .iter()
                    .filter(|n| {
                        n.spec
                            .bmc
                            .as_ref()
                            .is_some_and(|b| b.credentials_ref == name)
                    })
                    .map(|n| n.name_any())
                    .collect()
            }
            _ => vec![],
        }
    }

    async fn reconcile(&self, node: Arc<Node>, ctx: &Ctx) -> Result<Action, Error> {
        if node.spec.maintenance {
            return Ok(Action::AwaitChange);
        }
        let st = node.status.clone().unwrap_or_default();
        let p = st.provisioning.clone().unwrap_or_default();
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
                        self.enter(ctx, &node, NodePhase::Registered, 1, json!({}), "registered; no BMC: power the machine on to PXE-boot it and it is discovered").await?;
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
                self.power(ctx, &node, Boot::Pxe).await?;
                self.enter(
                    ctx,
                    &node,
                    NodePhase::Discovering,
                    1,
                    json!({}),
                    "powered on to PXE-boot the discovery ramdisk",
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
                let booted = parse_ts(p.last_boot_contact.as_deref()) >= since
                    && p.last_boot_contact.is_some();
                let (reason, msg) = if booted {
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
                    Boot::Pxe,
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
                    self.enter(
                        ctx,
                        &node,
                        NodePhase::Provisioning,
                        1,
                        extra,
                        &format!("installing Profile {profile} ({})", os.url),
                    )
                    .await?;
                    Ok(Action::Requeue(t.agent_grace))
                }
                ProvisioningState::Deprovisioned
                    if st.power != Some(groundwork_types::PowerState::Off)
                        && node.spec.bmc.is_some() =>
                {
                    self.power(ctx, &node, Boot::Off).await?;
                    self.condition(
                        ctx,
                        &node,
                        false,
                        "Deprovisioned",
                        "wiped and powered off (spec.provisioning: Deprovisioned)",
                    )
                    .await?;
                    Ok(Action::AwaitChange)
                }
                _ => {
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
                    Boot::Disk,
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
                groundwork_types::set_condition(
                    &mut conds,
                    "Provisioned",
                    true,
                    "Ready",
                    "installed and checked in",
                    node.metadata.generation,
                    Timestamp::now(),
                );
                patch_status(&ctx.client, node.as_ref(), json!({"conditions": conds})).await?;
                Ok(Action::Requeue(t.heartbeat_grace))
            }
            Some(NodePhase::Failed) => {
                let failed_in = p.failed_in.unwrap_or(NodePhase::Discovering);
                let profile_gen = st
                    .profile
                    .as_ref()
                    .and_then(|n| ctx.caches.profiles.get(&ObjectRef::new(n)))
                    .and_then(|p| p.metadata.generation);
                let retry = node.annotations().get(RETRY_ANNOTATION).cloned();
                let why = if retry.is_some() && retry != p.retry_observed {
                    Some("retry requested (groundwork.dev/retry)")
                } else if p.failed_generation.is_some()
                    && node.metadata.generation != p.failed_generation
                {
                    Some("the Node changed")
                } else if failed_in == NodePhase::Provisioning
                    && p.profile_generation.is_some()
                    && profile_gen != p.profile_generation
                {
                    Some("the Profile changed")
                } else if in_phase >= t.failed_retry {
                    Some("retrying after failed-retry interval")
                } else {
                    None
                };
                let Some(why) = why else {
                    return Ok(remaining(t.failed_retry));
                };
                let extra = json!({"retryObserved": retry, "failedIn": null, "failureReason": null, "failedGeneration": null});
                match failed_in {
                    NodePhase::Provisioning if installed_wanted => {
                        self.power(ctx, &node, Boot::Pxe).await?;
                        let mut extra = extra;
                        extra["profileGeneration"] = json!(profile_gen);
                        self.enter(
                            ctx,
                            &node,
                            NodePhase::Provisioning,
                            2,
                            extra,
                            &format!("{why}: installing again"),
                        )
                        .await?;
                        Ok(Action::Requeue(t.task_start))
                    }
                    NodePhase::Provisioned if installed_wanted => {
                        self.power(ctx, &node, Boot::Disk).await?;
                        self.enter(
                            ctx,
                            &node,
                            NodePhase::Provisioned,
                            1,
                            extra,
                            &format!("{why}: booting the installed system again"),
                        )
                        .await?;
                        Ok(Action::Requeue(t.boot))
                    }
                    NodePhase::Deprovisioning
                    | NodePhase::Provisioning
                    | NodePhase::Provisioned => {
                        self.power(ctx, &node, Boot::Pxe).await?;
                        self.enter(
                            ctx,
                            &node,
                            NodePhase::Deprovisioning,
                            2,
                            extra,
                            &format!("{why}: wiping again"),
                        )
                        .await?;
                        Ok(Action::Requeue(t.task_start))
                    }
                    _ => {
                        if node.spec.bmc.is_none() {
                            return Ok(Action::AwaitChange);
                        }
                        self.power(ctx, &node, Boot::Pxe).await?;
                        self.enter(
                            ctx,
                            &node,
                            NodePhase::Discovering,
                            1,
                            extra,
                            &format!("{why}: PXE-booting again"),
                        )
                        .await?;
                        Ok(Action::Requeue(t.discover))
                    }
                }
            }
            Some(NodePhase::Maintenance) => Ok(Action::AwaitChange),
        }
    }
}

impl ProvisionController {
    /// Phases where the ramdisk agent runs a task (`install` in Provisioning, `wipe` in
    /// Deprovisioning), driven by its reports.
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
        let report = p.report.filter(|r| r.task == task && r.attempt == attempt);
        match report.as_ref().map(|r| r.state) {
            Some(TaskState::Succeeded) if phase == NodePhase::Provisioning => {
                self.power(ctx, node, Boot::Disk).await?;
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
                    json!({"installedChecksum": checksum}),
                    "image written and verified; booting the installed system from disk",
                )
                .await?;
                Ok(Action::Requeue(t.boot))
            }
            Some(TaskState::Succeeded) => {
                let off = node.spec.provisioning == ProvisioningState::Deprovisioned;
                if off {
                    self.power(ctx, node, Boot::Off).await?;
                }
                let msg = if off {
                    "disks wiped; powered off"
                } else {
                    "disks wiped; available again (the ramdisk waits for the next task)"
                };
                self.enter(
                    ctx,
                    node,
                    NodePhase::Inventoried,
                    1,
                    json!({"installedChecksum": null}),
                    msg,
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
                self.again(ctx, node, phase, attempt, Boot::Pxe, &reason, &msg)
                    .await
            }
            Some(TaskState::Started) => {
                let started = elapsed(parse_ts(r_at(&report)));
                if started < t.task {
                    return Ok(Action::Requeue(
                        t.task
                            .saturating_sub(started)
                            .max(Duration::from_millis(200)),
                    ));
                }
                let msg = format!("the {task} started but did not finish within {:?}", t.task);
                self.again(ctx, node, phase, attempt, Boot::Pxe, "TaskTimeout", &msg)
                    .await
            }
            None => {
                // The first attempt counts on a ramdisk still running; later ones booted it.
                let limit = if attempt <= 1 {
                    t.agent_grace
                } else {
                    t.task_start
                };
                if in_phase < limit {
                    return Ok(Action::Requeue(
                        limit
                            .saturating_sub(in_phase)
                            .max(Duration::from_millis(200)),
                    ));
                }
                if attempt <= 1 {
                    // No ramdisk was running: boot one, without counting it as a failure.
                    self.power(ctx, node, Boot::Pxe).await?;
                    let same = node
                        .status
                        .as_ref()
                        .and_then(|s| s.provisioning.as_ref())
                        .map(|p| json!({"profileGeneration": p.profile_generation}))
                        .unwrap_or(json!({}));
                    self.enter(
                        ctx,
                        node,
                        phase,
                        2,
                        same,
                        &format!(
                            "no agent picked up the {task} within {:?}: PXE-booting the ramdisk",
                            t.agent_grace
                        ),
                    )
                    .await?;
                    return Ok(Action::Requeue(t.task_start));
                }
                let msg = format!(
                    "no agent started the {task} within {:?} of the PXE boot",
                    t.task_start
                );
                self.again(ctx, node, phase, attempt, Boot::Pxe, "NoAgent", &msg)
                    .await
            }
        }
    }

    /// Tries the phase again with the next attempt (power-cycling into `boot`), or fails.
    #[allow(clippy::too_many_arguments)]
    async fn again(
        &self,
        ctx: &Ctx,
        node: &Arc<Node>,
        phase: NodePhase,
        attempt: u32,
        boot: Boot,
        reason: &str,
        msg: &str,
    ) -> Result<Action, Error> {
        // Attempt 1 of a task phase is the grace check, not a boot.
        let tries = if matches!(phase, NodePhase::Provisioning | NodePhase::Deprovisioning) {
            attempt.saturating_sub(1)
        } else {
            attempt
        };
        if tries >= self.timing.attempts {
            return self
                .fail(
                    ctx,
                    node,
                    phase,
                    reason,
                    &format!("{msg} (after {tries} attempts)"),
                )
                .await;
        }
        tracing::warn!(reason, attempt, "{msg}; trying again");
        ctx.recorder
            .publish(
                &node.object_ref(&()),
                EventType::Warning,
                reason,
                &format!("{msg}; attempt {} of {}", tries + 1, self.timing.attempts),
            )
            .await;
        self.power(ctx, node, boot).await?;
        let keep = node
            .status
            .as_ref()
            .and_then(|s| s.provisioning.as_ref())
            .map(|p| json!({"profileGeneration": p.profile_generation}))
            .unwrap_or(json!({}));
        self.enter(
            ctx,
            node,
            phase,
            attempt + 1,
            keep,
            &format!("{reason}: power-cycled, attempt {}", tries + 1),
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
        self.enter_with(ctx, node, NodePhase::Failed, 1, extra, reason, msg, false)
            .await?;
        Ok(Action::Requeue(self.timing.failed_retry))
    }

    async fn deprovision(&self, ctx: &Ctx, node: &Arc<Node>, msg: &str) -> Result<Action, Error> {
        self.power(ctx, node, Boot::Pxe).await?;
        self.enter(ctx, node, NodePhase::Deprovisioning, 2, json!({}), msg)
            .await?;
        Ok(Action::Requeue(self.timing.task_start))
    }

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
        patch_status(&ctx.client, node.as_ref(), json!({"conditions": conds})).await?;
        Ok(())
    }

    async fn enter(
        &self,
        ctx: &Ctx,
        node: &Arc<Node>,
        phase: NodePhase,
        attempt: u32,
        extra: Value,
        msg: &str,
    ) -> Result<(), Error> {
        let reason = format!("{phase:?}");
        self.enter_with(ctx, node, phase, attempt, extra, &reason, msg, true)
            .await
    }

    /// Moves the Node to `phase` (attempt `attempt`, report cleared), with an Event, a log
    /// line, the `Provisioned` condition and a history entry.
    #[allow(clippy::too_many_arguments)]
    async fn enter_with(
        &self,
        ctx: &Ctx,
        node: &Arc<Node>,
        phase: NodePhase,
        attempt: u32,
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
            "report": null,
            "history": history,
        });
        if let (Some(m), Some(e)) = (prov.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                m.insert(k.clone(), v.clone());
            }
        }
        let mut conds = st.conditions.clone();
        let ready = phase == NodePhase::Ready;
        groundwork_types::set_condition(
            &mut conds,
            "Provisioned",
            ready,
            reason,
            msg,
            node.metadata.generation,
            now,
        );
        // No resourceVersion precondition: the decision is made and the machine may already
        // have been power-cycled for it; a conflict here would only repeat that action.
        kube::Api::<Node>::all(ctx.client.clone())
            .patch_status(
                &node.name_any(),
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(
                    json!({"status": {"phase": phase, "provisioning": prov, "conditions": conds}}),
                ),
            )
            .await?;
        {
            let t = if ok {
                EventType::Normal
            } else {
                EventType::Warning
            };
            if ok {
                tracing::info!(from = ?from, to = ?phase, attempt, "{msg}");
            } else {
                tracing::warn!(from = ?from, to = ?phase, reason, "{msg}");
            }
            ctx.recorder
                .publish(&node.object_ref(&()), t, reason, msg)
                .await;
        }
        Ok(())
    }

    /// Sets the boot device and power-cycles (or powers on, or off) through the Node's BMC.
    /// Errors are shown in the `Provisioned` condition and retried by the runtime.
    async fn power(&self, ctx: &Ctx, node: &Arc<Node>, boot: Boot) -> Result<(), Error> {
        let Some(bmc) = &node.spec.bmc else {
            return Ok(());
        };
        if node.spec.online == Some(false) && boot != Boot::Off {
            // The operator wants it off: do not fight the power controller. A change of
            // spec.online maps back here at once.
            let msg = "spec.online is false: not powering the machine on for this step";
            self.condition(ctx, node, false, "PoweredOffBySpec", msg)
                .await?;
            return Err(Error::Other(msg.into()));
        }
        let res = async {
            let (ep, address) = bmc_endpoint(ctx, bmc, self.timing.bmc_timeout)
                .map_err(|(reason, msg)| (reason.to_string(), msg))?;
            let lock = bmc_lock(&address);
            let _one = lock.lock().await;
            let b = ctx
                .bmc
                .connect(&ep)
                .map_err(|e| (crate::power::reason_of(&e).to_string(), e.to_string()))?;
            let status = self.bmc_call("power status", b.power_status()).await?;
            match boot {
                Boot::Off => {
                    if status == Power::On {
                        self.bmc_call("power off", b.set_power(PowerAction::Off))
                            .await?;
                    }
                }
                Boot::Pxe | Boot::Disk => {
                    let (target, once) = if boot == Boot::Pxe {
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
            Ok::<_, (String, String)>((ep_proto(&ep), address, status))
        }
        .await;
        match res {
            Ok((proto, address, before)) => {
                let what = match (boot, before) {
                    (Boot::Off, _) => "powered off".to_string(),
                    (Boot::Pxe, Power::On) => "reset into PXE (once)".to_string(),
                    (Boot::Pxe, _) => "powered on into PXE (once)".to_string(),
                    (Boot::Disk, Power::On) => "reset into the local disk".to_string(),
                    (Boot::Disk, _) => "powered on from the local disk".to_string(),
                };
                tracing::info!(bmc = %address, "{what} through {proto}");
                Ok(())
            }
            Err((reason, msg)) => {
                let msg = format!("BMC: {msg}");
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
                    &format!("Bmc{reason}"),
                    &msg,
                )
                .await;
                patch_status(&ctx.client, node.as_ref(), json!({"conditions": conds})).await?;
                Err(Error::Other(msg))
            }
        }
    }
}

impl ProvisionController {
    async fn bmc_call<T>(
        &self,
        what: &'static str,
        f: futures::future::BoxFuture<'_, Result<T, groundwork_bmc::BmcError>>,
    ) -> Result<T, (String, String)> {
        match tokio::time::timeout(self.timing.bmc_timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err((
                crate::power::reason_of(&e).to_string(),
                format!("{what}: {e}"),
            )),
            Err(_) => Err((
                "Timeout".to_string(),
                format!("{what}: no answer in {:?}", self.timing.bmc_timeout),
            )),
        }
    }
}

fn r_at(r: &Option<groundwork_types::TaskReport>) -> Option<&str> {
    r.as_ref().and_then(|r| r.at.as_deref())
}
