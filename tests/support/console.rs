//! The console's browser tests and benchmark: a server with the example datacenter and two
//! tokens, and `tests/ui/console.mjs` run in Debian's Chromium through playwright-core.

use std::process::Command;

use super::{Server, text, write};

const ADMIN: &str = "console-admin-token-4f1c9a";
const VIEW: &str = "console-view-token-8b2d7e";

pub fn playwright() -> String {
    let dir = std::env::var("GW_UI_NODE_MODULES")
        .unwrap_or_else(|_| "/var/tmp/groundwork-ui-node/node_modules".into());
    format!("{dir}/playwright-core")
}

/// A server with the example manifests, an admin and a view token, and the controllers that
/// fill in Racks' elevations and power (not provisioning: phases change only by the test).
pub fn console_server(dir: &std::path::Path) -> Server {
    let tokens = write(
        dir,
        "tokens.csv",
        &format!("{ADMIN},admin,1,\"system:masters\"\n{VIEW},viewer,2,\"viewers\"\n"),
    );
    let s = Server::start_with(&[
        "--token-file",
        tokens.to_str().unwrap(),
        "--controllers",
        "datacenter,rack,node-placement",
    ]);
    let kubectl = |args: &[&str]| {
        let o = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&s.kubeconfig)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "kubectl {args:?}: {}", text(&o));
    };
    kubectl(&["apply", "-f", super::manifests().to_str().unwrap()]);
    let binding = write(
        dir,
        "viewers.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: viewers}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\nsubjects: [{kind: Group, name: viewers, apiGroup: rbac.authorization.k8s.io}]\n",
    );
    kubectl(&["apply", "-f", binding.to_str().unwrap()]);
    s
}

pub fn first_racked_node(s: &Server) -> String {
    let o = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&s.kubeconfig)
        .args(["get", "nodes.groundwork.dev", "-o", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["spec"]["rack"]["name"].is_string())
        .and_then(|n| n["metadata"]["name"].as_str())
        .expect("a racked Node in the examples")
        .to_string()
}

pub fn run_script(
    s: &Server,
    mode: &str,
    node: &str,
    out: &std::path::Path,
) -> std::process::Output {
    Command::new("timeout")
        .arg("300")
        .arg("node")
        .arg(super::repo_root().join("tests/ui/console.mjs"))
        .arg(mode)
        .env("GW_URL", &s.url)
        .env("GW_ADMIN_TOKEN", ADMIN)
        .env("GW_VIEW_TOKEN", VIEW)
        .env("GW_NODE", node)
        .env("PLAYWRIGHT", playwright())
        .env(
            "CHROMIUM",
            std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
        )
        .env("OUT", out)
        .output()
        .expect("node (tests/run installs nodejs)")
}
