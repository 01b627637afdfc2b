//! `power`: makes each Node's observed power match `spec.online` through its BMC (IPMI or
//! Redfish), setting `spec.nextBoot` (for the next boot only) right before powering on.
//!
//! BMCs are fragile: every call is bounded by a timeout; a BMC is never asked two things at
//! once (one lock per BMC address) and at most `global_limit` BMC calls run at a time across
//! all Nodes, so a burst of Nodes never floods the management network; failures are retried
//! by the runtime with per-Node exponential backoff. Status carries the observed power, the
//! last BMC error and the conditions `BmcReachable` and `PowerSynced`; Events record every
//! power action and every change of reachability. Powered machines are polled again every
//! `poll` to notice power changed behind our back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use groundwork_bmc::{BmcError, BootTarget, Endpoint, Power, PowerAction, Protocol};
use groundwork_types::{BmcProtocol, BootDevice, Node};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::caches::{Caches, Change, ChangedObject};
use crate::events::EventType;
use crate::runtime::{Action, Ctx, Error, Reconciler, condition_with_event, patch_status};

pub struct PowerController {
    global: Arc<Semaphore>,
    /// Bound on each BMC call.
    pub call_timeout: Duration,
    /// How often a synced Node's power is read again.
    pub poll: Duration,
}

impl Default for PowerController {
    fn default() -> Self {
        PowerController::new(32, Duration::from_secs(10), Duration::from_secs(60))
    }
}

impl PowerController {
    pub fn new(global_limit: usize, call_timeout: Duration, poll: Duration) -> Self {
        PowerController {
            global: Arc::new(Semaphore::new(global_limit.max(1))),
            call_timeout,
            poll,
        }
    }

    async fn call<T>(
        &self,
        what: &str,
        f: futures::future::BoxFuture<'_, Result<T, BmcError>>,
    ) -> Result<T, BmcError> {
        match tokio::time::timeout(self.call_timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(BmcError::Timeout(format!(
                "{what}: no result in {:?}",
                self.call_timeout
            ))),
        }
    }
}

