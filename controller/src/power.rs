//! `power`: the only controller that talks to BMCs (IPMI or Redfish), through the process'
//! [`BmcPool`](crate::bmcpool::BmcPool). It takes the power actions the provisioning
//! controller records (`status.provisioning.powerPending`: PXE once and power on or reset,
//! disk and reset, off), acknowledging each by clearing it and setting `powerDoneAt`, and
//! otherwise makes each Node's observed power match `spec.online`, setting `spec.nextBoot`
//! (for the next boot only) right before powering on. Only the holder of its Lease acts, so
//! across processes, too, a BMC is asked one thing at a time.
//!
//! The decision is pure ([`plan`], [`steps`]); [`PowerController::reconcile`] carries it out.
//! BMCs are fragile: every call is bounded by the pool's deadline; failures are retried by the
//! runtime with per-Node exponential backoff. Status carries the observed power, the last BMC
//! error and the conditions `BmcReachable` and `PowerSynced`; Events record every power
//! action and every change of reachability. Powered machines are polled again every `poll`
//! to notice power changed behind our back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use groundwork_bmc::{BootTarget, Endpoint, Power, PowerAction, Protocol};
use groundwork_types::{BmcProtocol, BootDevice, Credential, Node, PowerIntent};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::bmcpool::{BmcFailure, Session};
use crate::caches::{Caches, Change, Kinds};
use crate::events::EventType;
use crate::runtime::{
    Action, Ctx, Error, Owns, Reconciler, condition_with_event, patch_own_status, patch_status,
};

/// The conditions this controller owns on a Node.
const CONDITIONS: &[&str] = &["BmcReachable", "PowerSynced"];

pub struct PowerController {
    /// How often a synced Node's power is read again.
    pub poll: Duration,
    /// Per Node, the pending action (task ID) last seen by `map`, and the one last taken and
    /// acknowledged: a cache that has not seen the acknowledgement yet must not take it again.
    seen: Mutex<HashMap<String, Option<String>>>,
    taken: Mutex<HashMap<String, String>>,
}

impl PowerController {
    pub fn new(poll: Duration) -> Self {
        PowerController {
            poll,
            seen: Mutex::default(),
            taken: Mutex::default(),
        }
    }
}

impl Default for PowerController {
    fn default() -> Self {
        PowerController::new(Duration::from_secs(60))
    }
}

/// What the power controller is to do about a Node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Take the power action provisioning recorded.
    Pending(PowerIntent),
    /// Power as `spec.online` says (unset: leave it), booting `next_boot` once if powering
    /// on.
    Online {
        online: Option<bool>,
        next_boot: Option<BootDevice>,
    },
}

/// The decision for a Node: `None` when its power is not ours to touch (no BMC, in
/// maintenance).
pub fn plan(node: &Node) -> Option<Want> {
    if node.spec.maintenance || node.spec.bmc.is_none() {
        return None;
    }
    let pending = node
        .status
        .as_ref()
        .and_then(|s| s.provisioning.as_ref())
        .and_then(|p| p.power_pending);
    match pending {
        // The operator wants it off: a step that powers on waits (provisioning says so).
        Some(i) if i == PowerIntent::Off || node.spec.online != Some(false) => {
            Some(Want::Pending(i))
        }
        _ => Some(Want::Online {
            online: node.spec.online,
            next_boot: node.spec.next_boot,
        }),
    }
}

/// One BMC command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Boot device, for the next boot only (`true`) or persistently.
    Boot(BootTarget, bool),
    Power(PowerAction),
}

