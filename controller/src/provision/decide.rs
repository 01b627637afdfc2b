//! The provisioning decision: a pure function from what is observed (the Node, its Profile,
//! the time) to a [`Plan`], one small handler per phase, in the spirit of metal3's state
//! handlers. Nothing here does I/O; [`super::ProvisionController`] applies the plan.

use std::time::Duration;

use groundwork_types::{Node, NodePhase, PowerIntent, Profile, ProvisioningState, TaskState};
use jiff::Timestamp;
use serde_json::{Value, json};

use super::{RETRY_ANNOTATION, Timing};
use crate::runtime::Action;

/// What the decision reads.
pub struct Observed<'a> {
    pub node: &'a Node,
    /// The Profile the Node is assigned (`status.profile`), from the cache.
    pub profile: Option<&'a Profile>,
    pub now: Timestamp,
    pub timing: &'a Timing,
}

/// What to do about a Node.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Nothing to write; come back as the action says.
    Wait(Action),
    /// Set the `Provisioned` condition.
    Condition {
        ok: bool,
        reason: String,
        message: String,
        then: Action,
    },
    /// Enter a phase (or the same phase again): recorded with the power action it needs,
    /// which the power controller takes.
    Enter { to: Transition, then: Action },
    /// A Ready Node's `NodeAgentReady` condition.
    AgentReady {
        fresh: bool,
        message: String,
        then: Action,
    },
}

/// A phase entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub phase: NodePhase,
    pub attempt: u32,
    /// The power action the step needs (never for a Node without a BMC: its agents reboot
    /// the machine themselves).
    pub intent: Option<PowerIntent>,
    /// More `status.provisioning` fields written with it.
    pub carry: Value,
    pub reason: String,
    pub message: String,
    /// Normal (true) or Warning (false) Event.
    pub ok: bool,
}

/// The whole decision: pending power action first, then the phase's handler.
pub fn decide(o: &Observed) -> Plan {
    let node = o.node;
    if node.spec.maintenance {
        return Plan::Wait(Action::AwaitChange);
    }
    let p = provisioning(node);
    // Without a BMC (removed meanwhile) nobody takes a recorded action: the phase goes on,
    // and its next transition clears the mark.
    if let Some(intent) = p.power_pending
        && node.spec.bmc.is_some()
    {
        return pending(o, intent);
    }
    match node.status.as_ref().and_then(|s| s.phase) {
        None | Some(NodePhase::Registered) => registered(o),
        Some(NodePhase::Discovering) => discovering(o),
        Some(NodePhase::Inventoried | NodePhase::Assigned) => inventoried(o),
        Some(NodePhase::Provisioning) => provisioning_phase(o),
        Some(NodePhase::Deprovisioning) => task_phase(o, NodePhase::Deprovisioning, "wipe"),
        Some(NodePhase::Provisioned) => provisioned(o),
        Some(NodePhase::Ready) => ready(o),
        Some(NodePhase::Failed) => failed(o),
        Some(NodePhase::Maintenance) => Plan::Wait(Action::AwaitChange),
    }
}

fn provisioning(node: &Node) -> groundwork_types::ProvisioningStatus {
    node.status
        .as_ref()
        .and_then(|s| s.provisioning.clone())
        .unwrap_or_default()
}

fn parse_ts(s: Option<&str>) -> Option<Timestamp> {
    s.and_then(|s| s.parse().ok())
}

/// How long since `since` (forever if never).
fn elapsed(now: Timestamp, since: Option<Timestamp>) -> Duration {
    since
        .map(|t| Duration::try_from(now.duration_since(t)).unwrap_or(Duration::ZERO))
        .unwrap_or(Duration::MAX)
}

/// When the current phase's clock started: its entry, or the power action taken for it.
fn phase_start(node: &Node) -> Option<Timestamp> {
    let p = provisioning(node);
    let since = parse_ts(p.phase_since.as_deref());
    let done = parse_ts(p.power_done_at.as_deref());
    since.max(done)
}

fn in_phase(o: &Observed) -> Duration {
    elapsed(o.now, phase_start(o.node))
}

