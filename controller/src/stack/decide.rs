//! The ServiceStack decision: a pure function from the stack, the machines it may use and
//! the instances it owns to the instances to create, change and delete, and the status.
//!
//! Per layer, in dependency order:
//! 1. Gate: a layer with no members yet waits until every layer it depends on is Ready.
//! 2. Place: members stay where they are while their machine is usable; missing ones go to
//!    the usable machine in the least used rack (or zone), then by name. Machines beyond
//!    `count` are the layer's spares.
//! 3. Render each member's instance with its driver.
//! 4. Roll: a changed member that is not ready is changed at once; a ready one only while
//!    fewer than `maxUnavailable` members are unavailable and, with `keepQuorum`, a
//!    majority stays ready.

use std::collections::{BTreeMap, BTreeSet};

use groundwork_types::{
    InstancePhase, Layer, LayerPhase, LayerStatus, MemberStatus, ServiceInstance,
    ServiceInstanceSpec, ServiceStack, ServiceType, Spread,
};
use kube::ResourceExt;

use super::drivers::{self, Member, RenderCtx, ScrapeTarget};

/// A machine the stack may place members on: Ready, heartbeating, not in maintenance, in the
/// stack's datacenter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Machine {
    pub name: String,
    pub address: String,
    pub rack: Option<String>,
    pub zone: Option<String>,
    pub labels: BTreeMap<String, String>,
}

pub struct Observed<'a> {
    pub stack: &'a ServiceStack,
    pub machines: &'a [Machine],
    /// The instances the stack owns.
    pub instances: &'a [&'a ServiceInstance],
    pub groundwork_metrics: Option<&'a str>,
    /// Per layer, the data epoch of its members (raised to start them on empty data; see
    /// `vault.rs`).
    pub data_epochs: &'a BTreeMap<String, u32>,
}

/// What to do.
#[derive(Debug, Default)]
pub struct Plan {
    /// New instances: (name, spec, ordinal).
    pub create: Vec<(String, ServiceInstanceSpec, u32)>,
    /// Changed specs of existing instances.
    pub update: Vec<(String, ServiceInstanceSpec)>,
    pub delete: Vec<String>,
    pub layers: Vec<LayerStatus>,
    /// What Consul's catalog should hold, once a consul layer is Ready.
    pub catalog: Option<CatalogPlan>,
}

/// Every ServiceInstance with a port, registered in Consul's catalog with its health as
/// Groundwork's node agents see it (DNS then answers only healthy members).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CatalogPlan {
    /// A Ready server's HTTP API, `http://ADDR:PORT`.
    pub consul: String,
    /// The Credential with the management token.
    pub token: String,
    pub entries: Vec<CatalogEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CatalogEntry {
    /// The Node the instance runs on.
    pub node: String,
    pub address: String,
    /// The service's name (`mysql`, `node-exporter`).
    pub service: String,
    /// The instance's name.
    pub id: String,
    pub port: u16,
    pub passing: bool,
}

/// The instance name of a service of a layer on a machine.
pub fn instance_name(stack: &str, layer: &str, service: ServiceType, node: &str) -> String {
    format!("{stack}-{layer}-{}-{node}", service.as_str())
}

fn selected(layer: &Layer, m: &Machine) -> bool {
    let Some(sel) = layer
        .placement
        .as_ref()
        .and_then(|p| p.node_selector.as_ref())
    else {
        return true;
    };
    use kube::core::{Selector, SelectorExt};
    Selector::try_from(sel.clone()).is_ok_and(|s| s.matches(&m.labels))
}

