//! The API side of booting.
//!
//! iPXE scripts: the machine is looked up by MAC among the Nodes' `spec.bootMACs` and their
//! inventoried NICs. Unknown machines are enlisted as Nodes in phase Discovering and, like
//! machines being discovered, get the discovery ramdisk; Assigned and Provisioning ones the
//! install ramdisk (their Profile's kernel, initrd and command line when it names them);
//! Provisioned and Ready ones boot from their local disk. Every ramdisk gets a one-time join
//! token for its MAC on the kernel command line (short-lived, audience `agent-join`), with
//! the agent API's address and the cluster CA's hash.
//!
//! Join: the ramdisk agent trades the token, its serial number and a certificate request for
//! its certificate (`system:node:NAME`). A token is good once, for its MAC only, and never
//! after a newer one was used; the serial must match what the Node knows. Every later call
//! (inventory, tasks, heartbeats, renewal) is made with that certificate, whose serial must be
//! one the Node's `status.provisioning.agent` lists.
//!
//! Inventory: a report fills the Node's `status.inventory` and moves it from
//! Registered/Discovering to Inventoried.

use std::sync::Arc;

use groundwork_boot::http::{
    AgentError, AgentIdentity, InventorySink, JoinParams, JoinReply, JoinRequest, ScriptSource,
    discovery_script_with_token, local_disk_script,
};
use groundwork_types::agent::{Heartbeat, HeartbeatReply, MachineFile, Task};
use groundwork_types::secrets::SecretKey;
use groundwork_types::{
    Inventory, Node, NodePhase, NodeSpec, Profile, ProvisioningState, TaskReport, normalize_mac,
};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use groundwork_controller::caches::{Caches, Kinds};

/// Signs a machine's certificate request for a Node: `(csr_pem, node) -> (certificate PEM,
/// its serial number as the TLS layer reports it)`.
pub type MachineSigner = Arc<dyn Fn(&str, &str) -> Result<(String, String), String> + Send + Sync>;

/// Signs a service instance's certificate request: `(csr_pem, common name, names) ->
/// certificate PEM`.
pub type ServiceSigner = Arc<dyn Fn(&str, &str, &[String]) -> Result<String, String> + Send + Sync>;

/// The audience of the join tokens in iPXE scripts.
pub const AGENT_JOIN_AUDIENCE: &str = "agent-join";

/// How machines join: the token key, the CA that signs their certificates, where the agent
/// API listens.
pub struct Joining {
    pub key: SecretKey,
    pub signer: MachineSigner,
    pub service_signer: ServiceSigner,
    /// `sha256:HEX` of the cluster CA (the first of the bundle).
    pub ca_hash: String,
    /// The CA bundle (PEM), handed to machines with their certificates.
    pub ca_pem: String,
    /// The agent API's port (on the address the machine reached the boot HTTP server at).
    pub agent_port: u16,
    /// How long a join token is good for.
    pub token_ttl_seconds: i64,
}

/// The kinds the agent API and the boot scripts read.
pub(crate) fn watches(kinds: Kinds) -> Kinds {
    kinds
        .watch::<Node>()
        .watch::<Profile>()
        .watch::<groundwork_types::ServiceInstance>()
        .watch::<groundwork_types::Credential>()
}

