//! The Ansible role (`deploy/ansible`) with Debian's real `ansible-playbook` (ansible 7.7)
//! against a fresh Debian 12 host: the Packer base image's root file system booted by
//! systemd-nspawn with systemd as PID 1, in a network namespace of its own, reached over SSH
//! (`tests/ansible-host.sh`). The first run brings it to a running `groundwork server` that
//! answers kubectl from the Ansible machine's side; the second run changes nothing; a join
//! without its token is refused naming the variables. Needs root; `tests/run` installs
//! ansible and systemd-container.

mod support;

use std::process::{Command, Output};
use std::time::Instant;

use support::{BIN, text};

struct Host {
    dir: std::path::PathBuf,
    name: String,
}

impl Host {
    fn script(&self, action: &str) -> Output {
        Command::new("timeout")
            .arg("300")
            .arg(support::repo_root().join("tests/ansible-host.sh"))
            .arg(action)
            .arg(&self.dir)
            .arg(&self.name)
            .output()
            .unwrap()
    }

    fn in_controller(&self, secs: u32, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &format!("{}-c", self.name), "timeout"])
            .arg(secs.to_string())
            .args(args);
        c
    }

    fn ssh(&self, command: &str) -> Output {
        let key = self.dir.join("id_ed25519");
        self.in_controller(30, &["ssh", "-i", key.to_str().unwrap()])
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "root@10.95.0.2",
                command,
            ])
            .output()
            .unwrap()
    }

    fn playbook(&self, extra: &[&str]) -> (Output, (u32, u32)) {
        let repo = support::repo_root();
        let o = self
            .in_controller(900, &["ansible-playbook", "-i"])
            .arg(self.dir.join("inventory.ini"))
            .arg(repo.join("deploy/ansible/site.yml"))
            .arg("-e")
            .arg(format!("groundwork_binary_src={BIN}"))
            .arg("-e")
            .arg(format!(
                "groundwork_fetch_kubeconfig={}",
                self.dir.join("kubeconfig").display()
            ))
            .args(extra)
            .env("ANSIBLE_CONFIG", self.dir.join("ansible.cfg"))
            .env("ANSIBLE_NOCOLOR", "1")
            .output()
            .unwrap();
        let counts = recap(&support::stdout(&o));
        (o, counts)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.script("down");
    }
}

/// (changed, failed) from the PLAY RECAP line of host gw1.
fn recap(out: &str) -> (u32, u32) {
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with("gw1") && l.contains("changed="))
        .unwrap_or_default();
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u32::MAX)
    };
    (field("changed="), field("failed="))
}

#[test]
fn the_role_brings_a_fresh_debian_host_to_a_running_server_and_a_second_run_changes_nothing() {
    let repo = support::repo_root();
    // The base image is cached between runs (tests/packer.rs builds it too).
    let o = Command::new("timeout")
        .arg("1200")
        .arg(repo.join("packer/base-image.sh"))
        .arg("/var/tmp/groundwork-images")
        .output()
        .unwrap();
    assert!(o.status.success(), "base-image.sh: {}", text(&o));
    let tmp = tempfile::tempdir().unwrap();
    let host = Host {
        dir: tmp.path().to_path_buf(),
        name: format!("gwa{}", std::process::id() % 10_000),
    };
    let t0 = Instant::now();
    let o = host.script("up");
    assert!(o.status.success(), "ansible-host.sh up: {}", text(&o));
    let booted = t0.elapsed();
    support::write(
        tmp.path(),
        "inventory.ini",
        &format!(
            "[groundwork]\ngw1 ansible_host=10.95.0.2 ansible_user=root ansible_ssh_private_key_file={}\n",
            tmp.path().join("id_ed25519").display()
        ),
    );
    support::write(
        tmp.path(),
        "ansible.cfg",
        &format!(
            "[defaults]\nhost_key_checking = False\nretry_files_enabled = False\ninterpreter_python = /usr/bin/python3\nlocal_tmp = {0}/.ansible-local\n[ssh_connection]\nssh_args = -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o LogLevel=ERROR -o ControlMaster=auto -o ControlPersist=60s\ncontrol_path_dir = {0}/.cp\npipelining = True\n",
            tmp.path().display()
        ),
    );

    // A join without its token: refused before anything is changed, naming the variables.
    let (o, (changed, failed)) = host.playbook(&["-e", "groundwork_join=10.95.0.9:7443"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert_eq!((changed, failed), (0, 1), "{}", text(&o));
    assert!(
        text(&o).contains("groundwork_join_token") && text(&o).contains("groundwork_ca_cert_hash"),
        "{}",
        text(&o)
    );

    let t1 = Instant::now();
    let (o, (changed, failed)) = host.playbook(&[]);
    let first = t1.elapsed();
    assert!(o.status.success(), "first run: {}", text(&o));
    assert_eq!(failed, 0, "{}", text(&o));
    assert!(changed >= 5, "binary, dirs, env, unit, start: {}", text(&o));

    // The server answers kubectl from the Ansible machine's side, by the host's address.
    let kubeconfig = tmp.path().join("kubeconfig");
    let kc = std::fs::read_to_string(&kubeconfig).unwrap();
    assert!(kc.contains("server: https://10.95.0.2:6443"), "{kc}");
    let k = |args: &[&str]| {
        host.in_controller(
            60,
            &["kubectl", "--kubeconfig", kubeconfig.to_str().unwrap()],
        )
        .args(args)
        .output()
        .unwrap()
    };
    let o = k(&["get", "nodes.groundwork.dev"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("No resources found"), "{}", text(&o));
    let o = k(&[
        "apply",
        "-f",
        repo.join("manifests/00-datacenter.yaml").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = k(&["get", "datacenters.groundwork.dev", "-o", "name"]);
    assert!(
        text(&o).contains("datacenter.groundwork.dev/"),
        "{}",
        text(&o)
    );

    // systemd runs it, enabled for the next boot; the env file (join token) is 0600.
    let o = host.ssh("systemctl is-active groundwork-server; systemctl is-enabled groundwork-server; stat -c %a /etc/groundwork/server.env /var/lib/groundwork");
    assert_eq!(
        support::stdout(&o).split_whitespace().collect::<Vec<_>>(),
        ["active", "enabled", "600", "700"],
        "{}",
        text(&o)
    );
    let pid_before =
        support::stdout(&host.ssh("systemctl show -p MainPID --value groundwork-server"));

    // Idempotent: nothing changes, and the server was not restarted.
    let t2 = Instant::now();
    let (o, (changed, failed)) = host.playbook(&[]);
    let second = t2.elapsed();
    assert!(o.status.success(), "second run: {}", text(&o));
    assert_eq!((changed, failed), (0, 0), "second run: {}", text(&o));
    let pid_after =
        support::stdout(&host.ssh("systemctl show -p MainPID --value groundwork-server"));
    assert_eq!(pid_before.trim(), pid_after.trim());
    assert!(pid_after.trim().parse::<u32>().unwrap_or(0) > 0);
    eprintln!(
        "host booted (nspawn, systemd) in {booted:?}; first run {first:?}; second run {second:?} (changed=0)"
    );
}
