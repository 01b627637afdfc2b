//! Profile assignment. A Node gets the Profile it names in `spec.profile`, or else the
//! highest-priority Profile whose label selector matches the Node's labels and inventory facts
//! and whose hardware requirements its inventory meets. A tie at the top priority is a
//! condition (`ProfileAssigned=False`, reason `Ambiguous`), never a silent pick. Once a Node
//! is being or has been installed, its assignment is kept (a later match does not reinstall a
//! machine behind the operator's back); the condition says what would match now.
//!
//! `profile-status` keeps each Profile's `assignedNodes` and flags the ties it is part of.

use std::collections::BTreeMap;
use std::sync::Arc;

use groundwork_types::{Node, NodePhase, Profile, set_condition};
use kube::core::{Selector, SelectorExt};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::caches::{Caches, Change, Kinds};
use crate::events::EventType;
use crate::runtime::{Action, Ctx, Error, Owns, Reconciler, patch_status};

/// Prefix of the labels inventory facts are matched under.
pub const FACT_PREFIX: &str = "inventory.groundwork.dev/";

/// The labels a Profile selector is matched against: the Node's own labels, plus its
/// inventory as `inventory.groundwork.dev/{vendor,model,cpu-threads,memory-gib,disks}` and
/// every `status.inventory.facts` entry as `inventory.groundwork.dev/<key>`.
pub fn match_labels(n: &Node) -> BTreeMap<String, String> {
    let mut l = n.labels().clone();
    if let Some(inv) = n.status.as_ref().and_then(|s| s.inventory.as_ref()) {
        let mut put = |k: &str, v: String| {
            l.insert(format!("{FACT_PREFIX}{k}"), v);
        };
        if let Some(sys) = &inv.system {
            if let Some(v) = &sys.vendor {
                put("vendor", v.clone());
            }
            if let Some(m) = &sys.model {
                put("model", m.clone());
            }
        }
        let threads: u32 = inv.cpus.iter().filter_map(|c| c.threads).sum();
        put("cpu-threads", threads.to_string());
        if let Some(m) = inv.memory_bytes {
            put("memory-gib", (m >> 30).to_string());
        }
        put("disks", inv.disks.len().to_string());
        for (k, v) in &inv.facts {
            put(k, v.clone());
        }
    }
    l
}

/// Why a Profile does or does not fit a Node.
#[derive(Clone, Debug, PartialEq)]
pub enum Fit {
    Yes,
    /// The selector does not match.
    Selector,
    /// Hardware requirements not met (the text says which).
    Hardware(String),
    /// Hardware requirements cannot be checked before the Node is inventoried.
    NoInventory,
}

pub fn fit(p: &Profile, n: &Node) -> Fit {
    if let Some(sel) = &p.spec.selector {
        let ok = Selector::try_from(sel.clone()).is_ok_and(|s| s.matches(&match_labels(n)));
        if !ok {
            return Fit::Selector;
        }
    }
    let Some(req) = &p.spec.requires else {
        return Fit::Yes;
    };
    let Some(inv) = n.status.as_ref().and_then(|s| s.inventory.as_ref()) else {
        return Fit::NoInventory;
    };
    let threads: u32 = inv.cpus.iter().filter_map(|c| c.threads).sum();
    let mem_gib = inv.memory_bytes.unwrap_or(0) >> 30;
    let eq = |want: &Option<String>, have: Option<&String>| {
        want.as_ref()
            .is_none_or(|w| have.is_some_and(|h| h.eq_ignore_ascii_case(w)))
    };
    let sys = inv.system.as_ref();
    let big_disks = inv
        .disks
        .iter()
        .filter(|d| d.size_bytes.unwrap_or(0) >> 30 >= req.min_disk_gib.unwrap_or(0))
        .count() as u32;
    let mut missing = Vec::new();
    if let Some(m) = req.min_cpu_threads
        && threads < m
    {
        missing.push(format!("{threads} CPU threads < {m}"));
    }
    if let Some(m) = req.min_memory_gib
        && mem_gib < m
    {
        missing.push(format!("{mem_gib} GiB memory < {m}"));
    }
    let need_disks = req
        .min_disks
        .unwrap_or(u32::from(req.min_disk_gib.is_some()));
    if big_disks < need_disks {
        missing.push(format!(
            "{big_disks} disks of at least {} GiB < {need_disks}",
            req.min_disk_gib.unwrap_or(0)
        ));
    }
    if !eq(&req.vendor, sys.and_then(|s| s.vendor.as_ref())) {
        missing.push(format!(
            "vendor is not {:?}",
            req.vendor.as_deref().unwrap_or("")
        ));
    }
    if !eq(&req.model, sys.and_then(|s| s.model.as_ref())) {
        missing.push(format!(
            "model is not {:?}",
            req.model.as_deref().unwrap_or("")
        ));
    }
    if missing.is_empty() {
        Fit::Yes
    } else {
        Fit::Hardware(missing.join(", "))
    }
}