pub struct NodeScripts {
    pub caches: Caches,
    pub client: Client,
    /// Without it, scripts carry no join token and no machine can join.
    pub joining: Option<Joining>,
    /// The discovery ramdisk (files under the boot root, or URLs).
    pub kernel: String,
    pub initrd: String,
    pub cmdline: String,
    /// How often installed systems heartbeat.
    pub heartbeat_interval: u32,
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// Merges `status` into the Node's status (agents' facts; no precondition: these fields are
/// written only here).
async fn status_patch(
    client: Client,
    name: String,
    status: serde_json::Value,
) -> Result<(), kube::Error> {
    Api::<Node>::all(client)
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .map(|_| ())
}

/// The `MachineConfigApplied` condition from a heartbeat's skipped items.
fn machine_config_condition(skipped: &[String]) -> (bool, &'static str, String) {
    if skipped.is_empty() {
        return (true, "Applied", "the machine config is applied".into());
    }
    if skipped.iter().any(|s| s == "cloud-init: not finished yet") {
        return (
            false,
            "CloudInitRunning",
            "cloud-init has not finished yet".into(),
        );
    }
    let mut m = skipped.join("; ");
    if m.len() > 1024 {
        let cut = (0..=1024)
            .rev()
            .find(|&i| m.is_char_boundary(i))
            .unwrap_or(0);
        m.truncate(cut);
        m.push_str(" ...");
    }
    (false, "NotApplied", m)
}

/// The install task for a Node in phase Provisioning, if its Profile names an image.
fn install_task(
    caches: &Caches,
    node: &Node,
    mac: &str,
    attempt: u32,
    task_id: String,
) -> Option<Task> {
    let profile_name = node.status.as_ref()?.profile.clone()?;
    let profile = caches
        .store::<Profile>()
        .get(&ObjectRef::new(&profile_name))?;
    let os = profile.spec.os.clone()?;
    let mc = profile.spec.machine_config.clone().unwrap_or_default();
    let name = node.name_any();
    Some(Task::Install {
        attempt,
        task_id,
        image_url: os.url.clone(),
        checksum: os.checksum.clone(),
        target_disk: os.target_disk.clone(),
        config: Box::new(MachineFile {
            node: name.clone(),
            url: String::new(),
            mac: mac.to_string(),
            credentials: None,
            hostname: Some(
                mc.hostname
                    .map(|h| h.replace("{{name}}", &name))
                    .unwrap_or_else(|| name.clone()),
            ),
            users: mc.users,
            files: mc.files,
            units: mc.units,
            profile: Some(profile_name),
            checksum: Some(os.checksum),
        }),
        user_data: mc.user_data,
    })
}

fn node_for_mac(caches: &Caches, mac: &str) -> Option<Arc<Node>> {
    caches.store::<Node>().find(|n| {
        n.spec
            .boot_macs
            .iter()
            .filter_map(|m| normalize_mac(m))
            .any(|m| m == mac)
            || n.status
                .as_ref()
                .and_then(|s| s.inventory.as_ref())
                .is_some_and(|i| {
                    i.nics
                        .iter()
                        .any(|nic| normalize_mac(&nic.mac).as_deref() == Some(mac))
                })
    })
}

/// The name an enlisted machine gets: `m-` and its MAC without separators.
pub fn enlisted_name(mac: &str) -> String {
    format!("m-{}", mac.replace(':', ""))
}

async fn enlist(client: Client, mac: String) -> Result<Node, kube::Error> {
    let api: Api<Node> = Api::all(client);
    let name = enlisted_name(&mac);
    let mut n = Node::new(
        &name,
        NodeSpec {
            boot_macs: vec![mac.clone()],
            ..Default::default()
        },
    );
    n.metadata.labels = Some([("groundwork.dev/enlisted".to_string(), "true".to_string())].into());
    let created = match api.create(&PostParams::default(), &n).await {
        Ok(c) => c,
        Err(kube::Error::Api(s)) if s.code == 409 => api.get(&name).await?,
        Err(e) => return Err(e),
    };
    if created.status.as_ref().and_then(|s| s.phase).is_none() {
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Discovering"}})),
        )
        .await?;
        tracing::info!(node = %name, %mac, "enlisted an unknown machine (phase Discovering)");
    }
    Ok(created)
}

