//! The secrets, connectivity and scheduling layers together, from nothing, on 4 namespace
//! machines: RustyVault (real, one member), Consul 1.8.7 (real, 3 servers) and Nomad (the
//! double in `tests/doubles/nomad`, 3 servers: no Nomad build is reachable here). The
//! server is aborted right after Nomad's ACL bootstrap (a crash point) and started again;
//! then all four machines lose power and come back. Every time the three layers reach
//! Ready with no manual step, Nomad's ACLs are bootstrapped exactly once with the token
//! Groundwork generated, and no secret is in a log, an API answer or the raw store.
//! Needs root, `tests/fetch-consul.sh` and `tests/fetch-rustyvault.sh`.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{BIN, sha256_hex, text, walk};

fn binary(env: &str, default: &str, how: &str) -> PathBuf {
    let p = PathBuf::from(std::env::var(env).unwrap_or_else(|_| default.into()));
    assert!(p.exists(), "{} is missing: {how}", p.display());
    p
}

fn ready(lab: &support::NetnsLab) -> Option<Value> {
    let o = lab.run(
        10,
        &["kubectl", "get", "servicestack", "platform", "-o", "json"],
    );
    let s: Value = serde_json::from_str(&support::stdout(&o)).ok()?;
    s["status"]["conditions"]
        .as_array()?
        .iter()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
        .then_some(s)
}