/// The outcome of matching one Node against every Profile.
#[derive(Clone, Debug, PartialEq)]
pub enum Assignment {
    /// `spec.profile` names an existing Profile.
    Explicit(String),
    /// `spec.profile` names a Profile that does not exist.
    ExplicitMissing(String),
    Matched {
        profile: String,
        priority: i32,
    },
    /// Several Profiles match at the top priority.
    Ambiguous {
        priority: i32,
        profiles: Vec<String>,
    },
    /// Nothing matches; `awaiting_inventory` lists Profiles that might once inventoried.
    NoMatch {
        awaiting_inventory: Vec<String>,
    },
}

pub fn assign(n: &Node, profiles: &[Arc<Profile>]) -> Assignment {
    if let Some(name) = &n.spec.profile {
        return if profiles.iter().any(|p| p.name_any() == *name) {
            Assignment::Explicit(name.clone())
        } else {
            Assignment::ExplicitMissing(name.clone())
        };
    }
    let mut best: Option<i32> = None;
    let mut top: Vec<String> = Vec::new();
    let mut awaiting = Vec::new();
    for p in profiles {
        match fit(p, n) {
            Fit::Yes => {
                let pr = p.spec.priority;
                match best {
                    Some(b) if pr < b => {}
                    Some(b) if pr == b => top.push(p.name_any()),
                    _ => {
                        best = Some(pr);
                        top = vec![p.name_any()];
                    }
                }
            }
            Fit::NoInventory => awaiting.push(p.name_any()),
            Fit::Selector | Fit::Hardware(_) => {}
        }
    }
    top.sort();
    awaiting.sort();
    match (best, top.len()) {
        (Some(priority), 1) => Assignment::Matched {
            profile: top.remove(0),
            priority,
        },
        (Some(priority), _) => Assignment::Ambiguous {
            priority,
            profiles: top,
        },
        (None, _) => Assignment::NoMatch {
            awaiting_inventory: awaiting,
        },
    }
}

fn installing_or_installed(n: &Node) -> bool {
    matches!(
        n.status.as_ref().and_then(|s| s.phase),
        Some(NodePhase::Provisioning | NodePhase::Provisioned | NodePhase::Ready)
    )
}

/// What the assignment reads of a Node besides its spec and labels: its phase, inventory
/// and current profile (a fingerprint per Node, so that other controllers' status writes do
/// not wake this one).
#[derive(Default)]
pub struct ProfileController {
    seen: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

fn fingerprint(n: &Node) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let st = n.status.as_ref();
    st.and_then(|s| s.phase)
        .map(|p| format!("{p:?}"))
        .hash(&mut h);
    st.and_then(|s| s.profile.clone()).hash(&mut h);
    st.and_then(|s| s.inventory.as_ref())
        .map(|i| serde_json::to_string(i).unwrap_or_default())
        .hash(&mut h);
    st.map(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "ProfileAssigned")
            .map(|c| c.message.clone())
    })
    .hash(&mut h);
    h.finish()
}

impl Reconciler for ProfileController {
    type K = Node;
    const NAME: &'static str = "profile";

    fn watches(kinds: Kinds) -> Kinds {
        kinds.watch::<Profile>()
    }

    fn map(&self, change: &Change, c: &Caches) -> Vec<String> {
        if let Some(n) = change.get::<Node>() {
            // Its labels, spec, phase or inventory may have changed.
            let now = fingerprint(&n);
            let before = self
                .seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(n.name_any(), now);
            if change.spec_changed || before != Some(now) {
                vec![n.name_any()]
            } else {
                vec![]
            }
        } else if change.is::<Profile>() && change.spec_changed {
            c.store::<Node>()
                .state()
                .iter()
                .map(|n| n.name_any())
                .collect()
        } else {
            vec![]
        }
    }

