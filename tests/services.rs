//! The service layers on namespace machines, against the real services from Debian:
//! `groundwork lab up --netns --machines 4` brings up four machines (network namespaces
//! running the real node agent) and the platform stack's metrics (Prometheus, Alertmanager,
//! node-exporter), identity (OpenLDAP) and database (MariaDB + Galera 4 behind HAProxy)
//! layers. Then, on the running platform: gating, Prometheus targets, LDAP users, Galera
//! through HAProxy, a promtool refusal that keeps the old config, a wrong sha256 refused, a
//! rolling change with no failed query, a lost machine replaced on the spare, and a full
//! power cut of the database machines that Galera recovers from without losing a row.
//!
//! Everything runs inside a network namespace the test creates (the lab's bridge and
//! machines included) and is removed by the guard, also on failure. Needs root.

mod support;

use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{BIN, run_in, sha256_hex, text};

type Lab = support::NetnsLab;

/// A query as `user` on `host:port`, database `app`.
fn sql_in(
    outer: &str,
    dir: &Path,
    host: &str,
    port: &str,
    user: &str,
    pw: &str,
    q: &str,
) -> Output {
    let pass = format!("-p{pw}");
    run_in(
        outer,
        dir,
        20,
        &[
            "mariadb",
            "-h",
            host,
            "-P",
            port,
            "-u",
            user,
            &pass,
            "--connect-timeout=5",
            "-N",
            "-B",
            "app",
            "-e",
            q,
        ],
    )
}

