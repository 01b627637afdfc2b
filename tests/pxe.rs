//! End to end through the boot plane: QEMU machines (TCG) PXE-boot through Groundwork's DHCP →
//! iPXE → HTTP into the discovery ramdisk (bootimages/build.sh), whose agent reports the
//! machine's inventory: a known Node gets `status.inventory`, an unknown machine is enlisted.
//! Everything runs in network namespaces this test creates (10.97.0.0/24 exists only there).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{must, sh};

struct Lab {
    srv: String,
    vm: String,
    /// The server's end of the veth pair (in `srv`).
    srv_if: String,
    children: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // QEMU daemons die with their parent (no -daemonize); namespaces go last.
        let _ = sh(&["ip", "netns", "del", &self.vm]);
        let _ = sh(&["ip", "netns", "del", &self.srv]);
    }
}

impl Lab {
    /// `tag` keeps the labs of tests running at once apart (one letter).
    fn new(tag: &str) -> Lab {
        let id = std::process::id() % 100_000;
        let (s_if, v_if) = (format!("gwpxs{tag}"), format!("gwpxv{tag}"));
        let lab = Lab {
            srv: format!("gwpxe-s{tag}-{id}"),
            vm: format!("gwpxe-v{tag}-{id}"),
            srv_if: s_if.clone(),
            children: vec![],
        };
        let _ = sh(&["ip", "netns", "del", &lab.srv]);
        let _ = sh(&["ip", "netns", "del", &lab.vm]);
        must(&["ip", "netns", "add", &lab.srv]);
        must(&["ip", "netns", "add", &lab.vm]);
        must(&[
            "ip", "link", "add", &s_if, "type", "veth", "peer", "name", &v_if,
        ]);
        must(&["ip", "link", "set", &s_if, "netns", &lab.srv]);
        must(&["ip", "link", "set", &v_if, "netns", &lab.vm]);
        must(&[
            "ip",
            "-n",
            &lab.srv,
            "addr",
            "add",
            "10.97.0.1/24",
            "dev",
            &s_if,
        ]);
        for (ns, dev) in [
            (&lab.srv, s_if.as_str()),
            (&lab.srv, "lo"),
            (&lab.vm, v_if.as_str()),
            (&lab.vm, "lo"),
        ] {
            must(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        must(&["ip", "-n", &lab.vm, "link", "add", "br0", "type", "bridge"]);
        must(&["ip", "-n", &lab.vm, "link", "set", &v_if, "master", "br0"]);
        must(&["ip", "-n", &lab.vm, "link", "set", "br0", "up"]);
        lab
    }

    fn spawn(&mut self, ns: &str, args: &[&str], log: &Path) {
        let f = std::fs::File::create(log).unwrap();
        let c = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        self.children.push(c);
    }

    fn vm(&mut self, n: u8, mac: &str, dir: &Path, uefi: bool) -> PathBuf {
        let tap = format!("gwtap{n}");
        must(&[
            "ip", "-n", &self.vm, "tuntap", "add", "dev", &tap, "mode", "tap",
        ]);
        must(&["ip", "-n", &self.vm, "link", "set", &tap, "master", "br0"]);
        must(&["ip", "-n", &self.vm, "link", "set", &tap, "up"]);
        let serial = dir.join(format!("serial-{n}.log"));
        let vm = self.vm.clone();
        let serial_arg = format!("file:{}", serial.display());
        let netdev = format!("tap,id=n0,ifname={tap},script=no,downscript=no");
        let device = format!(
            "e1000,netdev=n0,mac={mac},bootindex=1,romfile=/usr/lib/ipxe/qemu/efi-e1000.rom"
        );
        let mut args = vec![
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "512",
            "-display",
            "none",
            "-vga",
            "none",
            "-monitor",
            "none",
            "-serial",
            &serial_arg,
            "-netdev",
            &netdev,
            "-device",
            &device,
        ];
        // UEFI: OVMF (Debian package ovmf); the NIC's iPXE EFI driver boots it.
        if uefi {
            args.extend(["-bios", "/usr/share/ovmf/OVMF.fd"]);
        }
        self.spawn(&vm, &args, &dir.join(format!("qemu-{n}.log")));
        serial
    }

    fn api(&self, kubeconfig: &Path, args: &[&str]) -> String {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.srv, support::BIN])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

#[test]
fn qemu_machines_pxe_boot_into_the_ramdisk_and_report_inventory() {
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("boot");
    // The ramdisk, with this build's binary as the agent.
    let o = sh(&[
        "timeout",
        "600",
        support::repo_root()
            .join("bootimages/build.sh")
            .to_str()
            .unwrap(),
        boot.to_str().unwrap(),
        support::BIN,
    ]);
    assert!(
        o.status.success(),
        "bootimages: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    let mut lab = Lab::new("0");
    let data = dir.path().join("data");
    let srv = lab.srv.clone();
    lab.spawn(
        &srv,
        &[
            support::BIN,
            "server",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:6443",
            "--controllers",
            "none",
            "--boot-root",
            boot.to_str().unwrap(),
            "--boot-http",
            "10.97.0.1:8080",
            "--boot-tftp",
            "10.97.0.1:69",
        ],
        &dir.path().join("server.log"),
    );
    let leases = dir.path().join("leases");
    lab.spawn(
        &srv,
        &[
            support::BIN,
            "dhcp",
            "--interface",
            &lab.srv_if.clone(),
            "--server-ip",
            "10.97.0.1",
            "--subnet",
            "10.97.0.0/24",
            "--pool-start",
            "10.97.0.100",
            "--pool-end",
            "10.97.0.150",
            "--router",
            "10.97.0.1",
            "--lease-dir",
            leases.to_str().unwrap(),
            "--ipxe-url",
            "http://10.97.0.1:8080/boot.ipxe",
        ],
        &dir.path().join("dhcp.log"),
    );
    let kc = data.join("kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !kc.exists() {
        assert!(
            Instant::now() < deadline,
            "server did not start: {}",
            std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // One known machine (its MAC is on a Node), one unknown.
    let node = support::write(
        dir.path(),
        "known.yaml",
        "apiVersion: groundwork.dev/v1alpha1\nkind: Node\nmetadata: {name: known-1}\nspec: {bootMACs: ['52:54:00:97:00:01']}\n",
    );
    let out = lab.api(&kc, &["apply", "-f", node.to_str().unwrap()]);
    assert!(out.contains("created"), "{out}");

    let t0 = Instant::now();
    let s1 = lab.vm(1, "52:54:00:97:00:01", dir.path(), false);
    let s2 = lab.vm(2, "52:54:00:97:00:02", dir.path(), false);
    let s3 = lab.vm(3, "52:54:00:97:00:03", dir.path(), true);
    let deadline = Instant::now() + Duration::from_secs(500);
    let mut done = [None, None, None];
    while done.iter().any(Option::is_none) {
        for (i, s) in [&s1, &s2, &s3].iter().enumerate() {
            if done[i].is_none()
                && std::fs::read_to_string(s)
                    .unwrap_or_default()
                    .contains("GROUNDWORK-AGENT-DONE")
            {
                done[i] = Some(t0.elapsed());
            }
        }
        if Instant::now() > deadline {
            panic!(
                "no inventory in time ({done:?}).\nserial 1:\n{}\nserial 2:\n{}\nserial 3 (UEFI):\n{}\ndhcp:\n{}\nserver:\n{}",
                std::fs::read_to_string(&s1).unwrap_or_default(),
                std::fs::read_to_string(&s2).unwrap_or_default(),
                std::fs::read_to_string(&s3).unwrap_or_default(),
                std::fs::read_to_string(dir.path().join("dhcp.log")).unwrap_or_default(),
                std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default(),
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "agent reported: BIOS known {:?}, BIOS unknown {:?}, UEFI unknown {:?} (three booting at once, TCG)",
        done[0].unwrap(),
        done[1].unwrap(),
        done[2].unwrap()
    );

    let known: serde_json::Value =
        serde_json::from_str(&lab.api(&kc, &["get", "node", "known-1", "-o", "json"])).unwrap();
    assert_eq!(known["status"]["phase"], "Inventoried", "{known}");
    assert_eq!(
        known["status"]["inventory"]["system"]["vendor"], "QEMU",
        "{known}"
    );
    let nics = known["status"]["inventory"]["nics"].as_array().unwrap();
    assert!(
        nics.iter().any(|n| n["mac"] == "52:54:00:97:00:01"),
        "{known}"
    );
    assert!(
        known["status"]["inventory"]["memoryBytes"]
            .as_u64()
            .unwrap()
            > 400 << 20,
        "{known}"
    );

    let enlisted: serde_json::Value =
        serde_json::from_str(&lab.api(&kc, &["get", "node", "m-525400970002", "-o", "json"]))
            .unwrap();
    assert_eq!(enlisted["status"]["phase"], "Inventoried", "{enlisted}");
    assert_eq!(
        enlisted["metadata"]["labels"]["groundwork.dev/enlisted"],
        "true"
    );
    let uefi: serde_json::Value =
        serde_json::from_str(&lab.api(&kc, &["get", "node", "m-525400970003", "-o", "json"]))
            .unwrap();
    assert_eq!(uefi["status"]["phase"], "Inventoried", "{uefi}");
    assert!(
        std::fs::read_to_string(&s3)
            .unwrap_or_default()
            .contains("groundwork: ramdisk started"),
        "the UEFI machine ran our ramdisk"
    );
}

/// proxyDHCP beside another DHCP server: busybox udhcpd hands out addresses and knows nothing
/// of booting; `groundwork dhcp --proxy` adds only the boot options. A QEMU machine's PXE ROM
/// (iPXE) must combine the two and fetch its script from our HTTP server.
#[test]
fn a_pxe_rom_boots_through_proxy_dhcp_beside_another_dhcp_server() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("boot");
    std::fs::create_dir_all(&root).unwrap();
    let mut lab = Lab::new("p");
    let srv = lab.srv.clone();
    let srv_if = lab.srv_if.clone();
    let udhcpd_conf = support::write(
        dir.path(),
        "udhcpd.conf",
        &format!(
            "interface {srv_if}\nstart 10.97.0.200\nend 10.97.0.210\nlease_file {}\noption subnet 255.255.255.0\noption router 10.97.0.1\noption lease 600\n",
            dir.path().join("udhcpd.leases").display()
        ),
    );
    std::fs::write(dir.path().join("udhcpd.leases"), b"").unwrap();
    lab.spawn(
        &srv,
        &["busybox", "udhcpd", "-f", udhcpd_conf.to_str().unwrap()],
        &dir.path().join("udhcpd.log"),
    );
    lab.spawn(
        &srv,
        &[
            support::BIN,
            "boot",
            "--root",
            root.to_str().unwrap(),
            "--http",
            "10.97.0.1:8080",
            "--tftp",
            "10.97.0.1:69",
        ],
        &dir.path().join("boot.log"),
    );
    lab.spawn(
        &srv,
        &[
            support::BIN,
            "dhcp",
            "--proxy",
            "--interface",
            &srv_if,
            "--server-ip",
            "10.97.0.1",
            "--subnet",
            "10.97.0.0/24",
            "--pool-start",
            "10.97.0.100",
            "--pool-end",
            "10.97.0.150",
            "--lease-dir",
            dir.path().join("leases").to_str().unwrap(),
            "--ipxe-url",
            "http://10.97.0.1:8080/boot.ipxe",
        ],
        &dir.path().join("dhcp.log"),
    );
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    lab.vm(1, "52:54:00:97:01:01", dir.path(), false);
    let deadline = Instant::now() + Duration::from_secs(240);
    let boot_log = dir.path().join("boot.log");
    loop {
        let log = std::fs::read_to_string(&boot_log).unwrap_or_default();
        if log.contains("iPXE script served") && log.contains("52:54:00:97:01:01") {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "the machine never fetched its iPXE script.\nboot:\n{log}\ndhcp:\n{}\nudhcpd:\n{}",
                std::fs::read_to_string(dir.path().join("dhcp.log")).unwrap_or_default(),
                std::fs::read_to_string(dir.path().join("udhcpd.log")).unwrap_or_default(),
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "script fetched through proxyDHCP {:?} after power-on",
        t0.elapsed()
    );
    // The address came from udhcpd; ours sent boot options only, and no lease was recorded.
    let udhcpd = std::fs::read_to_string(dir.path().join("udhcpd.log")).unwrap_or_default();
    assert!(
        udhcpd.contains("sending ACK to 10.97.0.2"),
        "udhcpd leased the address: {udhcpd}"
    );
    // Our proxy's counters (logged every 10 s): offers made, no address ever acknowledged.
    let deadline = Instant::now() + Duration::from_secs(15);
    let stats = loop {
        let dhcp = std::fs::read_to_string(dir.path().join("dhcp.log")).unwrap_or_default();
        let offered = dhcp
            .lines()
            .rev()
            .find(|l| l.contains(" offers=") && !l.contains(" offers=0 "));
        if let Some(l) = offered {
            break l.to_string();
        }
        assert!(Instant::now() < deadline, "the proxy made no offer: {dhcp}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        stats.contains(" acks=0 "),
        "a proxy binds no address: {stats}"
    );
}