impl ScriptSource for NodeScripts {
    fn script(&self, mac: &str, base: &str) -> String {
        let token = self.joining.as_ref().map(|j| {
            let host = base
                .trim_start_matches("http://")
                .rsplit_once(':')
                .map(|(h, _)| h.to_string())
                .unwrap_or_else(|| base.trim_start_matches("http://").to_string());
            (
                j.key
                    .issue_token(AGENT_JOIN_AUDIENCE, mac, &[], j.token_ttl_seconds),
                format!("{host}:{}", j.agent_port),
                j.ca_hash.clone(),
            )
        });
        let join = token.as_ref().map(|(t, a, h)| JoinParams {
            token: t,
            agent: a,
            ca_hash: h,
        });
        let token = join.as_ref();
        let Some(node) = node_for_mac(&self.caches, mac) else {
            let (client, m) = (self.client.clone(), mac.to_string());
            tokio::spawn(async move {
                if let Err(e) = enlist(client, m.clone()).await {
                    tracing::warn!(mac = %m, error = %e, "could not enlist the machine");
                }
            });
            let cmdline = format!("{} groundwork.node={}", self.cmdline, enlisted_name(mac));
            return discovery_script_with_token(
                base,
                &self.kernel,
                &self.initrd,
                &cmdline,
                mac,
                token,
            );
        };
        let name = node.name_any();
        let phase = node.status.as_ref().and_then(|s| s.phase);
        let cmdline = format!("{} groundwork.node={name}", self.cmdline);
        // The machine did PXE-boot: the provisioning controller tells "never booted" from
        // "booted but its agent never reported" by this.
        let recent = node
            .status
            .as_ref()
            .and_then(|s| s.provisioning.as_ref())
            .and_then(|p| p.last_boot_contact.as_deref())
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .is_some_and(|t| jiff::Timestamp::now().duration_since(t).as_secs_f64() < 10.0);
        let (client, n) = (self.client.clone(), name.clone());
        // At most one write per machine per 10 s, however often the script is fetched.
        if !recent {
            tokio::spawn(async move {
                let r = status_patch(
                    client,
                    n.clone(),
                    json!({"provisioning": {"lastBootContact": now()}}),
                )
                .await;
                if let Err(e) = r {
                    tracing::warn!(node = %n, error = %e, "could not record the boot contact");
                }
            });
        }
        match phase {
            Some(NodePhase::Provisioned | NodePhase::Ready) => local_disk_script(mac),
            Some(NodePhase::Assigned | NodePhase::Provisioning) => {
                let profile = node
                    .status
                    .as_ref()
                    .and_then(|s| s.profile.clone())
                    .and_then(|p| self.caches.store::<Profile>().get(&ObjectRef::new(&p)));
                let boot = profile
                    .as_ref()
                    .and_then(|p| p.spec.boot.clone())
                    .unwrap_or_default();
                let kernel = boot.kernel.unwrap_or_else(|| self.kernel.clone());
                let initrd = boot.initrd.unwrap_or_else(|| self.initrd.clone());
                let extra = boot.cmdline.unwrap_or_default();
                discovery_script_with_token(
                    base,
                    &kernel,
                    &initrd,
                    &format!("{cmdline} groundwork.mode=install {extra}"),
                    mac,
                    token,
                )
            }
            _ => {
                discovery_script_with_token(base, &self.kernel, &self.initrd, &cmdline, mac, token)
            }
        }
    }
}

/// `Err` as the agent API answers it.
type Refusal = AgentError;

impl NodeScripts {
    /// The Node a certificate may act for, from the cache, or from the API when the cache
    /// does not show the certificate yet (just issued).
    async fn authorize(
        caches: &Caches,
        client: &Client,
        mac: &str,
        who: &AgentIdentity,
    ) -> Result<Node, Refusal> {
        let listed = |n: &Node| {
            n.status
                .as_ref()
                .and_then(|s| s.provisioning.as_ref())
                .and_then(|p| p.agent.as_ref())
                .is_some_and(|a| a.certificates.contains(&who.serial))
        };
        let node = node_for_mac(caches, mac)
            .ok_or(AgentError::NotFound(format!("no Node boots from {mac}\n")))?;
        if node.name_any() != who.node {
            tracing::warn!(%mac, node = %who.node, "a machine certificate for another Node refused");
            return Err(AgentError::Forbidden(format!(
                "the certificate is for Node {}, not for {mac}\n",
                who.node
            )));
        }
        if listed(&node) {
            return Ok((*node).clone());
        }
        let fresh = Api::<Node>::all(client.clone())
            .get(&who.node)
            .await
            .map_err(|e| {
                AgentError::Unavailable(format!("cannot read Node {}: {e}\n", who.node))
            })?;
        if listed(&fresh) {
            return Ok(fresh);
        }
        tracing::warn!(%mac, node = %who.node, serial = %who.serial, "a revoked or replaced machine certificate refused");
        Err(AgentError::Unauthenticated(format!(
            "certificate {} is no longer valid for Node {}: join again\n",
            who.serial, who.node
        )))
    }
}

