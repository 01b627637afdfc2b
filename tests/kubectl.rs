//! Real kubectl against a real server process: the foundation's acceptance list.

mod support;

use std::time::Duration;

use groundwork_types::Node;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::*;

#[test]
fn apply_manifests_twice_then_get_and_describe() {
    let s = Server::start();
    let m = manifests();
    let first = ok(s.kubectl(&["apply", "-f", m.to_str().unwrap()]));
    assert_eq!(first.matches(" created").count(), 10, "{first}");
    let second = ok(s.kubectl(&["apply", "-f", m.to_str().unwrap()]));
    assert_eq!(
        second.matches(" unchanged").count(),
        10,
        "second apply changed something:\n{second}"
    );
    // Our own CLI agrees that nothing changed (same last-applied annotation as kubectl).
    let ours = ok(s.groundwork(&["apply", "-f", m.to_str().unwrap()]));
    assert_eq!(ours.matches(" unchanged").count(), 10, "{ours}");

    let yaml = ok(s.kubectl(&["get", "nodes.groundwork.dev", "-o", "yaml"]));
    for n in ["server-1", "server-2", "server-3", "server-4"] {
        assert!(yaml.contains(&format!("name: {n}")), "{yaml}");
    }
    let table = ok(s.kubectl(&["get", "nodes.groundwork.dev"]));
    let header = table.lines().next().unwrap();
    for col in ["NAME", "PHASE", "POWER", "RACK", "PROFILE", "AGE"] {
        assert!(header.contains(col), "missing column {col}: {table}");
    }
    assert!(table.contains("rack-a1"), "{table}");
    let described = ok(s.kubectl(&["describe", "nodes.groundwork.dev", "server-1"]));
    assert!(
        described.contains("server-1") && described.contains("Events:"),
        "{described}"
    );
    let explained = ok(s.kubectl(&["explain", "racks.spec.heightU"]));
    assert!(explained.contains("heightU"), "{explained}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_sees_status_written_by_another_client_and_wait_returns() {
    let s = Server::start();
    ok(s.kubectl(&["apply", "-f", manifests().to_str().unwrap()]));
    let watch = s.kubectl_bg(&["get", "nodes.groundwork.dev", "server-2", "-w"]);
    assert!(
        watch
            .wait_line("server-2", Duration::from_secs(15))
            .is_some(),
        "initial row"
    );
    let mut wait = s.kubectl_bg(&[
        "wait",
        "--for=condition=Inventoried",
        "nodes.groundwork.dev/server-2",
        "--timeout=30s",
    ]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        wait.wait_exit(Duration::from_millis(10)).is_none(),
        "wait returned before the condition was set"
    );

    let nodes: kube::Api<Node> = kube::Api::all(s.client().await);
    let status = json!({"status": {"phase": "Inventoried", "power": "On", "conditions": [{
        "type": "Inventoried", "status": "True", "reason": "AgentReported", "message": "inventory received",
        "lastTransitionTime": "2026-11-24T00:00:00Z"}]}});
    nodes
        .patch_status("server-2", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch_status");

    let line = watch.wait_line("Inventoried", Duration::from_secs(15));
    assert!(
        line.is_some(),
        "kubectl get -w did not show the status change"
    );
    let st = wait
        .wait_exit(Duration::from_secs(20))
        .expect("kubectl wait did not return");
    assert!(st.success(), "kubectl wait failed: {}", wait.stderr());

    // Status writes do not bump generation; spec writes do.
    let n = nodes.get("server-2").await.unwrap();
    assert_eq!(n.metadata.generation, Some(1));
    nodes
        .patch(
            "server-2",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"online": false}})),
        )
        .await
        .unwrap();
    let n = nodes.get("server-2").await.unwrap();
    assert_eq!(n.metadata.generation, Some(2));
    assert_eq!(
        n.status.unwrap().phase,
        Some(groundwork_types::NodePhase::Inventoried),
        "spec writes keep status"
    );
}

