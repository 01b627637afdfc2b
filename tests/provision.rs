//! Provisioning end to end.
//!
//! - Fault cases, fast and without QEMU: the server with every controller, IPMI BMCs
//!   simulated in-process (real IPMI 2.0 over UDP on 127.0.0.1), and the real agents
//!   (`groundwork agent` with a made-up /sys and a disk image file, `groundwork node-agent`):
//!   an unreachable BMC, a machine that never PXE-boots, an image with the wrong checksum.
//!   Each must end in a clear condition and recover once the cause is fixed.
//! - The whole loop with real machines: `groundwork lab up` in a network namespace this test
//!   creates: 2 QEMU machines (TCG) behind OpenIPMI ipmi_sim BMCs PXE-boot, report inventory,
//!   install bootimages' os.img, boot it and check in (Ready); then one is deprovisioned back
//!   to available. The phases are asserted in order through `groundwork watch`.

mod support;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use groundwork_bmc::ipmi::sim::SimBmc;
use groundwork_types::{Node, NodePhase, Profile};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use support::{Server, eventually, must, ok, sh, write};

const PASSWORD: &str = "Pr0v-s3cret-BMC";
const WAIT: Duration = Duration::from_secs(30);

async fn node(c: &Client, name: &str) -> Node {
    Api::<Node>::all(c.clone()).get(name).await.unwrap()
}

fn phase(n: &Node) -> Option<NodePhase> {
    n.status.as_ref()?.phase
}

