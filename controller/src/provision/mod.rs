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
//! Each reconcile observes (the Node, its Profile, the time), decides ([`decide`]: a pure
//! function, one handler per phase) and applies the plan in one step. A transition is
//! written with the cached resourceVersion as precondition and the power action it needs as
//! `status.provisioning.powerPending`; the power controller, the only one that talks to BMCs,
//! takes the action and clears it (setting `powerDoneAt`, from which the phase's time limits
//! count). A conflict therefore never repeats a power action, and a BMC that fails keeps the
//! action pending until it answers (shown here as the `Provisioned` condition). The controller
//! remembers the resourceVersion of its own last write per Node and does not act on a cache
//! older than that.
//!
//! The agents' facts (task reports, heartbeats, boot contact) are written to
//! `status.provisioning` by the agent API (`groundwork-server`'s `agentapi`); phases after Inventoried are
//! changed by this controller only. Every phase change is an Event, a log line on the Node
//! (`groundwork logs node/NAME`) and an entry in `status.provisioning.history`.

pub mod decide;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use groundwork_types::{Node, NodePhase, PhaseEntry, Profile};
use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::caches::{Caches, Change, Kinds};
use crate::events::EventType;
use crate::runtime::{Action, Ctx, Error, Owns, Reconciler, condition_with_event, patch_status};
use decide::{Observed, Plan, Transition};

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

impl Reconciler for ProvisionController {
    type K = Node;
    const NAME: &'static str = "provisioning";

    fn watches(kinds: Kinds) -> Kinds {
        kinds.watch::<Profile>()
    }

    fn map(&self, change: &Change, c: &Caches) -> Vec<String> {
        if change.is::<Node>() {
            // Status too: agents' reports, heartbeats and the power controller's
            // acknowledgements arrive there.
            return vec![change.name().to_string()];
        }
        if change.is::<Profile>() && change.spec_changed {
            let name = change.name();
            return c
                .store::<Node>()
                .state()
                .iter()
                .filter(|n| n.status.as_ref().and_then(|s| s.profile.as_deref()) == Some(name))
                .map(|n| n.name_any())
                .collect();
        }
        vec![]
    }

    async fn reconcile(&self, node: Arc<Node>, ctx: &Ctx) -> Result<Action, Error> {
        if self.stale(&node) {
            return Ok(Action::Requeue(Duration::from_millis(100)));
        }
        let profile = node
            .status
            .as_ref()
            .and_then(|s| s.profile.as_ref())
            .and_then(|p| ctx.caches.store::<Profile>().get(&ObjectRef::new(p)));
        let plan = decide::decide(&Observed {
            node: &node,
            profile: profile.as_deref(),
            now: Timestamp::now(),
            timing: &self.timing,
        });
        self.apply(ctx, &node, plan).await
    }
}

impl ProvisionController {
    /// Carries out a plan: the status writes, Events and log lines it names.
    async fn apply(&self, ctx: &Ctx, node: &Arc<Node>, plan: Plan) -> Result<Action, Error> {
        match plan {
            Plan::Wait(then) => Ok(then),
            Plan::Condition {
                ok,
                reason,
                message,
                then,
            } => {
                self.condition(ctx, node, "Provisioned", ok, &reason, &message)
                    .await?;
                Ok(then)
            }
            Plan::AgentReady {
                fresh,
                message,
                then,
            } => {
                let reason = if fresh {
                    "Heartbeating"
                } else {
                    "HeartbeatStale"
                };
                self.condition(ctx, node, "NodeAgentReady", fresh, reason, &message)
                    .await?;
                Ok(then)
            }
            Plan::Enter { to, then } => {
                self.enter(ctx, node, to).await?;
                Ok(then)
            }
        }
    }

    /// Sets one condition of this controller's (with an Event when it flips), merged by type
    /// with the cached resourceVersion as precondition; writes nothing when nothing changes.
    async fn condition(
        &self,
        ctx: &Ctx,
        node: &Arc<Node>,
        type_: &str,
        ok: bool,
        reason: &str,
        msg: &str,
    ) -> Result<(), Error> {
        let mut conds = node
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        condition_with_event(ctx, node.as_ref(), &mut conds, type_, ok, reason, msg).await;
        patch_status(
            &ctx.client,
            node.as_ref(),
            json!({ "conditions": conds }),
            Owns::Conditions(&[type_]),
        )
        .await?;
        Ok(())
    }

    /// Records the transition (attempt, a new task ID, the report cleared, the power action
    /// to take) with the cached resourceVersion as precondition, with an Event, a log line,
    /// the `Provisioned` condition and a history entry.
    async fn enter(&self, ctx: &Ctx, node: &Arc<Node>, to: Transition) -> Result<(), Error> {
        let st = node.status.clone().unwrap_or_default();
        let now = Timestamp::now();
        let mut history = st
            .provisioning
            .as_ref()
            .map(|p| p.history.clone())
            .unwrap_or_default();
        let from = st.phase;
        if from != Some(to.phase) {
            history.push(PhaseEntry {
                phase: to.phase,
                at: now.to_string(),
            });
            let excess = history.len().saturating_sub(32);
            history.drain(..excess);
        }
        let mut prov = json!({
            "attempt": to.attempt,
            "phaseSince": now.to_string(),
            "powerDoneAt": null,
            "taskId": format!("{}-{}", now.as_millisecond(), to.attempt),
            "report": null,
            "powerPending": to.intent,
            "history": history,
            "retryObserved": node.annotations().get(RETRY_ANNOTATION),
        });
        if let (Some(m), Some(e)) = (prov.as_object_mut(), to.carry.as_object()) {
            for (k, v) in e {
                m.insert(k.clone(), v.clone());
            }
        }
        let mut conds = st.conditions.clone();
        groundwork_types::set_condition(
            &mut conds,
            "Provisioned",
            to.phase == NodePhase::Ready,
            &to.reason,
            &to.message,
            node.metadata.generation,
            now,
        );
        let provisioned: Vec<_> = conds.iter().filter(|c| c.type_ == "Provisioned").collect();
        let patch = json!({
            "metadata": {"resourceVersion": node.resource_version()},
            "status": {"phase": to.phase, "provisioning": prov, "conditions": provisioned},
        });
        let written = kube::Api::<Node>::all(ctx.client.clone())
            .patch_status(
                &node.name_any(),
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Strategic(&patch),
            )
            .await?;
        self.note_written(&written);
        let (t, msg, reason) = (
            if to.ok {
                EventType::Normal
            } else {
                EventType::Warning
            },
            &to.message,
            &to.reason,
        );
        if to.ok {
            tracing::info!(from = ?from, to = ?to.phase, attempt = to.attempt, "{msg}");
        } else {
            tracing::warn!(from = ?from, to = ?to.phase, attempt = to.attempt, reason = %reason, "{msg}");
        }
        ctx.recorder
            .publish(&node.object_ref(&()), t, reason, msg)
            .await;
        Ok(())
    }
}