/// Consul's catalog: from the first Ready consul layer, every instance of the stack that has
/// a client port, passing when its member is Ready.
fn catalog(o: &Observed, plan: &Plan) -> Option<CatalogPlan> {
    let stack = o.stack.name_any();
    let layer = o.stack.spec.layers.iter().find(|l| {
        l.services.contains(&ServiceType::Consul)
            && plan
                .layers
                .iter()
                .any(|s| s.name == l.name && s.phase == Some(LayerPhase::Ready))
    })?;
    let cfg = layer.config.consul.clone().unwrap_or_default();
    if !cfg.acl_bootstrap {
        return None;
    }
    let server = o.instances.iter().find(|i| {
        i.spec.layer == layer.name
            && i.spec.service == ServiceType::Consul
            && member_ready(i)
            && o.machines.iter().any(|m| m.name == i.spec.node)
    })?;
    let usable = |n: &str| o.machines.iter().any(|m| m.name == n);
    let mut entries: Vec<CatalogEntry> = o
        .instances
        .iter()
        .filter_map(|i| {
            let l = o
                .stack
                .spec
                .layers
                .iter()
                .find(|l| l.name == i.spec.layer)?;
            let port = drivers::main_port(i.spec.service, l)?;
            Some(CatalogEntry {
                node: i.spec.node.clone(),
                address: i.spec.address.clone()?,
                service: i.spec.service.as_str().to_string(),
                id: i.name_any(),
                port,
                passing: member_ready(i) && usable(&i.spec.node),
            })
        })
        .collect();
    entries.sort();
    Some(CatalogPlan {
        consul: drivers::consul::api_url(&cfg, &server.spec.address.clone()?),
        token: drivers::consul::generated(&stack, &layer.name)[1].0.clone(),
        entries,
    })
}

/// Member of the layer's service ready: healthy and running the spec it has now.
pub fn member_ready(i: &ServiceInstance) -> bool {
    i.status.as_ref().is_some_and(|s| {
        s.ready && s.running_digest.as_deref() == Some(i.spec.config_digest.as_str())
    })
}

/// The member's process runs (healthy or not): restarting it takes something away — a
/// Galera donor is not Ready but holds the cluster's quorum and feeds the joiner. Members
/// not installed, refused or failed run nothing and can be changed at once.
fn serving(i: &ServiceInstance) -> bool {
    i.status.as_ref().is_some_and(|s| {
        s.running_digest.is_some()
            && matches!(
                s.phase,
                Some(InstancePhase::Starting | InstancePhase::Running | InstancePhase::Unhealthy)
            )
    })
}

/// Majority of `n`.
fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// Picks the members of a service: the current ones on usable machines first, then new ones
/// spread over racks (or zones).
fn place(
    want: Option<usize>,
    spread: Spread,
    usable: &[&Machine],
    current: &BTreeMap<String, u32>,
) -> Vec<Member> {
    let mut chosen: Vec<Member> = Vec::new();
    let mut keep: Vec<(&u32, &String)> = current.iter().map(|(n, o)| (o, n)).collect();
    keep.sort();
    for (ordinal, node) in keep {
        if want.is_some_and(|w| chosen.len() >= w) {
            break;
        }
        if let Some(m) = usable.iter().find(|m| &m.name == node) {
            chosen.push(Member {
                node: m.name.clone(),
                address: m.address.clone(),
                ordinal: *ordinal,
            });
        }
    }
    let domain = |m: &Machine| match spread {
        Spread::Rack => m.rack.clone(),
        Spread::Zone => m.zone.clone(),
        Spread::None => None,
    };
    let target = want.unwrap_or(usable.len());
    while chosen.len() < target {
        let used: BTreeMap<Option<String>, usize> =
            chosen.iter().fold(BTreeMap::new(), |mut acc, c| {
                let d = usable
                    .iter()
                    .find(|m| m.name == c.node)
                    .and_then(|m| domain(m));
                *acc.entry(d).or_default() += 1;
                acc
            });
        let next = usable
            .iter()
            .filter(|m| !chosen.iter().any(|c| c.node == m.name))
            .min_by_key(|m| {
                let d = domain(m);
                let load = if d.is_none() {
                    0
                } else {
                    used.get(&d).copied().unwrap_or(0)
                };
                (load, m.name.clone())
            });
        let Some(m) = next else { break };
        let taken: BTreeSet<u32> = chosen.iter().map(|c| c.ordinal).collect();
        let ordinal = (0..).find(|o| !taken.contains(o)).unwrap_or(0);
        chosen.push(Member {
            node: m.name.clone(),
            address: m.address.clone(),
            ordinal,
        });
    }
    chosen.sort_by_key(|m| m.ordinal);
    chosen
}

struct Placed<'a> {
    index: usize,
    layer: &'a Layer,
    members: BTreeMap<ServiceType, Vec<Member>>,
    status: LayerStatus,
}

