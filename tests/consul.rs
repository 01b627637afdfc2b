//! The connectivity layer against a real Consul 1.8.7 (Debian 11's package, fetched by
//! `tests/run` into /var/tmp/groundwork-consul without touching the system's apt sources):
//! three servers on namespace machines from nothing, with the gossip key and the ACL
//! management token generated once by Groundwork (Credentials, sealed), ACLs default-deny,
//! DNS answering for the anonymous token, and neither secret in any log or API answer.
//! Needs root.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{BIN, sha256_hex, text};

fn consul_binary() -> PathBuf {
    let p = PathBuf::from(
        std::env::var("GW_CONSUL_BIN")
            .unwrap_or_else(|_| "/var/tmp/groundwork-consul/root/usr/bin/consul".into()),
    );
    assert!(
        p.exists(),
        "{} is missing: tests/run fetches Consul 1.8.7 from Debian 11's archive (tests/fetch-consul.sh)",
        p.display()
    );
    p
}

#[test]
fn consul_servers_bootstrap_with_generated_secrets_and_acls() {
    let consul = consul_binary();
    let id = std::process::id() % 100_000;
    let tmp = tempfile::tempdir().unwrap();
    let lab = support::NetnsLab::new(&format!("gwcon-{id}"), tmp.path().join("lab"));
    let name = format!("c{}", id % 10_000);
    lab.ok(&[
        BIN,
        "lab",
        "up",
        "--netns",
        "--no-stack",
        "--machines",
        "4",
        "--name",
        &name,
        "--dir",
        lab.dir.to_str().unwrap(),
    ]);
    let art = lab.dir.join("boot/artifacts/consul");
    std::fs::copy(&consul, &art).unwrap();
    let stack = format!(
        r#"apiVersion: groundwork.dev/v1alpha1
kind: ServiceStack
metadata: {{name: platform}}
spec:
  datacenter: lab
  layers:
    - name: connectivity
      services: [consul, consul-client]
      placement: {{count: 3}}
      config:
        consul:
          artifact: {{url: "http://10.97.0.1:8080/artifacts/consul", sha256: "{}"}}
    - name: metrics
      services: [node-exporter]
      dependsOn: [connectivity]
"#,
        sha256_hex(&art)
    );
    let f = tmp.path().join("stack.yaml");
    std::fs::write(&f, stack).unwrap();
    let t0 = Instant::now();
    lab.ok(&["kubectl", "apply", "-f", f.to_str().unwrap()]);
    lab.ok(&[
        "kubectl",
        "wait",
        "--for=condition=Ready",
        "servicestack/platform",
        "--timeout=180s",
    ]);
    let took = t0.elapsed();
    eprintln!(
        "connectivity layer Ready {:.1}s after apply",
        took.as_secs_f64()
    );

    // The generated secrets are Credentials, sealed: no value comes back from the API.
    for c in [
        "platform-connectivity-consul-gossip",
        "platform-connectivity-consul-management",
    ] {
        let v: Value =
            serde_json::from_str(&lab.ok(&["kubectl", "get", "credential", c, "-o", "json"]))
                .unwrap();
        assert!(v["spec"]["password"].is_null(), "{c}: {v}");
    }
    let members: Value = serde_json::from_str(&lab.ok(&[
        "kubectl",
        "get",
        "serviceinstances",
        "-l",
        "groundwork.dev/layer=connectivity",
        "-o",
        "json",
    ]))
    .unwrap();
    let all = members["items"].as_array().unwrap().clone();
    let items: Vec<Value> = all
        .iter()
        .filter(|i| i["spec"]["service"] == "consul")
        .cloned()
        .collect();
    assert_eq!(items.len(), 3);
    // The fourth machine runs a client agent, joined to the servers.
    let clients: Vec<&Value> = all
        .iter()
        .filter(|i| i["spec"]["service"] == "consul-client")
        .collect();
    assert_eq!(clients.len(), 1, "{all:?}");
    assert!(
        !items
            .iter()
            .any(|i| i["spec"]["node"] == clients[0]["spec"]["node"]),
        "a client beside a server"
    );
    let addr = items[0]["spec"]["address"].as_str().unwrap().to_string();
    let node = items[0]["spec"]["node"].as_str().unwrap().to_string();
    let iname = items[0]["metadata"]["name"].as_str().unwrap().to_string();

    // Three servers agree on a leader.
    let peers: Value = serde_json::from_str(&lab.ok(&[
        "curl",
        "-sf",
        &format!("https://{addr}:8501/v1/status/peers"),
    ]))
    .unwrap();
    assert_eq!(peers.as_array().unwrap().len(), 3, "{peers}");
    // TLS: HTTPS on the address with a certificate from the cluster CA (curl checked it)
    // naming server.dc1.consul, as verify_server_hostname requires of servers; plain HTTP
    // on loopback only. RPC is verified both ways: the client agent below could not have
    // joined without its own certificate.
    let plain = lab.run(
        5,
        &[
            "curl",
            "-sf",
            &format!("http://{addr}:8500/v1/status/peers"),
        ],
    );
    assert!(!plain.status.success(), "plain HTTP answers on the address");
    let sans = lab.ok(&[
        "sh",
        "-c",
        &format!(
            "openssl s_client -connect {addr}:8501 </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName"
        ),
    ]);
    assert!(sans.contains("DNS:server.dc1.consul"), "{sans}");
    assert!(sans.contains(&format!("IP Address:{addr}")), "{sans}");

    // The config on the machine carries the generated values; read them there (as an
    // operator with root on the machine could) to check where they must not be.
    let i: u8 = node.trim_start_matches("lab-").parse().unwrap();
    // `current` points at the version inside the machine's own mount namespace.
    let idir = lab
        .dir
        .join(format!("machines/n{i}/var-lib-groundwork/services/{iname}"));
    let version = std::fs::read_link(idir.join("current")).unwrap();
    let conf = idir
        .join("conf")
        .join(version.file_name().unwrap())
        .join("consul.json");
    let conf: Value = serde_json::from_str(&std::fs::read_to_string(&conf).unwrap()).unwrap();
    let gossip = conf["encrypt"].as_str().unwrap().to_string();
    let master = conf["acl"]["tokens"]["master"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(gossip.len(), 44, "a base64 32-byte key: {gossip}");
    assert_eq!(master.len(), 36, "a UUID: {master}");

    // ACLs: default deny for the anonymous token, the management token is global-management.
    let o = lab.run(
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
            "v",
            &format!("https://{addr}:8501/v1/kv/groundwork-test"),
        ],
    );
    assert_eq!(
        support::stdout(&o),
        "403",
        "an anonymous KV write was allowed"
    );
    let me = lab.ok(&[
        "curl",
        "-sf",
        "-H",
        &format!("X-Consul-Token: {master}"),
        &format!("https://{addr}:8501/v1/acl/token/self"),
    ]);
    assert!(me.contains("global-management"), "{me}");
    // A second bootstrap is refused: the management token came from the config.
    let again = lab.run(
        10,
        &[
            "curl",
            "-s",
            "-X",
            "PUT",
            &format!("https://{addr}:8501/v1/acl/bootstrap"),
        ],
    );
    assert!(
        support::stdout(&again).contains("no longer allowed")
            || support::stdout(&again).contains("Permission denied"),
        "{}",
        text(&again)
    );

    // DNS answers for the anonymous token: the consul service has the three servers.
    // (The anonymous token's new policy reaches every server's ACL cache within seconds.)
    let mut want: Vec<String> = items
        .iter()
        .map(|i| i["spec"]["address"].as_str().unwrap().to_string())
        .collect();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let answers = lab.ok(&[
            "dig",
            &format!("@{addr}"),
            "-p",
            "8600",
            "consul.service.consul",
            "+short",
        ]);
        let mut ips: Vec<String> = answers
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        ips.sort();
        if ips == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "DNS: {ips:?}, not the three servers {want:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Each server has its own agent token (not the management token), created in Consul
    // by Groundwork with the AccessorID it chose, with a policy for its own node only.
    let agent = conf["acl"]["tokens"]["agent"].as_str().unwrap().to_string();
    assert_eq!(agent.len(), 36, "{agent}");
    assert_ne!(agent, master, "the agent token is the management token");
    let agent_tokens = || -> Vec<Value> {
        let all: Value = serde_json::from_str(&lab.ok(&[
            "curl",
            "-sf",
            "-H",
            &format!("X-Consul-Token: {master}"),
            &format!("https://{addr}:8501/v1/acl/tokens"),
        ]))
        .unwrap();
        all.as_array()
            .unwrap()
            .iter()
            .filter(|t| {
                t["Description"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("Groundwork: the agent on")
            })
            .cloned()
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent_tokens().len() < 4 {
        assert!(
            Instant::now() < deadline,
            "agent tokens: {:?}",
            agent_tokens()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Four agents: three servers and the client, all alive.
    let ms: Value = serde_json::from_str(&lab.ok(&[
        "curl",
        "-sf",
        "-H",
        &format!("X-Consul-Token: {master}"),
        &format!("https://{addr}:8501/v1/agent/members"),
    ]))
    .unwrap();
    let alive: Vec<(String, String)> = ms
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["Status"] == 1)
        .map(|m| {
            (
                m["Name"].as_str().unwrap().to_string(),
                m["Tags"]["role"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(alive.len(), 4, "{alive:?}");
    assert_eq!(
        alive.iter().filter(|(_, r)| r == "node").count(),
        1,
        "{alive:?}"
    );
    let client_addr = clients[0]["spec"]["address"].as_str().unwrap();
    let leader = lab.ok(&[
        "curl",
        "-sf",
        &format!("https://{client_addr}:8501/v1/status/leader"),
    ]);
    assert!(
        leader.contains(':'),
        "the client does not reach the servers: {leader}"
    );
    let me = lab.ok(&[
        "curl",
        "-sf",
        "-H",
        &format!("X-Consul-Token: {agent}"),
        &format!("https://{addr}:8501/v1/acl/token/self"),
    ]);
    assert!(me.contains(&format!("agent-{node}")), "{me}");
    assert!(!me.contains("global-management"), "{me}");

    // Every instance is in the catalog with its health: node-exporter on all four machines.
    let dns = |name: &str| -> Vec<String> {
        let out = lab.ok(&["dig", &format!("@{addr}"), "-p", "8600", name, "+short"]);
        let mut v: Vec<String> = out
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        v.sort();
        v
    };
    let all4: Vec<String> = (1..=4).map(|i| format!("10.97.0.{}", 10 + i)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while dns("node-exporter.service.consul") != all4 {
        assert!(
            Instant::now() < deadline,
            "node-exporter in DNS: {:?}",
            dns("node-exporter.service.consul")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let checks = lab.ok(&[
        "curl",
        "-sf",
        &format!("https://{addr}:8501/v1/health/service/node-exporter?passing=true"),
    ]);
    assert_eq!(
        serde_json::from_str::<Value>(&checks)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        4,
        "{checks}"
    );

    // A machine without a server loses power: its exporter leaves DNS (the instance is
    // gone with the machine), and comes back with it.
    let spare: u8 = (1..=4)
        .find(|m| {
            !items
                .iter()
                .any(|it| it["spec"]["node"] == format!("lab-{m}"))
        })
        .unwrap();
    let dir = lab.dir.to_str().unwrap().to_string();
    lab.ok(&[
        BIN,
        "lab",
        "machine",
        "stop",
        &spare.to_string(),
        "--dir",
        &dir,
    ]);
    let three: Vec<String> = all4
        .iter()
        .filter(|a| **a != format!("10.97.0.{}", 10 + spare))
        .cloned()
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    while dns("node-exporter.service.consul") != three {
        assert!(
            Instant::now() < deadline,
            "a lost machine's exporter stayed in DNS"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    lab.ok(&[
        BIN,
        "lab",
        "machine",
        "start",
        &spare.to_string(),
        "--dir",
        &dir,
    ]);
    let deadline = Instant::now() + Duration::from_secs(90);
    while dns("node-exporter.service.consul") != all4 {
        assert!(
            Instant::now() < deadline,
            "the exporter did not come back to DNS"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Neither secret is in a log, the API or the raw store.
    let mut logs = std::fs::read_to_string(lab.dir.join("server.log")).unwrap();
    for i in 1..=4 {
        logs += &std::fs::read_to_string(lab.dir.join(format!("machines/n{i}/agent.log")))
            .unwrap_or_default();
    }
    let api = lab.ok(&[
        "kubectl",
        "get",
        "credentials,serviceinstances,servicestacks,events",
        "-o",
        "json",
    ]);
    let store = std::fs::read(lab.dir.join("data/groundwork.redb")).unwrap();
    for (what, v) in [
        ("gossip key", &gossip),
        ("management token", &master),
        ("agent token", &agent),
    ] {
        assert!(!logs.contains(v.as_str()), "the {what} is in a log");
        assert!(!api.contains(v.as_str()), "the {what} is in an API answer");
        assert!(
            !store.windows(v.len()).any(|w| w == v.as_bytes()),
            "the {what} is in the raw store"
        );
    }

    // A server's machine loses power and comes back: same secrets, the cluster whole again.
    lab.ok(&[
        BIN,
        "lab",
        "machine",
        "stop",
        &i.to_string(),
        "--dir",
        lab.dir.to_str().unwrap(),
    ]);
    std::thread::sleep(Duration::from_secs(2));
    lab.ok(&[
        BIN,
        "lab",
        "machine",
        "start",
        &i.to_string(),
        "--dir",
        lab.dir.to_str().unwrap(),
    ]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let o = lab.run(
            5,
            &[
                "curl",
                "-sf",
                &format!("https://{addr}:8501/v1/status/leader"),
            ],
        );
        if support::stdout(&o).contains(':') {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted server found no leader"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // (A restarted server resolves tokens again once it has caught up with the leader.)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = lab.run(
            10,
            &[
                "curl",
                "-s",
                "-H",
                &format!("X-Consul-Token: {master}"),
                &format!("https://{addr}:8501/v1/acl/token/self"),
            ],
        );
        let me = support::stdout(&o);
        if me.contains("global-management") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the management token no longer works after the restart: {me}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // No agent token was made twice.
    assert_eq!(agent_tokens().len(), 4, "{:?}", agent_tokens());
}
