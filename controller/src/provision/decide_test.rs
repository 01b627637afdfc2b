//! Table tests of the provisioning decision: each row is a Node (and its Profile) as observed
//! at a fixed time, and the plan in one line.

use super::*;
use groundwork_types::{Node, Profile};
use serde_json::{Value, json};

const NOW: &str = "2026-01-01T01:00:00Z";

/// `secs` seconds before NOW.
fn ago(secs: i64) -> String {
    let now: Timestamp = NOW.parse().unwrap();
    (now - jiff::SignedDuration::from_secs(secs)).to_string()
}

/// The defaults: the rows' times (600 s to discover, 20 s of grace, ...) are theirs.
fn timing() -> Timing {
    Timing::default()
}

const BMC: &str = r#"{"address": "10.0.0.9", "protocol": "ipmi", "credentialsRef": "c"}"#;

fn node(spec: Value, status: Value) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "groundwork.dev/v1alpha1", "kind": "Node",
        "metadata": {"name": "n1", "generation": 2,
                     "annotations": {"groundwork.dev/retry": "r2"}},
        "spec": spec, "status": status,
    }))
    .unwrap()
}

fn profile(os: bool) -> Profile {
    let mut spec = json!({});
    if os {
        spec["os"] = json!({"url": "http://u:pw@img/os.img?sig=1", "checksum": "sha256:ab"});
    }
    serde_json::from_value(json!({
        "apiVersion": "groundwork.dev/v1alpha1", "kind": "Profile",
        "metadata": {"name": "p1", "generation": 7}, "spec": spec,
    }))
    .unwrap()
}

/// The plan in one line: `enter PHASE#ATTEMPT INTENT REASON ok|warn then`, `cond REASON
/// ok|false then`, `agent fresh|stale then`, `wait then`.
fn line(p: &Plan) -> String {
    let then = |a: &Action| match a {
        Action::AwaitChange => "await".to_string(),
        Action::Requeue(d) => format!("{}s", d.as_secs()),
    };
    match p {
        Plan::Wait(a) => format!("wait {}", then(a)),
        Plan::Condition {
            ok,
            reason,
            then: a,
            ..
        } => format!("cond {reason} {ok} {}", then(a)),
        Plan::Enter { to, then: a } => format!(
            "enter {:?}#{} {} {} {} {}",
            to.phase,
            to.attempt,
            to.intent.map(|i| format!("{i:?}")).unwrap_or("-".into()),
            to.reason,
            if to.ok { "ok" } else { "warn" },
            then(a)
        ),
        Plan::AgentReady { fresh, then: a, .. } => format!(
            "agent {} {}",
            if *fresh { "fresh" } else { "stale" },
            then(a)
        ),
    }
}

fn report(task: &str, id: &str, state: &str, reason: Option<&str>) -> Value {
    json!({"task": task, "attempt": 1, "taskId": id, "state": state, "reason": reason, "at": ago(10)})
}

