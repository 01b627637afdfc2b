//! The secrets layer against a real RustyVault (crate `rusty_vault` 0.2.1, built by
//! `tests/run` into /var/tmp/groundwork-rustyvault): initialised once with the answer
//! journalled and sealed in the store, unsealed again within seconds whenever the server
//! restarts, configured (KV, AppRole, policies, roles) level-triggered, a dependent layer
//! gated on it, and no key share or root token in a log, an API answer or the raw store.
//! The journal's crash points are covered by `stack::vault::tests` (unit); here a deleted
//! journal is shown to stop the layer rather than initialise again. Needs root.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{BIN, sha256_hex, text, walk};

fn rvault_binary() -> PathBuf {
    let p = PathBuf::from(
        std::env::var("GW_RVAULT_BIN")
            .unwrap_or_else(|_| "/var/tmp/groundwork-rustyvault/bin/rvault".into()),
    );
    assert!(
        p.exists(),
        "{} is missing: tests/run builds RustyVault 0.2.1 (tests/fetch-rustyvault.sh)",
        p.display()
    );
    p
}

/// PIDs of processes whose command line contains `needle`, in the network namespace `net`.
fn pids_in(net: &str, needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let ns = std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .map(|p| p.to_string_lossy().to_string())
            .unwrap_or_default();
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ns == net && String::from_utf8_lossy(&cmd).contains(needle) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn vault_is_initialised_once_unsealed_after_restarts_and_configured() {
    let rvault = rvault_binary();
    let id = std::process::id() % 100_000;
    let tmp = tempfile::tempdir().unwrap();
    let lab = support::NetnsLab::new(&format!("gwvlt-{id}"), tmp.path().join("lab"));
    let name = format!("v{}", id % 10_000);
    let dir = lab.dir.to_str().unwrap().to_string();
    lab.up(&name, 1, &[]);
    let art = lab.dir.join("boot/artifacts/rvault");
    std::fs::copy(&rvault, &art).unwrap();
    let stack = |policies: &str| {
        format!(
            r#"apiVersion: groundwork.dev/v1alpha1
kind: ServiceStack
metadata: {{name: platform}}
spec:
  datacenter: lab
  layers:
    - name: secrets
      services: [vault]
      placement: {{count: 1}}
      config:
        vault:
          implementation: rustyVault
          artifact: {{url: "http://10.97.0.1:8080/artifacts/rvault", sha256: "{}"}}
          unseal: {{shares: 5, threshold: 3}}
          kv: {{path: secret, version: 1}}
          pki: {{commonName: groundwork.internal}}
          appRolePolicies: [{policies}]
    - name: metrics
      services: [node-exporter]
      dependsOn: [secrets]
"#,
            sha256_hex(&art)
        )
    };
    let f = tmp.path().join("stack.yaml");
    std::fs::write(&f, stack("consul, nomad")).unwrap();
    let t0 = Instant::now();
    lab.ok(&["kubectl", "apply", "-f", f.to_str().unwrap()]);
    wait_ready(&lab, 180);
    eprintln!(
        "secrets layer (RustyVault) initialised, unsealed, configured and Ready {:.1}s after apply",
        t0.elapsed().as_secs_f64()
    );
    let stack_json = || -> Value {
        serde_json::from_str(&lab.ok(&["kubectl", "get", "servicestack", "platform", "-o", "json"]))
            .unwrap()
    };
    let s = stack_json();
    let layer = s["status"]["layers"][0].clone();
    let steps = layer["bootstrapStepsDone"].to_string();
    for want in [
        "initialised (journalled)",
        "kv v1 at secret/",
        "approle auth",
        "AppRole role consul",
        "AppRole role nomad",
        "pki root groundwork.internal",
    ] {
        assert!(steps.contains(want), "{want} not in {steps}");
    }

    // The PKI root is Vault's, and recorded in the journal: never generated again.
    let root_sum = || -> String {
        let o = lab.ok(&[
            "kubectl",
            "get",
            "credential",
            "platform-secrets-vault-init",
            "-o",
            "jsonpath={.metadata.annotations.groundwork\\.dev/pki-root-sha256}",
        ]);
        o.trim().to_string()
    };
    let recorded = root_sum();
    assert_eq!(recorded.len(), 64, "{recorded:?}");

    // The journal: committed, the answer sealed (no plaintext through the API).
    let journal = "platform-secrets-vault-init";
    let j: Value =
        serde_json::from_str(&lab.ok(&["kubectl", "get", "credential", journal, "-o", "json"]))
            .unwrap();
    assert_eq!(
        j["metadata"]["annotations"]["groundwork.dev/journal"], "committed",
        "{j}"
    );
    assert!(j["spec"]["password"].is_null(), "{j}");
    assert!(j["spec"]["encryptedPassword"].is_string(), "{j}");
    // An administrator reveals it (audited): the shares and a root token that works.
    let answer: Value = serde_json::from_str(&lab.reveal(journal)).unwrap();
    let keys: Vec<String> = answer["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    let root = answer["rootToken"].as_str().unwrap().to_string();
    assert_eq!(keys.len(), 5);
    let addr = "10.97.0.11";
    // Groundwork works with its own token; the root token is revoked.
    let own = lab.reveal("platform-secrets-vault-token");
    let code = |token: &str, path: &str| {
        let o = lab.run(
            10,
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                &format!("X-Vault-Token: {token}"),
                &format!("https://{addr}:8200/v1/{path}"),
            ],
        );
        support::stdout(&o)
    };
    assert_eq!(
        code(&root, "auth/token/lookup-self"),
        "403",
        "the root token still works"
    );
    assert_eq!(code(&own, "auth/token/lookup-self"), "200");
    assert!(steps.contains("root token revoked"), "{steps}");
    let vault = |path: &str| -> Value {
        let o = lab.ok(&[
            "curl",
            "-sf",
            "-H",
            &format!("X-Vault-Token: {own}"),
            &format!("https://{addr}:8200/v1/{path}"),
        ]);
        serde_json::from_str(&o).unwrap_or(Value::Null)
    };
    // Each AppRole's IDs are Groundwork's (a Credential): a service logs in with them.
    let role_id = lab.ok(&[
        "kubectl",
        "get",
        "credential",
        "platform-secrets-approle-consul",
        "-o",
        "jsonpath={.spec.username}",
    ]);
    let secret_id = lab.reveal("platform-secrets-approle-consul");
    let login = lab.ok(&[
        "curl",
        "-sf",
        "-X",
        "POST",
        "-d",
        &format!(
            r#"{{"role_id":"{}","secret_id":"{secret_id}"}}"#,
            role_id.trim()
        ),
        &format!("https://{addr}:8200/v1/auth/approle/login"),
    ]);
    assert!(login.contains("client_token"), "AppRole login: {login}");
    let mounts = vault("sys/mounts");
    assert!(mounts.get("secret/").is_some(), "{mounts}");
    let auth = vault("sys/auth");
    assert!(auth.get("approle/").is_some(), "{auth}");
    let role = vault("auth/approle/role/consul");
    assert!(role.to_string().contains("consul"), "{role}");
    // Init is not repeated: Vault says it is initialised, and a second sys/init is refused.
    let again = lab.run(
        10,
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "PUT",
            "-d",
            r#"{"secret_shares":1,"secret_threshold":1}"#,
            &format!("https://{addr}:8200/v1/sys/init"),
        ],
    );
    assert_ne!(support::stdout(&again), "200", "a second init was accepted");

    // The dependent layer ran only after the secrets layer: its Ready is later.
    let ready_at = |i: usize| {
        s["status"]["layers"][i]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()["lastTransitionTime"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(ready_at(1) >= ready_at(0), "{}", s["status"]);

    // The server restarts (SIGKILL): it comes back sealed and Groundwork unseals it.
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(lab.dir.join("lab.json")).unwrap()).unwrap();
    let net = state["machines"][0]["net"].as_str().unwrap().to_string();
    let seal = || -> Option<bool> {
        let o = lab.run(
            3,
            &[
                "curl",
                "-sf",
                "--max-time",
                "1",
                &format!("https://{addr}:8200/v1/sys/seal-status"),
            ],
        );
        serde_json::from_str::<Value>(&support::stdout(&o))
            .ok()?
            .get("sealed")?
            .as_bool()
    };
    let mut unseal_times = Vec::new();
    for round in 0..3 {
        let pids = pids_in(&net, "rvault.hcl");
        assert_eq!(pids.len(), 1, "one rvault in the machine: {pids:?}");
        nix_kill(pids[0]);
        // Back, sealed (the agent restarts it) ...
        let deadline = Instant::now() + Duration::from_secs(60);
        let back = loop {
            let now = Instant::now();
            if seal() == Some(true) {
                break now;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: the server did not come back sealed"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        // ... and unsealed by Groundwork.
        let deadline = Instant::now() + Duration::from_secs(30);
        while seal() != Some(false) {
            assert!(
                Instant::now() < deadline,
                "round {round}: still sealed after 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        unseal_times.push(back.elapsed().as_secs_f64());
    }
    eprintln!("sealed → unsealed after a restart: {unseal_times:.2?} s");
    assert!(unseal_times.iter().all(|t| *t < 15.0), "{unseal_times:?}");
    // The data survived: the mounts are those of the first init, the PKI root the same.
    let mounts = vault("sys/mounts");
    assert!(mounts.get("secret/").is_some(), "{mounts}");
    let ca = vault("pki/ca");
    let pem = ca["data"]["certificate"]
        .as_str()
        .unwrap()
        .trim()
        .to_string();
    let o = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(pem.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(
        support::stdout(&o).split_whitespace().next().unwrap(),
        recorded,
        "Vault's PKI root is not the one recorded"
    );
    let log = std::fs::read_to_string(lab.dir.join("server.log")).unwrap();
    assert_eq!(log.matches("vault: PKI root generated").count(), 1);

    // Level-triggered: a role added to the spec appears; nothing is initialised again.
    std::fs::write(&f, stack("consul, nomad, prometheus")).unwrap();
    let t1 = Instant::now();
    lab.ok(&["kubectl", "apply", "-f", f.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let role = || {
        let o = lab.run(
            10,
            &[
                "curl",
                "-sf",
                "-H",
                &format!("X-Vault-Token: {own}"),
                &format!("https://{addr}:8200/v1/auth/approle/role/prometheus"),
            ],
        );
        support::stdout(&o)
    };
    while !role().contains("prometheus") {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(lab.dir.join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("servicestack") || l.contains("vault"))
                .rev()
                .take(30)
                .collect();
            panic!(
                "the prometheus role never came: {}\nlayer: {}\nserver log (newest first):\n{}",
                role(),
                stack_json()["status"]["layers"][0],
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    eprintln!(
        "a role added to the spec is in Vault {:.1}s after apply",
        t1.elapsed().as_secs_f64()
    );

    // The machine loses power and comes back: the single member is held (it has the only
    // copy of the data), comes back sealed, and the layer is Ready again without a human.
    lab.ok(&[BIN, "lab", "machine", "stop", "1", "--dir", &dir]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let l = stack_json()["status"]["layers"][0].clone();
        if l["phase"] != "Ready" {
            let why = l["waitingFor"].as_str().unwrap_or("").to_string();
            eprintln!("power cut: the layer is {}: {why}", l["phase"]);
            break;
        }
        assert!(Instant::now() < deadline, "the power cut was not noticed");
        std::thread::sleep(Duration::from_millis(250));
    }
    let t3 = Instant::now();
    lab.ok(&[BIN, "lab", "machine", "start", "1", "--dir", &dir]);
    wait_ready(&lab, 120);
    eprintln!(
        "machine power cycle: the layer Ready again {:.1}s after power on",
        t3.elapsed().as_secs_f64()
    );
    let mounts = vault("sys/mounts");
    assert!(mounts.get("secret/").is_some(), "{mounts}");
    // Secrets are in no log, API answer or the raw store.
    let mut logs = std::fs::read_to_string(lab.dir.join("server.log")).unwrap();
    logs += &std::fs::read_to_string(lab.dir.join("machines/n1/agent.log")).unwrap_or_default();
    for e in walk(&lab.dir.join("machines/n1/var-lib-groundwork/services")) {
        if e.extension().is_some_and(|x| x == "log") || e.to_string_lossy().contains("/logs/") {
            logs += &std::fs::read_to_string(&e).unwrap_or_default();
        }
    }
    let api = lab.ok(&[
        "kubectl",
        "get",
        "credentials,serviceinstances,servicestacks,events",
        "-o",
        "json",
    ]);
    let store = std::fs::read(lab.dir.join("data/groundwork.redb")).unwrap();
    let named = keys.iter().map(|k| ("a key share", k)).chain([
        ("the root token", &root),
        ("Groundwork's token", &own),
        ("an AppRole secret ID", &secret_id),
    ]);
    for (what, v) in named {
        if let Some(line) = logs.lines().find(|l| l.contains(v.as_str())) {
            panic!(
                "{what} is in a log line: {}",
                line.replace(v.as_str(), "<SECRET>")
            );
        }
        assert!(!api.contains(v.as_str()), "{what} is in an API answer");
        assert!(
            !store.windows(v.len()).any(|w| w == v.as_bytes()),
            "{what} is in the raw store"
        );
    }

    // The journal is deleted (an operator's mistake): Groundwork holds no keys for an
    // initialised Vault. It says so and never initialises again.
    lab.ok(&["kubectl", "delete", "credential", journal]);
    let t2 = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    let cond = loop {
        let s = stack_json();
        let c = s["status"]["layers"][0]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "VaultBootstrapped")
            .cloned();
        if let Some(c) = c
            && c["reason"] == "InitSecretsLost"
        {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "no InitSecretsLost condition: {}",
            s["status"]
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "InitSecretsLost {:.1}s after the journal was deleted",
        t2.elapsed().as_secs_f64()
    );
    assert!(
        cond["message"]
            .as_str()
            .unwrap()
            .contains("initialised without keys"),
        "{cond}"
    );
    assert_eq!(stack_json()["status"]["layers"][0]["phase"], "Failed");
    // Groundwork's token from the first init still works: nothing was initialised again.
    let me = vault("sys/mounts");
    assert!(me.get("secret/").is_some(), "{me}");
    assert!(
        lab.run(5, &["kubectl", "get", "credential", journal])
            .status
            .code()
            != Some(0),
        "a new journal was written: {}",
        text(&lab.run(5, &["kubectl", "get", "credential", journal]))
    );
}

/// The server is killed (abort, as SIGKILL) at each point of Vault's one-shot init, then
/// started again: the layer converges with no human, init ran once per attempt (twice only
/// when the crash fell between Vault's answer and its commit: that Vault held nothing and
/// its data is kept aside), and the stored keys are those of the running Vault.
#[test]
fn a_crash_at_each_init_point_neither_inits_twice_nor_loses_keys() {
    let rvault = rvault_binary();
    for (k, point) in [
        "vault-before-intent",
        "vault-after-intent",
        "vault-after-init",
        "vault-after-commit",
        "vault-after-pki-root",
        "vault-after-own-token",
        "vault-before-secret-id",
        "vault-after-secret-id",
        "vault-after-root-revoke",
    ]
    .iter()
    .enumerate()
    {
        let id = std::process::id() % 10_000;
        let tmp = tempfile::tempdir().unwrap();
        let lab = support::NetnsLab::new(&format!("gwvc{k}-{id}"), tmp.path().join("lab"));
        let dir = lab.dir.to_str().unwrap().to_string();
        lab.up(&format!("vc{k}{}", id % 1000), 1, &[]);
        let art = lab.dir.join("boot/artifacts/rvault");
        std::fs::copy(&rvault, &art).unwrap();
        let f = tmp.path().join("stack.yaml");
        std::fs::write(
            &f,
            format!(
                r#"apiVersion: groundwork.dev/v1alpha1
kind: ServiceStack
metadata: {{name: platform}}
spec:
  datacenter: lab
  layers:
    - name: secrets
      services: [vault]
      placement: {{count: 1}}
      config:
        vault:
          implementation: rustyVault
          artifact: {{url: "http://10.97.0.1:8080/artifacts/rvault", sha256: "{}"}}
          kv: {{version: 1}}
          pki: {{commonName: groundwork.internal}}
          appRolePolicies: [consul]
"#,
                sha256_hex(&art)
            ),
        )
        .unwrap();
        std::fs::write(lab.dir.join("data/crashpoint"), point).unwrap();
        lab.ok(&["kubectl", "apply", "-f", f.to_str().unwrap()]);
        // The server dies at the point.
        lab.wait_server_crash(point, 60);
        lab.ok(&[BIN, "lab", "server", "start", "--dir", &dir]);
        wait_ready(&lab, 120);

        let log = std::fs::read_to_string(lab.dir.join("server.log")).unwrap();
        let inits = log.matches("vault: initialising").count();
        let want = if *point == "vault-after-init" { 2 } else { 1 };
        assert_eq!(inits, want, "{point}: sys/init calls");
        assert_eq!(
            log.matches("vault: PKI root generated").count(),
            1,
            "{point}: PKI root generations"
        );
        let journal = "platform-secrets-vault-init";
        let answer: Value = serde_json::from_str(&lab.reveal(journal)).unwrap();
        assert_eq!(answer["keys"].as_array().map(Vec::len), Some(5), "{point}");
        let own = lab.reveal("platform-secrets-vault-token");
        let o = lab.run(
            10,
            &[
                "curl",
                "-sf",
                "-H",
                &format!("X-Vault-Token: {own}"),
                "https://10.97.0.11:8200/v1/sys/mounts",
            ],
        );
        assert!(
            o.status.success() && support::stdout(&o).contains("secret/"),
            "{point}: Groundwork's stored token does not open the running Vault: {}",
            text(&o)
        );
        // The AppRole's stored IDs log in: set once, whatever the crash.
        let role_id = lab.ok(&[
            "kubectl",
            "get",
            "credential",
            "platform-secrets-approle-consul",
            "-o",
            "jsonpath={.spec.username}",
        ]);
        let secret_id = lab.reveal("platform-secrets-approle-consul");
        let login = lab.run(
            10,
            &[
                "curl",
                "-sf",
                "-X",
                "POST",
                "-d",
                &format!(
                    r#"{{"role_id":"{}","secret_id":"{secret_id}"}}"#,
                    role_id.trim()
                ),
                "https://10.97.0.11:8200/v1/auth/approle/login",
            ],
        );
        assert!(
            support::stdout(&login).contains("client_token"),
            "{point}: AppRole login: {}",
            text(&login)
        );
        let aside = walk(&lab.dir.join("machines/n1/var-lib-groundwork/services"))
            .iter()
            .any(|p| p.to_string_lossy().contains("data.discarded-0"));
        assert_eq!(
            aside,
            *point == "vault-after-init",
            "{point}: the first attempt's data is kept aside exactly when it was discarded"
        );
        eprintln!("{point}: converged after the restart; sys/init calls: {inits}");
    }
}

/// Groundwork serves the two endpoints of Vault's transit engine that a member's
/// `seal "transit"` calls, on the agent API, for the layer's generated key and token only.
/// (No Vault that can use a transit seal runs here: the calls are made as Vault's transit
/// client makes them, hashicorp/go-kms-wrapping wrappers/transit.)
#[test]
fn groundwork_serves_vaults_transit_seal_endpoints() {
    let id = std::process::id() % 10_000;
    let tmp = tempfile::tempdir().unwrap();
    let lab = support::NetnsLab::new(&format!("gwvt-{id}"), tmp.path().join("lab"));
    lab.up(&format!("vt{}", id % 1000), 1, &[]);
    let f = tmp.path().join("stack.yaml");
    // No machine matches: the layer waits, and its transit key and token exist before any
    // member could start.
    std::fs::write(
        &f,
        r#"apiVersion: groundwork.dev/v1alpha1
kind: ServiceStack
metadata: {name: platform}
spec:
  layers:
    - name: secrets
      services: [vault]
      placement: {count: 3, nodeSelector: {matchLabels: {groundwork.dev/role: vault}}}
      config:
        vault:
          artifact: {url: "http://10.97.0.1:8080/artifacts/vault", sha256: "0000000000000000000000000000000000000000000000000000000000000000"}
          unseal: {mode: transit}
"#,
    )
    .unwrap();
    lab.ok(&["kubectl", "apply", "-f", f.to_str().unwrap()]);
    let token_cred = "platform-secrets-vault-transit-token";
    let deadline = Instant::now() + Duration::from_secs(30);
    while lab
        .run(10, &["kubectl", "get", "credential", token_cred])
        .status
        .code()
        != Some(0)
    {
        assert!(Instant::now() < deadline, "no transit token generated");
        std::thread::sleep(Duration::from_millis(250));
    }
    let reveal = |c: &str| lab.reveal(c);
    let token = reveal(token_cred);
    let key = reveal("platform-secrets-vault-transit-key");
    let ca = lab.dir.join("data/pki/ca.crt");
    let call = |op: &str, name: &str, tok: &str, body: &str| -> (String, Value) {
        let o = lab.run(
            10,
            &[
                "curl",
                "-s",
                "--cacert",
                ca.to_str().unwrap(),
                "--resolve",
                "groundwork-boot:8443:10.97.0.1",
                "-o",
                "/dev/stdout",
                "-w",
                "\n%{http_code}",
                "-X",
                "PUT",
                "-H",
                &format!("X-Vault-Token: {tok}"),
                "-d",
                body,
                &format!("https://groundwork-boot:8443/v1/transit/{op}/{name}"),
            ],
        );
        let out = support::stdout(&o);
        let (json, code) = out.rsplit_once('\n').unwrap_or(("", ""));
        (
            code.to_string(),
            serde_json::from_str(json).unwrap_or(Value::Null),
        )
    };
    // What a member sends at init (its root key, base64) and at every start.
    let plain = "cm9vdCBrZXkgb2YgdGhlIGJhcnJpZXI=";
    let (code, v) = call(
        "encrypt",
        "platform-secrets",
        &token,
        &format!(r#"{{"plaintext":"{plain}"}}"#),
    );
    assert_eq!(code, "200", "{v}");
    let ct = v["data"]["ciphertext"].as_str().unwrap().to_string();
    assert!(ct.starts_with("vault:v1:"), "{ct}");
    let (code, v) = call(
        "decrypt",
        "platform-secrets",
        &token,
        &format!(r#"{{"ciphertext":"{ct}"}}"#),
    );
    assert_eq!(code, "200", "{v}");
    assert_eq!(v["data"]["plaintext"], plain);
    // A wrong token, another key name: the same refusal; a changed ciphertext: refused.
    let dec = format!(r#"{{"ciphertext":"{ct}"}}"#);
    assert_eq!(call("decrypt", "platform-secrets", "wrong", &dec).0, "403");
    assert_eq!(call("decrypt", "platform-other", &token, &dec).0, "403");
    let mut bad = ct.clone();
    bad.replace_range(12..13, if &ct[12..13] == "A" { "B" } else { "A" });
    let (code, v) = call(
        "decrypt",
        "platform-secrets",
        &token,
        &format!(r#"{{"ciphertext":"{bad}"}}"#),
    );
    assert_eq!(code, "400", "{v}");
    assert!(v.to_string().contains("ciphertext"), "{v}");
    // The key never leaves: not in the API answers, the logs or the raw store.
    let api = lab.ok(&[
        "kubectl",
        "get",
        "credentials,servicestacks,events",
        "-o",
        "json",
    ]);
    let logs = std::fs::read_to_string(lab.dir.join("server.log")).unwrap();
    let store = std::fs::read(lab.dir.join("data/groundwork.redb")).unwrap();
    for (what, v) in [("key", &key), ("token", &token)] {
        assert!(
            !api.contains(v.as_str()),
            "the transit {what} is in an API answer"
        );
        assert!(
            !logs.contains(v.as_str()),
            "the transit {what} is in the log"
        );
        assert!(
            !store.windows(v.len()).any(|w| w == v.as_bytes()),
            "the transit {what} is in the raw store"
        );
    }
}

/// Waits for the stack's Ready condition; on timeout, fails with the status and the logs.
fn wait_ready(lab: &support::NetnsLab, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let o = lab.run(
            10,
            &["kubectl", "get", "servicestack", "platform", "-o", "json"],
        );
        let s: Value = serde_json::from_str(&support::stdout(&o)).unwrap_or(Value::Null);
        let ready = s["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        if ready {
            return;
        }
        if Instant::now() > deadline {
            let tail = |p: PathBuf| {
                let t = std::fs::read_to_string(p).unwrap_or_default();
                let l: Vec<&str> = t.lines().collect();
                l[l.len().saturating_sub(40)..].join("\n")
            };
            let log = std::fs::read_to_string(lab.dir.join("server.log")).unwrap_or_default();
            let first: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("vault"))
                .take(12)
                .collect();
            let services: String = walk(&lab.dir.join("machines"))
                .iter()
                .filter(|p| p.to_string_lossy().contains("/log/"))
                .map(|p| format!("\n{}:\n{}", p.display(), tail(p.clone())))
                .collect();
            panic!(
                "not Ready after {secs} s\nfirst vault lines:\n{}\nstatus: {}\ninstances: {}\nserver log:\n{}\nagent log:\n{}\nservices' logs:{services}",
                first.join("\n"),
                serde_json::to_string_pretty(&s["status"]).unwrap_or_default(),
                text(&lab.run(10, &["kubectl", "get", "serviceinstances", "-o", "yaml"])),
                tail(lab.dir.join("server.log")),
                tail(lab.dir.join("machines/n1/agent.log")),
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn nix_kill(pid: i32) {
    let o = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "kill -9 {pid}: {}", text(&o));
}

/// Three Vault members (the double in `tests/doubles/vault`: Vault's API as documented, with
/// raft joins and the transit seal, since no Vault build is reachable here) in transit mode:
/// Groundwork initialises once, the members unseal themselves through Groundwork's transit
/// endpoints (Groundwork never calls unseal), KV v2 and the PKI root are in place, and a
/// member killed comes back unsealed by itself.
#[test]
fn three_members_unseal_themselves_through_groundworks_transit_endpoints() {
    let double = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/doubles/vault");
    let id = std::process::id() % 10_000;
    let tmp = tempfile::tempdir().unwrap();
    let lab = support::NetnsLab::new(&format!("gwv3-{id}"), tmp.path().join("lab"));
    lab.up(&format!("v3{}", id % 1000), 4, &[]);
    let sum = lab.artifact("vault", &double);
    let f = tmp.path().join("stack.yaml");
    std::fs::write(
        &f,
        format!(
            r#"apiVersion: groundwork.dev/v1alpha1
kind: ServiceStack
metadata: {{name: platform}}
spec:
  datacenter: lab
  layers:
    - name: secrets
      services: [vault]
      placement: {{count: 3}}
      config:
        vault:
          artifact: {{url: "http://10.97.0.1:8080/artifacts/vault", sha256: "{sum}"}}
          unseal: {{mode: transit, shares: 5, threshold: 3}}
          kv: {{path: secret, version: 2}}
          pki:
            commonName: groundwork.internal
            intermediate: {{commonName: groundwork.internal issuing}}
          sshCa: {{allowedUsers: "ops,deploy"}}
          appRolePolicies: [consul]
"#
        ),
    )
    .unwrap();
    let t0 = Instant::now();
    lab.ok(&["kubectl", "apply", "-f", f.to_str().unwrap()]);
    wait_ready(&lab, 180);
    eprintln!(
        "3 Vault members (double, transit seal) Ready {:.1}s after apply",
        t0.elapsed().as_secs_f64()
    );
    let count = |name: &str| -> usize {
        walk(&lab.dir.join("machines"))
            .iter()
            .filter(|p| p.ends_with(name))
            .map(|p| {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .lines()
                    .count()
            })
            .sum()
    };
    assert_eq!(count("init-calls.log"), 1, "sys/init calls");
    assert_eq!(
        count("unseal-calls.log"),
        0,
        "Groundwork called unseal in transit mode"
    );
    let members: Value = serde_json::from_str(&lab.ok(&[
        "kubectl",
        "get",
        "serviceinstances",
        "-l",
        "groundwork.dev/layer=secrets",
        "-o",
        "json",
    ]))
    .unwrap();
    let addrs: Vec<String> = members["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["spec"]["address"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(addrs.len(), 3);
    let health = |a: &str| {
        let o = lab.run(
            5,
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("https://{a}:8200/v1/sys/health"),
            ],
        );
        support::stdout(&o)
    };
    let mut codes: Vec<String> = addrs.iter().map(|a| health(a)).collect();
    codes.sort();
    assert_eq!(codes, ["200", "429", "429"], "one active, two standbys");
    // The recovery shares and root token are journalled; KV v2 and the PKI root are there.
    let answer: Value = serde_json::from_str(&lab.reveal("platform-secrets-vault-init")).unwrap();
    assert_eq!(
        answer["keys"].as_array().unwrap().len(),
        5,
        "the recovery shares"
    );
    let root = answer["rootToken"].as_str().unwrap().to_string();
    let own = lab.reveal("platform-secrets-vault-token");
    let call = |token: &str, a: &str, path: &str| {
        lab.run(
            5,
            &[
                "curl",
                "-s",
                "-w",
                "\n%{http_code}",
                "-H",
                &format!("X-Vault-Token: {token}"),
                &format!("https://{a}:8200/v1/{path}"),
            ],
        )
    };
    let get = |a: &str, path: &str| -> Value {
        let out = support::stdout(&call(&own, a, path));
        let body = out.rsplit_once('\n').map(|x| x.0).unwrap_or("");
        serde_json::from_str(body).unwrap_or(Value::Null)
    };
    let status = |token: &str, a: &str, path: &str| -> String {
        let out = support::stdout(&call(token, a, path));
        out.rsplit_once('\n')
            .map(|x| x.1.to_string())
            .unwrap_or(out)
    };
    let leader = addrs.iter().find(|a| health(a) == "200").unwrap().clone();
    // TLS: the member's certificate, made on its machine and signed by the cluster CA
    // (curl checks it: CURL_CA_BUNDLE), names its address and Consul's service names; plain
    // HTTP gets no answer.
    let plain = lab.run(
        5,
        &[
            "curl",
            "-sf",
            &format!("http://{leader}:8200/v1/sys/health"),
        ],
    );
    assert!(!plain.status.success(), "the listener speaks plain HTTP");
    let cert = lab.ok(&[
        "sh",
        "-c",
        &format!(
            "openssl s_client -connect {leader}:8200 </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName"
        ),
    ]);
    for want in [
        format!("IP Address:{leader}"),
        "DNS:vault.service.consul".into(),
    ] {
        assert!(cert.contains(&want), "{want} not in {cert}");
    }
    // The root token is revoked; Groundwork's own token does what it must and no more
    // (the double enforces Vault's ACL policies).
    assert_eq!(status(&root, &leader, "auth/token/lookup-self"), "403");
    assert_eq!(status(&own, &leader, "auth/token/lookup-self"), "200");
    // (404: allowed, and nothing there; 403: refused.)
    assert_eq!(status(&own, &leader, "secret/data/consul/gossip"), "404");
    assert_eq!(
        status(&own, &leader, "secret/data/apps/db"),
        "403",
        "Groundwork's token reads the platform's secrets"
    );
    let mounts = get(&leader, "sys/mounts");
    assert_eq!(mounts["secret/"]["options"]["version"], "2", "{mounts}");
    // The PKI root and the intermediate it signed: a real chain, checked by openssl.
    let pem = |mount: &str| {
        get(&leader, &format!("{mount}/cert/ca"))["data"]["certificate"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let (root_pem, int_pem) = (pem("pki"), pem("pki_int"));
    assert!(root_pem.contains("BEGIN CERTIFICATE"), "no PKI root");
    std::fs::write(tmp.path().join("root.pem"), &root_pem).unwrap();
    std::fs::write(tmp.path().join("int.pem"), &int_pem).unwrap();
    let v = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(tmp.path().join("root.pem"))
        .arg(tmp.path().join("int.pem"))
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "the intermediate does not chain to the root: {}",
        text(&v)
    );
    let subject = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(tmp.path().join("int.pem"))
        .output()
        .unwrap();
    assert!(support::stdout(&subject).contains("groundwork.internal issuing"));
    // The SSH CA: a key made once, recorded; the role signs for the allowed users.
    let ssh_key = get(&leader, "ssh/config/ca")["data"]["public_key"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(ssh_key.starts_with("ssh-"), "no SSH CA: {ssh_key:?}");
    let journal_annotation = |key: &str| {
        lab.ok(&[
            "kubectl",
            "get",
            "credential",
            "platform-secrets-vault-init",
            "-o",
            &format!("jsonpath={{.metadata.annotations.groundwork\\.dev/{key}}}"),
        ])
        .trim()
        .to_string()
    };
    assert_eq!(journal_annotation("ssh-ca-sha256"), sha256_of(&ssh_key));
    assert_eq!(
        journal_annotation("pki-intermediate-sha256"),
        sha256_of(&int_pem)
    );
    assert_eq!(journal_annotation("root-token-revoked"), "true");
    // The AppRole's IDs are Groundwork's: a service logs in and reads its own path.
    let role_id = lab.ok(&[
        "kubectl",
        "get",
        "credential",
        "platform-secrets-approle-consul",
        "-o",
        "jsonpath={.spec.username}",
    ]);
    let secret_id = lab.reveal("platform-secrets-approle-consul");
    let login = lab.ok(&[
        "curl",
        "-sf",
        "-X",
        "POST",
        "-d",
        &format!(
            r#"{{"role_id":"{}","secret_id":"{secret_id}"}}"#,
            role_id.trim()
        ),
        &format!("https://{leader}:8200/v1/auth/approle/login"),
    ]);
    let login: Value = serde_json::from_str(&login).unwrap();
    let consul_token = login["auth"]["client_token"].as_str().unwrap().to_string();
    assert_eq!(
        status(&consul_token, &leader, "secret/data/consul/gossip"),
        "404"
    );
    assert_eq!(status(&consul_token, &leader, "sys/mounts"), "403");
    // A member killed comes back and unseals itself.
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(lab.dir.join("lab.json")).unwrap()).unwrap();
    let standby = addrs.iter().find(|a| health(a) == "429").unwrap().clone();
    let i: usize = standby
        .rsplit('.')
        .next()
        .unwrap()
        .parse::<usize>()
        .unwrap()
        - 10;
    let net = state["machines"][i - 1]["net"]
        .as_str()
        .unwrap()
        .to_string();
    let pids = pids_in(&net, "vault.hcl");
    assert_eq!(pids.len(), 1, "{pids:?}");
    nix_kill(pids[0]);
    let t1 = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while health(&standby) != "429" || t1.elapsed() < Duration::from_millis(200) {
        assert!(
            Instant::now() < deadline,
            "the killed member did not come back unsealed: {}",
            health(&standby)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "a killed member unsealed itself through Groundwork {:.2}s after the kill",
        t1.elapsed().as_secs_f64()
    );
    assert_eq!(count("unseal-calls.log"), 0);
    assert_eq!(count("init-calls.log"), 1);
    // Groundwork restarted: its next passes make no root, intermediate or SSH key again.
    let dir = lab.dir.to_str().unwrap().to_string();
    lab.ok(&[BIN, "lab", "server", "stop", "--dir", &dir]);
    lab.ok(&[BIN, "lab", "server", "start", "--dir", &dir]);
    wait_ready(&lab, 120);
    std::thread::sleep(Duration::from_secs(3));
    wait_ready(&lab, 60);
    assert_eq!(
        count("generated.log"),
        3,
        "root, intermediate key, SSH key: once each"
    );
    assert_eq!(pem("pki_int"), int_pem);
}

fn sha256_of(s: &str) -> String {
    use std::io::Write;
    let mut c = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(s.trim().as_bytes())
        .unwrap();
    let o = c.wait_with_output().unwrap();
    support::stdout(&o)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
