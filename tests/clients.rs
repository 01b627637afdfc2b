//! Other clients than kubectl and kube-rs, as operators use them: the official Kubernetes
//! Python client, and OpenAPI tooling reading the served documents. Both run from the venv
//! `tests/run` creates (`GW_PY_VENV`, default /var/tmp/groundwork-py-venv).

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use support::*;

fn venv_bin(name: &str) -> PathBuf {
    let v = std::env::var("GW_PY_VENV").unwrap_or_else(|_| "/var/tmp/groundwork-py-venv".into());
    let p = PathBuf::from(v).join("bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: tests/run creates the venv (pip install kubernetes openapi-spec-validator)",
        p.display()
    );
    p
}

/// Create, list with a label selector, watch, replace (409 when stale) and delete every kind
/// through the official client, which sends POST and PUT without a Content-Type.
#[test]
fn the_official_python_client_handles_every_kind() {
    let s = Server::start();
    let o = Command::new("timeout")
        .arg("180")
        .arg(venv_bin("python"))
        .arg(repo_root().join("tests/python/kube_client.py"))
        .arg(&s.kubeconfig)
        .output()
        .expect("run the Python client");
    let out = text(&o);
    assert!(o.status.success(), "the Python client failed:\n{out}");
    for kind in groundwork_types::all_kinds() {
        assert!(
            out.contains(&format!("ok {}\n", kind.kind)),
            "{} was not exercised:\n{out}",
            kind.kind
        );
    }
    let log = s.log();
    assert!(
        !log.contains("py-secret-pw"),
        "a Credential's password reached the log"
    );
}

/// Every served OpenAPI v3 document passes an OpenAPI 3.0 validator (every path parameter
/// declared, operation IDs unique, schemas well formed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_openapi_v3_document_is_valid() {
    let s = Server::start();
    let c = https_client();
    let index: Value = c
        .get(format!("{}/openapi/v3", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = index["paths"].as_object().expect("an index of documents");
    assert_eq!(
        paths.len(),
        groundwork_types::group_versions().len(),
        "one document per group-version: {index}"
    );
    for (path, entry) in paths {
        let url = format!("{}{}", s.url, entry["serverRelativeURL"].as_str().unwrap());
        let doc = c.get(url).send().await.unwrap().text().await.unwrap();
        let file = write(
            s.dir.path(),
            &format!("{}.json", path.replace('/', "_")),
            &doc,
        );
        let o = Command::new("timeout")
            .arg("60")
            .arg(venv_bin("openapi-spec-validator"))
            .arg(&file)
            .output()
            .expect("run openapi-spec-validator");
        assert!(o.status.success(), "{path}: {}", text(&o));
        // A validator that passes everything would pass this test too: check it sees the
        // item paths' parameter.
        let v: Value = serde_json::from_str(&doc).unwrap();
        let item = v["paths"]
            .as_object()
            .unwrap()
            .iter()
            .find(|(p, _)| p.ends_with("/{name}"))
            .expect("an item path");
        assert_eq!(
            item.1["parameters"][0]["name"], "name",
            "{path}: {}",
            item.0
        );
    }
    // And the validator does refuse an undeclared path parameter.
    let bad = serde_json::json!({
        "openapi": "3.0.0", "info": {"title": "t", "version": "v"},
        "paths": {"/x/{name}": {"get": {"responses": {"200": {"description": "OK"}}}}},
    });
    let file = write(s.dir.path(), "bad.json", &bad.to_string());
    let o = Command::new(venv_bin("openapi-spec-validator"))
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "the validator passed an undeclared parameter"
    );
}

/// kubectl's imperative commands for built-in kinds send protobuf (client-go's typed clients
/// prefer it and do not fall back to JSON): the server takes it and the objects work.
#[test]
fn kubectl_create_for_built_in_kinds_sends_protobuf_and_is_served() {
    let s = Server::start();
    let out = ok(s.kubectl(&[
        "create",
        "clusterrole",
        "node-reader",
        "--verb=get,list,watch",
        "--resource=nodes.groundwork.dev",
    ]));
    assert!(out.contains("created"), "{out}");
    let o = s.kubectl(&[
        "create",
        "clusterrolebinding",
        "ops-reads-nodes",
        "--clusterrole=node-reader",
        "--user=ops",
        "--group=operators",
        "-v=8",
    ]);
    let (out, log) = (stdout(&o), text(&o));
    assert!(o.status.success() && out.contains("created"), "{log}");
    // What makes this test mean something: kubectl did send protobuf.
    assert!(
        log.contains("Content-Type: application/vnd.kubernetes.protobuf"),
        "kubectl sent no protobuf:\n{log}"
    );
    let b: Value = serde_json::from_str(&ok(s.kubectl(&[
        "get",
        "clusterrolebinding",
        "ops-reads-nodes",
        "-o",
        "json",
    ])))
    .unwrap();
    assert_eq!(b["roleRef"]["name"], "node-reader");
    let subjects: Vec<(&str, &str)> = b["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["kind"].as_str().unwrap(), x["name"].as_str().unwrap()))
        .collect();
    assert_eq!(subjects, [("User", "ops"), ("Group", "operators")]);
    let r: Value = serde_json::from_str(&ok(s.kubectl(&[
        "get",
        "clusterrole",
        "node-reader",
        "-o",
        "json",
    ])))
    .unwrap();
    assert_eq!(
        r["rules"][0]["resources"],
        serde_json::json!(["nodes"]),
        "{r}"
    );
    assert_eq!(
        r["rules"][0]["apiGroups"],
        serde_json::json!(["groundwork.dev"])
    );
}