/// A join: the token used and the serial number reported.
struct Joined<'a> {
    token_id: &'a str,
    token_issued: i64,
    serial: Option<String>,
}

/// Records a machine's new certificate (and the join token used, at join) with the Node's
/// resourceVersion as precondition: of two joins with one token, one wins.
async fn record_certificate(
    client: &Client,
    node: &Node,
    join: Option<Joined<'_>>,
    serial: String,
) -> Result<(), Refusal> {
    let prev = node
        .status
        .as_ref()
        .and_then(|s| s.provisioning.as_ref())
        .and_then(|p| p.agent.clone())
        .unwrap_or_default();
    let mut certificates = vec![serial];
    certificates.extend(prev.certificates.first().cloned());
    let agent = match join {
        Some(j) => groundwork_types::AgentCredentialStatus {
            join_token_id: j.token_id.to_string(),
            join_token_issued: j.token_issued,
            joined_at: now(),
            serial: prev.serial.or(j.serial),
            certificates,
        },
        None => groundwork_types::AgentCredentialStatus {
            certificates,
            ..prev
        },
    };
    Api::<Node>::all(client.clone())
        .patch_status(
            &node.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"resourceVersion": node.resource_version()},
                "status": {"provisioning": {"agent": agent}},
            })),
        )
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 409 => {
                AgentError::Conflict("the Node changed while joining: try again\n".to_string())
            }
            e => AgentError::Unavailable(format!("cannot record the certificate: {e}\n")),
        })?;
    Ok(())
}

