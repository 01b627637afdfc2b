//! The DHCP server against real clients (busybox udhcpc, ISC dhclient) in network namespaces
//! this test creates (veth pair, addresses 10.99.x.0/24 that exist only inside them), and a
//! SIGKILL of the server half-way: no address is ever handed to two clients.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{must, sh};

/// Two namespaces joined by a veth pair; deleted on drop.
struct Net {
    srv: String,
    cli: String,
    srv_if: String,
    cli_if: String,
}

impl Net {
    fn new(tag: &str) -> Net {
        let id = std::process::id() % 100_000;
        let n = Net {
            srv: format!("gwd-{tag}-s-{id}"),
            cli: format!("gwd-{tag}-c-{id}"),
            srv_if: format!("gd{tag}s{}", id % 1000),
            cli_if: format!("gd{tag}c{}", id % 1000),
        };
        let _ = sh(&["ip", "netns", "del", &n.srv]);
        let _ = sh(&["ip", "netns", "del", &n.cli]);
        must(&["ip", "netns", "add", &n.srv]);
        must(&["ip", "netns", "add", &n.cli]);
        must(&[
            "ip", "link", "add", &n.srv_if, "type", "veth", "peer", "name", &n.cli_if,
        ]);
        must(&["ip", "link", "set", &n.srv_if, "netns", &n.srv]);
        must(&["ip", "link", "set", &n.cli_if, "netns", &n.cli]);
        must(&[
            "ip",
            "-n",
            &n.srv,
            "addr",
            "add",
            "10.99.0.1/24",
            "dev",
            &n.srv_if,
        ]);
        must(&["ip", "-n", &n.srv, "link", "set", &n.srv_if, "up"]);
        must(&["ip", "-n", &n.srv, "link", "set", "lo", "up"]);
        must(&["ip", "-n", &n.cli, "link", "set", &n.cli_if, "up"]);
        must(&["ip", "-n", &n.cli, "link", "set", "lo", "up"]);
        n
    }

    fn set_client_mac(&self, mac: &str) {
        must(&["ip", "-n", &self.cli, "link", "set", &self.cli_if, "down"]);
        must(&[
            "ip",
            "-n",
            &self.cli,
            "link",
            "set",
            &self.cli_if,
            "address",
            mac,
        ]);
        must(&["ip", "-n", &self.cli, "link", "set", &self.cli_if, "up"]);
        must(&["ip", "-n", &self.cli, "addr", "flush", "dev", &self.cli_if]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.srv]);
        let _ = sh(&["ip", "netns", "del", &self.cli]);
    }
}

struct Dhcpd {
    child: Option<Child>,
    dir: PathBuf,
}