#[test]
fn edit_with_a_scripted_editor() {
    let s = Server::start();
    ok(s.kubectl(&[
        "apply",
        "-f",
        manifests().join("10-rack.yaml").to_str().unwrap(),
    ]));
    let editor = write(
        s.dir.path(),
        "editor.sh",
        "#!/bin/sh\nsed -i 's/heightU: 42/heightU: 40/' \"$1\"\n",
    );
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = s.kubectl_env(
        &["edit", "racks.groundwork.dev", "rack-a1"],
        &[("KUBE_EDITOR", editor.to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("edited"), "{}", text(&out));
    let got = ok(s.kubectl(&[
        "get",
        "racks.groundwork.dev",
        "rack-a1",
        "-o",
        "jsonpath={.spec.heightU} {.metadata.generation}",
    ]));
    assert_eq!(got, "40 2");
}

#[test]
fn delete_waits_for_finalizers() {
    let s = Server::start();
    ok(s.kubectl(&[
        "apply",
        "-f",
        manifests().join("10-rack.yaml").to_str().unwrap(),
    ]));
    ok(s.kubectl(&[
        "patch",
        "racks.groundwork.dev",
        "rack-a1",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"finalizers":["groundwork.dev/test"]}}"#,
    ]));
    let mut del = s.kubectl_bg(&["delete", "racks.groundwork.dev", "rack-a1", "--timeout=60s"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        del.wait_exit(Duration::from_millis(10)).is_none(),
        "delete returned while a finalizer remained"
    );
    let ts = ok(s.kubectl(&[
        "get",
        "racks.groundwork.dev",
        "rack-a1",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ]));
    assert!(!ts.is_empty(), "deletionTimestamp not set");
    // No new finalizers once deleting.
    let add = s.kubectl(&[
        "patch",
        "racks.groundwork.dev",
        "rack-a1",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"finalizers":["groundwork.dev/test","x/y"]}}"#,
    ]);
    assert!(
        !add.status.success() && text(&add).contains("no new finalizers"),
        "{}",
        text(&add)
    );
    ok(s.kubectl(&[
        "patch",
        "racks.groundwork.dev",
        "rack-a1",
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]));
    let st = del
        .wait_exit(Duration::from_secs(30))
        .expect("delete did not return after the finalizer was removed");
    assert!(st.success(), "{}", del.stderr());
    let gone = s.kubectl(&["get", "racks.groundwork.dev", "rack-a1"]);
    assert!(text(&gone).contains("NotFound"), "{}", text(&gone));
}

#[test]
fn stale_update_gets_409() {
    let s = Server::start();
    ok(s.kubectl(&[
        "apply",
        "-f",
        manifests().join("10-rack.yaml").to_str().unwrap(),
    ]));
    let stale = ok(s.kubectl(&["get", "racks.groundwork.dev", "rack-a1", "-o", "json"]));
    ok(s.kubectl(&[
        "patch",
        "racks.groundwork.dev",
        "rack-a1",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"heightU":44}}"#,
    ]));
    let f = write(
        s.dir.path(),
        "stale.json",
        &stale.replace("\"heightU\": 42", "\"heightU\": 45"),
    );
    let out = s.kubectl(&["replace", "-f", f.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("Conflict") && text(&out).contains("has been modified"),
        "{}",
        text(&out)
    );
    let got = ok(s.kubectl(&[
        "get",
        "racks.groundwork.dev",
        "rack-a1",
        "-o",
        "jsonpath={.spec.heightU}",
    ]));
    assert_eq!(got, "44");
}

