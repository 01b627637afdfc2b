//! Controllers against the real server, through the API only: topology and profile
//! reconciles, idempotency across restarts, resuming after downtime, leader election between
//! processes, and `groundwork logs -f`.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use groundwork_types::{Datacenter, Event, Lease, Node, Profile, Rack};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use support::{Controllers, Server, eventually, ok, write};

const WAIT: Duration = Duration::from_secs(30);

/// (status, reason, message) of a condition.
fn cond(
    conds: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>,
    t: &str,
) -> Option<(String, String, String)> {
    conds?
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn node_cond(c: &Client, name: &str, t: &str) -> Option<(String, String, String)> {
    let n = Api::<Node>::all(c.clone()).get(name).await.ok()?;
    cond(n.status.as_ref().map(|s| &s.conditions), t)
}

async fn rack_cond(c: &Client, name: &str, t: &str) -> Option<(String, String, String)> {
    let r = Api::<Rack>::all(c.clone()).get(name).await.ok()?;
    cond(r.status.as_ref().map(|s| &s.conditions), t)
}

async fn node_profile(c: &Client, name: &str) -> Option<String> {
    Api::<Node>::all(c.clone())
        .get(name)
        .await
        .ok()?
        .status?
        .profile
}

const TOPOLOGY: &str = r#"
apiVersion: groundwork.dev/v1alpha1
kind: Datacenter
metadata: {name: dc1}
spec:
  availabilityZones: [{name: az1}]
  powerBudgetKw: 10
---
apiVersion: groundwork.dev/v1alpha1
kind: Rack
metadata: {name: r1}
spec: {datacenter: dc1, availabilityZone: az1, heightU: 42, powerBudgetKw: 2}
"#;

fn node_yaml(name: &str, rack: &str, pos: u32, h: u32, labels: &str) -> String {
    format!(
        "apiVersion: groundwork.dev/v1alpha1\nkind: Node\nmetadata: {{name: {name}, labels: {{{labels}}}}}\nspec:\n  rack: {{name: {rack}, position: {pos}, heightU: {h}}}\n  powerDrawKw: 0.5\n---\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_nodes_mark_the_rack_and_both_nodes() {
    let s = Server::start_with(&["--controllers", "all"]);
    let c = s.client().await;
    let yaml = format!(
        "{TOPOLOGY}---\n{}{}{}",
        node_yaml("a", "r1", 10, 2, ""),
        node_yaml("b", "r1", 11, 1, ""),
        node_yaml("c", "r1", 20, 1, "")
    );
    let f = write(s.dir.path(), "t.yaml", &yaml);
    ok(s.groundwork(&["apply", "-f", f.to_str().unwrap()]));

    let (_, reason, msg) = eventually(WAIT, "rack overlap condition", || async {
        rack_cond(&c, "r1", "ElevationValid")
            .await
            .filter(|(st, _, _)| st == "False")
    })
    .await;
    assert_eq!(reason, "Overlap");
    assert!(msg.contains("a (U10-U11) and b (U11) share U11"), "{msg}");
    for n in ["a", "b"] {
        let (_, reason, msg) = eventually(WAIT, "node overlap condition", || async {
            node_cond(&c, n, "RackPlacement")
                .await
                .filter(|(st, _, _)| st == "False")
        })
        .await;
        assert_eq!(reason, "Overlap", "{n}: {msg}");
    }
    let (st, reason, _) =
        eventually(WAIT, "c placed", || node_cond(&c, "c", "RackPlacement")).await;
    assert_eq!((st.as_str(), reason.as_str()), ("True", "Placed"));

    // The rack's totals follow once its controller has seen all three Nodes (the overlap
    // may be reported before c reached its cache).
    let racks: Api<Rack> = Api::all(c.clone());
    let st = eventually(WAIT, "rack totals of three nodes", || async {
        racks
            .get("r1")
            .await
            .ok()?
            .status
            .filter(|s| s.elevation.len() == 3)
    })
    .await;
    assert_eq!(st.units_used, Some(3), "U10, U11 (shared), U20");
    assert_eq!(st.units_free, Some(39));
    assert_eq!(st.power_drawn_kw, Some(1.5));
    assert_eq!(st.elevation.len(), 3);
    // An Event says so, on the Rack.
    let events: Api<Event> = Api::namespaced(c.clone(), "default");
    let evs = events
        .list(&ListParams::default().fields("involvedObject.name=r1"))
        .await
        .unwrap();
    assert!(
        evs.items.iter().any(
            |e| e.reason.as_deref() == Some("Overlap") && e.type_.as_deref() == Some("Warning")
        ),
        "{:?}",
        evs.items.iter().map(|e| &e.reason).collect::<Vec<_>>()
    );

    // Move b up one unit: the overlap clears everywhere.
    let nodes: Api<Node> = Api::all(c.clone());
    nodes
        .patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rack": {"name": "r1", "position": 12, "heightU": 1}}})),
        )
        .await
        .unwrap();
    eventually(WAIT, "overlap cleared on the rack", || async {
        rack_cond(&c, "r1", "ElevationValid")
            .await
            .filter(|(st, _, _)| st == "True")
    })
    .await;
    for n in ["a", "b"] {
        eventually(WAIT, "overlap cleared on the node", || async {
            node_cond(&c, n, "RackPlacement")
                .await
                .filter(|(st, _, _)| st == "True")
        })
        .await;
    }
    let units = eventually(WAIT, "units recounted", || async {
        racks
            .get("r1")
            .await
            .ok()?
            .status?
            .units_used
            .filter(|u| *u == 4)
    })
    .await;
    assert_eq!(units, 4);

    // Over the power budget: 5 nodes × 0.5 kW > 2 kW.
    let f = write(
        s.dir.path(),
        "more.yaml",
        &(node_yaml("d", "r1", 30, 1, "") + &node_yaml("e", "r1", 31, 1, "")),
    );
    ok(s.groundwork(&["apply", "-f", f.to_str().unwrap()]));
    let (_, reason, msg) = eventually(WAIT, "over budget", || async {
        rack_cond(&c, "r1", "PowerWithinBudget")
            .await
            .filter(|(st, _, _)| st == "False")
    })
    .await;
    assert_eq!(reason, "OverBudget");
    assert!(msg.contains("2.50 kW of a 2.00 kW"), "{msg}");
    let dc = eventually(WAIT, "datacenter totals", || async {
        Api::<Datacenter>::all(c.clone())
            .get("dc1")
            .await
            .ok()?
            .status
            .filter(|s| s.nodes == Some(5))
    })
    .await;
    assert_eq!(dc.racks, Some(1));
    assert_eq!(dc.units_used, Some(6), "U10-U12, U20, U30, U31");
    assert_eq!(dc.power_used_kw, Some(2.5));
}

const PROFILES: &str = r#"
apiVersion: groundwork.dev/v1alpha1
kind: Profile
metadata: {name: small}
spec:
  priority: 10
  selector: {matchLabels: {role: worker}}
---
apiVersion: groundwork.dev/v1alpha1
kind: Profile
metadata: {name: big}
spec:
  priority: 5
  selector:
    matchExpressions: [{key: role, operator: In, values: [worker, db]}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_selectors_assign_reassign_and_report_ties() {
    let s = Server::start_with(&["--controllers", "all"]);
    let c = s.client().await;
    let yaml = format!(
        "{TOPOLOGY}---\n{PROFILES}---\n{}{}",
        node_yaml("w1", "r1", 1, 1, "role: worker"),
        node_yaml("d1", "r1", 2, 1, "role: db")
    );
    let f = write(s.dir.path(), "t.yaml", &yaml);
    ok(s.groundwork(&["apply", "-f", f.to_str().unwrap()]));
    let want = |n: &'static str, p: &'static str| {
        let c = c.clone();
        async move {
            eventually(WAIT, &format!("{n} → {p}"), || async {
                node_profile(&c, n).await.filter(|x| x == p)
            })
            .await
        }
    };
    want("w1", "small").await;
    want("d1", "big").await;

    // Raise big's priority: w1 moves to it.
    let profiles: Api<Profile> = Api::all(c.clone());
    profiles
        .patch(
            "big",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"priority": 20}})),
        )
        .await
        .unwrap();
    want("w1", "big").await;
    let assigned = eventually(WAIT, "big counts 2 nodes", || async {
        profiles
            .get("big")
            .await
            .ok()?
            .status?
            .assigned_nodes
            .filter(|n| *n == 2)
    })
    .await;
    assert_eq!(assigned, 2);

    // Change small's selector to db and give it the same priority as big: a tie on d1, which
    // is a condition on the Node and on both Profiles, and no silent pick.
    profiles
        .patch(
            "small",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"priority": 20, "selector": {"matchLabels": {"role": "db"}}}}),
            ),
        )
        .await
        .unwrap();
    let (_, reason, msg) = eventually(WAIT, "d1 ambiguous", || async {
        node_cond(&c, "d1", "ProfileAssigned")
            .await
            .filter(|(st, _, _)| st == "False")
    })
    .await;
    assert_eq!(reason, "Ambiguous");
    assert!(msg.contains("big, small"), "{msg}");
    assert_eq!(
        node_profile(&c, "d1").await,
        None,
        "ties are never silently picked"
    );
    for p in ["small", "big"] {
        let (_, reason, msg) = eventually(WAIT, "profile tie condition", || async {
            let pr = profiles.get(p).await.ok()?;
            cond(pr.status.as_ref().map(|s| &s.conditions), "Ready")
                .filter(|(st, _, _)| st == "False")
        })
        .await;
        assert_eq!(reason, "Ambiguous");
        assert!(msg.contains("d1"), "{msg}");
    }
    // w1 (worker) still matches big only.
    want("w1", "big").await;

    // Resolve the tie by priority.
    profiles
        .patch(
            "small",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"priority": 30}})),
        )
        .await
        .unwrap();
    want("d1", "small").await;
    let (st, reason, _) = eventually(WAIT, "d1 matched", || async {
        node_cond(&c, "d1", "ProfileAssigned")
            .await
            .filter(|(st, _, _)| st == "True")
    })
    .await;
    assert_eq!((st.as_str(), reason.as_str()), ("True", "Matched"));

    // An explicit profile that does not exist is a condition too.
    Api::<Node>::all(c.clone())
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"profile": "nope"}})),
        )
        .await
        .unwrap();
    let (_, reason, _) = eventually(WAIT, "w1 explicit missing", || async {
        node_cond(&c, "w1", "ProfileAssigned")
            .await
            .filter(|(st, _, _)| st == "False")
    })
    .await;
    assert_eq!(reason, "ProfileNotFound");
}