pub fn decide(o: &Observed) -> Plan {
    let stack = o.stack;
    let name = stack.name_any();
    let mut plan = Plan::default();
    let order = stack.spec.topological_order().unwrap_or_default();
    let by_layer = |l: &str| -> Vec<&ServiceInstance> {
        o.instances
            .iter()
            .copied()
            .filter(|i| i.spec.layer == l)
            .collect()
    };
    // Layers no longer in the spec lose their instances.
    let layers: BTreeSet<&str> = stack.spec.layers.iter().map(|l| l.name.as_str()).collect();
    for i in o.instances {
        if !layers.contains(i.spec.layer.as_str()) {
            plan.delete.push(i.name_any());
        }
    }
    let previous: BTreeMap<String, LayerPhase> = stack
        .status
        .as_ref()
        .map(|s| {
            s.layers
                .iter()
                .filter_map(|l| Some((l.name.clone(), l.phase?)))
                .collect()
        })
        .unwrap_or_default();
    // 1 and 2: gate and place, dependencies first; a layer's readiness is what its
    // instances report now.
    let mut ready: BTreeMap<&str, bool> = BTreeMap::new();
    let mut placed: Vec<Placed> = Vec::new();
    for lname in &order {
        let Some((index, layer)) = stack
            .spec
            .layers
            .iter()
            .enumerate()
            .find(|(_, l)| l.name == *lname)
        else {
            continue;
        };
        let existing = by_layer(&layer.name);
        let mut status = LayerStatus {
            name: layer.name.clone(),
            ..Default::default()
        };
        let unready: Vec<&str> = layer
            .depends_on
            .iter()
            .map(String::as_str)
            .filter(|d| !ready.get(d).copied().unwrap_or(false))
            .collect();
        if let Some(s) = layer.services.iter().find(|s| !drivers::supported(**s)) {
            status.phase = Some(LayerPhase::Pending);
            status.waiting_for = Some(format!(
                "a driver for {s}: Groundwork does not run it yet (the layer is stored, not acted on)"
            ));
            ready.insert(lname, false);
            plan.delete.extend(existing.iter().map(|i| i.name_any()));
            plan.layers.push(status);
            continue;
        }
        if existing.is_empty() && !unready.is_empty() {
            status.phase = Some(LayerPhase::Pending);
            status.waiting_for = Some(format!(
                "layer {} to be Ready",
                unready
                    .iter()
                    .map(|d| {
                        match plan
                            .layers
                            .iter()
                            .find(|l| l.name == *d)
                            .and_then(|l| l.phase)
                        {
                            Some(p) => format!("{d} ({p:?})"),
                            None => d.to_string(),
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", layer ")
            ));
            ready.insert(lname, false);
            plan.layers.push(status.clone());
            continue;
        }
        let usable: Vec<&Machine> = o.machines.iter().filter(|m| selected(layer, m)).collect();
        let count = layer
            .placement
            .as_ref()
            .and_then(|p| p.count)
            .map(|c| c as usize);
        let spread = layer
            .placement
            .as_ref()
            .map(|p| p.spread)
            .unwrap_or_default();
        let mut members: BTreeMap<ServiceType, Vec<Member>> = BTreeMap::new();
        let mut held = Vec::new();
        // Consul clients go where no Consul server of the layer is: servers first.
        let mut order = layer.services.clone();
        order.sort_by_key(|s| *s == ServiceType::ConsulClient);
        let servers_on = |members: &BTreeMap<ServiceType, Vec<Member>>, m: &Machine| {
            members
                .get(&ServiceType::Consul)
                .is_some_and(|ms| ms.iter().any(|x| x.node == m.name))
        };
        for s in &order {
            let usable: Vec<&Machine> = if *s == ServiceType::ConsulClient {
                usable
                    .iter()
                    .copied()
                    .filter(|m| !servers_on(&members, m))
                    .collect()
            } else {
                usable.clone()
            };
            let current: BTreeMap<String, u32> = existing
                .iter()
                .filter(|i| i.spec.service == *s)
                .map(|i| (i.spec.node.clone(), ordinal_of(i)))
                .collect();
            let want = if drivers::on_every_node(*s) {
                None
            } else {
                count
            };
            let lost: Vec<&String> = current
                .keys()
                .filter(|n| !usable.iter().any(|m| &m.name == *n))
                .collect();
            let small = current.len() < 3;
            let lost_n = lost.len();
            // A lost member is replaced only from a working cluster: a majority of the
            // members healthy, not merely on machines that are back (a member that has not
            // rejoined yet may hold the newest data).
            let healthy = existing
                .iter()
                .filter(|i| i.spec.service == *s && member_ready(i))
                .filter(|i| usable.iter().any(|m| m.name == i.spec.node))
                .count();
            if drivers::quorum_based(*s)
                && !lost.is_empty()
                && (small
                    || current.len() - lost_n < quorum(current.len())
                    || healthy < quorum(current.len()))
            {
                // Without a majority nothing may be replaced: the members stay where their
                // data is, and the cluster restarts from them when their machines return.
                // Fewer than three members are no quorum at all: each may hold the only
                // copy of the data (a single Vault, a single database).
                let lost = lost
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                held.push(if small {
                    format!(
                        "the {s} members' machines: {lost} lost (fewer than three members hold the only copy of their data: they are not replaced)"
                    )
                } else if current.len() - lost_n >= quorum(current.len()) {
                    format!(
                        "a majority of the {s} members to be healthy ({healthy} of {} are): {lost} lost is replaced only from a working cluster",
                        current.len()
                    )
                } else {
                    format!(
                        "a majority of the {s} members: {lost} lost (members are not replaced without one, so no data is lost)"
                    )
                });
                let ms = existing
                    .iter()
                    .filter(|i| i.spec.service == *s)
                    .map(|i| Member {
                        node: i.spec.node.clone(),
                        address: i.spec.address.clone().unwrap_or_default(),
                        ordinal: ordinal_of(i),
                    })
                    .collect::<Vec<_>>();
                members.insert(*s, ms);
                continue;
            }
            let mut ms = place(want, spread, &usable, &current);
            // A lost member with no machine to replace it stays the member (Degraded, not
            // gone): when its machine returns it runs again where its data is.
            if let Some(w) = want {
                for i in existing.iter().filter(|i| i.spec.service == *s) {
                    if ms.len() >= w {
                        break;
                    }
                    if !ms.iter().any(|m| m.node == i.spec.node) {
                        ms.push(Member {
                            node: i.spec.node.clone(),
                            address: i.spec.address.clone().unwrap_or_default(),
                            ordinal: ordinal_of(i),
                        });
                    }
                }
                ms.sort_by_key(|m| m.ordinal);
            }
            members.insert(*s, ms);
        }
        if !held.is_empty() {
            status.waiting_for = Some(held.join("; "));
        }
        placed.push(Placed {
            index,
            layer,
            members,
            status,
        });
        // Readiness for the layers after this one: every member placed and ready now.
        let lready = {
            let p = placed.last().expect("pushed");
            let mut all = true;
            for (s, ms) in &p.members {
                let want = if *s == ServiceType::ConsulClient {
                    usable.iter().filter(|m| !servers_on(&p.members, m)).count()
                } else if drivers::on_every_node(*s) {
                    usable.len().max(1)
                } else {
                    count.unwrap_or(usable.len()).max(1)
                };
                let ok = ms.len() >= want
                    && ms.iter().all(|m| {
                        existing.iter().any(|i| {
                            i.spec.service == *s && i.spec.node == m.node && member_ready(i)
                        })
                    });
                all &= ok;
            }
            all
        };
        ready.insert(lname, lready);
    }
    // 3. Scrape targets: every placed member that exports metrics.
    let mut scrape: Vec<ScrapeTarget> = Vec::new();
    for p in &placed {
        for (s, ms) in &p.members {
            if let Some((port, path)) = drivers::metrics_endpoint(*s, p.layer) {
                for m in ms {
                    scrape.push(ScrapeTarget {
                        job: s.as_str().to_string(),
                        target: format!("{}:{port}", m.address),
                        path: path.to_string(),
                        node: m.node.clone(),
                    });
                }
            }
        }
    }
    scrape.sort();
    let stack_layers: Vec<&Layer> = o.stack.spec.layers.iter().collect();
    // What later layers' configs point at: the stack's Consul and Vault.
    let consul: Option<drivers::Upstream> = placed.iter().find_map(|p| {
        let ms = p.members.get(&ServiceType::Consul)?;
        let cfg = p.layer.config.consul.clone().unwrap_or_default();
        Some(drivers::Upstream {
            layer: p.layer.name.clone(),
            addresses: ms
                .iter()
                .map(|m| drivers::consul::api_url(&cfg, &m.address))
                .collect(),
            token: cfg.acl_bootstrap.then(|| {
                drivers::consul::generated(&name, &p.layer.name)[1]
                    .0
                    .clone()
            }),
        })
    });
    let vault: Option<drivers::Upstream> = placed.iter().find_map(|p| {
        let ms = p.members.get(&ServiceType::Vault)?;
        let cfg = drivers::vault::config(p.layer);
        Some(drivers::Upstream {
            layer: p.layer.name.clone(),
            addresses: ms
                .iter()
                .map(|m| drivers::vault::api_url(&cfg, &m.address))
                .collect(),
            token: None,
        })
    });
    // 3 and 4: render and roll, per layer.
    for mut p in placed {
        let existing = by_layer(&p.layer.name);
        let mut render_errors = Vec::new();
        let mut members_status = Vec::new();
        // Members taking a new config: their spec changes now or they still run the old one.
        let mut changing: BTreeSet<String> = BTreeSet::new();
        let mut endpoints = Vec::new();
        for (service, ms) in &p.members {
            let ours: Vec<&ServiceInstance> = existing
                .iter()
                .copied()
                .filter(|i| i.spec.service == *service)
                .collect();
            // Instances whose machine is no longer a member.
            for i in &ours {
                if !ms.iter().any(|m| m.node == i.spec.node) {
                    plan.delete.push(i.name_any());
                }
            }
            let mut desired: Vec<(String, ServiceInstanceSpec)> = Vec::new();
            for m in ms {
                let ctx = RenderCtx {
                    stack: &name,
                    layer: p.layer,
                    layer_index: p.index,
                    service: *service,
                    me: m,
                    peers: &p.members,
                    scrape: &scrape,
                    groundwork_metrics: o.groundwork_metrics,
                    consul: consul.as_ref(),
                    vault: vault.as_ref(),
                    stack_layers: &stack_layers,
                };
                match drivers::render(&ctx) {
                    Ok(mut spec) => {
                        spec.stack = name.clone();
                        spec.layer = p.layer.name.clone();
                        spec.service = *service;
                        spec.node = m.node.clone();
                        spec.address = Some(m.address.clone());
                        spec.data_epoch = o.data_epochs.get(&p.layer.name).copied().unwrap_or(0);
                        spec.config_digest = spec.digest();
                        desired
                            .push((instance_name(&name, &p.layer.name, *service, &m.node), spec));
                    }
                    Err(e) => render_errors.push(e),
                }
            }
            if *service == ServiceType::Mysql {
                bootstrap_flags(&mut desired, &ours);
            }
            // Rolling: how many ready members may go down now.
            let n = desired.len();
            let ready_now = ours
                .iter()
                .filter(|i| {
                    ms.iter().any(|m| m.node == i.spec.node)
                        && o.machines.iter().any(|m| m.name == i.spec.node)
                        && member_ready(i)
                })
                .count();
            let unavailable = n.saturating_sub(ready_now);
            let mut budget = (p.layer.rollout.max_unavailable as usize).saturating_sub(unavailable);
            if p.layer.rollout.keep_quorum && n >= 3 {
                budget = budget.min(ready_now.saturating_sub(quorum(n)));
            }
            for (iname, spec) in desired {
                let current = ours.iter().find(|i| i.name_any() == iname);
                match current {
                    None => {
                        let ordinal = ms
                            .iter()
                            .find(|m| m.node == spec.node)
                            .map(|m| m.ordinal)
                            .unwrap_or(0);
                        plan.create.push((iname.clone(), spec.clone(), ordinal));
                    }
                    Some(i) if i.spec != spec => {
                        let only_flags = {
                            let mut a = i.spec.clone();
                            a.bootstrap = spec.bootstrap;
                            a == spec
                        };
                        // An unready member is changed at once, except a quorum member
                        // whose process runs while another member is changing: that is a
                        // donor feeding the joiner (or the rest of the quorum), not a member
                        // that is broken on its own.
                        let others_ready = ours
                            .iter()
                            .filter(|o| o.name_any() != iname)
                            .filter(|o| ms.iter().any(|m| m.node == o.spec.node))
                            .all(|o| member_ready(o));
                        let at_once = !member_ready(i)
                            && (!drivers::quorum_based(*service) || !serving(i) || others_ready);
                        if only_flags || at_once {
                            plan.update.push((iname.clone(), spec.clone()));
                        } else if budget > 0 {
                            budget -= 1;
                            plan.update.push((iname.clone(), spec.clone()));
                        }
                    }
                    Some(_) => {}
                }
                let i = current.copied();
                let st = i.and_then(|i| i.status.as_ref());
                // A member that never ran (a replacement for a lost one) is not a change.
                let ran = st.and_then(|s| s.running_digest.as_deref());
                if ran.is_some()
                    && i.is_some_and(|i| {
                        i.spec != spec || ran != Some(i.spec.config_digest.as_str())
                    })
                {
                    changing.insert(iname.clone());
                }
                members_status.push(MemberStatus {
                    instance: iname.clone(),
                    service: service.as_str().to_string(),
                    node: spec.node.clone(),
                    address: spec.address.clone(),
                    phase: st.and_then(|s| s.phase).map(|p| format!("{p:?}")),
                    // What a lost machine last reported is not health.
                    ready: i.is_some_and(|i| member_ready(i) && i.spec == spec)
                        && o.machines.iter().any(|m| m.name == spec.node),
                });
                if let (Some(port), Some(addr)) =
                    (drivers::main_port(*service, p.layer), &spec.address)
                {
                    endpoints.push(format!("{addr}:{port}"));
                }
            }
        }
        p.status.members = members_status;
        p.status.endpoints = endpoints;
        let count = p.layer.placement.as_ref().and_then(|pl| pl.count);
        let spares = p.layer.placement.as_ref().map(|pl| pl.spares).unwrap_or(1);
        let usable = o.machines.iter().filter(|m| selected(p.layer, m)).count();
        let all_ready = !p.status.members.is_empty()
            && p.status.members.iter().all(|m| m.ready)
            && count.is_none_or(|c| {
                p.members
                    .iter()
                    .filter(|(s, _)| !drivers::on_every_node(**s))
                    .all(|(_, ms)| ms.len() >= c as usize)
            });
        let refused: Vec<String> = existing
            .iter()
            .filter_map(|i| {
                let s = i.status.as_ref()?;
                let refused = s.refused_digest.as_deref() == Some(i.spec.config_digest.as_str());
                let failed = s.phase == Some(InstancePhase::Failed);
                (refused || failed).then(|| {
                    format!(
                        "{} on {}: {}{}",
                        i.spec.service,
                        i.spec.node,
                        s.message.clone().unwrap_or_default(),
                        s.field
                            .as_ref()
                            .map(|f| format!(" (field {f})"))
                            .unwrap_or_default()
                    )
                })
            })
            .collect();
        let was = previous.get(&p.layer.name).copied();
        let (phase, waiting) = if !render_errors.is_empty() {
            (LayerPhase::Failed, Some(render_errors.join("; ")))
        } else if all_ready {
            (LayerPhase::Ready, None)
        } else if !refused.is_empty() {
            (LayerPhase::Failed, Some(refused.join("; ")))
        } else if p.status.members.is_empty() {
            (
                LayerPhase::Pending,
                Some("machines: none is Ready and matches the layer's placement".to_string()),
            )
        } else {
            let short = count.map(|c| c as usize).and_then(|c| {
                p.members
                    .values()
                    .map(Vec::len)
                    .min()
                    .filter(|have| *have < c)
                    .map(|have| format!("machines: {have} of {c} members placed"))
            });
            let member = p.status.members.iter().find(|m| !m.ready).map(|m| {
                let message = existing
                    .iter()
                    .find(|i| i.name_any() == m.instance)
                    .and_then(|i| i.status.as_ref()?.message.clone())
                    .map(|t| format!(": {t}"))
                    .unwrap_or_default();
                format!(
                    "{} on {} ({}){message}",
                    m.service,
                    m.node,
                    m.phase.clone().unwrap_or_else(|| "not started".into())
                )
            });
            // A planned change (every unready member is on a usable machine, taking a new
            // config) is progress; a lost or failing member of a layer that was Ready is
            // degradation.
            let changing = p.status.members.iter().filter(|m| !m.ready).all(|m| {
                o.machines.iter().any(|x| x.name == m.node) && changing.contains(&m.instance)
            });
            let phase = if matches!(was, Some(LayerPhase::Ready | LayerPhase::Degraded))
                && !(changing && short.is_none())
            {
                LayerPhase::Degraded
            } else {
                LayerPhase::Progressing
            };
            (phase, short.or(member))
        };
        p.status.phase = Some(phase);
        p.status.waiting_for = if phase == LayerPhase::Ready {
            None
        } else {
            p.status.waiting_for.take().or(waiting)
        };
        let placed_max = p
            .members
            .iter()
            .filter(|(s, _)| !drivers::on_every_node(**s))
            .map(|(_, v)| v.len())
            .max()
            .unwrap_or(0);
        let spare_ok = count.is_none() || usable >= placed_max + spares as usize;
        p.status.bootstrap_steps_done = Vec::new();
        p.status.conditions = vec![
            cond(
                "Ready",
                phase == LayerPhase::Ready,
                &format!("{phase:?}"),
                p.status.waiting_for.clone().unwrap_or_else(|| {
                    "every member runs the current config and is healthy".into()
                }),
            ),
            cond(
                "SpareAvailable",
                spare_ok,
                if spare_ok { "Spare" } else { "NoSpare" },
                format!("{usable} machines match for {placed_max} members and {spares} spare(s)"),
            ),
        ];
        plan.layers.push(p.status);
    }
    plan.catalog = catalog(o, &plan);
    // Keep the spec's order in the status.
    plan.layers.sort_by_key(|l| {
        stack
            .spec
            .layers
            .iter()
            .position(|x| x.name == l.name)
            .unwrap_or(usize::MAX)
    });
    plan.delete.sort();
    plan.delete.dedup();
    plan
}

pub(crate) fn cond(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::UNIX_EPOCH,
        ),
        observed_generation: None,
    }
}

