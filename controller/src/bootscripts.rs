//! The API side of booting.
//!
//! iPXE scripts: the machine is looked up by MAC among the Nodes' `spec.bootMACs` and their
//! inventoried NICs. Unknown machines are enlisted as Nodes in phase Discovering and, like
//! machines being discovered, get the discovery ramdisk; Assigned and Provisioning ones the
//! install ramdisk (their Profile's kernel, initrd and command line when it names them);
//! Provisioned and Ready ones boot from their local disk. Every ramdisk gets its MAC's boot
//! token on the kernel command line.
//!
//! Inventory: the ramdisk agent posts what it found with that token; a valid report fills the
//! Node's `status.inventory` and moves it from Registered/Discovering to Inventoried. Without
//! the token (only a machine that booted through us has it) nothing is written.

use std::sync::Arc;

use groundwork_boot::http::{
    InventorySink, ScriptSource, discovery_script_with_token, local_disk_script,
};
use groundwork_types::secrets::SecretKey;
use groundwork_types::{Inventory, Node, NodePhase, NodeSpec, normalize_mac};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::caches::Caches;

pub struct NodeScripts {
    pub caches: Caches,
    pub client: Client,
    pub key: Option<SecretKey>,
    /// The discovery ramdisk (files under the boot root, or URLs).
    pub kernel: String,
    pub initrd: String,
    pub cmdline: String,
}

fn node_for_mac(caches: &Caches, mac: &str) -> Option<Arc<Node>> {
    caches.nodes.find(|n| {
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
        let token = self.key.as_ref().map(|k| k.boot_token(mac));
        let token = token.as_deref();
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
        match phase {
            Some(NodePhase::Provisioned | NodePhase::Ready) => local_disk_script(mac),
            Some(NodePhase::Assigned | NodePhase::Provisioning) => {
                let profile = node
                    .status
                    .as_ref()
                    .and_then(|s| s.profile.clone())
                    .and_then(|p| self.caches.profiles.get(&ObjectRef::new(&p)));
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

impl InventorySink for NodeScripts {
    fn report(
        &self,
        mac: String,
        token: String,
        inventory: serde_json::Value,
    ) -> futures::future::BoxFuture<'static, Result<String, (u16, String)>> {
        let ok = self
            .key
            .as_ref()
            .is_some_and(|k| k.verify_boot_token(&mac, &token));
        let client = self.client.clone();
        let known = node_for_mac(&self.caches, &mac);
        Box::pin(async move {
            if !ok {
                tracing::warn!(%mac, "inventory report with a wrong boot token refused");
                return Err((403, "boot token does not match this MAC\n".into()));
            }
            let inv: Inventory = serde_json::from_value(inventory)
                .map_err(|e| (400, format!("inventory does not decode: {e}\n")))?;
            let node = match known {
                Some(n) => (*n).clone(),
                None => enlist(client.clone(), mac.clone())
                    .await
                    .map_err(|e| (503, format!("cannot enlist: {e}\n")))?,
            };
            let name = node.name_any();
            let phase = node.status.as_ref().and_then(|s| s.phase);
            let mut status = json!({"inventory": inv});
            if matches!(
                phase,
                None | Some(NodePhase::Registered | NodePhase::Discovering)
            ) {
                status["phase"] = json!("Inventoried");
            }
            Api::<Node>::all(client)
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "status": status })),
                )
                .await
                .map_err(|e| (503, format!("cannot record the inventory: {e}\n")))?;
            tracing::info!(node = %name, %mac, cpus = inv.cpus.len(), disks = inv.disks.len(), nics = inv.nics.len(), "inventory recorded");
            Ok(format!("{name}\n"))
        })
    }
}