    async fn reconcile(&self, node: Arc<Node>, ctx: &Ctx) -> Result<Action, Error> {
        if node.spec.maintenance {
            tracing::debug!("in maintenance; leaving the profile alone");
            return Ok(Action::AwaitChange);
        }
        let profiles = ctx.caches.store::<Profile>().state();
        let a = assign(&node, &profiles);
        let status = node.status.clone().unwrap_or_default();
        let current = status.profile.clone();
        let (want, ok, reason, msg): (Option<String>, bool, &str, String) = match &a {
            Assignment::Explicit(p) => (
                Some(p.clone()),
                true,
                "Explicit",
                format!("spec.profile names {p:?}"),
            ),
            Assignment::ExplicitMissing(p) => (
                None,
                false,
                "ProfileNotFound",
                format!("spec.profile names {p:?}, which does not exist"),
            ),
            Assignment::Matched { profile, priority } => (
                Some(profile.clone()),
                true,
                "Matched",
                format!(
                    "{profile:?} is the only matching profile at the highest priority ({priority})"
                ),
            ),
            Assignment::Ambiguous { priority, profiles } => (
                None,
                false,
                "Ambiguous",
                format!(
                    "{} match at the same priority ({priority}); raise one's priority or narrow a selector",
                    profiles.join(", ")
                ),
            ),
            Assignment::NoMatch { awaiting_inventory } if !awaiting_inventory.is_empty() => (
                None,
                false,
                "AwaitingInventory",
                format!(
                    "{} need hardware inventory to be checked",
                    awaiting_inventory.join(", ")
                ),
            ),
            Assignment::NoMatch { .. } => (
                None,
                false,
                "NoMatch",
                "no profile matches this node".into(),
            ),
        };
        let sticky = installing_or_installed(&node) && current.is_some();
        let (want, ok, reason, msg) = if sticky && want != current {
            (
                current.clone(),
                true,
                "KeptWhileInstalled",
                format!(
                    "kept {:?} because the node is installed or installing; matching now gives: {msg}",
                    current.as_deref().unwrap_or("")
                ),
            )
        } else {
            (want, ok, reason, msg)
        };
        let mut conds = status.conditions.clone();
        let prev_reason = conds
            .iter()
            .find(|c| c.type_ == "ProfileAssigned")
            .map(|c| c.reason.clone());
        set_condition(
            &mut conds,
            "ProfileAssigned",
            ok,
            reason,
            &msg,
            node.metadata.generation,
            jiff::Timestamp::now(),
        );
        let phase = match (status.phase, &want) {
            (Some(NodePhase::Inventoried), Some(_)) => Some(NodePhase::Assigned),
            (Some(NodePhase::Assigned), None) => Some(NodePhase::Inventoried),
            (p, _) => p,
        };
        let patch = json!({
            "profile": want.clone().map_or(Value::Null, Value::String),
            "phase": phase,
            "conditions": conds,
        });
        if patch_status(
            &ctx.client,
            node.as_ref(),
            patch,
            Owns::Conditions(&["ProfileAssigned"]),
        )
        .await?
        {
            let obj = node.object_ref(&());
            if want != current {
                match &want {
                    Some(p) => {
                        tracing::info!(profile = %p, reason, "assigned profile: {msg}");
                        ctx.recorder
                            .publish(
                                &obj,
                                EventType::Normal,
                                "ProfileAssigned",
                                &format!("assigned {p:?}: {msg}"),
                            )
                            .await;
                    }
                    None => {
                        tracing::warn!(reason, previous = ?current, "no profile: {msg}");
                        ctx.recorder
                            .publish(&obj, EventType::Warning, reason, &msg)
                            .await;
                    }
                }
            } else if prev_reason.as_deref() != Some(reason) {
                tracing::info!(reason, "profile condition: {msg}");
                if !ok {
                    ctx.recorder
                        .publish(&obj, EventType::Warning, reason, &msg)
                        .await;
                }
            }
        }
        Ok(Action::AwaitChange)
    }
}

/// Keeps `status.assignedNodes` of each Profile, and `Ready=False` while it ties with
/// another Profile on some Node.
#[derive(Default)]
pub struct ProfileStatusController {
    /// Per Node, a fingerprint of what the status reads of it.
    seen: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl Reconciler for ProfileStatusController {
    type K = Profile;
    const NAME: &'static str = "profile-status";
    // Each pass reads every Node: at most one per second under a stream of changes.
    const COALESCE: std::time::Duration = std::time::Duration::from_secs(1);

    fn watches(kinds: Kinds) -> Kinds {
        kinds.watch::<Node>()
    }

    fn map(&self, change: &Change, c: &Caches) -> Vec<String> {
        let all = || {
            c.store::<Profile>()
                .state()
                .iter()
                .map(|p| p.name_any())
                .collect()
        };
        if let Some(n) = change.get::<Node>() {
            // What is counted: the Nodes' status.profile, and the ties among the Profiles
            // their labels and inventory match.
            let now = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                n.status
                    .as_ref()
                    .and_then(|s| s.profile.clone())
                    .hash(&mut h);
                match_labels(&n).hash(&mut h);
                h.finish()
            };
            let before = self
                .seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(n.name_any(), now);
            if before != Some(now) || n.metadata.deletion_timestamp.is_some() {
                all()
            } else {
                vec![]
            }
        } else if change.is::<Profile>() && change.spec_changed {
            all()
        } else if change.is::<Profile>() {
            vec![change.name().to_string()]
        } else {
            vec![]
        }
    }