impl InventorySink for NodeScripts {
    fn join(
        &self,
        mac: String,
        req: JoinRequest,
    ) -> futures::future::BoxFuture<'static, Result<JoinReply, Refusal>> {
        let checked = self.joining.as_ref().map(|j| {
            (
                j.key.verify_token(&req.token, AGENT_JOIN_AUDIENCE),
                j.signer.clone(),
            )
        });
        let client = self.client.clone();
        let known = node_for_mac(&self.caches, &mac);
        let ca_bundle = self
            .joining
            .as_ref()
            .map(|j| j.ca_pem.clone())
            .unwrap_or_default();
        Box::pin(async move {
            let Some((claims, signer)) = checked else {
                return Err(AgentError::Unavailable(
                    "this server does not let machines join (no cluster CA or secret key)\n".into(),
                ));
            };
            let claims = claims.map_err(|e| {
                tracing::warn!(%mac, error = %e, "join refused: bad token");
                AgentError::Unauthenticated(format!("token: {e}\n"))
            })?;
            if claims.sub != mac {
                tracing::warn!(%mac, "join refused: the token is for another MAC");
                return Err(AgentError::Forbidden(format!(
                    "token: issued for another MAC, not {mac}\n"
                )));
            }
            let node = match known {
                Some(n) => (*n).clone(),
                None => enlist(client.clone(), mac.clone())
                    .await
                    .map_err(|e| AgentError::Unavailable(format!("cannot enlist: {e}\n")))?,
            };
            let name = node.name_any();
            // The serial the Node knows: the operator's, or the first join's.
            let known_serial = node.spec.serial.clone().or_else(|| {
                node.status
                    .as_ref()
                    .and_then(|s| s.provisioning.as_ref())
                    .and_then(|p| p.agent.as_ref())
                    .and_then(|a| a.serial.clone())
            });
            if let Some(want) = known_serial.filter(|s| !s.is_empty())
                && req.serial.as_deref() != Some(want.as_str())
            {
                tracing::warn!(node = %name, %mac, reported = ?req.serial, known = %want, "join refused: serial number mismatch");
                return Err(AgentError::Forbidden(format!(
                    "serial: the machine reports {:?}, Node {name} has {want:?}\n",
                    req.serial.unwrap_or_default()
                )));
            }
            let prev = node
                .status
                .as_ref()
                .and_then(|s| s.provisioning.as_ref())
                .and_then(|p| p.agent.as_ref());
            if let Some(p) = prev
                && (p.join_token_id == claims.jti || claims.iat < p.join_token_issued)
            {
                tracing::warn!(node = %name, %mac, "join refused: token already used or superseded");
                return Err(AgentError::Unauthenticated("token: already used, or a newer one was: boot the machine again for a new one\n"
                        .into(),
                ));
            }
            let (cert, serial) =
                signer(&req.csr, &name).map_err(|e| AgentError::BadRequest(format!("{e}\n")))?;
            let joined = Joined {
                token_id: &claims.jti,
                token_issued: claims.iat,
                serial: req.serial.clone(),
            };
            record_certificate(&client, &node, Some(joined), serial).await?;
            tracing::info!(node = %name, %mac, "machine joined: certificate issued");
            Ok(JoinReply {
                node: name,
                certificate: cert,
                ca: ca_bundle,
            })
        })
    }

    fn renew(
        &self,
        mac: String,
        who: AgentIdentity,
        csr: String,
    ) -> futures::future::BoxFuture<'static, Result<JoinReply, Refusal>> {
        let signer = self.joining.as_ref().map(|j| j.signer.clone());
        let ca_bundle = self
            .joining
            .as_ref()
            .map(|j| j.ca_pem.clone())
            .unwrap_or_default();
        let (caches, client) = (self.caches.clone(), self.client.clone());
        Box::pin(async move {
            let node = Self::authorize(&caches, &client, &mac, &who).await?;
            let signer =
                signer.ok_or(AgentError::Unavailable("no cluster CA here\n".to_string()))?;
            let (cert, serial) =
                signer(&csr, &who.node).map_err(|e| AgentError::BadRequest(format!("{e}\n")))?;
            record_certificate(&client, &node, None, serial).await?;
            tracing::info!(node = %who.node, %mac, "machine certificate renewed");
            Ok(JoinReply {
                node: who.node,
                certificate: cert,
                ca: ca_bundle,
            })
        })
    }

    fn report(
        &self,
        mac: String,
        who: AgentIdentity,
        inv: Inventory,
    ) -> futures::future::BoxFuture<'static, Result<String, Refusal>> {
        let (caches, client) = (self.caches.clone(), self.client.clone());
        Box::pin(async move {
            let node = Self::authorize(&caches, &client, &mac, &who).await?;
            let name = node.name_any();
            let phase = node.status.as_ref().and_then(|s| s.phase);
            let mut status = json!({"inventory": inv});
            if matches!(
                phase,
                None | Some(NodePhase::Registered | NodePhase::Discovering)
            ) {
                status["phase"] = json!("Inventoried");
                // The phase history (kept by the provisioning controller) gets this step too.
                let mut history = node
                    .status
                    .as_ref()
                    .and_then(|s| s.provisioning.as_ref())
                    .map(|p| p.history.clone())
                    .unwrap_or_default();
                history.push(groundwork_types::PhaseEntry {
                    phase: NodePhase::Inventoried,
                    at: now(),
                });
                let excess = history.len().saturating_sub(32);
                history.drain(..excess);
                status["provisioning"] = json!({"history": history});
            }
            Api::<Node>::all(client)
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "status": status })),
                )
                .await
                .map_err(|e| {
                    AgentError::Unavailable(format!("cannot record the inventory: {e}\n"))
                })?;
            tracing::info!(node = %name, %mac, cpus = inv.cpus.len(), disks = inv.disks.len(), nics = inv.nics.len(), "inventory recorded");
            Ok(format!("{name}\n"))
        })
    }

    fn next_task(
        &self,
        mac: String,
        who: AgentIdentity,
    ) -> futures::future::BoxFuture<'static, Result<Task, Refusal>> {
        let (caches, client) = (self.caches.clone(), self.client.clone());
        Box::pin(async move {
            let node = Self::authorize(&caches, &client, &mac, &who).await?;
            Ok(Self::next_task_for(&caches, node, &mac))
        })
    }

    fn task_report(
        &self,
        mac: String,
        who: AgentIdentity,
        report: TaskReport,
    ) -> futures::future::BoxFuture<'static, Result<String, Refusal>> {
        let (caches, client) = (self.caches.clone(), self.client.clone());
        Box::pin(async move {
            let node = Self::authorize(&caches, &client, &mac, &who).await?;
            Self::task_report_for(client, node, mac, report).await
        })
    }

    fn heartbeat(
        &self,
        mac: String,
        who: AgentIdentity,
        beat: Heartbeat,
    ) -> futures::future::BoxFuture<'static, Result<HeartbeatReply, Refusal>> {
        let (caches, client) = (self.caches.clone(), self.client.clone());
        let interval = self.heartbeat_interval;
        let ca = self
            .joining
            .as_ref()
            .map(|j| j.ca_pem.clone())
            .unwrap_or_default();
        Box::pin(async move {
            let node = Self::authorize(&caches, &client, &mac, &who).await?;
            Self::heartbeat_for(client, node, mac, who, beat, interval, ca).await
        })
    }

    fn instances(
        &self,
        mac: String,
        who: AgentIdentity,
        known: Option<String>,
        wait: u32,
    ) -> futures::future::BoxFuture<'static, Result<groundwork_types::agent::InstanceSet, Refusal>>
    {
        NodeScripts::instances(self, mac, who, known, wait)
    }

    fn instance_reports(
        &self,
        mac: String,
        who: AgentIdentity,
        reports: groundwork_types::agent::InstanceReports,
    ) -> futures::future::BoxFuture<'static, Result<String, Refusal>> {
        let (caches, client) = (self.caches.clone(), self.client.clone());
        Box::pin(async move {
            let node = Self::authorize(&caches, &client, &mac, &who).await?;
            crate::instances::reports(caches, client, node.name_any(), reports).await
        })
    }

    fn transit(
        &self,
        op: String,
        key: String,
        token: Option<String>,
        body: Vec<u8>,
    ) -> futures::future::BoxFuture<'static, (u16, serde_json::Value)> {
        let caches = self.caches.clone();
        let sealer = self.joining.as_ref().map(|j| j.key.clone());
        Box::pin(async move {
            use groundwork_types::transit;
            let (kname, tname) = transit::transit_credentials(&key);
            let open = |name: &str| -> Option<String> {
                let c = caches
                    .store::<groundwork_types::Credential>()
                    .get(&ObjectRef::new(name))?;
                sealer
                    .as_ref()?
                    .open(
                        &format!("credentials/{name}"),
                        c.spec.encrypted_password.as_deref()?,
                    )
                    .ok()
            };
            let found = match (open(&kname), open(&tname)) {
                (Some(key_b64), Some(token)) => Some(transit::TransitKey { key_b64, token }),
                _ => None,
            };
            let (code, v) = transit::handle(&op, &key, token.as_deref(), &body, found);
            if code == 403 {
                tracing::warn!(key = %key, op = %op, "a transit call refused (no such key, or a wrong token)");
            }
            (code, v)
        })
    }

    fn instance_certificate(
        &self,
        mac: String,
        who: AgentIdentity,
        instance: String,
        csr: String,
    ) -> futures::future::BoxFuture<'static, Result<String, Refusal>> {
        let (caches, client) = (self.caches.clone(), self.client.clone());
        let signer = self.joining.as_ref().map(|j| j.service_signer.clone());
        Box::pin(async move {
            let node = Self::authorize(&caches, &client, &mac, &who).await?;
            let signer =
                signer.ok_or(AgentError::Unavailable("no cluster CA here\n".to_string()))?;
            let names = crate::instances::certificate_names(&caches, &node.name_any(), &instance)?;
            let pem = signer(&csr, &instance, &names)
                .map_err(|e| AgentError::BadRequest(format!("{e}\n")))?;
            tracing::info!(node = %node.name_any(), %instance, names = ?names, "instance certificate issued");
            Ok(pem)
        })
    }

    fn secret(
        &self,
        mac: String,
        who: AgentIdentity,
        instance: String,
        credential: String,
    ) -> futures::future::BoxFuture<'static, Result<groundwork_types::agent::SecretValue, Refusal>>
    {
        let (caches, client) = (self.caches.clone(), self.client.clone());
        let key = self.joining.as_ref().map(|j| j.key.clone());
        Box::pin(async move {
            let node = Self::authorize(&caches, &client, &mac, &who).await?;
            let key = key
                .ok_or_else(|| AgentError::Unavailable("this server has no secret key\n".into()))?;
            crate::instances::secret(&caches, &key, &node.name_any(), &instance, &credential)
        })
    }
}