/// The ordinal a member was given, kept in a label.
pub fn ordinal_of(i: &ServiceInstance) -> u32 {
    i.labels()
        .get(ORDINAL_LABEL)
        .and_then(|v| v.parse().ok())
        .unwrap_or(u32::MAX)
}

pub const ORDINAL_LABEL: &str = "groundwork.dev/ordinal";

/// Galera: which member may start as the cluster's first (`bootstrap`), from what the
/// members report.
fn bootstrap_flags(desired: &mut [(String, ServiceInstanceSpec)], ours: &[&ServiceInstance]) {
    let fresh = ours.is_empty();
    let views: Vec<drivers::mysql::BootstrapView> = desired
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let inst = ours.iter().find(|x| &x.name_any() == name);
            let st = inst.and_then(|x| x.status.as_ref());
            drivers::mysql::BootstrapView {
                ordinal: i as u32,
                ready: inst.is_some_and(|x| member_ready(x)),
                running: st.is_some_and(|s| matches!(s.phase, Some(InstancePhase::Running))),
                // A brand-new cluster's members hold nothing; otherwise a member counts
                // only once its agent has reported.
                reported: fresh || st.is_some_and(|s| s.phase.is_some()),
                facts: st.map(|s| s.facts.clone()).unwrap_or_default(),
            }
        })
        .collect();
    // Nobody bootstraps while a member runs (the others join it): every flag is cleared, or
    // a member restarted by a roll would start a second cluster. Otherwise flags change only
    // on a definite choice: while members have not reported, each keeps the flag it has.
    let runs = views.iter().any(|v| v.ready || v.running);
    match drivers::mysql::choose_bootstrap(&views) {
        Ok(chosen) => {
            for (i, (_, spec)) in desired.iter_mut().enumerate() {
                spec.bootstrap = chosen == i;
            }
        }
        Err(_) if runs => {
            for (_, spec) in desired.iter_mut() {
                spec.bootstrap = false;
            }
        }
        Err(_) => {
            for (name, spec) in desired.iter_mut() {
                spec.bootstrap = ours
                    .iter()
                    .find(|x| &x.name_any() == name)
                    .is_some_and(|x| x.spec.bootstrap);
            }
        }
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