impl Lab {
    fn lab(&self, args: &[&str]) -> String {
        let mut a = vec![BIN, "lab"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--dir", self.dir.to_str().unwrap()]);
        self.ok(&a)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["kubectl", "get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    fn stack(&self) -> Value {
        self.json(&["servicestack", "platform"])
    }

    fn layer(&self, name: &str) -> Value {
        let s = self.stack();
        s["status"]["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    }

    fn instances(&self, layer: &str) -> Vec<Value> {
        let v = self.json(&[
            "serviceinstances",
            "-l",
            &format!("groundwork.dev/layer={layer}"),
        ]);
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// `service`'s members in `layer`: (node, address).
    fn members(&self, layer: &str, service: &str) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .instances(layer)
            .iter()
            .filter(|i| i["spec"]["service"] == service)
            .map(|i| {
                (
                    i["spec"]["node"].as_str().unwrap().to_string(),
                    i["spec"]["address"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        v.sort();
        v
    }

    fn phase(&self, layer: &str) -> String {
        self.layer(layer)["phase"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Waits until the whole stack is Ready for its current generation.
    fn wait_ready(&self, what: &str, secs: u64) {
        self.eventually(what, secs, || {
            let s = self.stack();
            let ready = s["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            (ready && s["status"]["observedGeneration"] == s["metadata"]["generation"])
                .then_some(())
        });
    }

    /// Polls `f` every 500 ms until it gives a value; fails after `secs` with the stack's
    /// status and the lab's logs.
    fn eventually<T>(&self, what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > deadline {
                let status = self.stack()["status"].clone();
                panic!(
                    "timed out after {secs} s waiting for {what}\nstack status: {}\ninstances: {}\nserver log:\n{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default(),
                    self.ok(&[
                        "kubectl",
                        "get",
                        "serviceinstances",
                        "-o",
                        "custom-columns=NAME:.metadata.name,NODE:.spec.node,PHASE:.status.phase,READY:.status.ready,MSG:.status.message"
                    ]),
                    tail(&self.dir.join("server.log"), 30)
                        + &(1..=4)
                            .map(|i| {
                                format!(
                                    "\nlab-{i} agent log:\n{}",
                                    tail(&self.dir.join(format!("machines/n{i}/agent.log")), 12)
                                )
                            })
                            .collect::<String>()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// A Credential's password, from the manifests the lab applied.
    fn password(&self, credential: &str) -> String {
        let y = std::fs::read_to_string(self.dir.join("manifests/platform.yaml")).unwrap();
        let mut lines = y.lines();
        while let Some(l) = lines.next() {
            if l.contains(&format!("name: {credential}}}")) {
                let spec = lines.next().unwrap();
                return spec
                    .split("password: \"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap()
                    .to_string();
            }
        }
        panic!("no Credential {credential} in platform.yaml")
    }

    fn sql(&self, host: &str, port: &str, user: &str, pw: &str, q: &str) -> Output {
        sql_in(&self.outer, &self.dir, host, port, user, pw, q)
    }

    fn patch(&self, patch: &str) {
        self.ok(&[
            "kubectl",
            "patch",
            "servicestack",
            "platform",
            "--type=json",
            "-p",
            patch,
        ]);
    }
}

fn tail(p: &Path, n: usize) -> String {
    let t = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn layer_index(stack: &Value, name: &str) -> usize {
    stack["spec"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .position(|l| l["name"] == name)
        .unwrap()
}

#[test]
fn the_platform_layers_converge_and_survive_changes_and_failures() {
    let id = std::process::id() % 100_000;
    let name = format!("s{}", id % 10_000);
    let outer = format!("gwsvc-{id}");
    let tmp = tempfile::tempdir().unwrap();
    let lab = Lab::new(&outer, tmp.path().join("lab"));

    // 1. Up: four machines, then the stack, its layers shown as they progress.
    let o = lab.run(
        420,
        &[
            BIN,
            "lab",
            "up",
            "--netns",
            "--machines",
            "4",
            "--name",
            &name,
            "--timeout",
            "300",
            "--dir",
            lab.dir.to_str().unwrap(),
        ],
    );
    let up = text(&o);
    assert!(o.status.success(), "lab up:\n{up}");
    // Gating: identity and database wait for metrics, and say so (the controller's lines
    // for the stack); none of their members is placed before every metrics member has
    // reported ready.
    let log = std::fs::read_to_string(lab.dir.join("server.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let first = |f: &dyn Fn(&str) -> bool, what: &str| {
        lines
            .iter()
            .position(|l| f(l))
            .unwrap_or_else(|| panic!("no {what} in the server log"))
    };
    let metrics_members_ready = [
        "prometheus-lab-",
        "alertmanager-lab-",
        "node-exporter-lab-1",
        "node-exporter-lab-2",
        "node-exporter-lab-3",
        "node-exporter-lab-4",
    ]
    .iter()
    .map(|m| {
        first(
            &|l| l.contains("instance report") && l.contains(m) && l.contains("ready=true"),
            m,
        )
    })
    .max()
    .unwrap();
    for l in ["identity", "database"] {
        let waited = first(
            &|x| {
                x.contains(&format!(
                    "layer {l} is Pending: waiting for layer metrics to be Ready"
                ))
            },
            "the waiting line",
        );
        let placed = first(
            &|x| x.contains(&format!("placing a member instance=platform-{l}-")),
            "the placement",
        );
        assert!(
            waited < metrics_members_ready && metrics_members_ready < placed,
            "{l}: waited at line {waited}, metrics members ready by line {metrics_members_ready}, placed at {placed}"
        );
    }
    assert!(
        up.contains("lab: stack platform: all 3 layers Ready"),
        "{up}"
    );

    // 2. kubectl waits on the stack's condition; members show phase and health.
    lab.ok(&[
        "kubectl",
        "wait",
        "--for=condition=Ready",
        "servicestack/platform",
        "--timeout=60s",
    ]);
    let table = lab.ok(&[
        "kubectl",
        "get",
        "serviceinstances",
        "-l",
        "groundwork.dev/layer=metrics",
    ]);
    assert_eq!(
        table.lines().filter(|l| l.contains("Running")).count(),
        6,
        "prometheus, alertmanager and 4 node-exporters:\n{table}"
    );

    // 3. Prometheus scrapes every exporter and Groundwork itself.
    let (_, prom) = lab.members("metrics", "prometheus")[0].clone();
    let targets_url = format!("http://{prom}:9090/api/v1/targets");
    let jobs = lab.eventually("every Prometheus target up", 90, || {
        let o = lab.run(10, &["curl", "-sf", &targets_url]);
        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
        let active = v["data"]["activeTargets"].as_array()?.clone();
        let all_up = !active.is_empty() && active.iter().all(|t| t["health"] == "up");
        all_up.then(|| {
            active
                .iter()
                .map(|t| t["labels"]["job"].as_str().unwrap_or("").to_string())
                .collect::<Vec<_>>()
        })
    });
    for job in ["groundwork", "node-exporter", "haproxy", "prometheus"] {
        assert!(jobs.iter().any(|j| j == job), "no {job} target: {jobs:?}");
    }
    assert_eq!(
        jobs.iter().filter(|j| *j == "node-exporter").count(),
        4,
        "{jobs:?}"
    );

    // 4. The directory: the admin finds alice, and alice binds with her password.
    let (_, ldap) = lab.members("identity", "openldap")[0].clone();
    let ldap_url = format!("ldap://{ldap}:389");
    let base = "dc=lab,dc=example,dc=org";
    let found = lab.ok(&[
        "ldapsearch",
        "-x",
        "-H",
        &ldap_url,
        "-D",
        &format!("cn=admin,{base}"),
        "-w",
        &lab.password("lab-ldap-admin"),
        "-b",
        base,
        "(uid=alice)",
        "mail",
        "memberOf",
    ]);
    assert!(found.contains("mail: alice@example.org"), "{found}");
    let who = lab.ok(&[
        "ldapwhoami",
        "-x",
        "-H",
        &ldap_url,
        "-D",
        &format!("uid=alice,ou=people,{base}"),
        "-w",
        &lab.password("lab-ldap-alice"),
    ]);
    assert!(who.contains("uid=alice"), "{who}");
    let wrong = lab.run(
        10,
        &[
            "ldapwhoami",
            "-x",
            "-H",
            &ldap_url,
            "-D",
            &format!("uid=alice,ou=people,{base}"),
            "-w",
            "not-her-password",
        ],
    );
    assert!(!wrong.status.success(), "a wrong password bound");

    // 5. Galera through HAProxy: a write through one router is on every member.
    let db = lab.members("database", "mysql");
    let routers = lab.members("database", "haproxy");
    assert_eq!(db.len(), 3, "{db:?}");
    assert_eq!(routers.len(), 3);
    let app_pw = lab.password("lab-db-app");
    let router = routers[0].1.clone();
    let via_router = |q: &str| lab.sql(&router, "3307", "app", &app_pw, q);
    let o = via_router(
        "CREATE TABLE IF NOT EXISTS t (id INT AUTO_INCREMENT PRIMARY KEY, v INT); INSERT INTO t (v) VALUES (42)",
    );
    assert!(o.status.success(), "{}", text(&o));
    for (node, addr) in &db {
        let o = lab.sql(
            addr,
            "3306",
            "app",
            &app_pw,
            "SELECT COUNT(*) FROM t WHERE v = 42",
        );
        assert_eq!(support::stdout(&o).trim(), "1", "{node}: {}", text(&o));
    }

    // 5b. Identity, not addresses: a machine's certificate reads its own instances only,
    //     and cannot fetch another machine's secret or report on its instance.
    let ldap_node = lab.members("identity", "openldap")[0].0.clone();
    let ldap_instance = lab.instances("identity")[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let li: u8 = ldap_node.trim_start_matches("lab-").parse().unwrap();
    let me = li % 4 + 1;
    let creds: Value = serde_json::from_str(
        &std::fs::read_to_string(lab.dir.join(format!(
            "machines/n{me}/var-lib-groundwork/credentials.json"
        )))
        .unwrap(),
    )
    .unwrap();
    let pem = |k: &str, f: &str| {
        let p = tmp.path().join(f);
        std::fs::write(&p, creds[k].as_str().unwrap()).unwrap();
        p.display().to_string()
    };
    let (ca, crt, key) = (
        pem("ca", "ca.pem"),
        pem("certificate", "m.crt"),
        pem("key", "m.key"),
    );
    let agent_api = |method: &str, path: &str, body: &str| -> (String, String) {
        let out = tmp.path().join("body");
        let _ = std::fs::remove_file(&out);
        let o = lab.run(
            15,
            &[
                "curl",
                "-s",
                "-X",
                method,
                "--cacert",
                &ca,
                "--cert",
                &crt,
                "--key",
                &key,
                "--resolve",
                "groundwork-boot:8443:10.97.0.1",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
                "-o",
                out.to_str().unwrap(),
                "-w",
                "%{http_code}",
                &format!("https://groundwork-boot:8443{path}"),
            ],
        );
        let code = support::stdout(&o);
        (code, std::fs::read_to_string(&out).unwrap_or_default())
    };
    let mac = |i: u8| format!("52:54:00:97:00:{i:02x}");
    let (code, body) = agent_api("GET", &format!("/agent/instances?mac={}", mac(me)), "");
    assert_eq!(code, "200", "{body}");
    let own: Value = serde_json::from_str(&body).unwrap();
    let nodes: Vec<String> = own["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["spec"]["node"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !nodes.is_empty() && nodes.iter().all(|n| *n == format!("lab-{me}")),
        "{nodes:?}"
    );
    let (code, body) = agent_api("GET", &format!("/agent/instances?mac={}", mac(li)), "");
    assert!(
        code == "403" || code == "401",
        "another machine's instances: {code} {body}"
    );
    let admin_pw = lab.password("lab-ldap-admin");
    let (code, body) = agent_api(
        "GET",
        &format!(
            "/agent/secret?mac={}&instance={ldap_instance}&credential=lab-ldap-admin",
            mac(me)
        ),
        "",
    );
    assert_eq!(code, "403", "another machine's secret: {body}");
    assert!(!body.contains(&admin_pw));
    // A certificate for another machine's instance, or for an instance that asks for none.
    let (code, body) = agent_api(
        "POST",
        &format!(
            "/agent/certificate?mac={}&instance={ldap_instance}",
            mac(me)
        ),
        "not even a request",
    );
    assert_eq!(code, "403", "another machine's certificate: {body}");
    assert!(body.contains("does not run on this machine"), "{body}");
    let (code, body) = agent_api(
        "POST",
        &format!("/agent/instances?mac={}", mac(me)),
        &format!(
            r#"{{"reports":[{{"name":"{ldap_instance}","configDigest":"x","status":{{"phase":"Failed"}}}}]}}"#
        ),
    );
    assert_eq!(
        code, "403",
        "a report on another machine's instance: {body}"
    );
    assert_eq!(
        lab.phase("identity"),
        "Ready",
        "a refused report changed the layer"
    );
    for (what, pw) in [
        ("the LDAP admin", admin_pw.clone()),
        ("the database root", lab.password("lab-db-root")),
        ("alice", lab.password("lab-ldap-alice")),
    ] {
        let logs = std::fs::read_to_string(lab.dir.join("server.log")).unwrap()
            + &(1..=4)
                .map(|i| {
                    std::fs::read_to_string(lab.dir.join(format!("machines/n{i}/agent.log")))
                        .unwrap_or_default()
                })
                .collect::<String>();
        assert!(!logs.contains(&pw), "{what}'s password is in a log");
        let stored = lab.ok(&[
            "kubectl",
            "get",
            "serviceinstances,servicestacks",
            "-o",
            "json",
        ]);
        assert!(!stored.contains(&pw), "{what}'s password is in the API");
    }

    // 6. A rule promtool refuses: the layer fails naming the field; Prometheus keeps the
    //    old rules and stays ready.
    let stack = lab.stack();
    let mi = layer_index(&stack, "metrics");
    let expr = format!("/spec/layers/{mi}/config/prometheus/ruleGroups/0/rules/0/expr");
    lab.patch(&format!(
        r#"[{{"op":"replace","path":"{expr}","value":"up == == 0"}}]"#
    ));
    let why = lab.eventually("the metrics layer Failed by promtool", 60, || {
        let l = lab.layer("metrics");
        (l["phase"] == "Failed").then(|| l["waitingFor"].as_str().unwrap_or("").to_string())
    });
    assert!(why.contains("promtool"), "{why}");
    assert!(
        why.contains(&format!(
            "spec.layers[{mi}].config.prometheus.ruleGroups[0].rules[0].expr"
        )),
        "{why}"
    );
    let rules = lab.ok(&["curl", "-sf", &format!("http://{prom}:9090/api/v1/rules")]);
    assert!(rules.contains("up == 0"), "the old rule is gone: {rules}");
    lab.ok(&["curl", "-sf", &format!("http://{prom}:9090/-/ready")]);
    lab.patch(&format!(
        r#"[{{"op":"replace","path":"{expr}","value":"up == 0"}}]"#
    ));
    lab.wait_ready("the stack Ready with the rule fixed", 90);

    // 7. An artifact whose sha256 is wrong is refused; the right one runs.
    let artifacts = lab.dir.join("boot/artifacts");
    let exporter = artifacts.join("node_exporter");
    std::fs::copy("/usr/bin/prometheus-node-exporter", &exporter).unwrap();
    let good = sha256_hex(&exporter);
    let url = "http://10.97.0.1:8080/artifacts/node_exporter";
    let ne = format!("/spec/layers/{mi}/config/nodeExporter");
    lab.patch(&format!(
        r#"[{{"op":"add","path":"{ne}","value":{{"artifact":{{"url":"{url}","sha256":"{}"}}}}}}]"#,
        "0".repeat(64)
    ));
    let why = lab.eventually("the wrong sha256 refused", 90, || {
        let l = lab.layer("metrics");
        (l["phase"] == "Failed").then(|| l["waitingFor"].as_str().unwrap_or("").to_string())
    });
    assert!(why.contains("sha256") && why.contains("refused"), "{why}");
    assert!(
        why.contains(&format!(
            "spec.layers[{mi}].config.nodeExporter.artifact.sha256"
        )),
        "{why}"
    );
    lab.patch(&format!(
        r#"[{{"op":"replace","path":"{ne}/artifact/sha256","value":"{good}"}}]"#
    ));
    lab.wait_ready("node-exporter running the fetched artifact", 120);
    let ps = lab.ok(&["ps", "-eo", "args"]);
    let from_store = ps
        .lines()
        .filter(|l| l.starts_with('/') && l.contains(&good) && l.contains("--web.listen-address"))
        .count();
    assert_eq!(
        from_store, 4,
        "node-exporters run from the artifact store:\n{ps}"
    );

    // 8. A rolling change of the database layer under a query loop through HAProxy:
    //    members restart one at a time, each leaving the routers first; no query fails.
    let ok_queries = Arc::new(AtomicUsize::new(0));
    let failures: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let looping = Arc::new(AtomicBool::new(true));
    let handle = {
        let (ok_queries, failures, looping) =
            (ok_queries.clone(), failures.clone(), looping.clone());
        let (outer, dir, router, pw) = (
            outer.clone(),
            lab.dir.clone(),
            router.clone(),
            app_pw.clone(),
        );
        std::thread::spawn(move || {
            while looping.load(Ordering::SeqCst) {
                let o = sql_in(
                    &outer,
                    &dir,
                    &router,
                    "3307",
                    "app",
                    &pw,
                    "INSERT INTO t (v) VALUES (7); SELECT COUNT(*) FROM t WHERE v = 7",
                );
                if o.status.success() {
                    ok_queries.fetch_add(1, Ordering::SeqCst);
                } else {
                    failures.lock().unwrap().push(text(&o));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let before: Vec<String> = lab
        .instances("database")
        .iter()
        .filter(|i| i["spec"]["service"] == "mysql")
        .map(|i| {
            i["status"]["runningDigest"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    let di = layer_index(&stack, "database");
    lab.patch(&format!(
        r#"[{{"op":"add","path":"/spec/layers/{di}/config/mysql/databases/-","value":"app2"}}]"#
    ));
    lab.eventually("every mysql member on the new config", 300, || {
        let after: Vec<Value> = lab
            .instances("database")
            .into_iter()
            .filter(|i| i["spec"]["service"] == "mysql")
            .collect();
        let done = after.len() == 3
            && after.iter().all(|i| {
                let d = i["status"]["runningDigest"].as_str().unwrap_or("");
                i["status"]["ready"] == true
                    && d == i["spec"]["configDigest"].as_str().unwrap_or("")
                    && !before.contains(&d.to_string())
            });
        done.then_some(())
    });
    lab.wait_ready("the stack Ready after the rolling change", 60);
    std::thread::sleep(Duration::from_secs(2));
    looping.store(false, Ordering::SeqCst);
    handle.join().unwrap();
    let failed = failures.lock().unwrap().clone();
    let okn = ok_queries.load(Ordering::SeqCst);
    assert!(
        failed.is_empty(),
        "{} of {} queries failed during the rolling change: {:?}",
        failed.len(),
        failed.len() + okn,
        &failed[..failed.len().min(3)]
    );
    assert!(okn > 20, "only {okn} queries ran during the rolling change");
    let o = lab.sql(
        &router,
        "3307",
        "app",
        &app_pw,
        "SHOW DATABASES LIKE 'app2'",
    );
    assert!(
        o.status.success(),
        "app2 was created and granted: {}",
        text(&o)
    );

    // The roll is in the stack's log lines and Events.
    let kc = lab.dir.join("data/kubeconfig");
    let logs = lab.ok(&[
        BIN,
        "--kubeconfig",
        kc.to_str().unwrap(),
        "logs",
        "servicestack/platform",
    ]);
    assert!(logs.contains("rolling a member to a new config"), "{logs}");

    // 9. A lost machine: its member is replaced on the spare, the layer Ready again.
    let db = lab.members("database", "mysql");
    let machines: Vec<String> = (1..=4).map(|i| format!("lab-{i}")).collect();
    let spare = machines
        .iter()
        .find(|m| !db.iter().any(|(n, _)| n == *m))
        .unwrap()
        .clone();
    let (victim, _) = db[0].clone();
    let vi = victim.trim_start_matches("lab-").to_string();
    lab.lab(&["machine", "stop", &vi]);
    lab.eventually("the database layer Degraded", 90, || {
        (lab.phase("database") == "Degraded").then_some(())
    });
    lab.wait_ready("the database layer Ready on the spare", 300);
    let db2 = lab.members("database", "mysql");
    assert!(db2.iter().any(|(n, _)| *n == spare), "{db2:?}");
    assert!(!db2.iter().any(|(n, _)| *n == victim), "{db2:?}");
    let described = lab.ok(&["kubectl", "describe", "servicestack", "platform"]);
    let events = described.split("Events:").nth(1).unwrap_or("");
    assert!(
        events.contains("LayerReady") && events.contains("LayerDegraded"),
        "the layers' phase changes are Events: {described}"
    );
    // Ready is what the members last reported; a member may still be catching up (a donor
    // just after an SST, a member re-joining after the roll), so each read gets 30 s.
    let rows = |addr: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let o = lab.sql(addr, "3306", "app", &app_pw, "SELECT COUNT(*) FROM t");
            if o.status.success() {
                return support::stdout(&o).trim().to_string();
            }
            if Instant::now() > deadline {
                let i = addr
                    .rsplit('.')
                    .next()
                    .unwrap_or("0")
                    .parse::<u32>()
                    .unwrap_or(0)
                    .saturating_sub(10);
                panic!(
                    "{addr}: {}\nlab-{i} agent log:\n{}\ninstances: {}",
                    text(&o),
                    tail(&lab.dir.join(format!("machines/n{i}/agent.log")), 40),
                    lab.ok(&["kubectl", "get", "serviceinstances", "-o", "wide"])
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let count = rows(&db2[0].1);
    for (_, a) in &db2 {
        assert_eq!(rows(a), count, "members disagree");
    }
    lab.lab(&["machine", "start", &vi]);

    // 10. A power cut of all four machines: Galera restarts from the most advanced member
    //     once all have reported their position; no row is lost.
    let idx: Vec<String> = (1..=4).map(|i| i.to_string()).collect();
    for i in &idx {
        lab.lab(&["machine", "stop", i]);
    }
    let why = lab.eventually("the database layer waiting for a majority", 90, || {
        let l = lab.layer("database");
        let w = l["waitingFor"].as_str().unwrap_or("").to_string();
        w.contains("majority").then_some(w)
    });
    assert!(why.contains("no data is lost"), "{why}");
    assert_eq!(
        lab.members("database", "mysql")
            .iter()
            .map(|(n, _)| n.clone())
            .collect::<Vec<_>>(),
        db2.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        "members moved without a majority"
    );
    for i in &idx {
        lab.lab(&["machine", "start", i]);
    }
    lab.wait_ready("Galera recovered from the power cut", 300);
    for (_, a) in &db2 {
        assert_eq!(rows(a), count, "rows lost in the power cut");
    }
    // HAProxy's own checks (`inter 1s rise 2`) see the members up a few seconds after the
    // layer is Ready: writes through it resume within that, bounded.
    let back = Instant::now();
    lab.eventually("writes through the router after recovery", 30, || {
        via_router("INSERT INTO t (v) VALUES (8)")
            .status
            .success()
            .then_some(())
    });
    eprintln!(
        "writes through HAProxy resumed {:.1}s after the layer was Ready",
        back.elapsed().as_secs_f64()
    );

    // 11. Down stops everything the lab started, the machines' services included.
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(lab.dir.join("lab.json")).unwrap()).unwrap();
    let nets: Vec<String> = state["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["net"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(nets.len(), 4);
    let down = lab.lab(&["down"]);
    assert!(down.contains("4 machines' namespaces"), "{down}");
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter(|e| {
            std::fs::read_link(e.path().join("ns/net"))
                .is_ok_and(|l| nets.contains(&l.display().to_string()))
        })
        .filter(|e| {
            // Zombies wait for their parent's reaper; they hold nothing.
            !std::fs::read_to_string(e.path().join("stat")).is_ok_and(|s| s.contains(") Z "))
        })
        .map(|e| std::fs::read_to_string(e.path().join("cmdline")).unwrap_or_default())
        .collect();
    assert!(left.is_empty(), "left running after lab down: {left:?}");
}