fn provisioned_cond(n: &Node) -> Option<(String, String, String)> {
    n.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Provisioned")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// A 4 MiB disk image: MBR, partition 1 FAT from sector 2048, like bootimages' os.img (the 8 MiB
/// disk it is written to keeps room for the cloud-init seed).
fn image(path: &Path) {
    must(&["truncate", "-s", "4M", path.to_str().unwrap()]);
    let mut sf = Command::new("sfdisk")
        .args(["-q", path.to_str().unwrap()])
        .stdin(Stdio::piped())
        .spawn()
        .expect("sfdisk (tests/run installs fdisk)");
    use std::io::Write;
    sf.stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\nstart=2048, type=c, bootable\n")
        .unwrap();
    assert!(sf.wait().unwrap().success());
    must(&[
        "mkfs.vfat",
        "--offset",
        "2048",
        "-n",
        "TESTOS",
        path.to_str().unwrap(),
    ]);
}

fn sha256(path: &Path) -> String {
    let o = sh(&["sha256sum", path.to_str().unwrap()]);
    format!(
        "sha256:{}",
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap()
    )
}

/// A made-up machine for the agent: /sys and /proc with one 8 MiB disk `vda` and one NIC.
fn sysroot(root: &Path, mac: &str) {
    let w = |p: &str, c: &str| {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, c).unwrap();
    };
    w("sys/class/dmi/id/sys_vendor", "Groundwork Test\n");
    w("sys/class/dmi/id/product_serial", "SER-B\n");
    w(
        "proc/cpuinfo",
        "processor\t: 0\nmodel name\t: Test CPU\nphysical id\t: 0\ncpu cores\t: 1\n\n",
    );
    w("proc/meminfo", "MemTotal:        1048576 kB\n");
    w("sys/block/vda/size", "16384\n");
    w("sys/class/net/eth0/address", &format!("{mac}\n"));
    w("sys/class/net/eth0/carrier", "1\n");
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_end_in_clear_conditions_and_recover_when_fixed() {
    let bmc_a = SimBmc::start("127.0.0.1:0".parse().unwrap(), "admin", PASSWORD)
        .await
        .unwrap();
    bmc_a.set_unresponsive(true);
    let bmc_b = SimBmc::start("127.0.0.1:0".parse().unwrap(), "admin", PASSWORD)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    let os = boot.join("os.img");
    image(&os);
    let good = sha256(&os);
    let wrong = format!("sha256:{}", "0".repeat(64));
    let http = format!("127.0.0.1:{}", support::free_tcp_port());
    let tftp = format!("127.0.0.1:{}", support::free_udp_port());
    let agent_api = format!("127.0.0.1:{}", support::free_tcp_port());
    // A CA of its own: the test rotates it.
    let pki = tempfile::tempdir().unwrap();
    let pki_dir = pki.path().to_str().unwrap().to_string();
    let mut s = Server::start_with(&[
        "--pki-dir",
        &pki_dir,
        "--controllers",
        "all",
        "--boot-root",
        boot.to_str().unwrap(),
        "--boot-http",
        &http,
        "--boot-tftp",
        &tftp,
        "--boot-https",
        &agent_api,
        "--bmc-timeout-seconds",
        "1",
        "--discover-timeout-seconds",
        "5",
        "--provision-attempts",
        "2",
        "--failed-retry-seconds",
        "600",
        "--heartbeat-seconds",
        "1",
    ]);
    let c = s.client().await;
    let mac = "52:54:00:42:00:0b";
    let yaml = format!(
        "apiVersion: groundwork.dev/v1alpha1\nkind: Credential\nmetadata: {{name: bmc}}\nspec: {{username: admin, password: {PASSWORD}}}\n---\n\
         apiVersion: groundwork.dev/v1alpha1\nkind: Profile\nmetadata: {{name: p1}}\nspec:\n  os: {{url: 'http://{http}/os.img', checksum: '{wrong}'}}\n  machineConfig:\n    hostname: '{{{{name}}}}.test'\n    users: [{{name: ops, sshAuthorizedKeys: ['ssh-ed25519 AAAA ops@test']}}]\n    files: [{{path: /etc/motd, content: hello}}]\n---\n\
         apiVersion: groundwork.dev/v1alpha1\nkind: Node\nmetadata: {{name: a}}\nspec:\n  bmc: {{address: 127.0.0.1, port: {}, protocol: ipmi, credentialsRef: bmc}}\n---\n\
         apiVersion: groundwork.dev/v1alpha1\nkind: Node\nmetadata: {{name: b}}\nspec:\n  bmc: {{address: 127.0.0.1, port: {}, protocol: ipmi, credentialsRef: bmc}}\n  bootMACs: ['{mac}']\n  profile: p1\n  provisioning: Provisioned\n",
        bmc_a.addr.port(),
        bmc_b.addr.port()
    );
    let f = write(s.dir.path(), "fault.yaml", &yaml);
    ok(s.groundwork(&["apply", "-f", f.to_str().unwrap()]));

    // 1. An unreachable BMC: a clear condition, the power-on stays pending (retried with
    //    backoff), and it goes on once the BMC answers.
    let (_, _, msg) = eventually(WAIT, "a: BMC unreachable shown", || async {
        // (CredentialsNotFound may come first, until the Credential reaches the cache.)
        provisioned_cond(&node(&c, "a").await)
            .filter(|(st, r, _)| st == "False" && r == "BmcTimeout")
    })
    .await;
    assert!(msg.contains("BMC") && msg.contains("no answer"), "{msg}");
    let n = node(&c, "a").await;
    let p = n.status.as_ref().unwrap().provisioning.clone().unwrap();
    assert_eq!(p.power_pending, Some(groundwork_types::PowerIntent::Pxe));
    assert!(!bmc_a.state().power_on);
    bmc_a.set_unresponsive(false);
    eventually(
        Duration::from_secs(60),
        "a: powered on once the BMC answers",
        || async {
            let n = node(&c, "a").await;
            let pending = n.status.as_ref()?.provisioning.as_ref()?.power_pending;
            (phase(&n) == Some(NodePhase::Discovering)
                && pending.is_none()
                && bmc_a.state().power_on)
                .then_some(())
        },
    )
    .await;
    let pxe = bmc_a.state().boot_flags;
    assert_eq!(pxe.1 & 0x3c, 0x04, "PXE set before power-on: {pxe:?}");

    // 2. A machine that never PXE-boots: power-cycled again after the discover timeout, then
    //    Failed with the reason.
    let n = eventually(WAIT, "b: Failed after two boots", || async {
        let n = node(&c, "b").await;
        (phase(&n) == Some(NodePhase::Failed)).then_some(n)
    })
    .await;
    let p = n.status.as_ref().unwrap().provisioning.clone().unwrap();
    assert_eq!(p.failure_reason.as_deref(), Some("NoPxeBoot"));
    assert_eq!(p.failed_in, Some(NodePhase::Discovering));
    let (_, reason, msg) = provisioned_cond(&n).unwrap();
    assert_eq!(reason, "NoPxeBoot");
    assert!(
        msg.contains("did not PXE-boot") && msg.contains("after 2 attempts"),
        "{msg}"
    );
    let controls = bmc_b
        .state()
        .commands
        .get("chassis-control")
        .copied()
        .unwrap_or(0);
    assert!(
        controls >= 2,
        "one power-on and one power cycle: {controls}"
    );
    let events = ok(s.groundwork(&["events", "node/b"]));
    assert!(events.contains("NoPxeBoot"), "{events}");

    // Fixed (the machine boots now): `groundwork retry`, and the real agent reports.
    let sys = dir.path().join("sys-b");
    sysroot(&sys, mac);
    let dev = dir.path().join("dev-b");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::write(dev.join("vda"), vec![0xa5u8; 8 << 20]).unwrap();
    let out = ok(s.groundwork(&["retry", "node/b"]));
    assert!(out.contains("retry requested"), "{out}");
    eventually(WAIT, "b: discovering again", || async {
        (phase(&node(&c, "b").await) == Some(NodePhase::Discovering)).then_some(())
    })
    .await;
    let script = reqwest::get(format!("http://{http}/ipxe?mac={mac}"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let arg = |key: &str| {
        script
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("groundwork.{key}=")))
            .unwrap_or_else(|| panic!("groundwork.{key}= in the script: {script}"))
            .to_string()
    };
    let (token, agent_addr, ca_hash) = (arg("token"), arg("agent"), arg("ca"));
    // The agent API is not on the plain boot server.
    let r = reqwest::Client::new()
        .get(format!("http://{http}/agent/next?mac={mac}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let agent_log = dir.path().join("agent-b.log");
    let _agent = Kill(
        Command::new(support::BIN)
            .args([
                "agent",
                "--tasks",
                "--url",
                &format!("http://{http}"),
                "--mac",
                mac,
            ])
            .args(["--token", &token, "--sysroot", sys.to_str().unwrap()])
            .args(["--agent", &agent_addr, "--ca-hash", &ca_hash])
            .args(["--dev-root", dev.to_str().unwrap()])
            .stdout(std::fs::File::create(&agent_log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("agent-b.err")).unwrap())
            .spawn()
            .unwrap(),
    );

    // 3. The image's checksum is wrong: Failed, naming both sums; the disk's first MiB is
    //    zeroed so the image can never boot.
    let n = eventually(WAIT, "b: install refused on the checksum", || async {
        let n = node(&c, "b").await;
        let p = n.status.as_ref()?.provisioning.clone()?;
        (phase(&n) == Some(NodePhase::Failed) && p.failed_in == Some(NodePhase::Provisioning))
            .then_some(n)
    })
    .await;
    let st = n.status.clone().unwrap();
    assert_eq!(
        st.inventory
            .as_ref()
            .unwrap()
            .system
            .as_ref()
            .unwrap()
            .serial
            .as_deref(),
        Some("SER-B"),
        "the agent's inventory was recorded"
    );
    let (_, reason, msg) = provisioned_cond(&n).unwrap();
    assert_eq!(reason, "ImageChecksumMismatch");
    assert!(msg.contains(&good) && msg.contains(&wrong), "{msg}");
    let disk = std::fs::read(dev.join("vda")).unwrap();
    assert!(disk[..1 << 20].iter().all(|&b| b == 0), "first MiB zeroed");

    // Fixed: the right checksum in the Profile retries at once, through the same agent.
    Api::<Profile>::all(c.clone())
        .patch(
            "p1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"os": {"checksum": good}}})),
        )
        .await
        .unwrap();
    let n = eventually(WAIT, "b: installed", || async {
        let n = node(&c, "b").await;
        (phase(&n) == Some(NodePhase::Provisioned)).then_some(n)
    })
    .await;
    let p = n.status.as_ref().unwrap().provisioning.clone().unwrap();
    assert_eq!(p.installed_checksum.as_deref(), Some(good.as_str()));
    // The image is on the disk, and the seed partition after it.
    let (img, disk) = (
        std::fs::read(&os).unwrap(),
        std::fs::read(dev.join("vda")).unwrap(),
    );
    assert_eq!(img[..462], disk[..462], "the image's MBR is on the disk");
    assert_eq!(disk[462 + 4], 0x0c, "the cloud-init seed is partition 2");
    // The controller set the disk as boot device (persistent) and reset the machine. The
    // phase and the boot device are two controllers' steps (provisioning records the intent,
    // power applies it), so the device may follow the phase by a moment.
    eventually(WAIT, "b: boot from disk", || async {
        let flags = bmc_b.state().boot_flags;
        (flags.1 & 0x3c == 0x08).then_some(())
    })
    .await;

    // The installed system's node agent reads the config the installer wrote and checks in.
    let root = dir.path().join("root-b");
    std::fs::create_dir_all(&root).unwrap();
    let o = Command::new("timeout")
        .args(["30", support::BIN, "node-agent", "--disk"])
        .arg(dev.join("vda"))
        .arg("--root")
        .arg(&root)
        .args(["--beats", "2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", support::text(&o));
    assert!(support::stdout(&o).contains("GROUNDWORK-NODE-READY node=b"));
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
        "b.test\n"
    );
    assert!(
        std::fs::read_to_string(root.join("home/ops/.ssh/authorized_keys"))
            .unwrap()
            .contains("ops@test")
    );
    let n = eventually(WAIT, "b: Ready", || async {
        let n = node(&c, "b").await;
        (phase(&n) == Some(NodePhase::Ready)).then_some(n)
    })
    .await;
    let seen: Vec<NodePhase> = n
        .status
        .unwrap()
        .provisioning
        .unwrap()
        .history
        .iter()
        .map(|e| e.phase)
        .collect();
    use NodePhase::*;
    assert_eq!(
        seen,
        [
            Discovering,
            Failed,
            Discovering,
            Inventoried,
            Provisioning,
            Failed,
            Provisioning,
            Provisioned,
            Ready
        ],
        "history"
    );
    let log = ok(s.groundwork(&["logs", "node/b"]));
    assert!(log.contains("image written and verified"), "{log}");

    // The node agent replaced the installer's key (on the FAT partition) with one of its own
    // at its first start, kept 0600; once the new certificate was used, the old one was
    // retired: a node agent with only the disk's credentials is refused.
    let saved = root.join("var/lib/groundwork/credentials.json");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&saved).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let agent_status = |n: &groundwork_types::Node| {
        n.status
            .as_ref()
            .and_then(|s| s.provisioning.as_ref())
            .and_then(|p| p.agent.clone())
            .unwrap_or_default()
    };
    assert_eq!(agent_status(&node(&c, "b").await).certificates.len(), 1);
    let node_agent = |root: &Path, secs: &str, extra: &[&str]| {
        Command::new("timeout")
            .args([secs, support::BIN, "node-agent", "--disk"])
            .arg(dev.join("vda"))
            .arg("--root")
            .arg(root)
            .args(if extra.contains(&"--beats") {
                &[][..]
            } else {
                &["--beats", "1"][..]
            })
            .args(extra)
            .output()
            .unwrap()
    };
    let fresh = dir.path().join("root-b2");
    std::fs::create_dir_all(&fresh).unwrap();
    let o = node_agent(&fresh, "8", &[]);
    assert!(!o.status.success(), "{}", support::text(&o));
    assert!(support::text(&o).contains("401"), "{}", support::text(&o));
    // A renewal on request: the new certificate is used, the one before retired.
    let before = std::fs::read_to_string(&saved).unwrap();
    let o = node_agent(&root, "30", &["--renew"]);
    assert!(o.status.success(), "{}", support::text(&o));
    assert!(
        support::text(&o).contains("certificate renewed"),
        "{}",
        support::text(&o)
    );
    assert_ne!(std::fs::read_to_string(&saved).unwrap(), before);
    assert_eq!(agent_status(&node(&c, "b").await).certificates.len(), 1);
    // The CA rotates under a running fleet. Begin: heartbeats hand the machine the bundle.
    // Promote: the agent API's certificate is from the new CA (trusted through the bundle),
    // and the heartbeat asks for a renewal, which comes from the new CA. Finish: only the new
    // CA is trusted, and the machine still checks in.
    let rotate = |step: &str| {
        let o = Command::new(support::BIN)
            .args(["pki", "rotate-ca", "--dir", &pki_dir, "--step", step])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", support::text(&o));
    };
    let saved_creds = || -> groundwork_types::agent::MachineCredentials {
        serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap()
    };
    let cas = |pem: &str| pem.matches("BEGIN CERTIFICATE").count();
    rotate("begin");
    s.restart();
    let o = node_agent(&root, "30", &[]);
    assert!(o.status.success(), "{}", support::text(&o));
    assert!(
        support::text(&o).contains("CA bundle changed"),
        "{}",
        support::text(&o)
    );
    assert_eq!(cas(&saved_creds().ca), 2);
    let old_cert = saved_creds().certificate;
    rotate("promote");
    s.restart();
    let o = node_agent(&root, "30", &["--beats", "2"]);
    assert!(o.status.success(), "{}", support::text(&o));
    assert!(
        support::text(&o).contains("certificate renewed"),
        "{}",
        support::text(&o)
    );
    assert_ne!(saved_creds().certificate, old_cert);
    rotate("finish");
    s.restart();
    let o = node_agent(&root, "30", &[]);
    assert!(o.status.success(), "{}", support::text(&o));
    assert_eq!(cas(&saved_creds().ca), 1, "the bundle shrank too");
    let c = s.client().await;

    // Revoked: its heartbeats are refused, and the join token it used is no longer good.
    ok(s.groundwork(&["revoke", "node/b"]));
    let o = node_agent(&root, "8", &[]);
    assert!(!o.status.success(), "{}", support::text(&o));
    assert!(
        support::text(&o).contains("401") && support::text(&o).contains("no longer valid"),
        "{}",
        support::text(&o)
    );
    let revoked = agent_status(&node(&c, "b").await);
    assert!(
        revoked.certificates.is_empty() && revoked.join_token_issued > 0,
        "{revoked:?}"
    );
    // Neither the BMC password nor the join token is in the server's log, the Events or the
    // API's answers.
    let all = ok(s.groundwork(&["get", "nodes", "-o", "json"]))
        + &ok(s.groundwork(&["events"]))
        + &ok(s.groundwork(&["get", "credentials", "-o", "json"]));
    let key = std::fs::read_to_string(&saved).unwrap();
    let key: groundwork_types::agent::MachineCredentials = serde_json::from_str(&key).unwrap();
    let key_body: String = key
        .key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for (what, secret) in [
        ("password", PASSWORD),
        ("join token", token.as_str()),
        ("machine key", &key_body[..40]),
    ] {
        assert!(!s.log().contains(secret), "{what} in the server log");
        assert!(!all.contains(secret), "{what} in the API's answers");
    }
}

/// `groundwork lab up` inside a network namespace this test creates (its servers listen
/// there), taken down at the end even when the test fails.
struct Lab {
    ns: String,
    dir: PathBuf,
    watch: Option<Child>,
}

impl Lab {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, "timeout", "120", support::BIN])
            .arg("--kubeconfig")
            .arg(self.dir.join("data/kubeconfig"))
            .args(args);
        c
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut w) = self.watch.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                support::BIN,
                "lab",
                "down",
                "--dir",
            ])
            .arg(&self.dir)
            .output();
        let _ = sh(&["ip", "netns", "del", &self.ns]);
    }
}