/// Come back when `limit` has passed in this phase (at least 200 ms from now).
fn after(o: &Observed, limit: Duration) -> Action {
    Action::Requeue(
        limit
            .saturating_sub(in_phase(o))
            .max(Duration::from_millis(200)),
    )
}

fn condition(ok: bool, reason: &str, message: impl Into<String>, then: Action) -> Plan {
    Plan::Condition {
        ok,
        reason: reason.into(),
        message: message.into(),
        then,
    }
}

/// Enter `phase` with the reason named after it (a Normal Event).
fn enter(
    o: &Observed,
    phase: NodePhase,
    attempt: u32,
    intent: Option<PowerIntent>,
    carry: Value,
    message: impl Into<String>,
    then: Action,
) -> Plan {
    enter_with(
        o,
        phase,
        attempt,
        intent,
        carry,
        &format!("{phase:?}"),
        message,
        true,
        then,
    )
}

#[allow(clippy::too_many_arguments)]
fn enter_with(
    o: &Observed,
    phase: NodePhase,
    attempt: u32,
    intent: Option<PowerIntent>,
    carry: Value,
    reason: &str,
    message: impl Into<String>,
    ok: bool,
    then: Action,
) -> Plan {
    Plan::Enter {
        to: Transition {
            phase,
            attempt,
            intent: intent.filter(|_| o.node.spec.bmc.is_some()),
            carry,
            reason: reason.into(),
            message: message.into(),
            ok,
        },
        then,
    }
}

/// A power action is recorded and not yet taken: the power controller takes it. Shown here
/// when it cannot.
fn pending(o: &Observed, intent: PowerIntent) -> Plan {
    let node = o.node;
    if node.spec.online == Some(false) && intent != PowerIntent::Off {
        // The operator wants it off: the power controller does not fight that, and a change
        // of spec.online maps back here at once.
        return condition(
            false,
            "PoweredOffBySpec",
            "spec.online is false: not powering the machine on for this step",
            Action::AwaitChange,
        );
    }
    let st = node.status.as_ref();
    let bmc_down = st.and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "BmcReachable" && c.status == "False")
    });
    match (bmc_down, st.and_then(|s| s.last_bmc_error.as_deref())) {
        (Some(c), err) => condition(
            false,
            &format!("Bmc{}", c.reason),
            format!(
                "the power action for this step waits for the BMC: {}",
                err.unwrap_or(&c.message)
            ),
            Action::AwaitChange,
        ),
        _ => Plan::Wait(Action::AwaitChange),
    }
}

fn registered(o: &Observed) -> Plan {
    let node = o.node;
    let t = o.timing;
    if node.spec.provisioning == ProvisioningState::External {
        return enter(
            o,
            NodePhase::Provisioned,
            1,
            None,
            json!({}),
            "installed outside Groundwork: waiting for its node agent to join and check in",
            Action::AwaitChange,
        );
    }
    if node.spec.bmc.is_none() {
        if node.status.as_ref().and_then(|s| s.phase).is_none() {
            return enter(
                o,
                NodePhase::Registered,
                1,
                None,
                json!({}),
                "registered; no BMC: power the machine on to PXE-boot it and it is discovered",
                Action::AwaitChange,
            );
        }
        return Plan::Wait(Action::AwaitChange);
    }
    if node.spec.online == Some(false) {
        return condition(
            false,
            "PoweredOffBySpec",
            "spec.online is false: not powering on to discover",
            Action::AwaitChange,
        );
    }
    enter(
        o,
        NodePhase::Discovering,
        1,
        Some(PowerIntent::Pxe),
        json!({}),
        "powering on to PXE-boot the discovery ramdisk",
        Action::Requeue(t.discover),
    )
}