impl NodeScripts {
    fn instances(
        &self,
        mac: String,
        who: AgentIdentity,
        known: Option<String>,
        wait: u32,
    ) -> futures::future::BoxFuture<'static, Result<groundwork_types::agent::InstanceSet, Refusal>>
    {
        let (caches, client) = (self.caches.clone(), self.client.clone());
        Box::pin(async move {
            let node = Self::authorize(&caches, &client, &mac, &who).await?;
            crate::instances::instances(caches, node.name_any(), known, wait).await
        })
    }

    fn next_task_for(caches: &Caches, node: Node, mac: &str) -> Task {
        let node = Some(node);
        let task = node.as_ref().and_then(|node| {
            let st = node.status.clone().unwrap_or_default();
            let p = st.provisioning.clone().unwrap_or_default();
            let attempt = p.attempt.unwrap_or(1);
            // Nothing is handed out while a power action is pending, nor twice per task ID.
            let task_id = p.task_id.clone().filter(|_| p.power_pending.is_none())?;
            let reported = |task: &str| {
                p.report
                    .as_ref()
                    .is_some_and(|r| r.task == task && r.task_id.as_ref() == Some(&task_id))
            };
            match st.phase {
                Some(NodePhase::Provisioning)
                    if node.spec.provisioning == ProvisioningState::Provisioned
                        && !reported("install") =>
                {
                    install_task(caches, node, mac, attempt, task_id)
                }
                Some(NodePhase::Deprovisioning) if !reported("wipe") => {
                    Some(Task::Wipe { attempt, task_id })
                }
                // Without a BMC nobody else can move the machine from the ramdisk to its disk.
                Some(NodePhase::Provisioned) if node.spec.bmc.is_none() => {
                    Some(Task::Reboot { task_id })
                }
                _ => None,
            }
        });
        {
            if let (Some(n), Some(t)) = (&node, &task) {
                let what = match t {
                    Task::Install { .. } => "install",
                    Task::Wipe { .. } => "wipe",
                    Task::Reboot { .. } => "reboot",
                    Task::Wait { .. } => "wait",
                };
                tracing::info!(node = %n.name_any(), %mac, task = what, "task handed to the agent");
            }
            task.unwrap_or(Task::Wait { seconds: 2 })
        }
    }