/// The BMC commands that take a machine whose power is `observed` to what is wanted.
pub fn steps(want: Want, observed: Power) -> Vec<Step> {
    let on_or_reset = if observed == Power::On {
        PowerAction::Reset
    } else {
        PowerAction::On
    };
    match want {
        Want::Pending(PowerIntent::Off)
        | Want::Online {
            online: Some(false),
            ..
        } => {
            if observed == Power::On {
                vec![Step::Power(PowerAction::Off)]
            } else {
                vec![]
            }
        }
        Want::Pending(PowerIntent::Pxe) => {
            vec![Step::Boot(BootTarget::Pxe, true), Step::Power(on_or_reset)]
        }
        Want::Pending(PowerIntent::Disk) => vec![
            Step::Boot(BootTarget::Disk, false),
            Step::Power(on_or_reset),
        ],
        Want::Online {
            online: Some(true),
            next_boot,
        } if observed == Power::Off => {
            let mut s: Vec<Step> = next_boot
                .map(|d| {
                    let t = match d {
                        BootDevice::Pxe => BootTarget::Pxe,
                        BootDevice::Disk => BootTarget::Disk,
                    };
                    Step::Boot(t, true)
                })
                .into_iter()
                .collect();
            s.push(Step::Power(PowerAction::On));
            s
        }
        Want::Online { .. } => vec![],
    }
}

