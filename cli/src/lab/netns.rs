//! `groundwork lab up --netns`: machines as network namespaces. Each machine is a namespace
//! with its own address on a bridge (`gw<NAME>b`, 10.97.0.1/24 on the host side) and a
//! private `/var/lib/groundwork` (a bind mount in its own mount namespace), running the real
//! node agent, which joins with a machine token exactly as an installed machine does. The
//! server runs on the host: the API on 127.0.0.1, the boot HTTP server and the agent API on
//! 10.97.0.1. They reach Ready in seconds, so the service layers can be brought up and
//! tested fast; the QEMU lab stays for the boot path.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::host::{sh, spawn_logged};
use super::{State, UpArgs};
use serde::{Deserialize, Serialize};

pub(super) const NET_IP: &str = "10.97.0.1";
const AGENT_PORT: u16 = 8443;
const HTTP_PORT: u16 = 8080;
const METRICS_PORT: u16 = 9464;

/// A machine's address: 10.97.0.(10 + i).
pub(super) fn address(i: u8) -> String {
    format!("10.97.0.{}", 10 + i as u16)
}

pub(super) fn mac(i: u8) -> String {
    format!("52:54:00:97:00:{i:02x}")
}

/// A machine's network namespace, held open by a `sleep` process of its own (as a pod's is
/// by its pause container) rather than by a name under /run/netns: a name made inside
/// another `ip netns exec` (the tests' outer namespace) is a mount private to that command,
/// invisible to the next one, while a PID is seen by all. `net` (the namespace's
/// `net:[inode]`) tells the holder from a process that reused its PID.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub(crate) struct Holder {
    pub(super) pid: u32,
    pub(super) net: String,
}

fn net_of(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|l| l.display().to_string())
}

impl Holder {
    /// Starts a process in a new network namespace and waits until it is there.
    fn spawn(log: &Path) -> anyhow::Result<Holder> {
        let ours = net_of(std::process::id()).context("our network namespace")?;
        let mut c = Command::new("unshare");
        c.args(["--net", "--", "sleep", "infinity"]);
        let pid = spawn_logged(&mut c, log)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if let Some(net) = net_of(pid)
                && net != ours
                && cmd.starts_with(b"sleep\0")
            {
                return Ok(Holder { pid, net });
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "unshare --net did not start (see {})",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn alive(&self) -> bool {
        net_of(self.pid).as_deref() == Some(self.net.as_str())
    }

    /// `args` run inside the machine's network namespace.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.pid.to_string(), "-n", "--"]).args(args);
        c
    }

    fn sh(&self, args: &[&str]) -> anyhow::Result<()> {
        let o = self.cmd(args).output()?;
        anyhow::ensure!(
            o.status.success(),
            "{} (in machine namespace {}) failed: {}",
            args.join(" "),
            self.pid,
            String::from_utf8_lossy(&o.stderr).trim()
        );
        Ok(())
    }

    /// SIGKILLs every process in the namespace (the holder too with `all`); how many.
    pub(super) fn kill(&self, all: bool) -> usize {
        if !self.alive() {
            return 0;
        }
        let mut n = 0;
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if (all || pid != self.pid) && net_of(pid).as_deref() == Some(self.net.as_str()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                n += 1;
            }
        }
        n
    }
}

fn machine_dir(dir: &Path, i: u8) -> PathBuf {
    dir.join(format!("machines/n{i}"))
}

pub(super) async fn build(
    a: &UpArgs,
    dir: &Path,
    exe: &Path,
    state: &mut State,
    save: &dyn Fn(&State) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let br = format!("gw{}b", a.name);
    state.bridge = br.clone();
    save(state)?;
    let _ = sh(&["ip", "link", "del", &br]);
    sh(&["ip", "link", "add", &br, "type", "bridge"])?;
    sh(&["ip", "addr", "add", &format!("{NET_IP}/24"), "dev", &br])?;
    sh(&["ip", "link", "set", &br, "up"])?;
    std::fs::create_dir_all(dir.join("machines"))?;
    for i in 1..=a.machines {
        let host_end = format!("gw{}v{i}", a.name);
        let _ = sh(&["ip", "link", "del", &host_end]);
        let h = Holder::spawn(&dir.join(format!("machines/holder-{i}.log")))?;
        state.machines.push(h.clone());
        save(state)?;
        sh(&[
            "ip",
            "link",
            "add",
            &host_end,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &h.pid.to_string(),
        ])?;
        sh(&["ip", "link", "set", &host_end, "master", &br])?;
        sh(&["ip", "link", "set", &host_end, "up"])?;
        h.sh(&["ip", "link", "set", "lo", "up"])?;
        h.sh(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", address(i)),
            "dev",
            "eth0",
        ])?;
        h.sh(&["ip", "link", "set", "eth0", "up"])?;
        h.sh(&["ip", "route", "add", "default", "via", NET_IP])?;
    }

    // A new lab: machines start empty (no machine certificate of an earlier lab's CA, no
    // services) and the control plane from an empty store.
    for i in 1..=a.machines {
        let _ = std::fs::remove_dir_all(machine_dir(dir, i));
    }
    let data = dir.join("data");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data)?;
    let boot = dir.join("boot");
    std::fs::create_dir_all(boot.join("artifacts"))?;
    let _ = std::fs::remove_file(&state.kubeconfig);
    let mut args: Vec<String> = vec![
        "server".into(),
        "--data-dir".into(),
        data.display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{}", a.api_port),
        "--boot-root".into(),
        boot.display().to_string(),
        "--boot-http".into(),
        format!("{NET_IP}:{HTTP_PORT}"),
        "--boot-tftp".into(),
        "127.0.0.1:0".into(),
        "--boot-https".into(),
        format!("{NET_IP}:{AGENT_PORT}"),
        "--metrics-listen".into(),
        format!("{NET_IP}:{METRICS_PORT}"),
        "--heartbeat-seconds".into(),
        "2".into(),
    ];
    args.extend(a.server_args.iter().cloned());
    state.server_args = args;
    let pid = start_server(dir, exe, &state.server_args, &state.kubeconfig, false).await?;
    state.server_pid = pid;
    state.pids.push(pid);
    save(state)?;
    let mdir = dir.join("manifests");
    std::fs::create_dir_all(&mdir)?;
    let mf = mdir.join("lab.yaml");
    std::fs::write(&mf, manifests(a.machines))?;
    crate::apply::run(Some(state.kubeconfig.clone()), &[mf], false).await?;
    for i in 1..=a.machines {
        let h = state.machines[i as usize - 1].clone();
        state.pids.push(start_machine(dir, exe, &h, i)?);
        save(state)?;
    }
    Ok(())
}