impl Dhcpd {
    fn start(net: &Net, dir: &Path) -> Dhcpd {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("dhcpd.log"))
            .unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.srv,
                support::BIN,
                "dhcp",
                "--interface",
                &net.srv_if,
            ])
            .args(["--server-ip", "10.99.0.1", "--subnet", "10.99.0.0/24"])
            .args(["--pool-start", "10.99.0.100", "--pool-end", "10.99.0.199"])
            .args([
                "--router",
                "10.99.0.1",
                "--dns",
                "10.99.0.53",
                "--lease-seconds",
                "600",
            ])
            .arg("--lease-dir")
            .arg(dir)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        // Bounded wait until it listens.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(dir.join("dhcpd.log"))
            .unwrap_or_default()
            .contains("DHCP server starting")
        {
            assert!(Instant::now() < deadline, "dhcp server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(200));
        Dhcpd {
            child: Some(child),
            dir: dir.to_path_buf(),
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dhcpd.log")).unwrap_or_default()
    }
}

impl Drop for Dhcpd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// busybox udhcpc: one lease, then quit; returns what its script saw.
fn udhcpc(net: &Net, dir: &Path) -> HashMap<String, String> {
    let script = dir.join("udhcpc.sh");
    let out = dir.join("udhcpc.env");
    let _ = std::fs::remove_file(&out);
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] && echo \"ip=$ip router=$router dns=$dns lease=$lease serverid=$serverid\" > {}\nexit 0\n",
            out.display()
        ),
    )
    .unwrap();
    must(&["chmod", "+x", script.to_str().unwrap()]);
    let o = sh(&[
        "timeout",
        "30",
        "ip",
        "netns",
        "exec",
        &net.cli,
        "busybox",
        "udhcpc",
        "-i",
        &net.cli_if,
        "-n",
        "-q",
        "-f",
        "-t",
        "5",
        "-T",
        "1",
        "-s",
        script.to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "udhcpc: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let text = std::fs::read_to_string(&out).expect("udhcpc bound");
    text.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn udhcpc_and_dhclient_get_leases_with_options() {
    let net = Net::new("a");
    let dir = tempfile::tempdir().unwrap();
    let _d = Dhcpd::start(&net, dir.path());

    net.set_client_mac("52:54:00:99:00:01");
    let env = udhcpc(&net, dir.path());
    assert!(env["ip"].starts_with("10.99.0."), "{env:?}");
    assert_eq!(env["router"], "10.99.0.1");
    assert_eq!(env["dns"], "10.99.0.53");
    assert_eq!(env["lease"], "600");
    assert_eq!(env["serverid"], "10.99.0.1");

    // ISC dhclient, another MAC: a different address, and the options it asked for.
    net.set_client_mac("52:54:00:99:00:02");
    let script = dir.path().join("dhclient.sh");
    let out = dir.path().join("dhclient.env");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase $reason in BOUND|RENEW|REBOOT) echo \"ip=$new_ip_address router=$new_routers mask=$new_subnet_mask\" > {} ;; esac\nexit 0\n",
            out.display()
        ),
    )
    .unwrap();
    must(&["chmod", "+x", script.to_str().unwrap()]);
    let lf = dir.path().join("dhclient.leases");
    let pf = dir.path().join("dhclient.pid");
    let o = sh(&[
        "timeout",
        "60",
        "ip",
        "netns",
        "exec",
        &net.cli,
        "dhclient",
        "-1",
        "-v",
        "-sf",
        script.to_str().unwrap(),
        "-lf",
        lf.to_str().unwrap(),
        "-pf",
        pf.to_str().unwrap(),
        &net.cli_if,
    ]);
    // dhclient stays in the background after binding: stop it by its PID.
    if let Ok(pid) = std::fs::read_to_string(&pf) {
        let _ = sh(&["kill", pid.trim()]);
    }
    assert!(
        o.status.success(),
        "dhclient: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = std::fs::read_to_string(&out).expect("dhclient bound");
    assert!(
        text.contains("router=10.99.0.1") && text.contains("mask=255.255.255.0"),
        "{text}"
    );
    let ip2 = text
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches("ip=")
        .to_string();
    assert!(
        ip2.starts_with("10.99.0.") && ip2 != env["ip"],
        "{ip2} vs {}",
        env["ip"]
    );
}

#[test]
fn a_killed_server_never_hands_a_bound_address_to_another_client() {
    let net = Net::new("b");
    let dir = tempfile::tempdir().unwrap();
    let mut d = Dhcpd::start(&net, dir.path());
    let mut by_mac: HashMap<String, String> = HashMap::new();
    for i in 0..8 {
        let mac = format!("52:54:00:99:01:{i:02x}");
        net.set_client_mac(&mac);
        by_mac.insert(mac, udhcpc(&net, dir.path())["ip"].clone());
    }
    // SIGKILL: nothing is flushed on the way out; the lease log must already hold every ACK.
    d.kill();
    let log_before = d.log();
    drop(d);
    let _d2 = Dhcpd::start(&net, dir.path());
    for i in 8..16 {
        let mac = format!("52:54:00:99:01:{i:02x}");
        net.set_client_mac(&mac);
        by_mac.insert(mac, udhcpc(&net, dir.path())["ip"].clone());
    }
    let ips: HashSet<&String> = by_mac.values().collect();
    assert_eq!(
        ips.len(),
        16,
        "an address was handed out twice: {by_mac:?}\n{log_before}"
    );
    // The first clients come back after the restart and keep their addresses.
    for i in 0..3 {
        let mac = format!("52:54:00:99:01:{i:02x}");
        net.set_client_mac(&mac);
        assert_eq!(udhcpc(&net, dir.path())["ip"], by_mac[&mac], "{mac}");
    }
}