/// The Nodes whose BMC logs in with Credential `name`.
pub(crate) fn nodes_with_credential(c: &Caches, name: &str) -> Vec<String> {
    c.store::<Node>()
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

/// The Node's BMC endpoint with its password opened; or why it cannot be used.
pub(crate) fn bmc_endpoint(
    ctx: &Ctx,
    bmc: &groundwork_types::Bmc,
    timeout: Duration,
) -> Result<Endpoint, BmcFailure> {
    let cred = ctx
        .caches
        .store::<Credential>()
        .get(&ObjectRef::new(&bmc.credentials_ref))
        .ok_or_else(|| {
            BmcFailure::new(
                "CredentialsNotFound",
                format!("Credential {:?} does not exist", bmc.credentials_ref),
            )
        })?;
    let key = ctx.secret_key.as_ref().ok_or_else(|| {
        BmcFailure::new(
            "NoSecretKey",
            "this controller has no secret key to open credentials (--secret-key-file)",
        )
    })?;
    let sealed = cred.spec.encrypted_password.as_deref().ok_or_else(|| {
        BmcFailure::new(
            "CredentialsUnreadable",
            format!("Credential {:?} has no password", bmc.credentials_ref),
        )
    })?;
    let password = key
        .open(&format!("credentials/{}", bmc.credentials_ref), sealed)
        .map_err(|e| {
            BmcFailure::new(
                "CredentialsUnreadable",
                format!("Credential {:?}: {e}", bmc.credentials_ref),
            )
        })?;
    let address = match bmc.port {
        Some(p) if bmc.address.contains(':') && !bmc.address.starts_with('[') => {
            format!("[{}]:{p}", bmc.address)
        }
        Some(p) => format!("{}:{p}", bmc.address),
        None => bmc.address.clone(),
    };
    Ok(Endpoint {
        protocol: match bmc.protocol {
            BmcProtocol::Ipmi => Protocol::Ipmi,
            BmcProtocol::Redfish => Protocol::Redfish,
        },
        address,
        username: cred.spec.username.clone(),
        password,
        cipher_suite: bmc.cipher_suite.unwrap_or(3),
        insecure_tls: bmc.insecure_tls,
        timeout,
    })
}

/// The task ID of the Node's pending power action, if one is pending.
fn pending_task(node: &Node) -> Option<String> {
    let p = node.status.as_ref()?.provisioning.as_ref()?;
    p.power_pending?;
    Some(p.task_id.clone().unwrap_or_default())
}

impl Reconciler for PowerController {
    type K = Node;
    const NAME: &'static str = "power";

    fn watches(kinds: Kinds) -> Kinds {
        kinds.watch::<Credential>()
    }

    fn map(&self, change: &Change, c: &Caches) -> Vec<String> {
        if let Some(n) = change.get::<Node>() {
            // Specs, and provisioning's recorded power actions: a new one, not every write
            // while one waits (that would defeat the retry backoff of a failing BMC).
            let pending = pending_task(&n);
            let before = self
                .seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(n.name_any(), pending.clone());
            if change.spec_changed || (pending.is_some() && before != Some(pending)) {
                return vec![n.name_any()];
            }
        } else if change.is::<Credential>() && change.spec_changed {
            return nodes_with_credential(c, change.name());
        }
        vec![]
    }

    async fn reconcile(&self, node: Arc<Node>, ctx: &Ctx) -> Result<Action, Error> {
        let (Some(want), Some(bmc)) = (plan(&node), &node.spec.bmc) else {
            return Ok(Action::AwaitChange);
        };
        let task = pending_task(&node);
        if let (Want::Pending(_), Some(t)) = (want, &task)
            && self
                .taken
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&node.name_any())
                == Some(t)
        {
            // Taken and acknowledged; the cache has not seen the acknowledgement yet.
            return Ok(Action::Requeue(Duration::from_secs(1)));
        }
        let mut conds = node
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let ep = match bmc_endpoint(ctx, bmc, ctx.bmc.timeout()) {
            Ok(ep) => ep,
            Err(f) => {
                // A Credential change maps back to this Node.
                self.unreachable(ctx, &node, &mut conds, &f).await?;
                return Ok(Action::AwaitChange);
            }
        };
        let outcome = async {
            let session = ctx.bmc.session(&ep).await?;
            self.converge(ctx, &node, &session, want).await
        }
        .await;
        match outcome {
            Ok((observed, acted, inv)) => {
                let address = &ep.address;
                let proto = match ep.protocol {
                    Protocol::Ipmi => "IPMI",
                    Protocol::Redfish => "Redfish",
                };
                condition_with_event(
                    ctx,
                    node.as_ref(),
                    &mut conds,
                    "BmcReachable",
                    true,
                    "Reachable",
                    &format!("{proto} BMC at {address} answers"),
                )
                .await;
                let online = node.spec.online;
                let synced = online.is_none_or(|o| o == (observed == Power::On));
                let (reason, msg) = match (online, synced) {
                    (None, _) => (
                        "NoDesiredPower",
                        "spec.online is not set; power is left as it is".to_string(),
                    ),
                    (Some(_), true) => ("Synced", format!("power is {observed:?}, as desired")),
                    (Some(o), false) => (
                        "Transitioning",
                        format!(
                            "power is {observed:?}, turning {}",
                            if o { "On" } else { "Off" }
                        ),
                    ),
                };
                groundwork_types::set_condition(
                    &mut conds,
                    "PowerSynced",
                    synced,
                    reason,
                    &msg,
                    node.metadata.generation,
                    jiff::Timestamp::now(),
                );
                let power = match observed {
                    Power::On => "On",
                    Power::Off => "Off",
                };
                let mut status =
                    json!({"power": power, "lastBmcError": Value::Null, "conditions": conds});
                if let Some(system) = inv {
                    status["inventory"] = json!({ "system": system });
                }
                if let (Want::Pending(intent), Some(task)) = (want, task) {
                    self.acknowledge(ctx, &node, status, intent, &task).await?;
                } else {
                    patch_own_status(
                        &ctx.client,
                        node.as_ref(),
                        status,
                        Owns::Conditions(CONDITIONS),
                    )
                    .await?;
                }
                Ok(if acted || !synced {
                    Action::Requeue(Duration::from_secs(2))
                } else {
                    Action::Requeue(self.poll)
                })
            }
            Err(f) => {
                self.unreachable(ctx, &node, &mut conds, &f).await?;
                // The runtime retries with backoff.
                Err(Error::Bmc(f))
            }
        }
    }
}

