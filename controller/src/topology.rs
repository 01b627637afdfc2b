//! Topology controllers. Everything here is derived from specs alone (Datacenter, Rack and
//! Node), so the three controllers are independent of each other and of reconcile order:
//!
//! - `rack`: elevation (who sits where), overlapping positions, U used/free, power drawn/free
//!   against the budget, zone membership, as status and conditions.
//! - `datacenter`: totals over its racks and their nodes; racks in zones it does not have.
//! - `node-placement`: each Node's own view of its position (`RackPlacement` condition), so an
//!   overlap shows on both Nodes as well as on the Rack.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use groundwork_types::{Datacenter, ElevationSlot, Node, Rack, set_condition};
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use serde_json::json;

use crate::caches::{Caches, Change, Kinds};
use crate::runtime::{
    Action, Ctx, Error, Owns, Reconciler, condition_with_event, patch_own_status, patch_status,
};

/// The units a node occupies: `[position, position + height - 1]`.
fn span_of(n: &Node) -> Option<(String, u32, u32)> {
    let p = n.spec.rack.as_ref()?;
    let h = p.height_u.max(1);
    Some((p.name.clone(), p.position, p.position.saturating_add(h - 1)))
}

fn units_label(lo: u32, hi: u32) -> String {
    if lo == hi {
        format!("U{lo}")
    } else {
        format!("U{lo}-U{hi}")
    }
}

/// Two nodes claiming a rack unit.
#[derive(Clone, Debug, PartialEq)]
pub struct Overlap {
    pub a: String,
    pub b: String,
    /// Lowest shared unit.
    pub unit: u32,
}

/// What a rack's nodes add up to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RackReport {
    pub elevation: Vec<ElevationSlot>,
    pub overlaps: Vec<Overlap>,
    /// Nodes reaching above the top of the rack (or below U1).
    pub out_of_bounds: Vec<String>,
    pub units_used: u32,
    pub power_drawn_kw: f64,
    pub nodes: u32,
}

/// Computes the elevation of `rack` from the nodes placed in it.
pub fn rack_report(rack_name: &str, height_u: u32, nodes: &[Arc<Node>]) -> RackReport {
    let mut placed: Vec<(String, u32, u32, f64)> = nodes
        .iter()
        .filter_map(|n| {
            let (r, lo, hi) = span_of(n)?;
            (r == rack_name).then(|| (n.name_any(), lo, hi, n.spec.power_draw_kw.unwrap_or(0.0)))
        })
        .collect();
    placed.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    let mut rep = RackReport {
        nodes: placed.len() as u32,
        ..Default::default()
    };
    let mut used = vec![false; height_u as usize + 1];
    for (i, (name, lo, hi, kw)) in placed.iter().enumerate() {
        rep.elevation.push(ElevationSlot {
            position: *lo,
            height_u: hi - lo + 1,
            node: name.clone(),
        });
        rep.power_drawn_kw += kw;
        if *lo == 0 || *hi > height_u {
            rep.out_of_bounds.push(name.clone());
        }
        for u in (*lo).max(1)..=(*hi).min(height_u) {
            used[u as usize] = true;
        }
        for (other, olo, ohi, _) in &placed[i + 1..] {
            if olo <= hi && lo <= ohi {
                rep.overlaps.push(Overlap {
                    a: name.clone(),
                    b: other.clone(),
                    unit: (*lo).max(*olo),
                });
            }
        }
    }
    rep.units_used = used.iter().filter(|u| **u).count() as u32;
    rep.power_drawn_kw = kw(rep.power_drawn_kw);
    rep
}

