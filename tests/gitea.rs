//! The source-control layer end to end on a namespace machine: Gitea (the double in
//! `tests/doubles/gitea`: Gitea's documented CLI and API, repositories over Debian's real
//! `git http-backend`, push webhooks delivered as Gitea delivers them) is installed with a
//! certificate from the cluster CA; Groundwork creates its administrator once, the platform
//! repository, the push webhook and a GitSource following it. An operator pushes a
//! manifest to Gitea; Gitea's signed webhook reaches Groundwork and the object is applied.
//! Needs root.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{BIN, text};

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> Option<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = ok() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn gitea_layer_makes_the_repository_webhook_and_gitsource_and_a_push_is_applied() {
    let double = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/doubles/gitea");
    let id = std::process::id() % 10_000;
    let tmp = tempfile::tempdir().unwrap();
    let lab = support::NetnsLab::new(&format!("gwgt-{id}"), tmp.path().join("lab"));
    lab.up(
        &format!("gt{}", id % 1000),
        1,
        &["--server-arg=--tls-san=10.97.0.1"],
    );
    // Groundwork's API as the machines reach it (the lab's server listens on loopback).
    let fwd = Guard(
        Command::new("ip")
            .args(["netns", "exec", &lab.outer, "socat"])
            .args([
                "TCP-LISTEN:16444,bind=10.97.0.1,fork,reuseaddr",
                "TCP:127.0.0.1:16443",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let sum = lab.artifact("gitea", &double);
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
    - name: source-control
      services: [gitea]
      placement: {{count: 1}}
      config:
        gitea:
          artifact: {{url: "http://10.97.0.1:8080/artifacts/gitea", sha256: "{sum}"}}
          groundworkUrl: https://10.97.0.1:16444
          gitSourcePath: datacenter
"#
        ),
    )
    .unwrap();
    let t0 = Instant::now();
    lab.ok(&["kubectl", "apply", "-f", f.to_str().unwrap()]);
    let gs = "platform-source-control";
    let st = wait_for("the GitSource applied Gitea's first commit", 180, || {
        let o = lab.run(10, &["kubectl", "get", "gitsource", gs, "-o", "json"]);
        let v: Value = serde_json::from_str(&support::stdout(&o)).ok()?;
        v["status"]["lastAppliedCommit"]
            .as_str()
            .map(|_| v["status"].to_string())
    });
    eprintln!(
        "source-control layer: Gitea Ready, repository, webhook and GitSource applied {:.1}s after apply",
        t0.elapsed().as_secs_f64()
    );
    let s: Value = serde_json::from_str(&lab.ok(&[
        "kubectl",
        "get",
        "servicestack",
        "platform",
        "-o",
        "json",
    ]))
    .unwrap();
    let steps = s["status"]["layers"][0]["bootstrapStepsDone"].to_string();
    for want in [
        "repository groundwork/platform",
        "push webhook to https://10.97.0.1:16444/hooks/gitsource/platform-source-control",
        "GitSource platform-source-control",
    ] {
        assert!(steps.contains(want), "{want} not in {steps}; {st}");
    }
    // An operator pushes a manifest to Gitea.
    let user = lab
        .ok(&[
            "kubectl",
            "get",
            "credential",
            "platform-source-control-gitea-admin",
            "-o",
            "jsonpath={.spec.username}",
        ])
        .trim()
        .to_string();
    let password = lab.reveal("platform-source-control-gitea-admin");
    let ca = lab.dir.join("data/pki/ca.crt");
    let work = tmp.path().join("work");
    let auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    };
    let git = |args: &[&str]| {
        let o = Command::new("ip")
            .args(["netns", "exec", &lab.outer, "git"])
            .args([
                "-c",
                &format!("http.extraHeader=Authorization: Basic {auth}"),
            ])
            .args([
                "-c",
                "user.name=Operator",
                "-c",
                "user.email=ops@example.invalid",
            ])
            .args(args)
            .env("GIT_SSL_CAINFO", &ca)
            .env("GIT_TERMINAL_PROMPT", "0")
            .output()
            .unwrap();
        assert!(o.status.success(), "git {args:?}: {}", text(&o));
        support::stdout(&o)
    };
    let node = "10.97.0.11";
    git(&[
        "clone",
        "-q",
        &format!("https://{node}:3000/groundwork/platform.git"),
        work.to_str().unwrap(),
    ]);
    std::fs::create_dir_all(work.join("datacenter")).unwrap();
    std::fs::write(
        work.join("datacenter/profile.yaml"),
        "apiVersion: groundwork.dev/v1alpha1\nkind: Profile\nmetadata: {name: from-gitea}\nspec: {priority: 5}\n",
    )
    .unwrap();
    let w = work.to_str().unwrap();
    git(&["-C", w, "add", "-A"]);
    git(&["-C", w, "commit", "-q", "-m", "a profile from Gitea"]);
    let t = Instant::now();
    git(&["-C", w, "push", "-q", "origin", "HEAD:main"]);
    wait_for("the pushed Profile applied", 30, || {
        lab.run(10, &["kubectl", "get", "profile", "from-gitea"])
            .status
            .success()
            .then(String::new)
    });
    eprintln!(
        "push to Gitea → applied by Groundwork: {:.2}s",
        t.elapsed().as_secs_f64()
    );
    // It came through Gitea's signed webhook (the GitSource polls every minute), which the
    // double logged as accepted.
    let deliveries: String = support::walk(&lab.dir.join("machines"))
        .iter()
        .filter(|p| p.ends_with("deliveries.log"))
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect();
    assert!(deliveries.contains("HTTP 202"), "{deliveries}");
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "applied by the poll, not the webhook"
    );
    // Nothing made twice: one webhook, one GitSource, after Groundwork restarts.
    let dir = lab.dir.to_str().unwrap().to_string();
    lab.ok(&[BIN, "lab", "server", "stop", "--dir", &dir]);
    lab.ok(&[BIN, "lab", "server", "start", "--dir", &dir]);
    std::thread::sleep(Duration::from_secs(5));
    let hooks = Command::new("ip")
        .args(["netns", "exec", &lab.outer, "curl", "-sf", "--cacert"])
        .arg(&ca)
        .args(["-H", &format!("Authorization: Basic {auth}")])
        .arg(format!(
            "https://{node}:3000/api/v1/repos/groundwork/platform/hooks"
        ))
        .output()
        .unwrap();
    let hooks: Value = serde_json::from_str(&support::stdout(&hooks)).unwrap_or(Value::Null);
    assert_eq!(hooks.as_array().map(Vec::len), Some(1), "{hooks}");
    assert!(!hooks.to_string().contains(&password));
    drop(fwd);
}