impl PowerController {
    /// Clears the pending action just taken (with the power controller's own status
    /// fields), as long as it is still the one recorded: the same task ID and intent. A write
    /// by anyone else in between (a heartbeat, a condition) is no reason to take the action
    /// again: on a conflict the Node is read afresh and the acknowledgement sent again; a
    /// different action recorded meanwhile is left for the next reconcile.
    async fn acknowledge(
        &self,
        ctx: &Ctx,
        node: &Arc<Node>,
        mut status: Value,
        intent: PowerIntent,
        task: &str,
    ) -> Result<(), Error> {
        status["provisioning"] = json!({
            "powerPending": null,
            "powerDoneAt": jiff::Timestamp::now().to_string(),
        });
        let api = kube::Api::<Node>::all(ctx.client.clone());
        let name = node.name_any();
        let mut current = node.clone();
        for _ in 0..5 {
            let still = current
                .status
                .as_ref()
                .and_then(|s| s.provisioning.as_ref())
                .is_some_and(|p| {
                    p.power_pending == Some(intent) && p.task_id.as_deref().unwrap_or("") == task
                });
            if !still {
                return Ok(());
            }
            match patch_status(
                &ctx.client,
                current.as_ref(),
                status.clone(),
                Owns::Conditions(CONDITIONS),
            )
            .await
            {
                Ok(_) => {
                    self.taken
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(name, task.to_string());
                    return Ok(());
                }
                Err(e) if e.is_conflict() => current = Arc::new(api.get(&name).await?),
                Err(e) => return Err(e),
            }
        }
        // Still contended: the runtime retries, and the action (not yet acknowledged) with it.
        Err(Error::Conflict(format!(
            "the acknowledgement of the {intent:?} step kept conflicting"
        )))
    }

    /// Shows why the BMC could not be used (conditions and `lastBmcError`).
    async fn unreachable(
        &self,
        ctx: &Ctx,
        node: &Arc<Node>,
        conds: &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
        f: &BmcFailure,
    ) -> Result<(), Error> {
        condition_with_event(
            ctx,
            node.as_ref(),
            conds,
            "BmcReachable",
            false,
            f.reason,
            &f.message,
        )
        .await;
        groundwork_types::set_condition(
            conds,
            "PowerSynced",
            false,
            "BmcUnreachable",
            "the BMC did not answer; power state unknown",
            node.metadata.generation,
            jiff::Timestamp::now(),
        );
        patch_own_status(
            &ctx.client,
            node.as_ref(),
            json!({"lastBmcError": f.message, "conditions": conds}),
            Owns::Conditions(CONDITIONS),
        )
        .await?;
        Ok(())
    }

    /// Reads power, runs the steps the decision gives, and returns (observed power
    /// afterwards, whether it acted, system identity fields to fill in).
    async fn converge(
        &self,
        ctx: &Ctx,
        node: &Node,
        s: &Session,
        want: Want,
    ) -> Result<(Power, bool, Option<Value>), BmcFailure> {
        let observed = s.call("power status", s.bmc().power_status()).await?;
        let inv = self.identity(node, s).await;
        let steps = steps(want, observed);
        if steps.is_empty() {
            return Ok((observed, false, inv));
        }
        let obj = node.object_ref(&());
        for step in &steps {
            match *step {
                Step::Boot(t, once) => {
                    s.call("set boot device", s.bmc().set_boot(t, once, false))
                        .await?;
                    tracing::info!(device = ?t, once, "boot device set");
                }
                Step::Power(a) => {
                    let what = match a {
                        PowerAction::On => "power on",
                        PowerAction::Off => "power off",
                        PowerAction::Reset => "power reset",
                        _ => "power",
                    };
                    s.call(what, s.bmc().set_power(a)).await?;
                    let why = match want {
                        Want::Pending(i) => format!("{i:?} step of provisioning"),
                        Want::Online { online, .. } => format!("spec.online: {online:?}"),
                    };
                    tracing::info!(action = what, "{what} ({why})");
                    let reason = match a {
                        PowerAction::Off => "PowerOff",
                        PowerAction::Reset => "PowerReset",
                        _ => "PowerOn",
                    };
                    ctx.recorder
                        .publish(
                            &obj,
                            EventType::Normal,
                            reason,
                            &format!("{what} through {} ({why})", s.proto),
                        )
                        .await;
                }
            }
        }
        let now = s.call("power status", s.bmc().power_status()).await?;
        Ok((now, true, inv))
    }