fn discovering(o: &Observed) -> Plan {
    let t = o.timing;
    if o.node.spec.bmc.is_none() {
        return Plan::Wait(Action::AwaitChange);
    }
    if in_phase(o) < t.discover {
        return Plan::Wait(after(o, t.discover));
    }
    let p = provisioning(o.node);
    let contact = parse_ts(p.last_boot_contact.as_deref());
    let (reason, msg) = if contact.is_some() && contact >= phase_start(o.node) {
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
    again(o, NodePhase::Discovering, PowerIntent::Pxe, reason, &msg)
}

fn inventoried(o: &Observed) -> Plan {
    let node = o.node;
    let st = node.status.clone().unwrap_or_default();
    match node.spec.provisioning {
        ProvisioningState::Provisioned => {
            let Some(profile) = st.profile.clone() else {
                return condition(
                    false,
                    "NoProfile",
                    "waiting for a Profile: set spec.profile or add a Profile whose selector matches",
                    Action::AwaitChange,
                );
            };
            let Some(os) = o.profile.and_then(|p| p.spec.os.clone()) else {
                return condition(
                    false,
                    "NoImage",
                    format!("Profile {profile:?} has no spec.os image to install"),
                    Action::AwaitChange,
                );
            };
            let carry = json!({"profileGeneration": o.profile.and_then(|p| p.metadata.generation)});
            let msg = format!(
                "installing Profile {profile} ({})",
                groundwork_types::agent::redact_url(&os.url)
            );
            enter(
                o,
                NodePhase::Provisioning,
                1,
                None,
                carry,
                msg,
                Action::Requeue(o.timing.agent_grace),
            )
        }
        ProvisioningState::Deprovisioned => {
            let powered_off = st
                .conditions
                .iter()
                .any(|c| c.type_ == "Provisioned" && c.reason == "PoweredOff");
            if node.spec.bmc.is_none() || powered_off {
                return Plan::Wait(Action::AwaitChange);
            }
            if node.spec.online == Some(true) {
                return condition(
                    false,
                    "LeftOnBySpec",
                    "deprovisioned; spec.online is true, so it stays powered on",
                    Action::AwaitChange,
                );
            }
            enter_with(
                o,
                st.phase.unwrap_or(NodePhase::Inventoried),
                1,
                Some(PowerIntent::Off),
                json!({}),
                "PoweredOff",
                "deprovisioned (spec.provisioning: Deprovisioned): powered off",
                true,
                Action::AwaitChange,
            )
        }
        ProvisioningState::External => enter(
            o,
            NodePhase::Provisioned,
            1,
            None,
            json!({}),
            "installed outside Groundwork: waiting for its node agent to join and check in",
            Action::AwaitChange,
        ),
        ProvisioningState::Available => condition(
            false,
            "Available",
            "available: set spec.provisioning to Provisioned to install",
            Action::AwaitChange,
        ),
    }
}

fn provisioning_phase(o: &Observed) -> Plan {
    if o.node.spec.provisioning != ProvisioningState::Provisioned {
        return deprovision(
            o,
            "spec.provisioning is no longer Provisioned; wiping the partly written disk",
        );
    }
    task_phase(o, NodePhase::Provisioning, "install")
}

/// An installed Node no longer wanted installed: wipe it.
fn no_longer_wanted(o: &Observed) -> Option<Plan> {
    let want = o.node.spec.provisioning;
    // An external machine is never wiped: it is not Groundwork's to erase.
    let installed = matches!(
        want,
        ProvisioningState::Provisioned | ProvisioningState::External
    );
    (!installed).then(|| {
        deprovision(
            o,
            &format!("spec.provisioning is {want:?}: wiping the disks"),
        )
    })
}

fn provisioned(o: &Observed) -> Plan {
    let t = o.timing;
    if let Some(wipe) = no_longer_wanted(o) {
        return wipe;
    }
    let p = provisioning(o.node);
    let beat = parse_ts(p.last_heartbeat.as_deref());
    if beat.is_some() && beat >= parse_ts(p.phase_since.as_deref()) {
        return enter(
            o,
            NodePhase::Ready,
            1,
            None,
            json!({}),
            "the installed system's node agent checked in",
            Action::Requeue(t.heartbeat_grace),
        );
    }
    // Nothing to reset: an external machine checks in when its agent is started.
    if o.node.spec.provisioning == ProvisioningState::External {
        return Plan::Wait(Action::AwaitChange);
    }
    if in_phase(o) < t.boot {
        return Plan::Wait(after(o, t.boot));
    }
    let msg = format!(
        "the installed system did not check in within {:?} of the reset",
        t.boot
    );
    again(
        o,
        NodePhase::Provisioned,
        PowerIntent::Disk,
        "NeverCheckedIn",
        &msg,
    )
}

fn ready(o: &Observed) -> Plan {
    let t = o.timing;
    if let Some(wipe) = no_longer_wanted(o) {
        return wipe;
    }
    let p = provisioning(o.node);
    let age = elapsed(o.now, parse_ts(p.last_heartbeat.as_deref()));
    let fresh = age <= t.heartbeat_grace;
    let message = if fresh {
        "the node agent heartbeats".to_string()
    } else {
        format!("no heartbeat for {}s", age.as_secs())
    };
    // Look again just after the grace runs out, so a lost machine is seen within a second
    // of it (not up to a second grace later).
    let then = if fresh {
        t.heartbeat_grace.saturating_sub(age) + std::time::Duration::from_secs(1)
    } else {
        t.heartbeat_grace
    };
    Plan::AgentReady {
        fresh,
        message,
        then: Action::Requeue(then),
    }
}

/// A Failed Node: retried at once when the cause may be fixed, else after `failed_retry`.
fn failed(o: &Observed) -> Plan {
    let t = o.timing;
    let node = o.node;
    let p = provisioning(node);
    let failed_in = p.failed_in.unwrap_or(NodePhase::Discovering);
    let installed_wanted = node.spec.provisioning == ProvisioningState::Provisioned;
    let profile_gen = o.profile.and_then(|p| p.metadata.generation);
    let retry = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RETRY_ANNOTATION))
        .cloned();
    let in_phase = in_phase(o);
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
        return Plan::Wait(after(o, t.failed_retry));
    };
    let clear = json!({"failedIn": null, "failureReason": null, "failedGeneration": null});
    match failed_in {
        NodePhase::Provisioning if installed_wanted => {
            // The ramdisk that reported the failure usually still runs: it gets the task
            // again; if not, the grace period PXE-boots it.
            let mut carry = clear;
            carry["profileGeneration"] = json!(profile_gen);
            enter(
                o,
                NodePhase::Provisioning,
                1,
                None,
                carry,
                format!("{why}: installing again"),
                Action::Requeue(t.agent_grace),
            )
        }
        NodePhase::Provisioned if installed_wanted => enter(
            o,
            NodePhase::Provisioned,
            1,
            Some(PowerIntent::Disk),
            clear,
            format!("{why}: booting the installed system again"),
            Action::Requeue(t.boot),
        ),
        NodePhase::Deprovisioning | NodePhase::Provisioning | NodePhase::Provisioned => enter(
            o,
            NodePhase::Deprovisioning,
            1,
            Some(PowerIntent::Pxe),
            clear,
            format!("{why}: wiping again"),
            Action::Requeue(t.task_start),
        ),
        _ => {
            if node.spec.bmc.is_none() {
                return Plan::Wait(Action::AwaitChange);
            }
            enter(
                o,
                NodePhase::Discovering,
                1,
                Some(PowerIntent::Pxe),
                clear,
                format!("{why}: PXE-booting again"),
                Action::Requeue(t.discover),
            )
        }
    }
}

