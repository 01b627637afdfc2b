//! The DHCP configuration of one boot network, from its Datacenter (`spec.bootNetworks[]`),
//! followed as it changes.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use groundwork_boot::dhcp::leases::{Mac, parse_mac};
use groundwork_boot::dhcp::{BootFiles, Config, Mode};
use groundwork_types::{BootNetwork, Datacenter, DhcpMode, Node};
use tokio::sync::watch;

use groundwork_controller::caches::{Caches, Kinds};

/// Where boot files are, for the DHCP boot options.
#[derive(Clone, Debug)]
pub struct BootServer {
    pub server_ip: Ipv4Addr,
    pub ipxe_url: Option<String>,
}

/// Builds the DHCP configuration of `net`; names the field when something is unusable.
pub fn dhcp_config(net: &BootNetwork, srv: &BootServer) -> Result<Config, String> {
    let subnet: ipnet::Ipv4Net = net.cidr.parse().map_err(|_| {
        format!(
            "bootNetworks[{}].cidr {:?}: not an IPv4 CIDR",
            net.name, net.cidr
        )
    })?;
    let ip = |field: &str, v: &str| -> Result<Ipv4Addr, String> {
        v.parse().map_err(|_| {
            format!(
                "bootNetworks[{}].{field} {v:?}: not an IPv4 address",
                net.name
            )
        })
    };
    let (pool_start, pool_end) = match &net.discovery_pool {
        Some(p) => (
            ip("discoveryPool.start", &p.start)?,
            ip("discoveryPool.end", &p.end)?,
        ),
        // No pool given: the upper half of the network.
        None => {
            let hosts: Vec<Ipv4Addr> = subnet.hosts().collect();
            let n = hosts.len();
            if n < 4 {
                return Err(format!(
                    "bootNetworks[{}].cidr {} is too small for a pool",
                    net.name, net.cidr
                ));
            }
            (hosts[n / 2], hosts[n - 1])
        }
    };
    let cfg = Config {
        mode: match net.dhcp_mode {
            DhcpMode::Authoritative => Mode::Authoritative,
            DhcpMode::Proxy => Mode::Proxy,
        },
        server_ip: srv.server_ip,
        subnet,
        pool_start,
        pool_end,
        router: net
            .gateway
            .as_deref()
            .map(|g| ip("gateway", g))
            .transpose()?,
        dns: net
            .dns
            .iter()
            .map(|d| ip("dns", d))
            .collect::<Result<_, _>>()?,
        ntp: net
            .ntp
            .iter()
            .map(|d| ip("ntp", d))
            .collect::<Result<_, _>>()?,
        lease_secs: net.lease_seconds.unwrap_or(3600),
        offer_secs: 30,
        boot: Some(BootFiles {
            tftp_server: srv.server_ip,
            bios: "undionly.kpxe".into(),
            efi: "ipxe.efi".into(),
            ipxe_url: srv.ipxe_url.clone(),
        }),
        reservations: Default::default(),
    };
    cfg.validate()
        .map_err(|e| format!("bootNetworks[{}]: {e}", net.name))?;
    Ok(cfg)
}

/// The kinds the DHCP configuration is built from.
pub(crate) fn watches(kinds: Kinds) -> Kinds {
    kinds.watch::<Datacenter>().watch::<Node>()
}

fn find(caches: &Caches, name: &str) -> Option<BootNetwork> {
    caches.store::<Datacenter>().state().iter().find_map(|dc| {
        dc.spec
            .boot_networks
            .iter()
            .find(|n| n.name == name)
            .cloned()
    })
}

/// Fixed addresses of known Nodes on `subnet`: the first of `spec.bootMACs` gets
/// `spec.bootAddress`. Addresses outside the subnet belong to another boot network and are
/// skipped. When two Nodes claim one address, the first by name keeps it and the other is
/// logged on its Node.
pub fn reservations(nodes: &[Arc<Node>], subnet: ipnet::Ipv4Net) -> HashMap<Mac, Ipv4Addr> {
    let mut sorted: Vec<&Arc<Node>> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut taken: HashMap<Ipv4Addr, String> = HashMap::new();
    let mut out = HashMap::new();
    for n in sorted {
        let name = n.metadata.name.clone().unwrap_or_default();
        let Some(ip) = n
            .spec
            .boot_address
            .as_deref()
            .and_then(|a| a.parse::<Ipv4Addr>().ok())
            .filter(|ip| subnet.contains(ip))
        else {
            continue;
        };
        let Some(mac) = n.spec.boot_macs.first().and_then(|m| parse_mac(m)) else {
            continue;
        };
        if let Some(owner) = taken.get(&ip) {
            tracing::warn!(node = %name, address = %ip, owner = %owner, "spec.bootAddress is already Node {owner}'s; this machine gets a pool address");
            continue;
        }
        taken.insert(ip, name);
        out.insert(mac, ip);
    }
    out
}