fn wait_ready(lab: &support::NetnsLab, what: &str, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = ready(lab) {
            return s;
        }
        if Instant::now() > deadline {
            let o = lab.run(
                10,
                &["kubectl", "get", "servicestack", "platform", "-o", "json"],
            );
            let s: Value = serde_json::from_str(&support::stdout(&o)).unwrap_or(Value::Null);
            let log = std::fs::read_to_string(lab.dir.join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "{what}: not Ready after {secs} s\nstatus: {}\ninstances: {}\nserver log (last lines, newest first):\n{}",
                serde_json::to_string_pretty(&s["status"]).unwrap_or_default(),
                text(&lab.run(10, &["kubectl", "get", "serviceinstances", "-o", "wide"])),
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn secrets_connectivity_and_scheduling_come_up_and_back_with_no_manual_step() {
    let consul = binary(
        "GW_CONSUL_BIN",
        "/var/tmp/groundwork-consul/root/usr/bin/consul",
        "tests/run fetches Consul 1.8.7 (tests/fetch-consul.sh)",
    );
    let rvault = binary(
        "GW_RVAULT_BIN",
        "/var/tmp/groundwork-rustyvault/bin/rvault",
        "tests/run builds RustyVault 0.2.1 (tests/fetch-rustyvault.sh)",
    );
    let nomad = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/doubles/nomad");
    let id = std::process::id() % 100_000;
    let tmp = tempfile::tempdir().unwrap();
    let lab = support::NetnsLab::new(&format!("gwhs-{id}"), tmp.path().join("lab"));
    let dir = lab.dir.to_str().unwrap().to_string();
    let extra = format!(
        "--server-arg=--audit-log={}",
        tmp.path().join("audit.log").display()
    );
    lab.up(&format!("h{}", id % 10_000), 4, &[&extra]);
    let mut sums = Vec::new();
    for (name, src) in [
        ("consul", &consul),
        ("rvault", &rvault),
        ("nomad", &nomad.to_path_buf()),
    ] {
        let art = lab.dir.join("boot/artifacts").join(name);
        std::fs::copy(src, &art).unwrap();
        sums.push(sha256_hex(&art));
    }
    let stack = format!(
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
          artifact: {{url: "http://10.97.0.1:8080/artifacts/rvault", sha256: "{rv}"}}
          kv: {{version: 1}}
          consulGossipKey: true
          appRolePolicies: [consul, nomad]
    - name: connectivity
      services: [consul]
      dependsOn: [secrets]
      placement: {{count: 3}}
      config:
        consul:
          artifact: {{url: "http://10.97.0.1:8080/artifacts/consul", sha256: "{c}"}}
    - name: scheduling
      services: [nomad]
      dependsOn: [connectivity]
      placement: {{count: 3}}
      config:
        nomad:
          artifact: {{url: "http://10.97.0.1:8080/artifacts/nomad", sha256: "{n}"}}
          namespaces: [metrics, logging]
"#,
        c = sums[0],
        rv = sums[1],
        n = sums[2],
    );
    let f = tmp.path().join("stack.yaml");
    std::fs::write(&f, stack).unwrap();
    // The server dies right after Nomad's ACL bootstrap answered.
    std::fs::write(lab.dir.join("data/crashpoint"), "nomad-after-bootstrap").unwrap();
    let t0 = Instant::now();
    lab.ok(&["kubectl", "apply", "-f", f.to_str().unwrap()]);
    lab.wait_server_crash("nomad-after-bootstrap", 240);
    let to_crash = t0.elapsed();
    lab.ok(&[BIN, "lab", "server", "start", "--dir", &dir]);
    let s = wait_ready(&lab, "after the crash", 180);
    eprintln!(
        "apply → Nomad's ACL bootstrap (where the server was aborted): {:.1}s; then all three layers Ready {:.1}s after apply",
        to_crash.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    let layer = |s: &Value, n: &str| -> Value {
        s["status"]["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == n)
            .cloned()
            .unwrap()
    };
    let steps = layer(&s, "scheduling")["bootstrapStepsDone"].to_string();
    for want in [
        "ACLs bootstrapped",
        "namespace metrics",
        "namespace logging",
    ] {
        assert!(steps.contains(want), "{want} not in {steps}");
    }
    let steps = layer(&s, "secrets")["bootstrapStepsDone"].to_string();
    assert!(steps.contains("consul gossip key"), "{steps}");

    // Nomad: the generated token is the management token; anonymous calls are refused.
    let reveal = |c: &str| lab.reveal(c);
    let token = reveal("platform-scheduling-nomad-management");
    let members: Value = serde_json::from_str(&lab.ok(&[
        "kubectl",
        "get",
        "serviceinstances",
        "-l",
        "groundwork.dev/layer=scheduling",
        "-o",
        "json",
    ]))
    .unwrap();
    let nomads: Vec<String> = members["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["spec"]["address"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(nomads.len(), 3);
    let nomad_get = |path: &str, tok: &str| {
        lab.run(
            10,
            &[
                "curl",
                "-s",
                "-w",
                "\n%{http_code}",
                "-H",
                &format!("X-Nomad-Token: {tok}"),
                &format!("http://{}:4646{path}", nomads[1]),
            ],
        )
    };
    let me = support::stdout(&nomad_get("/v1/acl/token/self", &token));
    assert!(me.contains("\"management\"") && me.ends_with("200"), "{me}");
    let anon = support::stdout(&nomad_get("/v1/jobs", ""));
    assert!(anon.ends_with("403"), "{anon}");
    let ns = support::stdout(&nomad_get("/v1/namespaces", &token));
    assert!(
        ns.contains("\"metrics\"") && ns.contains("\"logging\""),
        "{ns}"
    );
    let bootstraps = || -> usize {
        walk(&lab.dir.join("machines"))
            .iter()
            .filter(|p| p.ends_with("bootstrap-calls.log"))
            .map(|p| {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .lines()
                    .count()
            })
            .sum()
    };
    assert_eq!(
        bootstraps(),
        1,
        "Nomad's ACL bootstrap was called more than once"
    );
    // Nomad's config points at the stack's Consul with its token.
    let conf = walk(&lab.dir.join("machines"))
        .into_iter()
        .find(|p| p.ends_with("nomad.json") && p.to_string_lossy().contains("/conf/"))
        .unwrap();
    let conf: Value = serde_json::from_str(&std::fs::read_to_string(conf).unwrap()).unwrap();
    assert!(
        conf["consul"]["address"]
            .as_str()
            .unwrap()
            .ends_with(":8501"),
        "{conf}"
    );
    assert_eq!(conf["consul"]["ssl"], true, "{conf}");
    assert_eq!(
        conf["consul"]["token"].as_str().unwrap().len(),
        36,
        "the Consul token, filled in by the agent"
    );
    // Consul answers the Nomad servers by name (the catalog holds every instance).
    let consuls: Value = serde_json::from_str(&lab.ok(&[
        "kubectl",
        "get",
        "serviceinstances",
        "-l",
        "groundwork.dev/layer=connectivity",
        "-o",
        "json",
    ]))
    .unwrap();
    let c0 = consuls["items"][0]["spec"]["address"]
        .as_str()
        .unwrap()
        .to_string();
    // Nomad's Consul token is its own (policy nomad-scheduling), not the management token.
    let nomad_consul = reveal("platform-scheduling-consul-nomad");
    assert_eq!(conf["consul"]["token"].as_str().unwrap(), nomad_consul);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = lab.run(
            5,
            &[
                "curl",
                "-sf",
                "-H",
                &format!("X-Consul-Token: {nomad_consul}"),
                &format!("https://{c0}:8501/v1/acl/token/self"),
            ],
        );
        if support::stdout(&o).contains("\"nomad-scheduling\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Nomad's Consul token is not in Consul: {}",
            text(&o)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut want = nomads.clone();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = lab.ok(&[
            "dig",
            &format!("@{c0}"),
            "-p",
            "8600",
            "nomad.service.consul",
            "+short",
        ]);
        let mut got: Vec<String> = out
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        got.sort();
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nomad.service.consul: {got:?}, not {want:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // All four machines lose power, then come back: the three layers are Ready again with
    // no manual step (Vault unsealed by Groundwork, Consul and Nomad from their data), and
    // nothing is bootstrapped again.
    for i in 1..=4 {
        lab.ok(&[BIN, "lab", "machine", "stop", &i.to_string(), "--dir", &dir]);
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    while ready(&lab).is_some() {
        assert!(Instant::now() < deadline, "the power cut was not noticed");
        std::thread::sleep(Duration::from_millis(500));
    }
    let t1 = Instant::now();
    for i in 1..=4 {
        lab.ok(&[
            BIN,
            "lab",
            "machine",
            "start",
            &i.to_string(),
            "--dir",
            &dir,
        ]);
    }
    wait_ready(&lab, "after a full power cut", 300);
    eprintln!(
        "full power cut: the three layers Ready again {:.1}s after power on",
        t1.elapsed().as_secs_f64()
    );
    assert_eq!(bootstraps(), 1, "Nomad's ACLs were bootstrapped again");
    let me = support::stdout(&nomad_get("/v1/acl/token/self", &token));
    assert!(me.ends_with("200"), "{me}");

    // No secret in a log, an API answer or the raw store.
    let mut logs = std::fs::read_to_string(lab.dir.join("server.log")).unwrap();
    for p in walk(&lab.dir.join("machines")) {
        let n = p.to_string_lossy().to_string();
        if n.ends_with(".log") || n.contains("/log/") {
            logs += &std::fs::read_to_string(&p).unwrap_or_default();
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
    // The reveals above are audited: the audit log names them, holds no value.
    let audit = std::fs::read_to_string(tmp.path().join("audit.log")).unwrap();
    assert!(
        audit.lines().any(|l| l.contains("\"verb\":\"use\"")
            && l.contains("platform-scheduling-nomad-management")),
        "the reveals are not audited: {audit}"
    );
    logs += &audit;
    let vault: Value = serde_json::from_str(&reveal("platform-secrets-vault-init")).unwrap();
    let mut secrets = vec![
        ("nomad management token", token.clone()),
        (
            "consul management token",
            reveal("platform-connectivity-consul-management"),
        ),
        (
            "consul gossip key",
            reveal("platform-connectivity-consul-gossip"),
        ),
        (
            "vault root token",
            vault["rootToken"].as_str().unwrap().to_string(),
        ),
        (
            "Groundwork's vault token",
            reveal("platform-secrets-vault-token"),
        ),
        ("Nomad's consul token", nomad_consul.clone()),
        (
            "consul AppRole secret ID",
            reveal("platform-secrets-approle-consul"),
        ),
    ];
    for k in vault["keys"].as_array().unwrap() {
        secrets.push(("vault key share", k.as_str().unwrap().to_string()));
    }
    for (what, v) in &secrets {
        assert!(!logs.contains(v.as_str()), "the {what} is in a log");
        assert!(!api.contains(v.as_str()), "the {what} is in an API answer");
        assert!(
            !store.windows(v.len()).any(|w| w == v.as_bytes()),
            "the {what} is in the raw store"
        );
    }
}

/// The server dies just before Nomad's ACL bootstrap call: after a restart the bootstrap
/// runs once, with the token generated before the crash.
#[test]
fn nomad_bootstrap_survives_a_crash_just_before_the_call() {
    let nomad = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/doubles/nomad");
    let id = std::process::id() % 100_000;
    let tmp = tempfile::tempdir().unwrap();
    let lab = support::NetnsLab::new(&format!("gwnb-{id}"), tmp.path().join("lab"));
    let dir = lab.dir.to_str().unwrap().to_string();
    lab.up(&format!("n{}", id % 10_000), 3, &[]);
    let art = lab.dir.join("boot/artifacts/nomad");
    std::fs::copy(&nomad, &art).unwrap();
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
    - name: scheduling
      services: [nomad]
      placement: {{count: 3}}
      config:
        nomad:
          artifact: {{url: "http://10.97.0.1:8080/artifacts/nomad", sha256: "{}"}}
"#,
            sha256_hex(&art)
        ),
    )
    .unwrap();
    std::fs::write(lab.dir.join("data/crashpoint"), "nomad-before-bootstrap").unwrap();
    lab.ok(&["kubectl", "apply", "-f", f.to_str().unwrap()]);
    lab.wait_server_crash("nomad-before-bootstrap", 120);
    let calls = || -> usize {
        walk(&lab.dir.join("machines"))
            .iter()
            .filter(|p| p.ends_with("bootstrap-calls.log"))
            .map(|p| {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .lines()
                    .count()
            })
            .sum()
    };
    assert_eq!(calls(), 0, "the crash point is before the call");
    lab.ok(&[BIN, "lab", "server", "start", "--dir", &dir]);
    wait_ready(&lab, "after the crash", 120);
    assert_eq!(calls(), 1);
    let token = lab.reveal("platform-scheduling-nomad-management");
    let o = lab.run(
        10,
        &[
            "curl",
            "-sf",
            "-H",
            &format!("X-Nomad-Token: {token}"),
            "http://10.97.0.11:4646/v1/acl/token/self",
        ],
    );
    assert!(support::stdout(&o).contains("management"), "{}", text(&o));
}
