//! Identity over IP: the API over TLS only, who may do what (client certificates, bearer
//! tokens, RBAC, machine identities), the audit log, and secrets that never show in plaintext.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Server, ok, write};

const NODES: &str = "/apis/groundwork.dev/v1alpha1/nodes";
const ALICE: &str = "alice-token-7f3a9c1d2e";
const BOB: &str = "bob-token-0b1c2d3e4f";
const MACHINE: &str = "machine-n1-token-9e8d7c";
const OLD: &str = "expired-token-5a6b7c";
const PASSWORD: &str = "S3cret-BMC-pass-word";

fn token_file(dir: &Path, with_bob: bool) -> std::path::PathBuf {
    let mut t = format!(
        "# token,user,uid,groups[,expires=]\n{ALICE},alice,1001\n{MACHINE},system:node:n1,2001,\"system:nodes\"\n{OLD},olduser,1003,,expires=2020-01-01T00:00:00Z\n"
    );
    if with_bob {
        t.push_str(&format!("{BOB},bob,1002,\"ops,viewers\"\n"));
    }
    write(dir, "tokens.csv", &t)
}

/// An HTTPS client that trusts the CA and presents no certificate.
fn anonymous() -> reqwest::Client {
    let ca = std::fs::read(support::shared_pki().join("ca.crt")).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn call(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = c.request(method.clone(), url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        let ct = if method == reqwest::Method::PATCH {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        r = r.header("content-type", ct).body(b.to_string());
    }
    let resp = r.send().await.unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_only_tokens_certificates_rbac_machines_and_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(dir.path(), true);
    let audit = dir.path().join("audit.log");
    let s = Server::start_with(&[
        "--token-file",
        tokens.to_str().unwrap(),
        "--audit-log",
        audit.to_str().unwrap(),
    ]);
    assert!(s.url.starts_with("https://"), "{}", s.url);
    let admin = support::https_client();
    let anon = anonymous();
    let url = |p: &str| format!("{}{p}", s.url);

    // kubectl and kube-rs work with the generated kubeconfig, over TLS.
    let f = write(
        s.dir.path(),
        "nodes.yaml",
        "apiVersion: groundwork.dev/v1alpha1\nkind: Node\nmetadata: {name: n1}\n---\napiVersion: groundwork.dev/v1alpha1\nkind: Node\nmetadata: {name: n2}\n",
    );
    ok(s.kubectl(&["apply", "-f", f.to_str().unwrap()]));
    let kube = s.client().await;
    let names: Vec<String> = kube::Api::<groundwork_types::Node>::all(kube)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert_eq!(names, ["n1", "n2"]);

    // Plain HTTP is refused, with a clear answer.
    let plain = reqwest::get(url("/api").replace("https://", "http://"))
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);
    assert!(plain.text().await.unwrap().contains("HTTPS server"));

    // No credentials: 401. Liveness stays open.
    let (code, body) = call(&anon, reqwest::Method::GET, &url(NODES), None, None).await;
    assert_eq!(code, 401, "{body}");
    assert_eq!(body["reason"], "Unauthorized");
    let (code, _) = call(&anon, reqwest::Method::GET, &url("/healthz"), None, None).await;
    assert_eq!(code, 200);
    // An unknown or expired token: 401, saying which.
    let (code, body) = call(&anon, reqwest::Method::GET, &url(NODES), Some("nope"), None).await;
    assert_eq!(code, 401);
    assert!(
        body["message"].as_str().unwrap().contains("unknown token"),
        "{body}"
    );
    let (code, body) = call(&anon, reqwest::Method::GET, &url(NODES), Some(OLD), None).await;
    assert_eq!(code, 401);
    assert!(
        body["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );

    // A user with no binding: 403 naming the user, the verb and the resource.
    let (code, body) = call(&anon, reqwest::Method::GET, &url(NODES), Some(ALICE), None).await;
    assert_eq!(code, 403, "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains("\"alice\"") && msg.contains("cannot list") && msg.contains("\"nodes\""),
        "{msg}"
    );
    // Discovery is open to every authenticated user.
    let (code, _) = call(
        &anon,
        reqwest::Method::GET,
        &url("/apis"),
        Some(ALICE),
        None,
    )
    .await;
    assert_eq!(code, 200);

    // RBAC: group "viewers" bound to the built-in view role by the admin (kubectl).
    let binding = write(
        s.dir.path(),
        "rb.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: viewers}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\nsubjects: [{kind: Group, name: viewers, apiGroup: rbac.authorization.k8s.io}]\n",
    );
    ok(s.kubectl(&["apply", "-f", binding.to_str().unwrap()]));
    let (code, body) = call(&anon, reqwest::Method::GET, &url(NODES), Some(BOB), None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["items"].as_array().unwrap().len(), 2);
    let (code, body) = call(
        &anon,
        reqwest::Method::POST,
        &url(NODES),
        Some(BOB),
        Some(json!({"apiVersion": "groundwork.dev/v1alpha1", "kind": "Node", "metadata": {"name": "n3"}})),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("cannot create"),
        "{body}"
    );
    let (code, _) = call(
        &anon,
        reqwest::Method::GET,
        &url("/apis/groundwork.dev/v1alpha1/credentials"),
        Some(BOB),
        None,
    )
    .await;
    assert_eq!(code, 403, "view does not read credentials");
    // A bad binding names the field.
    let bad = write(
        s.dir.path(),
        "bad.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: bad}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: view}\nsubjects: [{kind: User, name: x}]\n",
    );
    let o = s.kubectl(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        support::text(&o).contains("roleRef.kind"),
        "{}",
        support::text(&o)
    );

    // A client certificate issued by the CA: CN is the user. Without a binding, kubectl says
    // Forbidden.
    let carol = s.dir.path().join("carol.kubeconfig");
    let o = std::process::Command::new(support::BIN)
        .args(["pki", "issue", "--dir"])
        .arg(support::shared_pki())
        .args(["--user", "carol", "--server", &s.url, "--out"])
        .arg(&carol)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", support::text(&o));
    let o = s.kubectl(&[
        "--kubeconfig",
        carol.to_str().unwrap(),
        "get",
        "nodes.groundwork.dev",
    ]);
    assert!(!o.status.success());
    let text = support::text(&o);
    assert!(
        text.contains("Forbidden") && text.contains("\"carol\""),
        "{text}"
    );

    // A machine identity reads its own Node and writes its status; nothing else.
    let n1 = url(&format!("{NODES}/n1"));
    let n2 = url(&format!("{NODES}/n2"));
    let m = Some(MACHINE);
    let get = reqwest::Method::GET;
    let patch = reqwest::Method::PATCH;
    assert_eq!(call(&anon, get.clone(), &n1, m, None).await.0, 200);
    assert_eq!(call(&anon, get.clone(), &n2, m, None).await.0, 403);
    assert_eq!(call(&anon, get.clone(), &url(NODES), m, None).await.0, 403);
    let st = Some(json!({"status": {"addresses": ["10.0.0.5"]}}));
    assert_eq!(
        call(&anon, patch.clone(), &format!("{n1}/status"), m, st.clone())
            .await
            .0,
        200
    );
    let (code, body) = call(&anon, patch.clone(), &format!("{n2}/status"), m, st.clone()).await;
    assert_eq!(code, 403);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("machine identity"),
        "{body}"
    );
    // Its own status, but the server's bookkeeping (phase, its certificates): refused.
    for forbidden in [
        json!({"status": {"phase": "Ready"}}),
        json!({"status": {"provisioning": {"agent": {"certificates": ["01"]}}}}),
    ] {
        let (code, body) = call(
            &anon,
            patch.clone(),
            &format!("{n1}/status"),
            m,
            Some(forbidden),
        )
        .await;
        assert_eq!(code, 403, "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("only status.inventory"),
            "{body}"
        );
    }
    // A machine certificate from the CA works on the API only while its Node lists it.
    let mkc = s.dir.path().join("n1.kubeconfig");
    let o = std::process::Command::new(support::BIN)
        .args(["pki", "issue", "--dir"])
        .arg(support::shared_pki())
        .args([
            "--user",
            "system:node:n1",
            "--group",
            "system:nodes",
            "--server",
            &s.url,
        ])
        .arg("--out")
        .arg(&mkc)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", support::text(&o));
    let as_machine = |args: &[&str]| s.kubectl_env(args, &[("KUBECONFIG", mkc.to_str().unwrap())]);
    let o = as_machine(&["get", "nodes.groundwork.dev", "n1"]);
    assert!(!o.status.success());
    // 401 (kubectl shows it as "provide credentials"; the audit log has the reason).
    assert!(
        support::text(&o).contains("provide credentials"),
        "{}",
        support::text(&o)
    );
    assert!(
        std::fs::read_to_string(&audit)
            .unwrap()
            .contains("machine certificate revoked or replaced")
    );
    let kc_text = std::fs::read_to_string(&mkc).unwrap();
    let cert_b64 = kc_text
        .lines()
        .find_map(|l| l.trim().strip_prefix("client-certificate-data: "))
        .unwrap();
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo {cert_b64} | base64 -d | openssl x509 -noout -serial | cut -d= -f2 | tr A-F a-f"
        ))
        .output()
        .unwrap();
    let serial = String::from_utf8_lossy(&o.stdout)
        .trim()
        .trim_start_matches('0')
        .to_string();
    assert!(!serial.is_empty(), "{}", support::text(&o));
    let (code, body) = call(
        &admin,
        patch.clone(),
        &format!("{n1}/status"),
        None,
        Some(json!({"status": {"provisioning": {"agent": {"joinTokenId": "t", "joinTokenIssued": 1, "joinedAt": "2026-01-01T00:00:00Z", "certificates": [serial]}}}})),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let o = as_machine(&["get", "nodes.groundwork.dev", "n1"]);
    assert!(o.status.success(), "{}", support::text(&o));
    let (code, _) = call(
        &anon,
        patch.clone(),
        &n1,
        m,
        Some(json!({"spec": {"maintenance": true}})),
    )
    .await;
    assert_eq!(code, 403, "a machine may not change its own spec");

    // Short-lived signed tokens (`groundwork pki token`): good for the API until they expire;
    // altered, or meant for another audience (a member join token), they are refused.
    let signed = |args: &[&str]| {
        let mut a = vec!["pki", "token", "--data-dir", s.dir.path().to_str().unwrap()];
        a.extend_from_slice(args);
        support::stdout(&s.groundwork(&a)).trim().to_string()
    };
    let t = signed(&[
        "--user",
        "ci-bot",
        "--group",
        "system:masters",
        "--ttl-seconds",
        "60",
    ]);
    let (code, body) = call(&anon, get.clone(), &url(NODES), Some(&t), None).await;
    assert_eq!(code, 200, "{body}");
    let viewer = signed(&["--user", "carol", "--ttl-seconds", "60"]);
    let (code, body) = call(&anon, get.clone(), &url(NODES), Some(&viewer), None).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("\"carol\""),
        "{body}"
    );
    let forged = format!("{}A", &t[..t.len() - 1]);
    let (code, body) = call(&anon, get.clone(), &url(NODES), Some(&forged), None).await;
    assert_eq!(code, 401);
    assert!(
        body["message"].as_str().unwrap().contains("signature"),
        "{body}"
    );
    let join = support::stdout(&s.groundwork(&[
        "cluster",
        "--pki-dir",
        support::shared_pki().to_str().unwrap(),
        "join-token",
        "--data-dir",
        s.dir.path().to_str().unwrap(),
    ]))
    .trim()
    .to_string();
    let (code, body) = call(&anon, get.clone(), &url(NODES), Some(&join), None).await;
    assert_eq!(code, 401);
    assert!(
        body["message"].as_str().unwrap().contains("audience"),
        "{body}"
    );

    // Credential scoping: `edit` may create and change Nodes, but pointing a BMC at a
    // Credential (which sends it the password) also needs `use` on that Credential.
    let apply_yaml = |name: &str, yaml: &str| {
        let f = write(s.dir.path(), name, yaml);
        ok(s.kubectl(&["apply", "-f", f.to_str().unwrap()]));
    };
    apply_yaml(
        "alice-edit.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: alice-edit}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}\nsubjects: [{kind: User, name: alice}]\n",
    );
    let node4 = url(&format!("{NODES}/n4"));
    let (code, body) = call(
        &anon,
        reqwest::Method::POST,
        &url(NODES),
        Some(ALICE),
        Some(json!({"apiVersion": "groundwork.dev/v1alpha1", "kind": "Node", "metadata": {"name": "n4"}})),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let point = |cred: &str| json!({"spec": {"bmc": {"address": "192.0.2.66", "protocol": "ipmi", "credentialsRef": cred}}});
    let (code, body) = call(
        &anon,
        patch.clone(),
        &node4,
        Some(ALICE),
        Some(point("bmc")),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains("cannot use") && msg.contains("\"bmc\"") && msg.contains("spec.bmc"),
        "{msg}"
    );
    let (code, body) = call(
        &anon,
        reqwest::Method::POST,
        &url(NODES),
        Some(ALICE),
        Some(json!({"apiVersion": "groundwork.dev/v1alpha1", "kind": "Node", "metadata": {"name": "n5"}, "spec": point("bmc")["spec"]})),
    )
    .await;
    assert_eq!(code, 403, "creating with a BMC needs it too: {body}");
    // Granted for the Credential "bmc" only.
    apply_yaml(
        "use-bmc.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: use-bmc}\nrules: [{apiGroups: [groundwork.dev], resources: [credentials], verbs: [use], resourceNames: [bmc]}]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: alice-use-bmc}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: use-bmc}\nsubjects: [{kind: User, name: alice}]\n",
    );
    let (code, body) = call(
        &anon,
        patch.clone(),
        &node4,
        Some(ALICE),
        Some(point("bmc")),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = call(
        &anon,
        patch.clone(),
        &node4,
        Some(ALICE),
        Some(point("other")),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    // Changes that leave the BMC alone need nothing more.
    let (code, body) = call(
        &anon,
        patch.clone(),
        &node4,
        Some(ALICE),
        Some(json!({"spec": {"maintenance": true}})),
    )
    .await;
    assert_eq!(code, 200, "{body}");

    // Revoked: removing bob's line takes effect without a restart.
    std::thread::sleep(Duration::from_millis(20));
    token_file(dir.path(), false);
    let (code, _) = call(&anon, get.clone(), &url(NODES), Some(BOB), None).await;
    assert_eq!(code, 401, "bob's token was revoked");

    // The audit log: admin's create, update and delete, the refusals, with identities.
    let (code, _) = call(
        &admin,
        patch.clone(),
        &n2,
        None,
        Some(json!({"metadata": {"labels": {"x": "y"}}})),
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = call(&admin, reqwest::Method::DELETE, &n2, None, None).await;
    assert_eq!(code, 200);
    let lines: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |f: &dyn Fn(&Value) -> bool| lines.iter().any(f);
    assert!(
        find(&|e| e["user"] == "admin"
            && e["verb"] == "create"
            && e["name"] == ""
            && e["code"] == 201),
        "create by admin (kubectl): {lines:?}"
    );
    assert!(find(&|e| e["user"] == "admin"
        && e["verb"] == "patch"
        && e["name"] == "n2"
        && e["decision"] == "allow"));
    assert!(find(&|e| e["user"] == "admin"
        && e["verb"] == "delete"
        && e["name"] == "n2"
        && e["code"] == 200));
    assert!(find(&|e| e["user"] == "alice"
        && e["verb"] == "list"
        && e["code"] == 403
        && e["decision"] == "deny"));
    assert!(find(&|e| e["user"] == "system:node:n1"
        && e["name"] == "n2"
        && e["code"] == 403));
    assert!(find(&|e| e["user"].is_null() && e["code"] == 401));
    assert!(
        lines
            .iter()
            .all(|e| e["time"].is_string() && e["groups"].is_array() || e["user"].is_null())
    );
}

/// Known secrets through a whole flow: none of them may appear in plaintext in any log line,
/// Event, API answer, the audit log or the raw store file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_show_in_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(dir.path(), true);
    let audit = dir.path().join("audit.log");
    let s = Server::start_with(&[
        "--controllers",
        "all",
        "--token-file",
        tokens.to_str().unwrap(),
        "--audit-log",
        audit.to_str().unwrap(),
        "--bmc-timeout-seconds",
        "1",
    ]);
    // A Credential applied with kubectl (its last-applied annotation would carry the password)
    // and a Node whose BMC uses it (the power and provisioning controllers open it and fail to
    // reach 127.0.0.1:9, logging and recording Events).
    let yaml = format!(
        "apiVersion: groundwork.dev/v1alpha1\nkind: Credential\nmetadata: {{name: c1}}\nspec: {{username: admin, password: {PASSWORD}}}\n---\n\
         apiVersion: groundwork.dev/v1alpha1\nkind: Node\nmetadata: {{name: n1}}\nspec:\n  online: true\n  bmc: {{address: 127.0.0.1, port: 9, protocol: ipmi, credentialsRef: c1}}\n"
    );
    let f = write(s.dir.path(), "secret.yaml", &yaml);
    ok(s.kubectl(&["apply", "-f", f.to_str().unwrap()]));
    let anon = anonymous();
    // Token users at work, and a refused one.
    for t in [ALICE, BOB, MACHINE, OLD] {
        let _ = call(
            &anon,
            reqwest::Method::GET,
            &format!("{}{NODES}", s.url),
            Some(t),
            None,
        )
        .await;
    }
    // Let the controllers try the BMC and record what happened.
    support::eventually(Duration::from_secs(30), "a BMC error recorded", || async {
        let events = support::text(&s.groundwork(&["events", "node/n1"]));
        events.contains("Timeout").then_some(())
    })
    .await;
    let mut answers = String::new();
    for kind in [
        "nodes",
        "credentials",
        "racks",
        "profiles",
        "datacenters",
        "events",
        "leases",
        "clusterrolebindings",
    ] {
        answers += &support::text(&s.groundwork(&["get", kind, "-o", "json"]));
    }
    answers += &ok(s.kubectl(&["get", "credentials.groundwork.dev", "-o", "yaml"]));
    answers += &ok(s.groundwork(&["events"]));
    answers += &ok(s.groundwork(&["logs", "node/n1"]));
    let server_log = s.log();
    let audit_log = std::fs::read_to_string(&audit).unwrap();
    let store = std::fs::read(s.dir.path().join("groundwork.redb")).unwrap();
    assert!(
        answers.contains("c1") && server_log.contains("n1"),
        "the flow ran"
    );
    for secret in [PASSWORD, ALICE, BOB, MACHINE, OLD] {
        assert!(!answers.contains(secret), "{secret} in an API answer");
        assert!(!server_log.contains(secret), "{secret} in the server log");
        assert!(!audit_log.contains(secret), "{secret} in the audit log");
        assert!(
            !store.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} in the store file"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_key_rotates_without_losing_a_credential() {
    const CREDS: &str = "/apis/groundwork.dev/v1alpha1/credentials";
    let mut s = Server::start();
    let admin = support::https_client();
    let url = |s: &Server, p: &str| format!("{}{p}", s.url);
    let f = write(
        s.dir.path(),
        "cred.yaml",
        "apiVersion: groundwork.dev/v1alpha1\nkind: Credential\nmetadata: {name: bmc}\nspec: {username: admin, password: rotate-me-4c2a}\n",
    );
    ok(s.kubectl(&["apply", "-f", f.to_str().unwrap()]));
    let sealed = |c: &Value| c["spec"]["encryptedPassword"].as_str().unwrap().to_string();
    let get = |s: &Server| {
        let (admin, u) = (admin.clone(), url(s, &format!("{CREDS}/bmc")));
        async move {
            let (code, c) = call(&admin, reqwest::Method::GET, &u, None, None).await;
            assert_eq!(code, 200, "{c}");
            c
        }
    };
    let before = get(&s).await;
    let data = s.dir.path().to_str().unwrap().to_string();
    let token = support::stdout(&s.groundwork(&[
        "pki",
        "token",
        "--data-dir",
        &data,
        "--user",
        "ops",
        "--group",
        "system:masters",
    ]))
    .trim()
    .to_string();
    let key_file = s.dir.path().join("secret.key");
    let lines = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    };
    assert_eq!(lines(&key_file), 1);

    // 1. A new active key; the old one is kept, retired. After a restart, what the old key
    //    sealed still opens, and tokens it signed still work.
    let out = ok(s.groundwork(&["secrets", "rotate-key", "--data-dir", &data]));
    assert!(out.contains("1 retired"), "{out}");
    assert_eq!(lines(&key_file), 2);
    s.restart();
    let (code, body) = call(
        &anonymous(),
        reqwest::Method::GET,
        &url(&s, NODES),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    // 2. Reseal: every Credential is sealed again, with the active key.
    let out = ok(s.groundwork(&["secrets", "reseal"]));
    assert!(out.contains("1 Credential(s)"), "{out}");
    let after = get(&s).await;
    assert_ne!(sealed(&before), sealed(&after), "sealed again");
    // 3. Retired keys dropped: the resealed Credential still writes back (it opens with the
    //    active key), the old sealed value no longer does, and old tokens are refused.
    let out = ok(s.groundwork(&["secrets", "drop-retired", "--data-dir", &data]));
    assert!(out.contains("1 retired key(s) removed"), "{out}");
    assert_eq!(lines(&key_file), 1);
    s.restart();
    let put = |s: &Server, c: Value| {
        let (admin, u) = (admin.clone(), url(s, &format!("{CREDS}/bmc")));
        async move { call(&admin, reqwest::Method::PUT, &u, None, Some(c)).await }
    };
    let current = get(&s).await;
    let (code, body) = put(&s, current.clone()).await;
    assert_eq!(code, 200, "{body}");
    let mut stale = get(&s).await;
    stale["spec"]["encryptedPassword"] = Value::String(sealed(&before));
    let (code, body) = put(&s, stale).await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("spec.encryptedPassword"),
        "{body}"
    );
    let (code, body) = call(
        &anonymous(),
        reqwest::Method::GET,
        &url(&s, NODES),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(code, 401, "{body}");
    // The password itself never showed.
    assert!(!s.log().contains("rotate-me-4c2a"));
    assert!(!format!("{before}{after}{current}").contains("rotate-me-4c2a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_ca_rotates_without_locking_out_clients_that_follow_it() {
    let pki = tempfile::tempdir().unwrap();
    let pki_dir = pki.path().to_str().unwrap().to_string();
    let mut s = Server::start_with(&["--pki-dir", &pki_dir]);
    let keep = |s: &Server, name: &str| {
        let p = s.dir.path().join(name);
        std::fs::copy(&s.kubeconfig, &p).unwrap();
        p
    };
    // A kept kubeconfig, pointed at the server's port of now (it changes at each restart).
    let works = |s: &Server, kc: &Path| {
        let text: String = std::fs::read_to_string(kc)
            .unwrap()
            .lines()
            .map(|l| match l.trim().strip_prefix("server: ") {
                Some(_) => format!("    server: {}\n", s.url),
                None => format!("{l}\n"),
            })
            .collect();
        let now = kc.with_extension("now");
        std::fs::write(&now, text).unwrap();
        s.kubectl_env(&["get", "nodes"], &[("KUBECONFIG", now.to_str().unwrap())])
            .status
            .success()
    };
    let rotate = |step: &str| {
        let o = std::process::Command::new(support::BIN)
            .args(["pki", "rotate-ca", "--dir", &pki_dir, "--step", step])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", support::text(&o));
    };
    let original = keep(&s, "original.kubeconfig");
    assert!(works(&s, &original));

    // 1. Begin: the new CA is trusted; the old one still issues. Every client keeps working
    //    and the new kubeconfig carries both CAs.
    rotate("begin");
    s.restart();
    let both = keep(&s, "both.kubeconfig");
    assert!(works(&s, &original) && works(&s, &both));
    // 2. Promote: the new CA issues. Clients that took the bundle keep working, with their
    //    old certificates; one that never did no longer trusts the server.
    rotate("promote");
    s.restart();
    let new = keep(&s, "new.kubeconfig");
    assert!(works(&s, &both), "the bundle and the old admin certificate");
    assert!(works(&s, &new));
    assert!(!works(&s, &original), "trusts only the old CA");
    // 3. Finish: only the new CA; certificates from the old one are refused.
    rotate("finish");
    s.restart();
    assert!(works(&s, &new));
    assert!(!works(&s, &both), "an old-CA client certificate");
}

/// `groundwork secrets reveal`: the password comes back only to a user with the `use` verb
/// on that Credential (not `view`, not `edit`), is never cached, and stays out of the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revealing_a_credential_needs_the_use_verb() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(dir.path(), true);
    let audit = dir.path().join("audit.log");
    let s = Server::start_with(&[
        "--token-file",
        tokens.to_str().unwrap(),
        "--audit-log",
        audit.to_str().unwrap(),
    ]);
    let yaml = format!(
        "apiVersion: groundwork.dev/v1alpha1\nkind: Credential\nmetadata: {{name: c1}}\nspec: {{username: admin, password: {PASSWORD}}}\n---\n\
         apiVersion: groundwork.dev/v1alpha1\nkind: Credential\nmetadata: {{name: c2}}\nspec: {{username: other, password: other-pass-1234}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: alice-edit}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}}\nsubjects: [{{kind: User, name: alice}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: viewers}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}}\nsubjects: [{{kind: Group, name: viewers, apiGroup: rbac.authorization.k8s.io}}]\n"
    );
    let f = write(s.dir.path(), "creds.yaml", &yaml);
    ok(s.kubectl(&["apply", "-f", f.to_str().unwrap()]));
    let reveal = |n: &str| {
        format!(
            "{}/apis/groundwork.dev/v1alpha1/credentials/{n}/reveal",
            s.url
        )
    };
    let anon = anonymous();
    // bob (view) and alice (edit) may read Credentials, not their passwords.
    for t in [BOB, ALICE] {
        let (code, body) = call(&anon, reqwest::Method::GET, &reveal("c1"), Some(t), None).await;
        assert_eq!(code, 403, "{body}");
        assert!(body.to_string().contains("cannot use"), "{body}");
        assert!(!body.to_string().contains(PASSWORD));
    }
    // Granted `use` on c1 only: c1 opens, c2 does not.
    let grant = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: use-c1}\nrules: [{apiGroups: [groundwork.dev], resources: [credentials], verbs: [use], resourceNames: [c1]}]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: alice-use-c1}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: use-c1}\nsubjects: [{kind: User, name: alice}]\n";
    let g = write(s.dir.path(), "grant.yaml", grant);
    ok(s.kubectl(&["apply", "-f", g.to_str().unwrap()]));
    let r = anon
        .get(reveal("c1"))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()
            .get("cache-control")
            .map(|v| v.to_str().unwrap()),
        Some("no-store")
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["password"], PASSWORD);
    assert_eq!(v["username"], "admin");
    let (code, _) = call(
        &anon,
        reqwest::Method::GET,
        &reveal("c2"),
        Some(ALICE),
        None,
    )
    .await;
    assert_eq!(code, 403);
    // The admin's CLI.
    let out = ok(s.groundwork(&["secrets", "reveal", "credential/c2", "--password"]));
    assert_eq!(out.trim(), "other-pass-1234");
    let wrong = s.groundwork(&["secrets", "reveal", "node/n1"]);
    assert!(!wrong.status.success());
    assert!(support::text(&wrong).contains("only Credentials"));
    // Revealing is logged and audited, the value is not.
    let log = s.log();
    assert!(
        log.contains("a Credential's password was revealed"),
        "{log}"
    );
    let audit_log = std::fs::read_to_string(&audit).unwrap();
    let revealed: Vec<Value> = audit_log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["resource"] == "credentials" && e["verb"] == "use")
        .collect();
    assert!(
        revealed
            .iter()
            .any(|e| e["user"] == "alice" && e["name"] == "c1" && e["code"] == 200),
        "{audit_log}"
    );
    assert!(
        revealed
            .iter()
            .any(|e| e["user"] == "bob" && e["code"] == 403),
        "{audit_log}"
    );
    for secret in [PASSWORD, "other-pass-1234"] {
        assert!(!log.contains(secret), "in the server log");
        assert!(!audit_log.contains(secret), "in the audit log");
    }
}