#[test]
fn invalid_manifests_name_the_field_and_store_nothing() {
    let s = Server::start();
    ok(s.kubectl(&[
        "apply",
        "-f",
        manifests().join("10-rack.yaml").to_str().unwrap(),
    ]));
    let before = ok(s.kubectl(&["get", "--raw", "/apis/groundwork.dev/v1alpha1/nodes"]));
    let cases = [
        (
            "bad-mac",
            "spec:\n  bootMACs: [\"52:54:00:zz:00:01\"]\n",
            "spec.bootMACs[0]",
        ),
        (
            "unknown",
            "spec:\n  bogus: 1\n",
            "unknown field \"spec.bogus\"",
        ),
        (
            "wrong-type",
            "spec:\n  rack: {name: rack-a1, position: first}\n",
            "spec.rack.position",
        ),
        (
            "too-high",
            "spec:\n  rack: {name: rack-a1, position: 42, heightU: 2}\n",
            "spec.rack.position",
        ),
        ("Bad_Name", "spec: {}\n", "metadata.name"),
    ];
    for (name, body, needle) in cases {
        let f = write(
            s.dir.path(),
            "bad.yaml",
            &format!(
                "apiVersion: groundwork.dev/v1alpha1\nkind: Node\nmetadata:\n  name: {name}\n{body}"
            ),
        );
        let out = s.kubectl(&["apply", "-f", f.to_str().unwrap()]);
        assert!(!out.status.success(), "{name} was accepted");
        assert!(
            text(&out).contains(needle),
            "{name}: error does not name {needle}: {}",
            text(&out)
        );
    }
    let malformed = write(
        s.dir.path(),
        "malformed.yaml",
        "apiVersion: groundwork.dev/v1alpha1\nkind: Node\nmetadata: {name: x\n",
    );
    assert!(
        !s.kubectl(&["apply", "-f", malformed.to_str().unwrap()])
            .status
            .success()
    );
    let after = ok(s.kubectl(&["get", "--raw", "/apis/groundwork.dev/v1alpha1/nodes"]));
    assert_eq!(before, after, "a rejected write changed the store");
    // The Status object carries the field in details.causes.
    let f = write(
        s.dir.path(),
        "bad.json",
        r#"{"apiVersion":"groundwork.dev/v1alpha1","kind":"Node","metadata":{"name":"n"},"spec":{"bootMACs":["nope"]}}"#,
    );
    let out = s.kubectl(&["create", "-f", f.to_str().unwrap(), "-v=8"]);
    assert!(
        text(&out).contains(r#"field\":\"spec.bootMACs[0]"#),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_show_in_describe_and_in_the_cli() {
    let s = Server::start();
    ok(s.kubectl(&[
        "apply",
        "-f",
        manifests().join("30-nodes.yaml").to_str().unwrap(),
    ]));
    let client = s.client().await;
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let uid = nodes.get("server-1").await.unwrap().metadata.uid.unwrap();
    let events: kube::Api<k8s_openapi::api::core::v1::Event> =
        kube::Api::namespaced(client, "default");
    let ev: k8s_openapi::api::core::v1::Event = serde_json::from_value(json!({
        "metadata": {"name": "server-1.power", "namespace": "default"},
        "involvedObject": {"apiVersion": "groundwork.dev/v1alpha1", "kind": "Node", "name": "server-1", "uid": uid},
        "reason": "PoweredOn", "message": "BMC reports power on", "type": "Normal", "count": 1,
        "firstTimestamp": "2026-11-24T00:00:00Z", "lastTimestamp": "2026-11-24T00:00:00Z",
        "source": {"component": "power-controller"}
    }))
    .unwrap();
    events
        .create(&Default::default(), &ev)
        .await
        .expect("create event");
    let described = ok(s.kubectl(&["describe", "nodes.groundwork.dev", "server-1"]));
    assert!(
        described.contains("PoweredOn") && described.contains("BMC reports power on"),
        "{described}"
    );
    let other = ok(s.kubectl(&["describe", "nodes.groundwork.dev", "server-2"]));
    assert!(
        !other.contains("PoweredOn"),
        "events leaked to another node: {other}"
    );
    let ours = ok(s.groundwork(&["events", "node/server-1"]));
    assert!(ours.contains("PoweredOn"), "{ours}");
    let listed = ok(s.kubectl(&["get", "events"]));
    assert!(listed.contains("PoweredOn"), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groundwork_cli_get_watch_delete() {
    let s = Server::start();
    let applied = ok(s.groundwork(&["apply", "-f", manifests().to_str().unwrap()]));
    assert_eq!(applied.matches(" created").count(), 10, "{applied}");
    let table = ok(s.groundwork(&["get", "nodes"]));
    assert!(
        table.starts_with("NAME") && table.contains("server-4"),
        "{table}"
    );
    let yaml = ok(s.groundwork(&["get", "rack", "rack-a1", "-o", "yaml"]));
    assert!(yaml.contains("heightU: 42"), "{yaml}");
    let mut watch = {
        let child = std::process::Command::new(BIN)
            .args(["watch", "nodes", "server-3"])
            .env("KUBECONFIG", &s.kubeconfig)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        support::Bg::from_child(child)
    };
    assert!(
        watch
            .wait_line("node/server-3", Duration::from_secs(15))
            .is_some(),
        "initial state"
    );
    let nodes: kube::Api<Node> = kube::Api::all(s.client().await);
    nodes
        .patch_status(
            "server-3",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"phase": "Discovering"}})),
        )
        .await
        .unwrap();
    assert!(
        watch
            .wait_line("Discovering", Duration::from_secs(15))
            .is_some(),
        "watch missed the status change"
    );
    assert!(watch.wait_exit(Duration::from_millis(10)).is_none());
    let deleted = ok(s.groundwork(&["delete", "node", "server-3"]));
    assert!(deleted.contains("node/server-3 deleted"), "{deleted}");
    let missing = s.groundwork(&["get", "node", "server-3"]);
    assert!(
        !missing.status.success() && text(&missing).contains("NotFound"),
        "{}",
        text(&missing)
    );
    let bad = s.groundwork(&["get", "toasters"]);
    assert!(
        !bad.status.success() && text(&bad).contains("unknown kind"),
        "{}",
        text(&bad)
    );
}