#[test]
fn every_phase_decides_as_its_table_says() {
    let bmc: Value = serde_json::from_str(BMC).unwrap();
    let want = json!({"bmc": bmc, "provisioning": "Provisioned"});
    let prov = |phase: &str, extra: Value| {
        let mut p = json!({"attempt": 1, "phaseSince": ago(30), "taskId": "t1"});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        json!({"phase": phase, "profile": "p1", "provisioning": p})
    };
    let down = json!({"lastBmcError": "BMC: power status: no answer in 10s",
        "conditions": [{"type": "BmcReachable", "status": "False", "reason": "Timeout",
                        "message": "m", "lastTransitionTime": ago(5)}]});
    #[rustfmt::skip]
    let rows: Vec<(&str, Node, Option<Profile>, &str)> = vec![
        ("new, BMC", node(json!({"bmc": bmc}), json!({})), None,
         "enter Discovering#1 Pxe Discovering ok 600s"),
        ("new, no BMC", node(json!({}), json!({})), None,
         "enter Registered#1 - Registered ok await"),
        ("registered, no BMC", node(json!({}), json!({"phase": "Registered"})), None, "wait await"),
        ("new, external", node(json!({"provisioning": "External"}), json!({})), None,
         "enter Provisioned#1 - Provisioned ok await"),
        ("new, external, with a BMC: never powered", node(json!({"bmc": bmc, "provisioning": "External"}), json!({})), None,
         "enter Provisioned#1 - Provisioned ok await"),
        ("external, no check-in yet: no timeout", node(json!({"provisioning": "External"}), prov("Provisioned", json!({"phaseSince": ago(100000)}))), None,
         "wait await"),
        ("external, checked in", node(json!({"provisioning": "External"}), prov("Provisioned", json!({"lastHeartbeat": ago(1)}))), None,
         "enter Ready#1 - Ready ok 90s"),
        ("external, Ready: never wiped", node(json!({"provisioning": "External"}), prov("Ready", json!({"lastHeartbeat": ago(1)}))), None,
         "agent fresh 90s"),
        ("registered, online false", node(json!({"bmc": bmc, "online": false}), json!({"phase": "Registered"})), None,
         "cond PoweredOffBySpec false await"),
        ("maintenance", node(json!({"bmc": bmc, "maintenance": true}), json!({})), None, "wait await"),
        ("pending, BMC removed: the phase goes on", node(json!({"provisioning": "Provisioned"}), prov("Discovering", json!({"powerPending": "Pxe"}))), None,
         "wait await"),
        ("pending, BMC removed, inventoried", node(json!({"provisioning": "Provisioned"}), prov("Inventoried", json!({"powerPending": "Pxe"}))), Some(profile(true)),
         "enter Provisioning#1 - Provisioning ok 20s"),
        ("pending, BMC fine", node(want.clone(), prov("Discovering", json!({"powerPending": "Pxe"}))), None, "wait await"),
        ("pending, BMC down", node(want.clone(), {
            let mut s = prov("Discovering", json!({"powerPending": "Pxe"}));
            s["lastBmcError"] = down["lastBmcError"].clone();
            s["conditions"] = down["conditions"].clone();
            s
        }), None, "cond BmcTimeout false await"),
        ("pending, online false", node(json!({"bmc": bmc, "online": false}), prov("Discovering", json!({"powerPending": "Pxe"}))), None,
         "cond PoweredOffBySpec false await"),
        ("pending off, online false", node(json!({"bmc": bmc, "online": false}), prov("Inventoried", json!({"powerPending": "Off"}))), None,
         "wait await"),
        ("discovering, in time", node(want.clone(), prov("Discovering", json!({}))), None, "wait 570s"),
        ("discovering, clock from the power action", node(want.clone(), prov("Discovering", json!({"phaseSince": ago(900), "powerDoneAt": ago(100)}))), None,
         "wait 500s"),
        ("discovering, no PXE", node(want.clone(), prov("Discovering", json!({"phaseSince": ago(700)}))), None,
         "enter Discovering#2 Pxe NoPxeBoot warn 600s"),
        ("discovering, script but no inventory", node(want.clone(), prov("Discovering", json!({"phaseSince": ago(700), "lastBootContact": ago(600)}))), None,
         "enter Discovering#2 Pxe NoInventory warn 600s"),
        ("discovering, last attempt", node(want.clone(), prov("Discovering", json!({"phaseSince": ago(700), "attempt": 3}))), None,
         "enter Failed#1 - NoPxeBoot warn 1800s"),
        ("inventoried, no profile", node(want.clone(), json!({"phase": "Inventoried"})), None,
         "cond NoProfile false await"),
        ("inventoried, profile without image", node(want.clone(), prov("Inventoried", json!({}))), Some(profile(false)),
         "cond NoImage false await"),
        ("inventoried, install", node(want.clone(), prov("Assigned", json!({}))), Some(profile(true)),
         "enter Provisioning#1 - Provisioning ok 20s"),
        ("inventoried, available", node(json!({"bmc": bmc, "provisioning": "Available"}), prov("Inventoried", json!({}))), None,
         "cond Available false await"),
        ("inventoried, deprovisioned, left on", node(json!({"bmc": bmc, "provisioning": "Deprovisioned", "online": true}), prov("Inventoried", json!({}))), None,
         "cond LeftOnBySpec false await"),
        ("inventoried, deprovisioned", node(json!({"bmc": bmc, "provisioning": "Deprovisioned"}), prov("Inventoried", json!({}))), None,
         "enter Inventoried#1 Off PoweredOff ok await"),
        ("provisioning, waiting for the ramdisk", node(want.clone(), prov("Provisioning", json!({"phaseSince": ago(5)}))), Some(profile(true)),
         "wait 15s"),
        ("provisioning, no ramdisk took it", node(want.clone(), prov("Provisioning", json!({}))), Some(profile(true)),
         "enter Provisioning#2 Pxe NoAgent warn 600s"),
        ("provisioning, installed", node(want.clone(), prov("Provisioning", json!({"report": report("install", "t1", "Succeeded", None)}))), Some(profile(true)),
         "enter Provisioned#1 Disk Provisioned ok 600s"),
        ("provisioning, a stale report", node(want.clone(), prov("Provisioning", json!({"phaseSince": ago(5), "report": report("install", "t0", "Succeeded", None)}))), Some(profile(true)),
         "wait 15s"),
        ("provisioning, install failed", node(want.clone(), prov("Provisioning", json!({"report": report("install", "t1", "Failed", Some("DiskWriteFailed"))}))), Some(profile(true)),
         "enter Provisioning#2 Pxe DiskWriteFailed warn 600s"),
        ("provisioning, wrong checksum", node(want.clone(), prov("Provisioning", json!({"report": report("install", "t1", "Failed", Some("ImageChecksumMismatch"))}))), Some(profile(true)),
         "enter Failed#1 - ImageChecksumMismatch warn 1800s"),
        ("provisioning, running", node(want.clone(), prov("Provisioning", json!({"report": report("install", "t1", "Started", None)}))), Some(profile(true)),
         "wait 3590s"),
        ("provisioning, no longer wanted", node(json!({"bmc": bmc, "provisioning": "Available"}), prov("Provisioning", json!({}))), None,
         "enter Deprovisioning#1 Pxe Deprovisioning ok 600s"),
        ("deprovisioning, wiped, off", node(json!({"bmc": bmc, "provisioning": "Deprovisioned"}), prov("Deprovisioning", json!({"report": report("wipe", "t1", "Succeeded", None)}))), None,
         "enter Inventoried#1 Off PoweredOff ok await"),
        ("deprovisioning, wiped, available", node(json!({"bmc": bmc, "provisioning": "Available"}), prov("Deprovisioning", json!({"report": report("wipe", "t1", "Succeeded", None)}))), None,
         "enter Inventoried#1 - Inventoried ok await"),
        ("provisioned, checked in", node(want.clone(), prov("Provisioned", json!({"lastHeartbeat": ago(1)}))), Some(profile(true)),
         "enter Ready#1 - Ready ok 90s"),
        ("provisioned, never checked in", node(want.clone(), prov("Provisioned", json!({"phaseSince": ago(700)}))), Some(profile(true)),
         "enter Provisioned#2 Disk NeverCheckedIn warn 600s"),
        ("provisioned, no BMC: the agent reboots", node(json!({"provisioning": "Provisioned"}), prov("Provisioned", json!({"phaseSince": ago(700)}))), Some(profile(true)),
         "enter Provisioned#2 - NeverCheckedIn warn 600s"),
        ("ready, heartbeating", node(want.clone(), prov("Ready", json!({"lastHeartbeat": ago(10)}))), Some(profile(true)),
         "agent fresh 81s"),
        ("ready, silent", node(want.clone(), prov("Ready", json!({"lastHeartbeat": ago(300)}))), Some(profile(true)),
         "agent stale 90s"),
        ("ready, deprovision", node(json!({"bmc": bmc, "provisioning": "Deprovisioned"}), prov("Ready", json!({}))), None,
         "enter Deprovisioning#1 Pxe Deprovisioning ok 600s"),
        ("failed, waiting", node(want.clone(), prov("Failed", json!({"failedIn": "Discovering", "failedGeneration": 2, "retryObserved": "r2"}))), None,
         "wait 1770s"),
        ("failed, retry asked", node(want.clone(), prov("Failed", json!({"failedIn": "Discovering", "failedGeneration": 2, "retryObserved": "r1"}))), None,
         "enter Discovering#1 Pxe Discovering ok 600s"),
        ("failed, the Node changed", node(want.clone(), prov("Failed", json!({"failedIn": "Provisioned", "failedGeneration": 1, "retryObserved": "r2"}))), Some(profile(true)),
         "enter Provisioned#1 Disk Provisioned ok 600s"),
        ("failed, the Profile changed", node(want.clone(), prov("Failed", json!({"failedIn": "Provisioning", "failedGeneration": 2, "retryObserved": "r2", "profileGeneration": 6}))), Some(profile(true)),
         "enter Provisioning#1 - Provisioning ok 20s"),
        ("failed, interval passed, wipe again", node(json!({"bmc": bmc, "provisioning": "Available"}), prov("Failed", json!({"phaseSince": ago(2000), "failedIn": "Deprovisioning", "failedGeneration": 2, "retryObserved": "r2"}))), None,
         "enter Deprovisioning#1 Pxe Deprovisioning ok 600s"),
    ];
    let t = timing();
    let mut wrong = Vec::new();
    for (name, n, p, want) in &rows {
        let o = Observed {
            node: n,
            profile: p.as_ref(),
            now: NOW.parse().unwrap(),
            timing: &t,
        };
        let got = line(&decide(&o));
        if got != *want {
            wrong.push(format!("{name}:\n  want {want}\n  got  {got}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn transitions_carry_what_the_next_phase_needs_and_no_secret() {
    let bmc: Value = serde_json::from_str(BMC).unwrap();
    let t = timing();
    let n = node(
        json!({"bmc": bmc, "provisioning": "Provisioned"}),
        json!({"phase": "Inventoried", "profile": "p1"}),
    );
    let p = profile(true);
    let o = Observed {
        node: &n,
        profile: Some(&p),
        now: NOW.parse().unwrap(),
        timing: &t,
    };
    let Plan::Enter { to, .. } = decide(&o) else {
        panic!("not a transition")
    };
    assert_eq!(to.carry, json!({"profileGeneration": 7}));
    // The image URL's user, password and query are not in the message (nor the Event).
    assert_eq!(to.message, "installing Profile p1 (http://img/os.img)");

    let n = node(
        json!({"bmc": bmc, "provisioning": "Provisioned"}),
        json!({"phase": "Discovering", "provisioning": {"attempt": 3, "phaseSince": ago(700)}}),
    );
    let o = Observed {
        node: &n,
        profile: None,
        now: NOW.parse().unwrap(),
        timing: &t,
    };
    let Plan::Enter { to, .. } = decide(&o) else {
        panic!("not a transition")
    };
    assert_eq!(
        to.carry,
        json!({"failedIn": "Discovering", "failureReason": "NoPxeBoot", "failedGeneration": 2})
    );
    assert!(to.message.ends_with("(after 3 attempts)"), "{}", to.message);
}