/// The whole configuration of boot network `name`: the Datacenter's network and the Nodes'
/// fixed addresses. `None` while no Datacenter has the network.
fn current(caches: &Caches, name: &str, srv: &BootServer) -> Option<Result<Config, String>> {
    let net = find(caches, name)?;
    Some(dhcp_config(&net, srv).map(|mut c| {
        c.reservations = reservations(&caches.store::<Node>().state(), c.subnet);
        c
    }))
}

/// Waits until the boot network `name` exists and is valid, then keeps sending its
/// configuration whenever a Datacenter changes it or a Node's fixed address changes.
pub async fn follow(
    caches: Caches,
    name: String,
    srv: BootServer,
) -> (Config, watch::Receiver<Config>) {
    caches.wait_synced().await;
    let mut changes = caches.subscribe();
    let first = loop {
        match current(&caches, &name, &srv) {
            Some(Ok(c)) => break c,
            Some(Err(e)) => {
                tracing::warn!(network = %name, error = %e, "boot network unusable; waiting for a fix")
            }
            None => {
                tracing::info!(network = %name, "waiting for a Datacenter with this boot network")
            }
        }
        let _ = changes.recv().await;
    };
    let (tx, rx) = watch::channel(first.clone());
    tokio::spawn(async move {
        let mut last = first;
        loop {
            match changes.recv().await {
                Ok(c) if c.is::<Datacenter>() => {}
                Ok(c) if c.is::<Node>() && c.spec_changed => {}
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
            match current(&caches, &name, &srv) {
                Some(Ok(c)) if c == last => {}
                Some(Ok(c)) => {
                    last = c.clone();
                    let _ = tx.send(c);
                }
                Some(Err(e)) => {
                    tracing::warn!(network = %name, error = %e, "boot network changed to something unusable; keeping the previous configuration")
                }
                None => {
                    tracing::warn!(network = %name, "boot network removed from every Datacenter; keeping the previous configuration")
                }
            }
        }
    });
    let now = rx.borrow().clone();
    (now, rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use groundwork_types::AddressRange;

    #[test]
    fn boot_network_to_dhcp_config() {
        let srv = BootServer {
            server_ip: "10.0.0.1".parse().unwrap(),
            ipxe_url: None,
        };
        let mut n = BootNetwork {
            name: "bn".into(),
            availability_zone: "az1".into(),
            cidr: "10.0.0.0/24".into(),
            gateway: Some("10.0.0.1".into()),
            dns: vec!["10.0.0.53".into()],
            ntp: vec![],
            dhcp_mode: DhcpMode::Authoritative,
            discovery_pool: None,
            lease_seconds: Some(900),
        };
        let c = dhcp_config(&n, &srv).unwrap();
        assert_eq!(
            (c.pool_start.to_string(), c.pool_end.to_string()),
            ("10.0.0.128".into(), "10.0.0.254".into())
        );
        assert_eq!(c.lease_secs, 900);
        n.discovery_pool = Some(AddressRange {
            start: "10.0.0.10".into(),
            end: "10.0.1.20".into(),
        });
        assert!(dhcp_config(&n, &srv).unwrap_err().contains("not inside"));
        n.discovery_pool = None;
        n.dns = vec!["nope".into()];
        assert!(
            dhcp_config(&n, &srv)
                .unwrap_err()
                .contains("bootNetworks[bn].dns")
        );
    }

    #[test]
    fn node_boot_addresses_become_reservations() {
        let node = |name: &str, mac: &str, addr: &str| {
            let mut n = Node::new(name, Default::default());
            n.spec.boot_macs = vec![mac.into()];
            n.spec.boot_address = Some(addr.into());
            Arc::new(n)
        };
        let nodes = vec![
            node("b", "52:54:00:00:00:02", "10.0.0.5"),
            node("a", "52:54:00:00:00:01", "10.0.0.5"), // same address: "a" sorts first
            node("c", "52:54:00:00:00:03", "10.9.0.5"), // another network
            node("d", "52:54:00:00:00:04", "10.0.0.6"),
        ];
        let r = reservations(&nodes, "10.0.0.0/24".parse().unwrap());
        let m = |s: &str| parse_mac(s).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[&m("52:54:00:00:00:01")],
            "10.0.0.5".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            r[&m("52:54:00:00:00:04")],
            "10.0.0.6".parse::<Ipv4Addr>().unwrap()
        );
    }
}