/// name → resourceVersion of every Groundwork object.
async fn versions(c: &Client) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    macro_rules! all {
        ($t:ty, $k:literal) => {
            for o in Api::<$t>::all(c.clone())
                .list(&ListParams::default())
                .await
                .unwrap()
            {
                out.insert(
                    format!("{}/{}", $k, o.name_any()),
                    o.resource_version().unwrap(),
                );
            }
        };
    }
    all!(Datacenter, "datacenter");
    all!(Rack, "rack");
    all!(Node, "node");
    all!(Profile, "profile");
    out
}

async fn holders(c: &Client) -> BTreeMap<String, String> {
    Api::<Lease>::namespaced(c.clone(), "groundwork-system")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|l| {
            let h = l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
            (l.metadata.name.unwrap_or_default(), h)
        })
        .collect()
}

async fn all_held_by(c: &Client, id: &str) -> bool {
    let h = holders(c).await;
    h.len() == groundwork_controller_names().len() && h.values().all(|v| v == id)
}

fn groundwork_controller_names() -> Vec<&'static str> {
    groundwork_controller::all()
}

/// Waits until nothing has been written for `quiet` (the controllers have settled).
async fn settle(c: &Client, quiet: Duration) -> BTreeMap<String, String> {
    let mut last = versions(c).await;
    let mut since = Instant::now();
    let deadline = Instant::now() + WAIT;
    while since.elapsed() < quiet {
        assert!(Instant::now() < deadline, "controllers did not settle");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = versions(c).await;
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_are_idempotent_and_resume_without_missing_changes() {
    let s = Server::start();
    let c = s.client().await;
    let lease = ["--lease-duration-seconds", "2"];
    let mut one = Controllers::start(&s, "one", &lease);
    ok(s.groundwork(&["apply", "-f", support::manifests().to_str().unwrap()]));
    eventually(WAIT, "server-4 assigned", || async {
        node_profile(&c, "server-4").await.filter(|p| p == "worker")
    })
    .await;
    eventually(WAIT, "leases held by one", || async {
        all_held_by(&c, "one").await.then_some(())
    })
    .await;
    let before = settle(&c, Duration::from_millis(1500)).await;

    // A clean stop releases the leases; a new process takes over at once and, reconciling
    // everything from scratch, writes nothing: reconciles are idempotent.
    one.stop();
    let two_started = Instant::now();
    let mut two = Controllers::start(&s, "two", &lease);
    eventually(WAIT, "leases held by two", || async {
        all_held_by(&c, "two").await.then_some(())
    })
    .await;
    eventually(WAIT, "two synced", || async {
        (two.log().matches("caches synced").count() == groundwork_controller::all().len())
            .then_some(())
    })
    .await;
    let after = settle(&c, Duration::from_millis(1500)).await;
    assert_eq!(before, after, "a full resync must not write anything");
    eprintln!("takeover after a clean stop: {:?}", two_started.elapsed());

    // Changes while no controller runs are picked up by the next one.
    two.kill();
    Api::<Node>::all(c.clone())
        .patch(
            "server-2",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"rack": {"name": "rack-a1", "position": 1, "heightU": 1}}}),
            ),
        )
        .await
        .unwrap();
    let _three = Controllers::start(&s, "three", &lease);
    for n in ["server-1", "server-2"] {
        let (_, reason, _) = eventually(WAIT, "overlap seen after restart", || async {
            node_cond(&c, n, "RackPlacement")
                .await
                .filter(|(st, _, _)| st == "False")
        })
        .await;
        assert_eq!(reason, "Overlap");
    }
    let l = Api::<Lease>::namespaced(c.clone(), "groundwork-system")
        .get("rack")
        .await
        .unwrap();
    let spec = l.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("three"));
    assert!(spec.lease_transitions.unwrap_or(0) >= 2, "{spec:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_instance_acts_and_another_takes_over_when_it_dies() {
    let s = Server::start();
    let c = s.client().await;
    let lease = ["--lease-duration-seconds", "2"];
    let mut a = Controllers::start(&s, "a", &lease);
    let mut b = Controllers::start(&s, "b", &lease);
    ok(s.groundwork(&["apply", "-f", support::manifests().to_str().unwrap()]));
    let held = eventually(WAIT, "every lease held", || async {
        let h = holders(&c).await;
        (h.len() == groundwork_controller::all().len() && h.values().all(|v| v == "a" || v == "b"))
            .then_some(h)
    })
    .await;
    eventually(WAIT, "rack reconciled", || async {
        Api::<Rack>::all(c.clone())
            .get("rack-a1")
            .await
            .ok()?
            .status?
            .units_used
            .filter(|u| *u == 4)
    })
    .await;
    settle(&c, Duration::from_millis(1000)).await;
    // Only the holder of a controller's lease reconciles for it.
    for (ctl, holder) in &held {
        let (mine, other) = if holder == "a" { (&a, &b) } else { (&b, &a) };
        let needle = format!("reconcile{{controller=\"{ctl}\"");
        assert!(
            !other.log().contains(&needle),
            "{ctl} is held by {holder}, yet the other instance reconciled"
        );
        let _ = mine;
    }
    // SIGKILL the holder of the rack lease; the other takes over and acts.
    let rack_holder = held["rack"].clone();
    let survivor = if rack_holder == "a" { "b" } else { "a" };
    let t = Instant::now();
    if rack_holder == "a" {
        a.kill();
    } else {
        b.kill();
    }
    let f = write(
        s.dir.path(),
        "n5.yaml",
        &node_yaml("server-5", "rack-a1", 30, 2, ""),
    );
    ok(s.groundwork(&["apply", "-f", f.to_str().unwrap()]));
    eventually(WAIT, "survivor updates the rack", || async {
        Api::<Rack>::all(c.clone())
            .get("rack-a1")
            .await
            .ok()?
            .status?
            .units_used
            .filter(|u| *u == 6)
    })
    .await;
    let took = t.elapsed();
    // The dead instance's other Leases expire on their own schedules.
    eventually(WAIT, "every lease held by the survivor", || async {
        holders(&c)
            .await
            .values()
            .all(|v| v == survivor)
            .then_some(())
    })
    .await;
    eprintln!("takeover after SIGKILL of the holder: {took:?} (lease 2 s)");
    assert!(took < Duration::from_secs(15), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_shows_a_line_within_a_second_of_the_controller_acting() {
    let s = Server::start_with(&["--controllers", "all"]);
    let c = s.client().await;
    let yaml = format!(
        "{TOPOLOGY}---\n{}{}",
        node_yaml("n0", "r1", 5, 1, ""),
        node_yaml("n1", "r1", 7, 1, "")
    );
    let f = write(s.dir.path(), "t.yaml", &yaml);
    ok(s.groundwork(&["apply", "-f", f.to_str().unwrap()]));
    eventually(WAIT, "n1 placed", || async {
        node_cond(&c, "n1", "RackPlacement")
            .await
            .filter(|(st, _, _)| st == "True")
    })
    .await;
    // Without -f: the lines so far, and nothing about other objects.
    let out = ok(s.groundwork(&["logs", "node/n1"]));
    assert!(
        out.contains("node-placement: placement: U7 in rack r1"),
        "{out}"
    );
    assert!(!out.contains("U5"), "{out}");
    let missing = s.groundwork(&["logs", "node/nope"]);
    assert!(!missing.status.success());
    assert!(
        support::text(&missing).contains("NotFound"),
        "{}",
        support::text(&missing)
    );

    let child = std::process::Command::new(support::BIN)
        .args(["logs", "node/n1", "-f"])
        .env("KUBECONFIG", &s.kubeconfig)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let bg = support::Bg::from_child(child);
    assert!(
        bg.wait_line("U7 in rack r1", Duration::from_secs(10))
            .is_some(),
        "backlog first"
    );
    // Move n1 onto n0: the placement controller acts on n1.
    Api::<Node>::all(c.clone())
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rack": {"name": "r1", "position": 5, "heightU": 1}}})),
        )
        .await
        .unwrap();
    let line = bg
        .wait_line("overlaps n0", Duration::from_secs(10))
        .expect("a line about the overlap");
    let seen = jiff::Timestamp::now();
    let logged: jiff::Timestamp = line
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .expect("line starts with a timestamp");
    let lag = seen.duration_since(logged);
    eprintln!("log line shown {lag:?} after the controller wrote it: {line}");
    assert!(lag < jiff::SignedDuration::from_secs(1), "{lag:?}: {line}");
}