#[test]
fn dhcp_follows_the_datacenter_boot_network() {
    let net = Net::new("c");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.srv,
            support::BIN,
            "server",
            "--data-dir",
        ])
        .arg(&data)
        .args(["--listen", "127.0.0.1:6443", "--controllers", "none"])
        .args([
            "--dhcp-network",
            "bn1",
            "--dhcp-interface",
            &net.srv_if,
            "--dhcp-server-ip",
            "10.99.0.1",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _k = Kill(&mut server);
    let kc = data.join("kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !kc.exists() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let apply = |yaml: &str| {
        let f = support::write(dir.path(), "dc.yaml", yaml);
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.srv,
                support::BIN,
                "apply",
                "-f",
                f.to_str().unwrap(),
            ])
            .env("KUBECONFIG", &kc)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let dc = |dns: &str| {
        format!(
            "apiVersion: groundwork.dev/v1alpha1\nkind: Datacenter\nmetadata: {{name: dc1}}\nspec:\n  availabilityZones: [{{name: az1}}]\n  bootNetworks:\n  - {{name: bn1, availabilityZone: az1, cidr: 10.99.0.0/24, gateway: 10.99.0.1, dns: [{dns}], discoveryPool: {{start: 10.99.0.120, end: 10.99.0.130}}, leaseSeconds: 900}}\n"
        )
    };
    apply(&dc("10.99.0.53"));
    net.set_client_mac("52:54:00:99:02:01");
    let deadline = Instant::now() + Duration::from_secs(20);
    let env = loop {
        // The server starts answering once it has read the boot network.
        let o = sh(&[
            "timeout",
            "10",
            "ip",
            "netns",
            "exec",
            &net.cli,
            "busybox",
            "udhcpc",
            "-i",
            &net.cli_if,
            "-n",
            "-q",
            "-f",
            "-t",
            "2",
            "-T",
            "1",
            "-s",
            "/bin/true",
        ]);
        if o.status.success() {
            break udhcpc(&net, dir.path());
        }
        assert!(
            Instant::now() < deadline,
            "no lease from the API-configured server"
        );
    };
    let last: u8 = env["ip"].rsplit('.').next().unwrap().parse().unwrap();
    assert!((120..=130).contains(&last), "{env:?}");
    assert_eq!(
        (
            env["router"].as_str(),
            env["dns"].as_str(),
            env["lease"].as_str()
        ),
        ("10.99.0.1", "10.99.0.53", "900")
    );

    // A change in the Datacenter reaches the running DHCP server; the lease survives it.
    apply(&dc("10.99.0.54"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let e = udhcpc(&net, dir.path());
        if e["dns"] == "10.99.0.54" {
            assert_eq!(e["ip"], env["ip"], "same address after the reconfiguration");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new DNS server never reached the clients: {e:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // A known Node gets its spec.bootAddress (outside the pool), and a new one when it changes.
    let node = |addr: &str| {
        format!(
            "apiVersion: groundwork.dev/v1alpha1\nkind: Node\nmetadata: {{name: fixed1}}\nspec: {{bootMACs: ['52:54:00:99:02:02'], bootAddress: {addr}}}\n"
        )
    };
    net.set_client_mac("52:54:00:99:02:02");
    for addr in ["10.99.0.20", "10.99.0.21"] {
        apply(&node(addr));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let e = udhcpc(&net, dir.path());
            if e["ip"] == addr {
                assert_eq!(e["router"], "10.99.0.1");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Node fixed1 never got its bootAddress {addr}: {e:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}
