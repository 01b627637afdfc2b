//! GitOps: a GitSource follows a bare repository served by Debian's real `git http-backend`
//! (tests/doubles/git-http) and applies, prunes, refuses bad commits, corrects or reports
//! drift, waits for its dependencies, and fetches on a signed Gitea or GitHub webhook only.
//! The GitSource's interval is an hour, so anything applied within the test was applied
//! because of a webhook (or the GitSource's own creation).

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::git::{GitHttp, push};
use support::{Server, text};

const SECRET: &str = "a webhook secret";

fn webhook(s: &Server, name: &str, secret: Option<&str>, header: &str) -> String {
    support::git::webhook(&s.url, name, secret, header)
}

fn get(s: &Server, what: &[&str]) -> Value {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend(["-o", "json"]);
    let o = s.kubectl(&args);
    serde_json::from_str(&String::from_utf8_lossy(&o.stdout)).unwrap_or(Value::Null)
}

/// Waits until the GitSource's status satisfies `ok`; its status.
fn wait_status(
    s: &Server,
    name: &str,
    secs: u64,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let g = get(s, &["gitsource", name]);
        if ok(&g["status"]) {
            return g["status"].clone();
        }
        if Instant::now() > deadline {
            let log: String = s
                .log()
                .lines()
                .filter(|l| l.contains("gitsource"))
                .collect::<Vec<_>>()
                .join("\n");
            panic!(
                "{what}: not within {secs} s; status: {}\nlog:\n{log}",
                g["status"]
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn applied(commit: &str) -> impl Fn(&Value) -> bool + '_ {
    move |st: &Value| st["lastAppliedCommit"] == commit
}

#[test]
fn a_gitsource_applies_prunes_refuses_and_corrects_from_a_real_git_server() {
    let s = Server::start_with(&["--controllers", "gitsource"]);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("repos");
    std::fs::create_dir_all(&root).unwrap();
    let bare = root.join("infra.git");
    let o = Command::new("git")
        .args(["init", "-q", "--bare", "-b", "main"])
        .arg(&bare)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let http = GitHttp::start(&root);
    let work = tmp.path().join("work");
    let o = Command::new("git")
        .args(["clone", "-q"])
        .arg(&bare)
        .arg(&work)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // The example datacenter, as the operators keep it.
    let dir = work.join("datacenter");
    std::fs::create_dir_all(&dir).unwrap();
    for f in std::fs::read_dir(support::manifests()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    let c1 = push(&work, "the example datacenter");

    let setup = tmp.path().join("gitsource.yaml");
    std::fs::write(
        &setup,
        format!(
            r#"apiVersion: groundwork.dev/v1alpha1
kind: Credential
metadata: {{name: infra-webhook}}
spec: {{username: webhook, password: "{SECRET}"}}
---
apiVersion: groundwork.dev/v1alpha1
kind: GitSource
metadata: {{name: infra}}
spec:
  url: http://127.0.0.1:{}/infra.git
  path: datacenter
  intervalSeconds: 3600
  webhookSecret: infra-webhook
"#,
            http.port
        ),
    )
    .unwrap();
    let o = s.kubectl(&["apply", "-f", setup.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let t0 = Instant::now();
    let st = wait_status(&s, "infra", 60, "the first commit applied", applied(&c1));
    eprintln!(
        "first commit applied {:.2}s after the GitSource was created",
        t0.elapsed().as_secs_f64()
    );
    let inventory = st["inventory"].as_array().unwrap().len();
    assert_eq!(inventory, 10, "{st}");
    assert_eq!(st["lastAppliedMessage"], "the example datacenter");
    assert_eq!(st["webhookPath"], "/hooks/gitsource/infra");
    let rack = get(&s, &["rack", "rack-a1"]);
    assert_eq!(
        rack["metadata"]["annotations"]["groundwork.dev/gitsource"], "infra",
        "{rack}"
    );

    // A Rack made by hand: the same kind, never pruned, never taken over.
    let hand = tmp.path().join("hand.yaml");
    std::fs::write(
        &hand,
        "apiVersion: groundwork.dev/v1alpha1\nkind: Rack\nmetadata: {name: by-hand}\nspec: {datacenter: dc1, availabilityZone: az1}\n",
    )
    .unwrap();
    let o = s.kubectl(&["apply", "-f", hand.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));

    // The webhook: unsigned and wrongly signed calls get 401 and fetch nothing.
    let before = http.fetches();
    assert_eq!(webhook(&s, "infra", None, "gitea"), "401");
    assert_eq!(webhook(&s, "infra", Some("not the secret"), "gitea"), "401");
    assert_eq!(
        webhook(&s, "infra", Some("not the secret"), "github"),
        "401"
    );
    assert_eq!(webhook(&s, "nosuch", Some(SECRET), "gitea"), "401");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(http.fetches(), before, "a refused webhook fetched");

    // A change (a label, and a second Rack), applied on a signed Gitea webhook.
    let rack_file = dir.join("10-rack.yaml");
    let text0 = std::fs::read_to_string(&rack_file).unwrap();
    let labelled = text0.replacen(
        "    groundwork.dev/datacenter: dc1",
        "    groundwork.dev/datacenter: dc1\n    row: a",
        1,
    );
    assert_ne!(labelled, text0);
    std::fs::write(&rack_file, &labelled).unwrap();
    let extra = dir.join("60-extra.yaml");
    std::fs::write(
        &extra,
        "apiVersion: groundwork.dev/v1alpha1\nkind: Rack\nmetadata: {name: rack-x}\nspec: {datacenter: dc1, availabilityZone: az1}\n",
    )
    .unwrap();
    let c2 = push(&work, "label the rack, add another");
    let t = Instant::now();
    assert_eq!(webhook(&s, "infra", Some(SECRET), "gitea"), "202");
    let st = wait_status(
        &s,
        "infra",
        20,
        "the change applied after a Gitea webhook",
        applied(&c2),
    );
    eprintln!(
        "signed Gitea webhook → applied: {:.3}s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(st["inventory"].as_array().unwrap().len(), 11);
    assert_eq!(
        get(&s, &["rack", "rack-a1"])["metadata"]["labels"]["row"],
        "a"
    );

    // A deletion: the Git-made object is pruned, the hand-made one stays.
    std::fs::remove_file(&extra).unwrap();
    let c3 = push(&work, "remove the second rack");
    let t = Instant::now();
    assert_eq!(webhook(&s, "infra", Some(SECRET), "github"), "202");
    let st = wait_status(
        &s,
        "infra",
        20,
        "the deletion applied after a GitHub webhook",
        applied(&c3),
    );
    eprintln!(
        "signed GitHub-style webhook → pruned: {:.3}s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(st["inventory"].as_array().unwrap().len(), 10);
    let o = s.kubectl(&["get", "rack", "rack-x"]);
    assert!(!o.status.success(), "rack-x was not pruned");
    let o = s.kubectl(&["get", "rack", "by-hand"]);
    assert!(
        o.status.success(),
        "the hand-made Rack was pruned: {}",
        text(&o)
    );

    // A commit with one invalid manifest and one valid change: nothing of it is applied,
    // the status names the file, line and field; the last good commit stays.
    std::fs::write(&extra, "apiVersion: groundwork.dev/v1alpha1\nkind: Rack\nmetadata: {name: rack-x}\nspec: {datacenter: dc1, availabilityZone: az1}\n").unwrap();
    std::fs::write(
        dir.join("50-bad.yaml"),
        "# a comment\napiVersion: groundwork.dev/v1alpha1\nkind: Rack\nmetadata: {name: r9}\nspec: {datacenter: dc1, availabilityZone: az1, heightU: 0}\n",
    )
    .unwrap();
    let c4 = push(&work, "a rack with a bad field");
    assert_eq!(webhook(&s, "infra", Some(SECRET), "gitea"), "202");
    let st = wait_status(&s, "infra", 20, "the bad commit refused", |st| {
        st["lastFetchedCommit"] == c4.as_str()
            && st["errors"].as_array().is_some_and(|e| !e.is_empty())
    });
    assert_eq!(st["lastAppliedCommit"], c3.as_str(), "{st}");
    let e = &st["errors"][0];
    assert_eq!(e["file"], "datacenter/50-bad.yaml", "{st}");
    assert_eq!(e["line"], 2, "{st}");
    assert!(
        e["field"].as_str().is_some_and(|f| f.contains("heightU")),
        "{st}"
    );
    assert!(
        !s.kubectl(&["get", "rack", "rack-x"]).status.success(),
        "part of the bad commit was applied"
    );
    let ready = get(&s, &["gitsource", "infra"])["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap();
    assert_eq!(ready["reason"], "InvalidCommit", "{ready}");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("datacenter/50-bad.yaml:2"),
        "{ready}"
    );
    // The next good commit applies.
    std::fs::remove_file(dir.join("50-bad.yaml")).unwrap();
    let c5 = push(&work, "fix it");
    assert_eq!(webhook(&s, "infra", Some(SECRET), "gitea"), "202");
    let st = wait_status(&s, "infra", 20, "the fixed commit applied", applied(&c5));
    assert!(
        st.get("errors")
            .is_none_or(|e| e.as_array().is_some_and(Vec::is_empty)),
        "{st}"
    );
    assert!(s.kubectl(&["get", "rack", "rack-x"]).status.success());

    // Drift, mode correct: a Git-owned field changed by hand is set back.
    let o = s.kubectl(&["label", "rack", "rack-a1", "row=z", "--overwrite"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(webhook(&s, "infra", Some(SECRET), "gitea"), "202");
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&s, &["rack", "rack-a1"])["metadata"]["labels"]["row"] != "a" {
        assert!(
            Instant::now() < deadline,
            "the drifted label was not corrected"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Mode report: listed, left alone; defaulted and status fields never listed.
    let o = s.kubectl(&[
        "patch",
        "gitsource",
        "infra",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"drift":"report"}}"#,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = s.kubectl(&["label", "rack", "rack-a1", "row=y", "--overwrite"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(webhook(&s, "infra", Some(SECRET), "gitea"), "202");
    let st = wait_status(&s, "infra", 20, "the drift reported", |st| {
        st["drift"].as_array().is_some_and(|d| !d.is_empty())
    });
    let drift = st["drift"].as_array().unwrap();
    assert_eq!(drift.len(), 1, "only the changed field drifts: {st}");
    assert_eq!(drift[0]["object"], "Rack/rack-a1");
    assert_eq!(drift[0]["field"], "metadata.labels.row");
    assert_eq!(drift[0]["git"], "\"a\"");
    assert_eq!(drift[0]["live"], "\"y\"");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        get(&s, &["rack", "rack-a1"])["metadata"]["labels"]["row"],
        "y",
        "report mode corrected"
    );

    // dependsOn: a GitSource that waits says for which GitSource and which condition.
    let dep = tmp.path().join("dep.yaml");
    std::fs::write(
        &dep,
        format!(
            "apiVersion: groundwork.dev/v1alpha1\nkind: GitSource\nmetadata: {{name: apps}}\nspec:\n  url: http://127.0.0.1:{}/infra.git\n  path: nothing\n  dependsOn: [platform]\n",
            http.port
        ),
    )
    .unwrap();
    let o = s.kubectl(&["apply", "-f", dep.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let st = wait_status(&s, "apps", 20, "a waiting GitSource", |st| {
        st["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Stalled" && c["status"] == "True")
        })
    });
    let stalled = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Stalled")
        .unwrap();
    assert!(
        stalled["message"]
            .as_str()
            .unwrap()
            .contains("GitSource platform: it does not exist"),
        "{stalled}"
    );
    // A private repository: fetched with the Credential's user name and token; without it
    // the GitSource says why and applies nothing.
    let private_root = tmp.path().join("private");
    std::fs::create_dir_all(&private_root).unwrap();
    let o = Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&bare)
        .arg(private_root.join("infra.git"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let private = GitHttp::start_with_auth(&private_root, Some("reader:a-read-token"));
    let p = tmp.path().join("private.yaml");
    std::fs::write(
        &p,
        format!(
            "apiVersion: groundwork.dev/v1alpha1\nkind: Credential\nmetadata: {{name: reader}}\nspec: {{username: reader, password: a-read-token}}\n---\napiVersion: groundwork.dev/v1alpha1\nkind: GitSource\nmetadata: {{name: private}}\nspec:\n  url: http://127.0.0.1:{}/infra.git\n  path: nothing-here\n  credential: reader\n---\napiVersion: groundwork.dev/v1alpha1\nkind: GitSource\nmetadata: {{name: no-credential}}\nspec:\n  url: http://127.0.0.1:{}/infra.git\n  path: nothing-here\n",
            private.port, private.port
        ),
    )
    .unwrap();
    let o = s.kubectl(&["apply", "-f", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let head = support::git::git(&work, &["rev-parse", "HEAD"]);
    wait_status(&s, "private", 30, "the private repository fetched", |st| {
        st["lastAppliedCommit"] == head.as_str()
    });
    let st = wait_status(
        &s,
        "no-credential",
        30,
        "the refused fetch reported",
        |st| {
            st["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Fetched" && c["status"] == "False")
            })
        },
    );
    assert!(st["lastAppliedCommit"].is_null(), "{st}");
    assert!(!st.to_string().contains("a-read-token"), "{st}");
    // The controller's lines about a GitSource, as an operator reads them.
    let o = s.groundwork(&["logs", "gitsource/infra"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("applied"),
        "{}",
        text(&o)
    );
    let logs = s.log();
    assert!(
        !logs.contains("a-read-token") && !logs.contains(SECRET),
        "a secret in the log"
    );
    // The Credential's password never shows in the objects or the annotations.
    let all = String::from_utf8_lossy(
        &s.kubectl(&["get", "credentials,gitsources,racks", "-o", "yaml"])
            .stdout,
    )
    .to_string();
    assert!(
        !all.contains(SECRET),
        "the webhook secret is in an API answer"
    );
    assert!(
        !all.contains("a-read-token"),
        "the read token is in an API answer"
    );
}

/// Server-side apply with real kubectl: two field managers, a conflict that names the
/// manager and the field, `--force-conflicts` taking ownership, a server dry run and
/// `kubectl diff`.
#[test]
fn kubectl_server_side_apply_tracks_field_owners() {
    let s = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let dc = tmp.path().join("dc.yaml");
    std::fs::write(
        &dc,
        "apiVersion: groundwork.dev/v1alpha1\nkind: Datacenter\nmetadata: {name: dc1}\nspec:\n  availabilityZones: [{name: az1}]\n",
    )
    .unwrap();
    let rack = |location: &str, extra: &str| {
        let f = tmp
            .path()
            .join(format!("rack-{}.yaml", location.replace(' ', "-")));
        std::fs::write(
            &f,
            format!(
                "apiVersion: groundwork.dev/v1alpha1\nkind: Rack\nmetadata: {{name: r1}}\nspec:\n  datacenter: dc1\n  availabilityZone: az1\n  location: {location}\n{extra}"
            ),
        )
        .unwrap();
        f.display().to_string()
    };
    let ok = |args: &[&str]| {
        let o = s.kubectl(args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    ok(&[
        "apply",
        "--server-side",
        "--field-manager=ops",
        "-f",
        dc.to_str().unwrap(),
    ]);
    let alice = rack("row A", "");
    ok(&[
        "apply",
        "--server-side",
        "--field-manager=alice",
        "-f",
        &alice,
    ]);
    // Bob adds a field: no conflict.
    let bob_cooling = rack("row A", "  coolingKw: 8\n");
    ok(&[
        "apply",
        "--server-side",
        "--field-manager=bob",
        "-f",
        &bob_cooling,
    ]);
    // Bob changes Alice's field: 409, naming her and the field; nothing changes.
    let bob = rack("row B", "  coolingKw: 8\n");
    let o = s.kubectl(&["apply", "--server-side", "--field-manager=bob", "-f", &bob]);
    assert!(!o.status.success(), "a conflicting apply succeeded");
    let err = text(&o);
    assert!(
        err.contains("conflict with \"alice\"") && err.contains(".spec.location"),
        "{err}"
    );
    let r = get(&s, &["rack", "r1"]);
    assert_eq!(r["spec"]["location"], "row A");
    assert_eq!(r["spec"]["coolingKw"], 8);
    // A server dry run of the forced apply changes nothing.
    ok(&[
        "apply",
        "--server-side",
        "--field-manager=bob",
        "--force-conflicts",
        "--dry-run=server",
        "-f",
        &bob,
    ]);
    assert_eq!(get(&s, &["rack", "r1"])["spec"]["location"], "row A");
    // kubectl diff shows what the apply would change (exit 1: differences).
    let o = s.kubectl(&[
        "diff",
        "--server-side",
        "--field-manager=bob",
        "--force-conflicts",
        "-f",
        &bob,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("+  location: row B"),
        "{}",
        text(&o)
    );
    // Forced: Bob owns the field now; Alice applying hers conflicts with him.
    ok(&[
        "apply",
        "--server-side",
        "--field-manager=bob",
        "--force-conflicts",
        "-f",
        &bob,
    ]);
    let r = get(&s, &["rack", "r1", "--show-managed-fields"]);
    assert_eq!(r["spec"]["location"], "row B");
    let owners: Vec<(String, String)> = r["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["manager"].as_str().unwrap().to_string(),
                e["fieldsV1"].to_string(),
            )
        })
        .collect();
    let bobs = owners.iter().find(|(m, _)| m == "bob").unwrap();
    assert!(bobs.1.contains("f:location"), "{owners:?}");
    let alices = owners.iter().find(|(m, _)| m == "alice").unwrap();
    assert!(!alices.1.contains("f:location"), "{owners:?}");
    let o = s.kubectl(&[
        "apply",
        "--server-side",
        "--field-manager=alice",
        "-f",
        &alice,
    ]);
    assert!(text(&o).contains("conflict with \"bob\""), "{}", text(&o));
    // A client-side edit (kubectl label: its own manager) takes the field it changes.
    ok(&["label", "rack", "r1", "row=b"]);
    let r = get(&s, &["rack", "r1", "--show-managed-fields"]);
    assert!(
        r["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["operation"] == "Update" && e["fieldsV1"].to_string().contains("f:row")),
        "{}",
        r["metadata"]
    );
}

/// SSH: a GitSource fetches `ssh://` with its key from a Credential, checking the server's
/// host key against `spec.sshKnownHosts`; a wrong host key is refused and nothing applied.
/// The server is a real SSH server (paramiko, tests/doubles/git-ssh) running Debian's
/// `git-upload-pack`, with the `tests/run` Python environment.
#[test]
fn a_gitsource_fetches_over_ssh_and_checks_the_host_key() {
    let python = std::env::var("GW_PY_VENV")
        .map(|v| format!("{v}/bin/python"))
        .unwrap_or_else(|_| "/var/tmp/groundwork-py-venv/bin/python".into());
    let s = Server::start_with(&["--controllers", "gitsource"]);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("repos");
    std::fs::create_dir_all(&root).unwrap();
    let bare = root.join("infra.git");
    let run = |cmd: &mut Command| {
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{cmd:?}: {}", text(&o));
        support::stdout(&o)
    };
    run(Command::new("git")
        .args(["init", "-q", "--bare", "-b", "main"])
        .arg(&bare));
    let work = tmp.path().join("work");
    run(Command::new("git")
        .args(["clone", "-q"])
        .arg(&bare)
        .arg(&work));
    std::fs::write(
        work.join("profile.yaml"),
        "apiVersion: groundwork.dev/v1alpha1\nkind: Profile\nmetadata: {name: over-ssh}\nspec: {priority: 3}\n",
    )
    .unwrap();
    let commit = push(&work, "a profile over ssh");
    for k in ["host", "user", "other"] {
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(tmp.path().join(k)));
    }
    let port_file = tmp.path().join("ssh-port");
    let mut child = Command::new(&python)
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/doubles/git-ssh"))
        .arg(&root)
        .arg(&port_file)
        .arg(tmp.path().join("host"))
        .arg(tmp.path().join("user.pub"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !port_file.exists() {
        assert!(Instant::now() < deadline, "git-ssh did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let port = std::fs::read_to_string(&port_file).unwrap();
    let pubkey = |k: &str| {
        std::fs::read_to_string(tmp.path().join(format!("{k}.pub")))
            .unwrap()
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let key = std::fs::read_to_string(tmp.path().join("user")).unwrap();
    let indent = |t: &str| t.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let manifest = |name: &str, host_key: &str| {
        format!(
            "apiVersion: groundwork.dev/v1alpha1\nkind: GitSource\nmetadata: {{name: {name}}}\nspec:\n  url: ssh://git@127.0.0.1:{port}/infra.git\n  credential: deploy-key\n  sshKnownHosts: \"[127.0.0.1]:{port} {host_key}\"\n"
        )
    };
    let f = tmp.path().join("ssh.yaml");
    std::fs::write(
        &f,
        format!(
            "apiVersion: groundwork.dev/v1alpha1\nkind: Credential\nmetadata: {{name: deploy-key}}\nspec:\n  username: git\n  password: |\n{}---\n{}---\n{}",
            indent(&key),
            manifest("over-ssh", &pubkey("host")),
            manifest("wrong-host-key", &pubkey("other"))
        ),
    )
    .unwrap();
    let o = s.kubectl(&["apply", "-f", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    wait_status(
        &s,
        "over-ssh",
        30,
        "the ssh fetch applied",
        applied(&commit),
    );
    assert!(s.kubectl(&["get", "profile", "over-ssh"]).status.success());
    let st = wait_status(
        &s,
        "wrong-host-key",
        30,
        "the wrong host key refused",
        |st| {
            st["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Fetched" && c["status"] == "False")
            })
        },
    );
    let fetched = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Fetched")
        .unwrap();
    assert!(
        fetched["message"]
            .as_str()
            .unwrap()
            .contains("Host key verification failed"),
        "{fetched}"
    );
    assert!(st["lastAppliedCommit"].is_null(), "{st}");
    // The key is in no API answer, log, or file the fetch left behind.
    let all = String::from_utf8_lossy(
        &s.kubectl(&["get", "credentials,gitsources", "-o", "yaml"])
            .stdout,
    )
    .to_string();
    let secret_line = key.lines().nth(1).unwrap().to_string();
    assert!(
        !all.contains(&secret_line),
        "the private key is in an API answer"
    );
    assert!(
        !s.log().contains(&secret_line),
        "the private key is in the log"
    );
    // (The GitSource with the wrong host key retries every 10 s: a fetch may be under way.)
    let over = s.dir.path().join("git/over-ssh/ssh-key");
    assert!(!over.exists(), "the key file stayed after the fetch");
    let _ = child.kill();
    let _ = child.wait();
}
