//! iPXE scripts rendered from the API objects, for the boot HTTP server: the machine is looked
//! up by MAC among the Nodes' `spec.bootMACs` and the NICs of their inventory. Unknown machines
//! and machines being discovered get the discovery ramdisk; Assigned and Provisioning ones the
//! install ramdisk (their Profile's kernel, initrd and command line when it names them);
//! Provisioned and Ready ones boot from their local disk.

use groundwork_boot::http::{ScriptSource, discovery_script, local_disk_script};
use groundwork_types::{Node, NodePhase, normalize_mac};
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::caches::Caches;

pub struct NodeScripts {
    pub caches: Caches,
    /// The discovery ramdisk (files under the boot root, or URLs).
    pub kernel: String,
    pub initrd: String,
    pub cmdline: String,
}

fn node_for_mac(caches: &Caches, mac: &str) -> Option<std::sync::Arc<Node>> {
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

impl ScriptSource for NodeScripts {
    fn script(&self, mac: &str, base: &str) -> String {
        let Some(node) = node_for_mac(&self.caches, mac) else {
            return discovery_script(base, &self.kernel, &self.initrd, &self.cmdline, mac);
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
                discovery_script(
                    base,
                    &kernel,
                    &initrd,
                    &format!("{cmdline} groundwork.mode=install {extra}"),
                    mac,
                )
            }
            _ => discovery_script(base, &self.kernel, &self.initrd, &cmdline, mac),
        }
    }
}