/// Starts machine `i`'s node agent in its namespaces (joining with a new machine token the
/// first time). Returns the agent's PID.
pub(super) fn start_machine(dir: &Path, exe: &Path, h: &Holder, i: u8) -> anyhow::Result<u32> {
    anyhow::ensure!(
        h.alive(),
        "machine {i}'s namespace is gone (its holder, pid {}, exited): bring the lab up again",
        h.pid
    );
    let w = machine_dir(dir, i);
    let lib = w.join("var-lib-groundwork");
    std::fs::create_dir_all(&lib)?;
    let data = dir.join("data");
    let token = machine_token(&data, &mac(i))?;
    let hash = {
        let ca = std::fs::read_to_string(data.join("pki/ca.crt"))
            .with_context(|| format!("{}/pki/ca.crt", data.display()))?;
        groundwork_pki::ca_hash(&ca).context("the lab's CA")?
    };
    // The lab's names resolve from a hosts file (as a datacenter's DNS would): services
    // that look up their peers' names (rsync's daemon for Galera's SST) get an answer at
    // once instead of waiting for a resolver no namespace can reach.
    let hosts = w.join("hosts");
    let mut text = String::from("127.0.0.1 localhost\n");
    text.push_str(&format!("{NET_IP} groundwork\n"));
    for j in 1..=16u8 {
        text.push_str(&format!("{} lab-{j}\n", address(j)));
    }
    std::fs::write(&hosts, text)?;
    let resolv = w.join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )?;
    let script = format!(
        "mount --make-rprivate / && mount --bind '{lib}' /var/lib/groundwork && \
         mount --bind '{hosts}' /etc/hosts && mount --bind '{resolv}' /etc/resolv.conf && \
         exec '{exe}' node-agent --root / \
         --join http://{NET_IP}:{HTTP_PORT} --ca-cert-hash {hash} --mac {mac} --agent-api {NET_IP}:{AGENT_PORT}",
        lib = lib.display(),
        hosts = hosts.display(),
        resolv = resolv.display(),
        exe = exe.display(),
        mac = mac(i),
    );
    std::fs::create_dir_all("/var/lib/groundwork")?;
    let mut cmd = h.cmd(&["unshare", "--mount", "sh", "-c", &script]);
    cmd.env("GROUNDWORK_JOIN_TOKEN", token).env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
    );
    let log = w.join("agent.log");
    let pid = spawn_logged(&mut cmd, &log)?;
    Ok(pid)
}

/// Stops every process of a machine (its agent and the services it runs) at once, as a
/// power cut would; its namespace stays.
pub(super) fn stop_machine(h: &Holder) -> usize {
    h.kill(false)
}

/// A join token for the machine's MAC, signed with the lab server's key.
fn machine_token(data: &Path, mac: &str) -> anyhow::Result<String> {
    let path = data.join("secret.key");
    let key = groundwork_types::secrets::SecretKey::decode(
        &std::fs::read_to_string(&path).with_context(|| path.display().to_string())?,
    )
    .with_context(|| path.display().to_string())?;
    Ok(key.issue_token(groundwork_server::AGENT_JOIN_AUDIENCE, mac, &[], 3600))
}