    async fn task_report_for(
        client: Client,
        node: Node,
        mac: String,
        mut r: TaskReport,
    ) -> Result<String, Refusal> {
        {
            let name = node.name_any();
            let st = node.status.clone().unwrap_or_default();
            let attempt = st
                .provisioning
                .as_ref()
                .and_then(|p| p.attempt)
                .unwrap_or(1);
            let expected = match r.task.as_str() {
                "install" => NodePhase::Provisioning,
                "wipe" => NodePhase::Deprovisioning,
                other => {
                    return Err(AgentError::BadRequest(format!(
                        "task: {other:?} is not install or wipe\n"
                    )));
                }
            };
            let task_id = st.provisioning.as_ref().and_then(|p| p.task_id.clone());
            if st.phase != Some(expected) || r.task_id.is_none() || r.task_id != task_id {
                return Err(AgentError::Conflict(format!(
                    "stale report: {} {:?} (attempt {}) for Node {name}, which is in phase {:?} with task {task_id:?} (attempt {attempt})\n",
                    r.task, r.task_id, r.attempt, st.phase
                )));
            }
            r.at = Some(now());
            tracing::info!(node = %name, %mac, task = %r.task, attempt = r.attempt, state = ?r.state, reason = ?r.reason, message = ?r.message, "agent report");
            status_patch(client, name.clone(), json!({"provisioning": {"report": r}}))
                .await
                .map_err(|e| AgentError::Unavailable(format!("cannot record the report: {e}\n")))?;
            Ok(format!("{name}\n"))
        }
    }