/// The Nodes whose BMC logs in with Credential `name`.
pub(crate) fn nodes_with_credential(c: &Caches, name: &str) -> Vec<String> {
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

/// One lock per BMC address, shared by every controller in the process: a BMC is never asked
/// two things at once.
pub(crate) fn bmc_lock(address: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: std::sync::OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> =
        std::sync::OnceLock::new();
    LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(address.to_string())
        .or_default()
        .clone()
}

/// The Node's BMC endpoint with its password opened, and its `host:port`; or a condition
/// reason and message saying why it cannot be used.
pub(crate) fn bmc_endpoint(
    ctx: &Ctx,
    bmc: &groundwork_types::Bmc,
    timeout: Duration,
) -> Result<(Endpoint, String), (&'static str, String)> {
    let cred = ctx
        .caches
        .credentials
        .get(&ObjectRef::new(&bmc.credentials_ref))
        .ok_or_else(|| {
            (
                "CredentialsNotFound",
                format!("Credential {:?} does not exist", bmc.credentials_ref),
            )
        })?;
    let key = ctx.secret_key.as_ref().ok_or((
        "NoSecretKey",
        "this controller has no secret key to open credentials (--secret-key-file)".to_string(),
    ))?;
    let sealed = cred.spec.encrypted_password.as_deref().ok_or_else(|| {
        (
            "CredentialsUnreadable",
            format!("Credential {:?} has no password", bmc.credentials_ref),
        )
    })?;
    let password = key
        .open(&format!("credentials/{}", bmc.credentials_ref), sealed)
        .map_err(|e| {
            (
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
    let ep = Endpoint {
        protocol: match bmc.protocol {
            BmcProtocol::Ipmi => Protocol::Ipmi,
            BmcProtocol::Redfish => Protocol::Redfish,
        },
        address: address.clone(),
        username: cred.spec.username.clone(),
        password,
        cipher_suite: bmc.cipher_suite.unwrap_or(3),
        insecure_tls: bmc.insecure_tls,
        timeout,
    };
    Ok((ep, address))
}

/// Why the BMC could not be used, as a condition reason.
pub(crate) fn reason_of(e: &BmcError) -> &'static str {
    match e {
        BmcError::Auth(_) => "AuthenticationFailed",
        BmcError::Timeout(_) => "Timeout",
        BmcError::Unsupported(_) => "Unsupported",
        BmcError::Config(_) => "BadConfiguration",
        _ => "BmcError",
    }
}

impl Reconciler for PowerController {
    type K = Node;
    const NAME: &'static str = "power";

    fn store(c: &Caches) -> &Store<Node> {
        &c.nodes
    }

    fn map(&self, change: &Change, c: &Caches) -> Vec<String> {
        match &change.object {
            ChangedObject::Node(n) if change.spec_changed => vec![n.name_any()],
            ChangedObject::Credential(cr) if change.spec_changed => {
                nodes_with_credential(c, &cr.name_any())
            }
            _ => vec![],
        }
    }

    async fn reconcile(&self, node: Arc<Node>, ctx: &Ctx) -> Result<Action, Error> {
        if node.spec.maintenance {
            tracing::debug!("in maintenance; leaving power alone");
            return Ok(Action::AwaitChange);
        }
        let Some(bmc) = &node.spec.bmc else {
            return Ok(Action::AwaitChange);
        };
        let status = node.status.clone().unwrap_or_default();
        let mut conds = status.conditions.clone();

        let (ep, address) = match bmc_endpoint(ctx, bmc, self.call_timeout) {
            Ok(v) => v,
            Err((reason, msg)) => {
                condition_with_event(
                    ctx,
                    node.as_ref(),
                    &mut conds,
                    "BmcReachable",
                    false,
                    reason,
                    &msg,
                )
                .await;
                patch_status(&ctx.client, node.as_ref(), json!({"conditions": conds})).await?;
                // A Credential change maps back to this Node.
                return Ok(Action::AwaitChange);
            }
        };

        let lock = bmc_lock(&address);
        let _one_at_a_time = lock.lock().await;
        let _permit = self
            .global
            .acquire()
            .await
            .map_err(|e| Error::Other(e.to_string()))?;
        let outcome = self.converge(ctx, &node, &ep).await;
        drop(_permit);

        match outcome {
            Ok((observed, acted, inv)) => {
                condition_with_event(
                    ctx,
                    node.as_ref(),
                    &mut conds,
                    "BmcReachable",
                    true,
                    "Reachable",
                    &format!("{} BMC at {address} answers", ep_proto(&ep)),
                )
                .await;
                let want = node
                    .spec
                    .online
                    .map(|o| if o { Power::On } else { Power::Off });
                let synced = want.is_none_or(|w| w == observed);
                let (reason, msg) = match (want, synced) {
                    (None, _) => (
                        "NoDesiredPower",
                        "spec.online is not set; power is left as it is".to_string(),
                    ),
                    (Some(_), true) => ("Synced", format!("power is {observed:?}, as desired")),
                    (Some(w), false) => (
                        "Transitioning",
                        format!("power is {observed:?}, turning {w:?}"),
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
                let mut patch =
                    json!({"power": power, "lastBmcError": Value::Null, "conditions": conds});
                if let Some(system) = inv {
                    patch["inventory"] = json!({ "system": system });
                }
                patch_status(&ctx.client, node.as_ref(), patch).await?;
                Ok(if acted || !synced {
                    Action::Requeue(Duration::from_secs(2))
                } else {
                    Action::Requeue(self.poll)
                })
            }
            Err(e) => {
                let msg = e.to_string();
                condition_with_event(
                    ctx,
                    node.as_ref(),
                    &mut conds,
                    "BmcReachable",
                    false,
                    reason_of(&e),
                    &msg,
                )
                .await;
                groundwork_types::set_condition(
                    &mut conds,
                    "PowerSynced",
                    false,
                    "BmcUnreachable",
                    "the BMC did not answer; power state unknown",
                    node.metadata.generation,
                    jiff::Timestamp::now(),
                );
                patch_status(
                    &ctx.client,
                    node.as_ref(),
                    json!({"lastBmcError": msg, "conditions": conds}),
                )
                .await?;
                // The runtime retries with backoff.
                Err(Error::Other(msg))
            }
        }
    }
}

pub(crate) fn ep_proto(ep: &Endpoint) -> &'static str {
    match ep.protocol {
        Protocol::Ipmi => "IPMI",
        Protocol::Redfish => "Redfish",
    }
}

impl PowerController {
    /// Reads power, acts if it differs from the desired state, and returns (observed power
    /// afterwards, whether it acted, system identity fields to fill in).
    async fn converge(
        &self,
        ctx: &Ctx,
        node: &Node,
        ep: &Endpoint,
    ) -> Result<(Power, bool, Option<Value>), BmcError> {
        let bmc = ctx.bmc.connect(ep)?;
        let observed = self.call("power status", bmc.power_status()).await?;
        // The BMC's view of the machine's identity fills what in-band inventory has not
        // reported yet; it never overwrites what the agent reported.
        let have = node
            .status
            .as_ref()
            .and_then(|s| s.inventory.as_ref())
            .and_then(|i| i.system.clone())
            .unwrap_or_default();
        let mut inv = None;
        if have.vendor.is_none() || have.model.is_none() || have.serial.is_none() {
            match self.call("inventory", bmc.inventory()).await {
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
                    if !sys.is_empty() {
                        inv = Some(Value::Object(sys));
                    }
                }
                // Not every BMC has a FRU; power management does not depend on it.
                Err(e) => tracing::debug!(error = %e, "BMC inventory unavailable"),
            }
        }
        let obj = node.object_ref(&());
        match (node.spec.online, observed) {
            (Some(true), Power::Off) => {
                if let Some(dev) = node.spec.next_boot {
                    let t = match dev {
                        BootDevice::Pxe => BootTarget::Pxe,
                        BootDevice::Disk => BootTarget::Disk,
                    };
                    self.call("set boot device", bmc.set_boot(t, true, false))
                        .await?;
                    tracing::info!(device = ?dev, "next boot device set (once)");
                }
                self.call("power on", bmc.set_power(PowerAction::On))
                    .await?;
                tracing::info!("powered on (spec.online: true)");
                ctx.recorder
                    .publish(
                        &obj,
                        EventType::Normal,
                        "PowerOn",
                        &format!("powered on through {} at {}", ep_proto(ep), ep.address),
                    )
                    .await;
                let now = self.call("power status", bmc.power_status()).await?;
                Ok((now, true, inv))
            }
            (Some(false), Power::On) => {
                self.call("power off", bmc.set_power(PowerAction::Off))
                    .await?;
                tracing::info!("powered off (spec.online: false)");
                ctx.recorder
                    .publish(
                        &obj,
                        EventType::Normal,
                        "PowerOff",
                        &format!("powered off through {} at {}", ep_proto(ep), ep.address),
                    )
                    .await;
                let now = self.call("power status", bmc.power_status()).await?;
                Ok((now, true, inv))
            }
            _ => Ok((observed, false, inv)),
        }
    }
}