fn overlap_message(o: &[Overlap], nodes: &HashMap<String, (u32, u32)>) -> String {
    o.iter()
        .map(|o| {
            let l = |n: &str| {
                nodes
                    .get(n)
                    .map_or(String::new(), |(lo, hi)| units_label(*lo, *hi))
            };
            format!(
                "{} ({}) and {} ({}) share U{}",
                o.a,
                l(&o.a),
                o.b,
                l(&o.b),
                o.unit
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// kW to the watt, so sums of decimals print as written (0.1 + 0.2 = 0.3).
fn kw(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

fn all_names<K: kube::Resource<DynamicType = ()> + Clone>(s: &Store<K>) -> Vec<String> {
    s.state().iter().map(|o| o.name_any()).collect()
}

/// The rack each node was last seen in, so that a move reaches the rack it left as well.
#[derive(Default)]
struct RackMoves(Mutex<HashMap<String, String>>);

impl RackMoves {
    /// Records `n`'s current rack; returns (the rack now, the rack before).
    fn record(&self, n: &Node) -> (Option<String>, Option<String>) {
        let now = n.spec.rack.as_ref().map(|p| p.name.clone());
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let before = match &now {
            Some(r) => last.insert(n.name_any(), r.clone()),
            None => last.remove(&n.name_any()),
        };
        (now, before)
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Default)]
pub struct RackController {
    moves: RackMoves,
}

impl Reconciler for RackController {
    type K = Rack;
    const NAME: &'static str = "rack";

    fn watches(kinds: Kinds) -> Kinds {
        kinds.watch::<Node>().watch::<Datacenter>()
    }

    fn map(&self, change: &Change, c: &Caches) -> Vec<String> {
        if change.is::<Rack>() {
            return vec![change.name().to_string()];
        }
        if !change.spec_changed {
            return vec![];
        }
        if let Some(n) = change.get::<Node>() {
            // Only specs count here: the node's rack now, and the one it left.
            let (now, before) = self.moves.record(&n);
            return now.into_iter().chain(before).collect();
        }
        if change.is::<Datacenter>() {
            // Zones and the datacenter's existence feed every rack's ZoneKnown.
            return all_names(c.store::<Rack>());
        }
        vec![]
    }

    async fn reconcile(&self, rack: Arc<Rack>, ctx: &Ctx) -> Result<Action, Error> {
        let name = rack.name_any();
        let nodes = ctx.caches.store::<Node>().state();
        let rep = rack_report(&name, rack.spec.height_u, &nodes);
        let spans: HashMap<String, (u32, u32)> = nodes
            .iter()
            .filter_map(|n| span_of(n).map(|(_, lo, hi)| (n.name_any(), (lo, hi))))
            .collect();
        let mut conds = rack
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();

        let (ok, reason, msg) = if !rep.overlaps.is_empty() {
            (false, "Overlap", overlap_message(&rep.overlaps, &spans))
        } else if !rep.out_of_bounds.is_empty() {
            (
                false,
                "OutOfRack",
                format!(
                    "{} reach beyond the rack's {} U",
                    rep.out_of_bounds.join(", "),
                    rack.spec.height_u
                ),
            )
        } else {
            (
                true,
                "NoOverlap",
                format!("{} nodes, no overlapping positions", rep.nodes),
            )
        };
        condition_with_event(
            ctx,
            rack.as_ref(),
            &mut conds,
            "ElevationValid",
            ok,
            reason,
            &msg,
        )
        .await;

        let budget = rack.spec.power_budget_kw;
        let (ok, reason, msg) = match budget {
            Some(b) if rep.power_drawn_kw > b => (
                false,
                "OverBudget",
                format!(
                    "nodes draw {:.2} kW of a {b:.2} kW budget",
                    rep.power_drawn_kw
                ),
            ),
            Some(b) => (
                true,
                "WithinBudget",
                format!(
                    "nodes draw {:.2} kW of a {b:.2} kW budget",
                    rep.power_drawn_kw
                ),
            ),
            None => (true, "NoBudget", "the rack has no power budget".to_string()),
        };
        condition_with_event(
            ctx,
            rack.as_ref(),
            &mut conds,
            "PowerWithinBudget",
            ok,
            reason,
            &msg,
        )
        .await;

        let dc = ctx
            .caches
            .store::<Datacenter>()
            .get(&kube::runtime::reflector::ObjectRef::new(
                &rack.spec.datacenter,
            ));
        let (ok, reason, msg) = match dc {
            None => (
                false,
                "DatacenterNotFound",
                format!("datacenter {:?} does not exist", rack.spec.datacenter),
            ),
            Some(dc)
                if !dc
                    .spec
                    .availability_zones
                    .iter()
                    .any(|z| z.name == rack.spec.availability_zone) =>
            {
                (
                    false,
                    "ZoneNotFound",
                    format!(
                        "datacenter {:?} has no availability zone {:?} (it has: {})",
                        rack.spec.datacenter,
                        rack.spec.availability_zone,
                        dc.spec
                            .availability_zones
                            .iter()
                            .map(|z| z.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            }
            Some(_) => (
                true,
                "ZoneFound",
                format!(
                    "in {}/{}",
                    rack.spec.datacenter, rack.spec.availability_zone
                ),
            ),
        };
        condition_with_event(
            ctx,
            rack.as_ref(),
            &mut conds,
            "ZoneKnown",
            ok,
            reason,
            &msg,
        )
        .await;

        let all_ok = ["ElevationValid", "PowerWithinBudget", "ZoneKnown"]
            .iter()
            .all(|t| groundwork_types::condition_is_true(&conds, t));
        let (reason, msg) = if all_ok {
            (
                "AllChecksPassed",
                "elevation, power and zone are valid".to_string(),
            )
        } else {
            let failing: Vec<&str> = conds
                .iter()
                .filter(|c| c.type_ != "Ready" && c.status != "True")
                .map(|c| c.type_.as_str())
                .collect();
            ("ChecksFailed", format!("failing: {}", failing.join(", ")))
        };
        set_condition(
            &mut conds,
            "Ready",
            all_ok,
            reason,
            &msg,
            rack.metadata.generation,
            now(),
        );

        let status = json!({
            "observedGeneration": rack.metadata.generation,
            "unitsUsed": rep.units_used,
            "unitsFree": rack.spec.height_u.saturating_sub(rep.units_used),
            "powerDrawnKw": rep.power_drawn_kw,
            "powerFreeKw": budget.map(|b| kw(b - rep.power_drawn_kw)),
            "elevation": rep.elevation,
            "conditions": conds,
        });
        if patch_status(&ctx.client, rack.as_ref(), status, Owns::AllConditions).await? {
            tracing::info!(
                units_used = rep.units_used,
                nodes = rep.nodes,
                power_drawn_kw = rep.power_drawn_kw,
                "rack status updated"
            );
        }
        Ok(Action::AwaitChange)
    }
}

// ---------------------------------------------------------------------------------------------

pub struct DatacenterController;

impl Reconciler for DatacenterController {
    type K = Datacenter;
    const NAME: &'static str = "datacenter";
    // Each pass totals every Rack and Node: at most one per second under a stream of changes.
    const COALESCE: std::time::Duration = std::time::Duration::from_secs(1);

    fn watches(kinds: Kinds) -> Kinds {
        kinds.watch::<Rack>().watch::<Node>()
    }

    fn map(&self, change: &Change, c: &Caches) -> Vec<String> {
        if change.is::<Datacenter>() {
            vec![change.name().to_string()]
        } else if change.spec_changed && (change.is::<Rack>() || change.is::<Node>()) {
            all_names(c.store::<Datacenter>())
        } else {
            vec![]
        }
    }

    async fn reconcile(&self, dc: Arc<Datacenter>, ctx: &Ctx) -> Result<Action, Error> {
        let name = dc.name_any();
        let racks: Vec<Arc<Rack>> = ctx
            .caches
            .store::<Rack>()
            .state()
            .into_iter()
            .filter(|r| r.spec.datacenter == name)
            .collect();
        let nodes = ctx.caches.store::<Node>().state();
        let zones: Vec<&str> = dc
            .spec
            .availability_zones
            .iter()
            .map(|z| z.name.as_str())
            .collect();
        let mut per_zone: BTreeMap<String, (u32, u32)> = BTreeMap::new();
        let (mut units_total, mut units_used, mut power, mut node_count) = (0u32, 0u32, 0f64, 0u32);
        let mut stray = Vec::new();
        for r in &racks {
            let rep = rack_report(&r.name_any(), r.spec.height_u, &nodes);
            units_total += r.spec.height_u;
            units_used += rep.units_used;
            power += rep.power_drawn_kw;
            node_count += rep.nodes;
            let z = per_zone
                .entry(r.spec.availability_zone.clone())
                .or_default();
            z.0 += 1;
            z.1 += rep.nodes;
            if !zones.contains(&r.spec.availability_zone.as_str()) {
                stray.push(format!("{} ({})", r.name_any(), r.spec.availability_zone));
            }
        }
        let mut conds = dc
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let (ok, reason, msg) = if stray.is_empty() {
            (
                true,
                "AllZonesKnown",
                format!("{} racks in {} zones", racks.len(), per_zone.len()),
            )
        } else {
            (
                false,
                "UnknownZone",
                format!(
                    "racks in zones the datacenter does not have: {}",
                    stray.join(", ")
                ),
            )
        };
        condition_with_event(ctx, dc.as_ref(), &mut conds, "ZonesValid", ok, reason, &msg).await;
        let power = kw(power);
        let (ok, reason, msg) = match dc.spec.power_budget_kw {
            Some(b) if power > b => (
                false,
                "OverBudget",
                format!("nodes draw {power:.2} kW of a {b:.2} kW budget"),
            ),
            Some(b) => (
                true,
                "WithinBudget",
                format!("nodes draw {power:.2} kW of a {b:.2} kW budget"),
            ),
            None => (
                true,
                "NoBudget",
                "the datacenter has no power budget".to_string(),
            ),
        };
        condition_with_event(
            ctx,
            dc.as_ref(),
            &mut conds,
            "PowerWithinBudget",
            ok,
            reason,
            &msg,
        )
        .await;
        let ready = ["ZonesValid", "PowerWithinBudget"]
            .iter()
            .all(|t| groundwork_types::condition_is_true(&conds, t));
        set_condition(
            &mut conds,
            "Ready",
            ready,
            if ready {
                "AllChecksPassed"
            } else {
                "ChecksFailed"
            },
            if ready {
                "zones and power are valid"
            } else {
                "see the other conditions"
            },
            dc.metadata.generation,
            now(),
        );
        let status = json!({
            "observedGeneration": dc.metadata.generation,
            "racks": racks.len(),
            "nodes": node_count,
            "unitsUsed": units_used,
            "unitsFree": units_total.saturating_sub(units_used),
            "powerUsedKw": power,
            "powerFreeKw": dc.spec.power_budget_kw.map(|b| kw(b - power)),
            "conditions": conds,
        });
        if patch_status(&ctx.client, dc.as_ref(), status, Owns::AllConditions).await? {
            tracing::info!(
                racks = racks.len(),
                nodes = node_count,
                units_used,
                power_kw = power,
                "datacenter totals updated"
            );
        }
        Ok(Action::AwaitChange)
    }
}

// ---------------------------------------------------------------------------------------------

/// Keeps each Node's `RackPlacement` condition: placed, rack missing, beyond the rack's
/// height, or sharing units with another node.
#[derive(Default)]
pub struct PlacementController {
    /// So that the nodes left behind by a move are looked at again too.
    moves: RackMoves,
}

impl Reconciler for PlacementController {
    type K = Node;
    const NAME: &'static str = "node-placement";

    fn watches(kinds: Kinds) -> Kinds {
        kinds.watch::<Rack>()
    }

    fn map(&self, change: &Change, c: &Caches) -> Vec<String> {
        let in_rack = |rack: &str| -> Vec<String> {
            c.store::<Node>()
                .state()
                .iter()
                .filter(|n| n.spec.rack.as_ref().is_some_and(|p| p.name == rack))
                .map(|n| n.name_any())
                .collect()
        };
        if let Some(n) = change.get::<Node>() {
            // Others' status writes leave RackPlacement alone (conditions merge by type).
            if !change.spec_changed {
                return vec![];
            }
            let (now_rack, before) = self.moves.record(&n);
            let mut keys = vec![n.name_any()];
            for r in now_rack.iter().chain(before.iter()) {
                keys.extend(in_rack(r));
            }
            return keys;
        }
        if change.is::<Rack>() && change.spec_changed {
            return in_rack(change.name());
        }
        vec![]
    }

    async fn reconcile(&self, node: Arc<Node>, ctx: &Ctx) -> Result<Action, Error> {
        let name = node.name_any();
        let mut conds = node
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let (ok, reason, msg) = match &node.spec.rack {
            None => (true, "Unracked", "no rack position given".to_string()),
            Some(p) => {
                match ctx
                    .caches
                    .store::<Rack>()
                    .get(&kube::runtime::reflector::ObjectRef::new(&p.name))
                {
                    None => (
                        false,
                        "RackNotFound",
                        format!("rack {:?} does not exist", p.name),
                    ),
                    Some(rack) => {
                        let nodes = ctx.caches.store::<Node>().state();
                        let rep = rack_report(&p.name, rack.spec.height_u, &nodes);
                        let mine: Vec<&crate::topology::Overlap> = rep
                            .overlaps
                            .iter()
                            .filter(|o| o.a == name || o.b == name)
                            .collect();
                        let (lo, hi) = (p.position, p.position + p.height_u.max(1) - 1);
                        if !mine.is_empty() {
                            let with: Vec<String> = mine
                                .iter()
                                .map(|o| {
                                    let other = if o.a == name { &o.b } else { &o.a };
                                    format!("{other} at U{}", o.unit)
                                })
                                .collect();
                            (
                                false,
                                "Overlap",
                                format!(
                                    "{} in rack {} overlaps {}",
                                    units_label(lo, hi),
                                    p.name,
                                    with.join(", ")
                                ),
                            )
                        } else if rep.out_of_bounds.contains(&name) {
                            (
                                false,
                                "OutOfRack",
                                format!(
                                    "{} is beyond rack {}'s {} U",
                                    units_label(lo, hi),
                                    p.name,
                                    rack.spec.height_u
                                ),
                            )
                        } else {
                            (
                                true,
                                "Placed",
                                format!("{} in rack {}", units_label(lo, hi), p.name),
                            )
                        }
                    }
                }
            }
        };
        condition_with_event(
            ctx,
            node.as_ref(),
            &mut conds,
            "RackPlacement",
            ok,
            reason,
            &msg,
        )
        .await;
        // Decided from specs only and written by this controller alone: no precondition
        // (another controller's status write in between is no reason to decide again).
        if patch_own_status(
            &ctx.client,
            node.as_ref(),
            json!({"conditions": conds}),
            Owns::Conditions(&["RackPlacement"]),
        )
        .await?
        {
            tracing::info!(reason, "placement: {msg}");
        }
        Ok(Action::AwaitChange)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use groundwork_types::{NodeSpec, RackPlacement};

    fn node(name: &str, rack: &str, pos: u32, h: u32, kw: f64) -> Arc<Node> {
        let mut n = Node::new(
            name,
            NodeSpec {
                rack: Some(RackPlacement {
                    name: rack.into(),
                    position: pos,
                    height_u: h,
                }),
                power_draw_kw: Some(kw),
                ..Default::default()
            },
        );
        n.metadata.name = Some(name.into());
        Arc::new(n)
    }

    #[test]
    fn elevation_units_and_power() {
        let nodes = vec![
            node("b", "r1", 10, 2, 0.5),
            node("a", "r1", 1, 1, 0.25),
            node("c", "r2", 1, 1, 9.0),
        ];
        let r = rack_report("r1", 42, &nodes);
        assert_eq!(r.nodes, 2);
        assert_eq!(r.units_used, 3);
        assert_eq!(r.power_drawn_kw, 0.75);
        assert_eq!(r.elevation[0].node, "a");
        assert_eq!(r.elevation[1].height_u, 2);
        assert!(r.overlaps.is_empty());
        assert!(r.out_of_bounds.is_empty());
    }

    #[test]
    fn overlaps_are_found_once_and_units_not_double_counted() {
        let nodes = vec![
            node("a", "r1", 10, 2, 0.0),
            node("b", "r1", 11, 1, 0.0),
            node("c", "r1", 12, 1, 0.0),
        ];
        let r = rack_report("r1", 42, &nodes);
        assert_eq!(
            r.overlaps,
            vec![Overlap {
                a: "a".into(),
                b: "b".into(),
                unit: 11
            }]
        );
        assert_eq!(r.units_used, 3, "U10, U11, U12");
    }

    #[test]
    fn nodes_beyond_the_top_are_reported() {
        let nodes = vec![node("tall", "r1", 41, 4, 0.0)];
        let r = rack_report("r1", 42, &nodes);
        assert_eq!(r.out_of_bounds, vec!["tall".to_string()]);
        assert_eq!(r.units_used, 2);
    }
}