    async fn heartbeat_for(
        client: Client,
        node: Node,
        mac: String,
        who: AgentIdentity,
        b: Heartbeat,
        interval: u32,
        ca: String,
    ) -> Result<HeartbeatReply, Refusal> {
        {
            let name = node.name_any();
            let phase = node.status.as_ref().and_then(|s| s.phase);
            if phase == Some(NodePhase::Deprovisioning) && node.spec.bmc.is_none() {
                // Nobody else can take it back to the ramdisk.
                return Ok(HeartbeatReply {
                    interval_seconds: interval,
                    reboot: true,
                    ..Default::default()
                });
            }
            if !matches!(phase, Some(NodePhase::Provisioned | NodePhase::Ready)) {
                return Err(AgentError::Conflict(format!(
                    "Node {name} is in phase {phase:?}, not installed\n"
                )));
            }
            let first = node
                .status
                .as_ref()
                .and_then(|s| s.provisioning.as_ref())
                .and_then(|p| p.boot_id.as_deref())
                != Some(b.boot_id.as_str());
            if first {
                tracing::info!(node = %name, %mac, boot_id = %b.boot_id, addresses = ?b.addresses, applied = b.applied, skipped = ?b.skipped, "node agent checked in");
            }
            let mut provisioning = json!({"lastHeartbeat": now(), "bootId": b.boot_id});
            // The newest certificate in use: the one before it (the installer's, on the FAT
            // partition, or a renewal's predecessor) is no longer accepted.
            let listed = node
                .status
                .as_ref()
                .and_then(|s| s.provisioning.as_ref())
                .and_then(|p| p.agent.as_ref())
                .map(|a| a.certificates.clone())
                .unwrap_or_default();
            let mut patch = json!({"status": {"addresses": b.addresses}});
            if listed.len() > 1 && listed[0] == who.serial {
                provisioning["agent"] = json!({"certificates": [who.serial]});
                // Against the list read: a renewal in between is never undone.
                patch["metadata"] = json!({"resourceVersion": node.resource_version()});
                tracing::info!(node = %name, %mac, "the machine uses its new certificate: the one before is retired");
            }
            patch["status"]["provisioning"] = provisioning;
            // What the machine could not apply (or cloud-init's outcome), as a condition an
            // operator sees: written only when it changes.
            let mut conditions = node
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default();
            let (ok, reason, message) = machine_config_condition(&b.skipped);
            if groundwork_types::set_condition(
                &mut conditions,
                "MachineConfigApplied",
                ok,
                reason,
                &message,
                None,
                jiff::Timestamp::now(),
            ) && let Some(c) = conditions
                .iter()
                .find(|c| c.type_ == "MachineConfigApplied")
            {
                // A strategic merge patch merges conditions by type: the others stay.
                patch["status"]["conditions"] = json!([c]);
            }
            Api::<Node>::all(client)
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
                .await
                .map_err(|e| {
                    AgentError::Unavailable(format!("cannot record the heartbeat: {e}\n"))
                })?;
            let stale_bundle = !ca.is_empty()
                && b.ca_bundle.as_deref()
                    != Some(groundwork_types::agent::bundle_digest(&ca).as_str());
            Ok(HeartbeatReply {
                interval_seconds: interval,
                reboot: false,
                renew: who.stale_issuer,
                ca: stale_bundle.then_some(ca),
            })
        }
    }
}
