//! GitOps: a signed webhook → the commit applied, p50 and p99 over 50 pushes; and a
//! 1,000-object repository from the GitSource's creation (first fetch) to every object
//! applied. Against a real server (controllers: gitsource) and Debian's `git http-backend`.
//!
//! `cargo bench --bench gitops`. Prints one line per figure. Flux cannot run here (it needs a
//! Kubernetes cluster); its documented defaults are beside the figures in the closing note.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::Server;
use support::git::{GitHttp, push, webhook};

const SECRET: &str = "bench webhook secret";

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(run());
}

async fn status(c: &reqwest::Client, url: &str, name: &str) -> Value {
    let r = c
        .get(format!(
            "{url}/apis/groundwork.dev/v1alpha1/gitsources/{name}"
        ))
        .send()
        .await
        .unwrap();
    r.json::<Value>().await.unwrap_or(Value::Null)["status"].clone()
}

async fn wait_applied(c: &reqwest::Client, url: &str, name: &str, commit: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let st = status(c, url, name).await;
        if st["lastAppliedCommit"] == commit {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{commit} not applied in {secs} s: {st}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn run() {
    let s = Server::start_with(&["--controllers", "gitsource"]);
    let c = support::https_client();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("repos");
    std::fs::create_dir_all(&root).unwrap();
    let bare = root.join("infra.git");
    let ok = |cmd: &mut Command| assert!(cmd.output().unwrap().status.success());
    ok(Command::new("git")
        .args(["init", "-q", "--bare", "-b", "main"])
        .arg(&bare));
    let http = GitHttp::start(&root);
    let work = tmp.path().join("work");
    ok(Command::new("git")
        .args(["clone", "-q"])
        .arg(&bare)
        .arg(&work));
    // 1,000 objects: a Datacenter, 24 Racks, 975 Nodes, in 25 files.
    let dc = "apiVersion: groundwork.dev/v1alpha1\nkind: Datacenter\nmetadata: {name: dc1}\nspec:\n  availabilityZones: [{name: az1}]\n";
    std::fs::write(work.join("00-dc.yaml"), dc).unwrap();
    for r in 0..24 {
        let mut text = format!(
            "apiVersion: groundwork.dev/v1alpha1\nkind: Rack\nmetadata: {{name: rack-{r}}}\nspec: {{datacenter: dc1, availabilityZone: az1}}\n"
        );
        for n in 0..(975 / 24 + 1) {
            let i = r * 41 + n;
            if i >= 975 {
                break;
            }
            text += &format!(
                "---\napiVersion: groundwork.dev/v1alpha1\nkind: Node\nmetadata: {{name: node-{i}}}\nspec: {{online: false, bootMACs: [\"52:54:01:00:{:02x}:{:02x}\"]}}\n",
                i / 256,
                i % 256
            );
        }
        std::fs::write(work.join(format!("rack-{r:02}.yaml")), text).unwrap();
    }
    let first = push(&work, "1,000 objects");
    let setup = tmp.path().join("gs.yaml");
    std::fs::write(
        &setup,
        format!(
            "apiVersion: groundwork.dev/v1alpha1\nkind: Credential\nmetadata: {{name: bench-webhook}}\nspec: {{username: w, password: \"{SECRET}\"}}\n---\napiVersion: groundwork.dev/v1alpha1\nkind: GitSource\nmetadata: {{name: bench}}\nspec:\n  url: http://127.0.0.1:{}/infra.git\n  intervalSeconds: 3600\n  webhookSecret: bench-webhook\n",
            http.port
        ),
    )
    .unwrap();
    let t0 = Instant::now();
    let o = s.kubectl(&["apply", "-f", setup.to_str().unwrap()]);
    assert!(o.status.success(), "{}", support::text(&o));
    wait_applied(&c, &s.url, "bench", &first, 120).await;
    let st = status(&c, &s.url, "bench").await;
    assert_eq!(st["inventory"].as_array().unwrap().len(), 1000);
    println!(
        "gitops: 1,000-object repository, GitSource created → all applied: {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    // 50 pushes, each a signed webhook, timed to the commit applied.
    let mut times = Vec::new();
    for k in 0..50 {
        let f = work.join("rack-00.yaml");
        let text = std::fs::read_to_string(&f).unwrap();
        let next = match text.split_once("spec: {datacenter: dc1, availabilityZone: az1") {
            Some((head, tail)) => {
                let tail = tail.split_once('}').map(|x| x.1).unwrap_or("");
                format!(
                    "{head}spec: {{datacenter: dc1, availabilityZone: az1, location: \"push {k}\"}}{tail}"
                )
            }
            None => panic!("rack-00.yaml: {text}"),
        };
        std::fs::write(&f, next).unwrap();
        let commit = push(&work, &format!("push {k}"));
        let t = Instant::now();
        let url = s.url.clone();
        let code =
            tokio::task::spawn_blocking(move || webhook(&url, "bench", Some(SECRET), "gitea"))
                .await
                .unwrap();
        assert_eq!(code, "202");
        wait_applied(&c, &s.url, "bench", &commit, 30).await;
        times.push(t.elapsed().as_secs_f64());
    }
    let (p50, p99, max) = (
        pct(&mut times.clone(), 0.5),
        pct(&mut times.clone(), 0.99),
        pct(&mut times, 1.0),
    );
    println!(
        "gitops: signed webhook → applied (1,000-object repository, 50 pushes): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        p50 * 1000.0,
        p99 * 1000.0,
        max * 1000.0
    );
}