    async fn reconcile(&self, profile: Arc<Profile>, ctx: &Ctx) -> Result<Action, Error> {
        let name = profile.name_any();
        let nodes = ctx.caches.store::<Node>().state();
        let profiles = ctx.caches.store::<Profile>().state();
        let assigned = nodes
            .iter()
            .filter(|n| n.status.as_ref().and_then(|s| s.profile.as_deref()) == Some(name.as_str()))
            .count();
        let mut ties = Vec::new();
        for n in &nodes {
            if let Assignment::Ambiguous { profiles: ps, .. } = assign(n, &profiles)
                && ps.contains(&name)
            {
                ties.push(format!(
                    "{} (with {})",
                    n.name_any(),
                    ps.iter()
                        .filter(|p| **p != name)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        let mut conds = profile
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let (ok, reason, msg) = if ties.is_empty() {
            (true, "NoTies", format!("assigned to {assigned} nodes"))
        } else {
            (
                false,
                "Ambiguous",
                format!("ties at the same priority on {}", ties.join("; ")),
            )
        };
        set_condition(
            &mut conds,
            "Ready",
            ok,
            reason,
            &msg,
            profile.metadata.generation,
            jiff::Timestamp::now(),
        );
        let patch = json!({
            "observedGeneration": profile.metadata.generation,
            "assignedNodes": assigned,
            "conditions": conds,
        });
        if patch_status(&ctx.client, profile.as_ref(), patch, Owns::AllConditions).await? {
            tracing::info!(assigned, ties = ties.len(), "profile status updated");
        }
        Ok(Action::AwaitChange)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use groundwork_types::{
        Cpu, HardwareRequirements, Inventory, NodeSpec, NodeStatus, ProfileSpec, SystemInfo,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn profile(
        name: &str,
        priority: i32,
        role: Option<&str>,
        req: Option<HardwareRequirements>,
    ) -> Arc<Profile> {
        let sel = role.map(|r| LabelSelector {
            match_labels: Some([("role".to_string(), r.to_string())].into()),
            ..Default::default()
        });
        Arc::new(Profile::new(
            name,
            ProfileSpec {
                priority,
                selector: sel,
                requires: req,
                ..Default::default()
            },
        ))
    }

    fn node(role: &str, threads: Option<u32>) -> Node {
        let mut n = Node::new("n1", NodeSpec::default());
        n.metadata.labels = Some([("role".to_string(), role.to_string())].into());
        if let Some(t) = threads {
            n.status = Some(NodeStatus {
                inventory: Some(Inventory {
                    system: Some(SystemInfo {
                        vendor: Some("QEMU".into()),
                        ..Default::default()
                    }),
                    cpus: vec![Cpu {
                        threads: Some(t),
                        ..Default::default()
                    }],
                    memory_bytes: Some(8 << 30),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        n
    }

    /// The profile choice as a table: (case, node role, CPU threads if inventoried, spec.profile,
    /// profiles as (name, priority, role selector, min threads), the choice).
    #[test]
    fn the_profile_choice_as_a_table() {
        type P = (&'static str, i32, Option<&'static str>, Option<u32>);
        type Row = (
            &'static str,
            &'static str,
            Option<u32>,
            Option<&'static str>,
            Vec<P>,
            Assignment,
        );
        let m = |p: &str, priority| Assignment::Matched {
            profile: p.into(),
            priority,
        };
        #[rustfmt::skip]
        let rows: Vec<Row> = vec![
            ("no profiles", "worker", None, None, vec![], Assignment::NoMatch { awaiting_inventory: vec![] }),
            ("catch-all", "db", None, None, vec![("any", 0, None, None)], m("any", 0)),
            ("selector beats catch-all by priority", "worker", None, None,
             vec![("any", 0, None, None), ("w", 10, Some("worker"), None)], m("w", 10)),
            ("a higher catch-all wins", "worker", None, None,
             vec![("any", 20, None, None), ("w", 10, Some("worker"), None)], m("any", 20)),
            ("selector does not match", "db", None, None, vec![("w", 10, Some("worker"), None)],
             Assignment::NoMatch { awaiting_inventory: vec![] }),
            ("tie at the top", "worker", None, None,
             vec![("b", 5, Some("worker"), None), ("a", 5, None, None)],
             Assignment::Ambiguous { priority: 5, profiles: vec!["a".into(), "b".into()] }),
            ("a tie below the top does not matter", "worker", None, None,
             vec![("top", 9, None, None), ("b", 5, Some("worker"), None), ("a", 5, None, None)], m("top", 9)),
            ("requirements wait for inventory", "worker", None, None,
             vec![("big", 1, Some("worker"), Some(8))],
             Assignment::NoMatch { awaiting_inventory: vec!["big".into()] }),
            ("requirements met", "worker", Some(16), None, vec![("big", 1, Some("worker"), Some(8))], m("big", 1)),
            ("requirements not met: the next one", "worker", Some(4), None,
             vec![("big", 9, Some("worker"), Some(8)), ("small", 1, Some("worker"), None)], m("small", 1)),
            ("explicit", "db", None, Some("w"), vec![("w", 10, Some("worker"), None)], Assignment::Explicit("w".into())),
            ("explicit, missing", "worker", None, Some("x"), vec![("w", 10, Some("worker"), None)],
             Assignment::ExplicitMissing("x".into())),
        ];
        for (case, role, threads, explicit, ps, want) in rows {
            let ps: Vec<Arc<Profile>> = ps
                .into_iter()
                .map(|(name, priority, sel, min)| {
                    profile(
                        name,
                        priority,
                        sel,
                        min.map(|t| HardwareRequirements {
                            min_cpu_threads: Some(t),
                            ..Default::default()
                        }),
                    )
                })
                .collect();
            let mut n = node(role, threads);
            n.spec.profile = explicit.map(String::from);
            assert_eq!(assign(&n, &ps), want, "{case}");
        }
    }

    #[test]
    fn highest_priority_match_wins() {
        let ps = vec![
            profile("generic", 0, None, None),
            profile("worker", 10, Some("worker"), None),
        ];
        assert_eq!(
            assign(&node("worker", None), &ps),
            Assignment::Matched {
                profile: "worker".into(),
                priority: 10
            }
        );
        assert_eq!(
            assign(&node("db", None), &ps),
            Assignment::Matched {
                profile: "generic".into(),
                priority: 0
            }
        );
    }

    #[test]
    fn ties_are_reported_not_picked() {
        let ps = vec![
            profile("b", 5, Some("worker"), None),
            profile("a", 5, Some("worker"), None),
        ];
        assert_eq!(
            assign(&node("worker", None), &ps),
            Assignment::Ambiguous {
                priority: 5,
                profiles: vec!["a".into(), "b".into()]
            }
        );
    }

    #[test]
    fn explicit_profile_overrides_and_must_exist() {
        let ps = vec![profile("worker", 10, Some("worker"), None)];
        let mut n = node("worker", None);
        n.spec.profile = Some("other".into());
        assert_eq!(assign(&n, &ps), Assignment::ExplicitMissing("other".into()));
        n.spec.profile = Some("worker".into());
        assert_eq!(assign(&n, &ps), Assignment::Explicit("worker".into()));
    }

    #[test]
    fn hardware_requirements_and_inventory_facts() {
        let req = HardwareRequirements {
            min_cpu_threads: Some(8),
            vendor: Some("qemu".into()),
            ..Default::default()
        };
        let ps = vec![profile("big", 1, Some("worker"), Some(req))];
        assert_eq!(
            assign(&node("worker", None), &ps),
            Assignment::NoMatch {
                awaiting_inventory: vec!["big".into()]
            }
        );
        assert!(
            matches!(fit(&ps[0], &node("worker", Some(4))), Fit::Hardware(m) if m.contains("4 CPU threads < 8"))
        );
        assert_eq!(fit(&ps[0], &node("worker", Some(16))), Fit::Yes);
        let labels = match_labels(&node("worker", Some(16)));
        assert_eq!(
            labels
                .get("inventory.groundwork.dev/cpu-threads")
                .map(String::as_str),
            Some("16")
        );
        assert_eq!(
            labels
                .get("inventory.groundwork.dev/memory-gib")
                .map(String::as_str),
            Some("8")
        );
    }
}