    /// The BMC's view of the machine's identity fills what in-band inventory has not
    /// reported yet; it never overwrites what the agent reported.
    async fn identity(&self, node: &Node, s: &Session) -> Option<Value> {
        let have = node
            .status
            .as_ref()
            .and_then(|s| s.inventory.as_ref())
            .and_then(|i| i.system.clone())
            .unwrap_or_default();
        if have.vendor.is_some() && have.model.is_some() && have.serial.is_some() {
            return None;
        }
        match s.call("inventory", s.bmc().inventory()).await {
            Ok(i) => {
                let mut sys = serde_json::Map::new();
                let mut put = |k: &str, mine: &Option<String>, theirs: Option<String>| {
                    if mine.is_none()
                        && let Some(v) = theirs
                    {
                        sys.insert(k.into(), v.into());
                    }
                };
                put("vendor", &have.vendor, i.manufacturer);
                put("model", &have.model, i.model);
                put("serial", &have.serial, i.serial);
                put("uuid", &have.uuid, i.uuid);
                (!sys.is_empty()).then_some(Value::Object(sys))
            }
            // Not every BMC has a FRU; power management does not depend on it.
            Err(e) => {
                tracing::debug!(error = %e, "BMC inventory unavailable");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(spec: Value, pending: Option<&str>) -> Node {
        serde_json::from_value(json!({
            "apiVersion": "groundwork.dev/v1alpha1", "kind": "Node",
            "metadata": {"name": "n"},
            "spec": spec,
            "status": {"provisioning": {"powerPending": pending}},
        }))
        .unwrap()
    }

    /// name, spec, pending action, observed power, steps (None: not ours to touch).
    type Row = (
        &'static str,
        Value,
        Option<&'static str>,
        Power,
        Option<Vec<Step>>,
    );

    #[test]
    fn the_decision_and_its_steps_as_a_table() {
        let bmc = json!({"address": "10.0.0.9", "protocol": "ipmi", "credentialsRef": "c"});
        use BootTarget::{Disk as D, Pxe as P};
        use PowerAction::{Off, On, Reset};
        use Step::{Boot, Power as Act};
        #[rustfmt::skip]
        let rows: Vec<Row> = vec![
            ("no BMC", json!({"online": true}), None, Power::Off, None),
            ("maintenance", json!({"bmc": bmc, "online": true, "maintenance": true}), Some("Pxe"), Power::Off, None),
            ("online, off", json!({"bmc": bmc, "online": true}), None, Power::Off, Some(vec![Act(On)])),
            ("online, on", json!({"bmc": bmc, "online": true}), None, Power::On, Some(vec![])),
            ("online, next boot PXE", json!({"bmc": bmc, "online": true, "nextBoot": "Pxe"}), None, Power::Off, Some(vec![Boot(P, true), Act(On)])),
            ("offline, on", json!({"bmc": bmc, "online": false}), None, Power::On, Some(vec![Act(Off)])),
            ("offline, off", json!({"bmc": bmc, "online": false}), None, Power::Off, Some(vec![])),
            ("unset: left alone", json!({"bmc": bmc}), None, Power::On, Some(vec![])),
            ("pending PXE, off", json!({"bmc": bmc}), Some("Pxe"), Power::Off, Some(vec![Boot(P, true), Act(On)])),
            ("pending PXE, on", json!({"bmc": bmc, "online": true}), Some("Pxe"), Power::On, Some(vec![Boot(P, true), Act(Reset)])),
            ("pending disk, on", json!({"bmc": bmc}), Some("Disk"), Power::On, Some(vec![Boot(D, false), Act(Reset)])),
            ("pending off", json!({"bmc": bmc, "online": true}), Some("Off"), Power::On, Some(vec![Act(Off)])),
            ("pending PXE, online false: not powered on", json!({"bmc": bmc, "online": false}), Some("Pxe"), Power::Off, Some(vec![])),
            ("pending off, online false", json!({"bmc": bmc, "online": false}), Some("Off"), Power::On, Some(vec![Act(Off)])),
        ];
        for (name, spec, pending, observed, want) in rows {
            let got = plan(&node(spec, pending)).map(|w| steps(w, observed));
            assert_eq!(got, want, "{name}");
        }
    }
}