fn manifests(n: u8) -> String {
    let mut y = String::from(
        r#"# Written by `groundwork lab up --netns`: the lab's datacenter, machines as network namespaces.
apiVersion: groundwork.dev/v1alpha1
kind: Datacenter
metadata: {name: lab}
spec:
  displayName: Groundwork lab (namespace machines)
  availabilityZones: [{name: az1}]
  powerBudgetKw: 10
---
apiVersion: groundwork.dev/v1alpha1
kind: Rack
metadata: {name: lab-r1}
spec: {datacenter: lab, availabilityZone: az1, heightU: 42, powerBudgetKw: 5}
---
apiVersion: groundwork.dev/v1alpha1
kind: Rack
metadata: {name: lab-r2}
spec: {datacenter: lab, availabilityZone: az1, heightU: 42, powerBudgetKw: 5}
"#,
    );
    for i in 1..=n {
        let rack = if i % 2 == 1 { "lab-r1" } else { "lab-r2" };
        y.push_str(&format!(
            r#"---
apiVersion: groundwork.dev/v1alpha1
kind: Node
metadata:
  name: lab-{i}
  labels: {{groundwork.dev/role: cluster}}
spec:
  rack: {{name: {rack}, position: {}}}
  bootMACs: ["{}"]
  provisioning: External
"#,
            i.div_ceil(2),
            mac(i)
        ));
    }
    y
}

/// The lab's platform stack: `manifests/`'s metrics, identity (directory) and database
/// layers, on the lab's machines, with Credentials of random passwords.
pub(super) fn stack_manifests() -> String {
    let pw = || {
        let mut b = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
            .expect("system random");
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    };
    let mut y = String::new();
    for (name, user) in [
        ("lab-ldap-admin", "admin"),
        ("lab-ldap-alice", "alice"),
        ("lab-db-root", "root"),
        ("lab-db-app", "app"),
    ] {
        y.push_str(&format!(
            "apiVersion: groundwork.dev/v1alpha1\nkind: Credential\nmetadata: {{name: {name}}}\nspec: {{username: {user}, password: \"{}\"}}\n---\n",
            pw()
        ));
    }
    y.push_str(LAB_STACK);
    y
}

pub(super) const LAB_STACK: &str = r#"apiVersion: groundwork.dev/v1alpha1
kind: ServiceStack
metadata: {name: platform}
spec:
  datacenter: lab
  layers:
    - name: metrics
      services: [prometheus, alertmanager, node-exporter]
      placement: {count: 1}
      config:
        prometheus:
          scrapeInterval: 2s
          ruleGroups:
            - name: groundwork
              rules:
                - {alert: InstanceDown, expr: up == 0, for: 1m}
    - name: identity
      services: [openldap]
      dependsOn: [metrics]
      placement: {count: 1}
      config:
        openldap:
          suffix: dc=lab,dc=example,dc=org
          adminPassword: {credential: lab-ldap-admin}
          groups: [{name: ops}]
          users:
            - {uid: alice, name: Alice Operator, mail: alice@example.org, groups: [ops], password: {credential: lab-ldap-alice}}
    - name: database
      services: [mysql, haproxy]
      dependsOn: [metrics]
      placement: {count: 3, spread: rack}
      config:
        mysql:
          rootPassword: {credential: lab-db-root}
          databases: [app]
          users: [{name: app, password: {credential: lab-db-app}, databases: [app]}]
        haproxy: {port: 3307}
"#;

/// Starts the lab's server (its log appended to when `append`) and waits until it answers
/// (it writes its kubeconfig after every bind).
async fn start_server(
    dir: &Path,
    exe: &Path,
    args: &[String],
    kubeconfig: &Path,
    append: bool,
) -> anyhow::Result<u32> {
    let _ = std::fs::remove_file(kubeconfig);
    let mut server = Command::new(exe);
    server.args(args).env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
    );
    let log = dir.join("server.log");
    let pid = if append {
        super::host::spawn_logged_append(&mut server, &log)?
    } else {
        spawn_logged(&mut server, &log)?
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !kubeconfig.exists() {
        anyhow::ensure!(
            Instant::now() < deadline && super::host::alive(pid),
            "the server did not start in 30 s; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(pid)
}

/// `lab server stop|start`: SIGKILL the server (a power cut of the control plane), or start
/// it again on its data directory.
pub(super) async fn server_ctl(dir: &Path, action: super::MachineAction) -> anyhow::Result<()> {
    let (mut st, path) = super::load_state(dir)?;
    anyhow::ensure!(
        !st.server_args.is_empty(),
        "the lab in {} was not started with --netns by this version: bring it up again",
        dir.display()
    );
    let pid = st.server_pid;
    let kill = || {
        if pid != 0 && super::host::ours(pid) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    };
    match action {
        super::MachineAction::Stop => {
            kill();
            println!("lab: server stopped (pid {pid} killed)");
        }
        super::MachineAction::Start => {
            kill();
            let deadline = Instant::now() + Duration::from_secs(10);
            while pid != 0 && super::host::alive(pid) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let new = start_server(dir, &st.exe, &st.server_args, &st.kubeconfig, true).await?;
            st.server_pid = new;
            st.pids.push(new);
            std::fs::write(&path, serde_json::to_vec_pretty(&st)?)?;
            println!("lab: server started (pid {new})");
        }
    }
    Ok(())
}