/// Phases where the ramdisk agent runs a task (`install` in Provisioning, `wipe` in
/// Deprovisioning), driven by its reports for the current task ID.
fn task_phase(o: &Observed, phase: NodePhase, task: &str) -> Plan {
    let t = o.timing;
    let node = o.node;
    let p = provisioning(node);
    let attempt = p.attempt.unwrap_or(1);
    let report = p
        .report
        .clone()
        .filter(|r| r.task == task && r.task_id.is_some() && r.task_id == p.task_id);
    match report.as_ref().map(|r| r.state) {
        Some(TaskState::Succeeded) if phase == NodePhase::Provisioning => {
            let checksum = o
                .profile
                .and_then(|p| p.spec.os.clone())
                .map(|o| o.checksum);
            enter(
                o,
                NodePhase::Provisioned,
                1,
                Some(PowerIntent::Disk),
                json!({"installedChecksum": checksum}),
                "image written and verified; booting the installed system from disk",
                Action::Requeue(t.boot),
            )
        }
        Some(TaskState::Succeeded) => {
            let off = node.spec.provisioning == ProvisioningState::Deprovisioned
                && node.spec.online != Some(true);
            let (reason, msg) = if off {
                ("PoweredOff", "disks wiped; powered off")
            } else {
                (
                    "Inventoried",
                    "disks wiped; available again (the ramdisk waits for the next task)",
                )
            };
            enter_with(
                o,
                NodePhase::Inventoried,
                1,
                off.then_some(PowerIntent::Off),
                json!({"installedChecksum": null}),
                reason,
                msg,
                true,
                Action::AwaitChange,
            )
        }
        Some(TaskState::Failed) => {
            let r = report.as_ref();
            let reason = r
                .and_then(|r| r.reason.clone())
                .unwrap_or_else(|| "TaskFailed".into());
            let msg = format!(
                "{task} failed: {}",
                r.and_then(|r| r.message.clone()).unwrap_or_default()
            );
            // A wrong checksum will not fix itself by trying again.
            if reason == "ImageChecksumMismatch" {
                return fail(o, phase, &reason, &msg);
            }
            again(o, phase, PowerIntent::Pxe, &reason, &msg)
        }
        Some(TaskState::Started) => {
            let started = elapsed(
                o.now,
                parse_ts(report.as_ref().and_then(|r| r.at.as_deref())),
            );
            if started < t.task {
                return Plan::Wait(Action::Requeue(
                    t.task
                        .saturating_sub(started)
                        .max(Duration::from_millis(200)),
                ));
            }
            let msg = format!("the {task} started but did not finish within {:?}", t.task);
            again(o, phase, PowerIntent::Pxe, "TaskTimeout", &msg)
        }
        None => {
            // Provisioning's first attempt counts on the ramdisk still running after
            // discovery; every other attempt PXE-booted it.
            let grace = phase == NodePhase::Provisioning && attempt == 1;
            let limit = if grace { t.agent_grace } else { t.task_start };
            if in_phase(o) < limit {
                return Plan::Wait(after(o, limit));
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
            again(o, phase, PowerIntent::Pxe, "NoAgent", &msg)
        }
    }
}

/// Tries the phase again (attempt + 1, power-cycling into `intent`), or fails once
/// `attempts` tries were made.
fn again(o: &Observed, phase: NodePhase, intent: PowerIntent, reason: &str, msg: &str) -> Plan {
    let t = o.timing;
    let attempt = provisioning(o.node).attempt.unwrap_or(1);
    let n = t.attempts;
    if attempt >= n {
        return fail(
            o,
            phase,
            reason,
            &format!("{msg} (after {attempt} attempts)"),
        );
    }
    let carry = json!({"profileGeneration": provisioning(o.node).profile_generation});
    let then = Action::Requeue(match phase {
        NodePhase::Discovering => t.discover,
        NodePhase::Provisioned => t.boot,
        _ => t.task_start,
    });
    enter_with(
        o,
        phase,
        attempt + 1,
        Some(intent),
        carry,
        reason,
        format!("{msg}; attempt {} of {n}", attempt + 1),
        false,
        then,
    )
}

fn fail(o: &Observed, phase: NodePhase, reason: &str, msg: &str) -> Plan {
    let carry = json!({
        "failedIn": phase,
        "failureReason": reason,
        "failedGeneration": o.node.metadata.generation,
    });
    enter_with(
        o,
        NodePhase::Failed,
        1,
        None,
        carry,
        reason,
        msg,
        false,
        Action::Requeue(o.timing.failed_retry),
    )
}

fn deprovision(o: &Observed, msg: &str) -> Plan {
    enter(
        o,
        NodePhase::Deprovisioning,
        1,
        Some(PowerIntent::Pxe),
        json!({}),
        msg,
        Action::Requeue(o.timing.task_start),
    )
}

#[cfg(test)]
#[path = "decide_test.rs"]
mod tests;
