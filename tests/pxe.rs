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
    fn new() -> Lab {
        let id = std::process::id() % 100_000;
        let lab = Lab {
            srv: format!("gwpxe-s-{id}"),
            vm: format!("gwpxe-v-{id}"),
            children: vec![],
        };
        let _ = sh(&["ip", "netns", "del", &lab.srv]);
        let _ = sh(&["ip", "netns", "del", &lab.vm]);
        must(&["ip", "netns", "add", &lab.srv]);
        must(&["ip", "netns", "add", &lab.vm]);
        must(&[
            "ip", "link", "add", "gwpxs0", "type", "veth", "peer", "name", "gwpxv0",
        ]);
        must(&["ip", "link", "set", "gwpxs0", "netns", &lab.srv]);
        must(&["ip", "link", "set", "gwpxv0", "netns", &lab.vm]);
        must(&[
            "ip",
            "-n",
            &lab.srv,
            "addr",
            "add",
            "10.97.0.1/24",
            "dev",
            "gwpxs0",
        ]);
        for (ns, dev) in [
            (&lab.srv, "gwpxs0"),
            (&lab.srv, "lo"),
            (&lab.vm, "gwpxv0"),
            (&lab.vm, "lo"),
        ] {
            must(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        must(&["ip", "-n", &lab.vm, "link", "add", "br0", "type", "bridge"]);
        must(&[
            "ip", "-n", &lab.vm, "link", "set", "gwpxv0", "master", "br0",
        ]);
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

    let mut lab = Lab::new();
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
            "gwpxs0",
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