#[test]
fn two_qemu_machines_go_from_apply_to_ready_and_one_back_to_available() {
    let dir = tempfile::tempdir().unwrap();
    let id = std::process::id() % 100_000;
    let name = format!("e{id}");
    let ns = format!("gwprov-{id}");
    let _ = sh(&["ip", "netns", "del", &ns]);
    must(&["ip", "netns", "add", &ns]);
    must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    let mut lab = Lab {
        ns: ns.clone(),
        dir: dir.path().join("lab"),
        watch: None,
    };
    let t0 = Instant::now();
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "timeout",
            "300",
            support::BIN,
            "lab",
            "up",
        ])
        .args(["--machines", "2", "--name", &name, "--no-wait", "--dir"])
        .arg(&lab.dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "lab up: {}", support::text(&o));
    let up = support::stdout(&o);
    assert!(up.contains("kubeconfig:"), "{up}");

    // Every phase change of the lab's Nodes, through the watch API.
    let seen: Arc<Mutex<Vec<(Duration, String, String)>>> = Arc::default();
    // Not through `timeout` (its child would outlive a kill): the Lab guard kills it.
    let mut w = Command::new("ip")
        .args(["netns", "exec", &ns, support::BIN, "--kubeconfig"])
        .arg(lab.dir.join("data/kubeconfig"))
        .args(["watch", "nodes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = w.stdout.take().unwrap();
    lab.watch = Some(w);
    {
        let seen = seen.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                // "HH:MM:SS APPLIED node/lab-1 rv=12 status={...}"
                let Some(node) = line.split_whitespace().nth(2) else {
                    continue;
                };
                let Some(status) = line.split_once("status=").map(|x| x.1) else {
                    continue;
                };
                let phase = serde_json::from_str::<serde_json::Value>(status)
                    .ok()
                    .and_then(|v| v["phase"].as_str().map(String::from));
                if let Some(p) = phase {
                    let mut s = seen.lock().unwrap();
                    let node = node.trim_start_matches("node/").to_string();
                    if s.iter().rev().find(|(_, n, _)| *n == node).map(|x| &x.2) != Some(&p) {
                        s.push((t0.elapsed(), node, p));
                    }
                }
            }
        });
    }
    let phases = |node: &str| -> Vec<String> {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(_, n, _)| n == node)
            .map(|(_, _, p)| p.clone())
            .collect()
    };
    let wait_for = |what: &str, limit: Duration, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + limit;
        while !f() {
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; phases seen: {:?}\nserver log tail:\n{}\nlab-1 console tail:\n{}",
                    seen.lock().unwrap(),
                    tail(&lab.dir.join("server.log"), 40),
                    tail(&lab.dir.join("m1/serial.log"), 20),
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    wait_for("both machines Ready", Duration::from_secs(600), &|| {
        ["lab-1", "lab-2"]
            .iter()
            .all(|n| phases(n).last().map(String::as_str) == Some("Ready"))
    });
    let ready_at = t0.elapsed();
    for n in ["lab-1", "lab-2"] {
        let p = phases(n);
        assert_in_order(
            &p,
            &[
                "Discovering",
                "Inventoried",
                "Provisioning",
                "Provisioned",
                "Ready",
            ],
        );
        assert!(!p.contains(&"Failed".to_string()), "{n}: {p:?}");
    }
    let node_json = |n: &str| -> serde_json::Value {
        let o = lab.cmd(&["get", "node", n, "-o", "json"]).output().unwrap();
        serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", support::text(&o)))
    };
    let checksum = std::fs::read_to_string(lab.dir.join("boot/os.img.sha256")).unwrap();
    for n in ["lab-1", "lab-2"] {
        let j = node_json(n);
        let p = &j["status"]["provisioning"];
        assert_eq!(p["installedChecksum"], checksum.trim(), "{j}");
        assert!(
            j["status"]["addresses"][0]
                .as_str()
                .unwrap()
                .starts_with("10.98.0."),
            "{j}"
        );
        let hist: Vec<groundwork_types::PhaseEntry> =
            serde_json::from_value(p["history"].clone()).unwrap();
        eprintln!("{n}: {}", groundwork_types::phase_times(&hist));
    }
    let console = std::fs::read_to_string(lab.dir.join("m1/serial.log")).unwrap_or_default();
    assert!(
        console.contains("GROUNDWORK-NODE-READY node=lab-1"),
        "{console}"
    );
    eprintln!("2 machines (TCG) from apply to Ready: {ready_at:?}");

    // Deprovision lab-2: PXE back into the ramdisk, wipe, available again.
    let before = phases("lab-2").len();
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "timeout",
            "60",
            "kubectl",
            "--kubeconfig",
        ])
        .arg(lab.dir.join("data/kubeconfig"))
        .args(["patch", "nodes.groundwork.dev", "lab-2", "--type", "merge"])
        .args(["-p", r#"{"spec":{"provisioning":"Available"}}"#])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", support::text(&o));
    wait_for("lab-2 back to available", Duration::from_secs(300), &|| {
        let p = phases("lab-2");
        p.len() > before
            && p.contains(&"Deprovisioning".to_string())
            && matches!(
                p.last().map(String::as_str),
                Some("Inventoried" | "Assigned")
            )
    });
    let p = phases("lab-2");
    assert_in_order(
        &p[before - 1..],
        &["Ready", "Deprovisioning", "Inventoried"],
    );
    let disk = std::fs::read(lab.dir.join("m2/disk.img")).unwrap();
    assert!(
        disk[..1 << 20].iter().all(|&b| b == 0),
        "lab-2's disk was wiped"
    );
    let j = node_json("lab-2");
    assert!(
        j["status"]["provisioning"]["installedChecksum"].is_null(),
        "{j}"
    );
    assert_eq!(phases("lab-1").last().map(String::as_str), Some("Ready"));
    let events = support::stdout(&lab.cmd(&["events", "node/lab-2"]).output().unwrap());
    assert!(events.contains("Deprovisioning"), "{events}");

    // lab down removes what it made.
    let o = Command::new("ip")
        .args(["netns", "exec", &ns, support::BIN, "lab", "down", "--dir"])
        .arg(&lab.dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", support::text(&o));
    let netns = support::stdout(&sh(&["ip", "netns", "list"]));
    assert!(!netns.contains(&format!("gw-{name}-m")), "{netns}");
    assert!(
        std::fs::read_to_string(lab.dir.join("m1/qemu.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_none_or(|p| !Path::new(&format!("/proc/{p}")).exists()),
        "QEMU stopped"
    );
}

fn assert_in_order(seen: &[String], want: &[&str]) {
    let mut it = seen.iter();
    for w in want {
        assert!(
            it.any(|s| s == w),
            "{w} missing or out of order in {seen:?}"
        );
    }
}

fn tail(p: &Path, n: usize) -> String {
    let t = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
