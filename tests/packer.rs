//! The image templates under `packer/` with Debian's real Packer 1.6.6 (installed by
//! `tests/run`): `packer validate` accepts every build (bootstrap server, cluster node,
//! worker) with the binary under test, `packer fmt -check` finds them formatted, and a
//! template with a broken provisioner path is refused, naming it.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{BIN, text};

/// Packer's download cache and port locks: out of the repository (it defaults to
/// `./packer_cache`).
const PACKER_CACHE: &str = "/var/tmp/groundwork-images/packer_cache";

fn packer(dir: &Path, args: &[&str], key: &Path) -> std::process::Output {
    Command::new("packer")
        .args(args)
        .arg("-var")
        .arg(format!("ssh_private_key_file={}", key.display()))
        .arg("-var")
        .arg(format!("groundwork_binary={BIN}"))
        // Validate refuses an output directory that exists: one of the test's own.
        .arg("-var")
        .arg(format!(
            "output_dir={}",
            key.parent().unwrap().join("validate-out").display()
        ))
        .arg(dir)
        .env("CHECKPOINT_DISABLE", "1")
        .env("PACKER_CACHE_DIR", PACKER_CACHE)
        .output()
        .expect("packer (tests/run installs it)")
}

#[test]
fn packer_validates_every_image_template() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("build-key");
    let o = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let dir = support::repo_root().join("packer");
    let v = Command::new("packer")
        .arg("version")
        .output()
        .expect("packer");
    assert!(support::stdout(&v).contains("Packer v1."), "{}", text(&v));
    let o = packer(&dir, &["validate"], &key);
    assert!(o.status.success(), "packer validate: {}", text(&o));
    assert!(!text(&o).contains("Error"), "{}", text(&o));
    // The three builds, by name, as `packer build -only=...` selects them.
    let o = Command::new("packer")
        .args(["inspect"])
        .arg(&dir)
        .env("CHECKPOINT_DISABLE", "1")
        .env("PACKER_CACHE_DIR", PACKER_CACHE)
        .output()
        .unwrap();
    let inspect = support::stdout(&o);
    for b in ["qemu.bootstrap-server", "qemu.cluster-node", "qemu.worker"] {
        assert!(inspect.contains(b), "{b} not in packer inspect:\n{inspect}");
    }
    let o = Command::new("packer")
        .args(["fmt", "-check"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "packer fmt -check: {}", text(&o));
    // A broken copy is refused, and the message names what is wrong.
    let broken = tmp.path().join("packer");
    std::fs::create_dir_all(broken.join("scripts")).unwrap();
    for e in std::fs::read_dir(&dir)
        .unwrap()
        .chain(std::fs::read_dir(dir.join("scripts")).unwrap())
    {
        let p = e.unwrap().path();
        if p.is_file() {
            let rel = p.strip_prefix(&dir).unwrap();
            std::fs::copy(&p, broken.join(rel)).unwrap();
        }
    }
    let images = broken.join("images.pkr.hcl");
    let t = std::fs::read_to_string(&images).unwrap();
    std::fs::write(
        &images,
        t.replace("scripts/seal.sh", "scripts/no-such.sh").replace(
            "${path.root}/../deploy",
            &support::repo_root().join("deploy").display().to_string(),
        ),
    )
    .unwrap();
    let o = packer(&broken, &["validate"], &key);
    assert!(!o.status.success(), "a broken template validated");
    assert!(text(&o).contains("no-such.sh"), "{}", text(&o));
}

/// A full build: the Debian 12 base image (`packer/base-image.sh`, debootstrap from Debian's
/// archive; kept in /var/tmp between runs) and `packer build -only=qemu.cluster-node` under
/// TCG with the binary under test. The output's sha256 file matches the image, and the
/// image's root holds the binary, the node agent's unit enabled, and no build key or
/// machine identity. Needs root (loop devices).
#[test]
fn packer_builds_a_cluster_node_image_from_the_debian_base() {
    let repo = support::repo_root();
    let images = Path::new("/var/tmp/groundwork-images");
    let t0 = std::time::Instant::now();
    let o = Command::new("timeout")
        .arg("1200")
        .arg(repo.join("packer/base-image.sh"))
        .arg(images)
        .output()
        .unwrap();
    assert!(o.status.success(), "base-image.sh: {}", text(&o));
    eprintln!("base image (built or cached): {:?}", t0.elapsed());
    let t0 = std::time::Instant::now();
    let base = images.join("debian-12-base.raw");
    let sum = std::fs::read_to_string(images.join("debian-12-base.raw.sha256")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = Command::new("timeout")
        .arg("900")
        .arg("packer")
        .args(["build", "-only=qemu.cluster-node"])
        .arg("-var")
        .arg(format!("groundwork_binary={BIN}"))
        .arg("-var")
        .arg(format!("base_image=file://{}", base.display()))
        .arg("-var")
        .arg(format!("base_image_checksum={}", sum.trim()))
        .arg("-var")
        .arg(format!("output_dir={}", out.display()))
        .arg("-var")
        .arg(format!(
            "ssh_private_key_file={}",
            images.join("build-key").display()
        ))
        .arg(repo.join("packer"))
        .env("CHECKPOINT_DISABLE", "1")
        .env("PACKER_CACHE_DIR", PACKER_CACHE)
        .output()
        .unwrap();
    assert!(o.status.success(), "packer build: {}", text(&o));
    eprintln!("packer build -only=qemu.cluster-node: {:?}", t0.elapsed());
    let raw = out.join("cluster-node/groundwork-cluster-node.raw");
    let recorded =
        std::fs::read_to_string(out.join("cluster-node/groundwork-cluster-node.raw.sha256"))
            .unwrap();
    let actual = support::sha256_hex(&raw);
    assert!(recorded.contains(&actual), "{recorded} vs {actual}");
    // Look inside: the root partition, read-only.
    let mnt = tmp.path().join("mnt");
    let guard = mount_root(&raw, &mnt, false);
    use std::os::unix::fs::PermissionsExt;
    let bin = std::fs::metadata(mnt.join("usr/local/bin/groundwork")).unwrap();
    assert!(
        bin.permissions().mode() & 0o111 != 0,
        "the binary is not executable"
    );
    assert!(
        mnt.join("etc/systemd/system/groundwork-node-agent.service")
            .exists()
    );
    assert!(
        std::fs::symlink_metadata(
            mnt.join("etc/systemd/system/multi-user.target.wants/groundwork-node-agent.service")
        )
        .is_ok(),
        "the node agent is not enabled"
    );
    assert!(
        !mnt.join("root/.ssh/authorized_keys").exists(),
        "the build key is left in the image"
    );
    assert_eq!(
        std::fs::read_to_string(mnt.join("etc/machine-id")).unwrap(),
        ""
    );
    assert!(mnt.join("etc/cloud/cloud.cfg.d/90-groundwork.cfg").exists());
    drop(guard);

    lab_installs_the_image_on_bios_and_uefi(&raw, tmp.path());
}

/// `groundwork lab up --image` inside a network namespace this test creates.
struct Lab {
    ns: String,
    dir: PathBuf,
}

impl Lab {
    fn groundwork(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "timeout",
                "60",
                BIN,
                "--kubeconfig",
            ])
            .arg(self.dir.join("data/kubeconfig"))
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.ns, BIN, "lab", "down", "--dir"])
            .arg(&self.dir)
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// Two lab machines (TCG) install the Packer-built image through IPMI and PXE: lab-1 with
/// BIOS (SeaBIOS), lab-2 with UEFI (OVMF). Both boot it from disk, cloud-init applies the
/// machine config from the installer's NoCloud seed, and the node agent checks in under
/// systemd: Ready. Then, from the disks: the host name, the user and its key, the file, the
/// node agent's config (0600) and its renewed key.
fn lab_installs_the_image_on_bios_and_uefi(raw: &Path, tmp: &Path) {
    let id = std::process::id() % 100_000;
    let name = format!("i{}", id % 10_000);
    let lab = Lab {
        ns: format!("gwimg-{id}"),
        dir: tmp.join("lab"),
    };
    let _ = Command::new("ip").args(["netns", "del", &lab.ns]).output();
    support::must(&["ip", "netns", "add", &lab.ns]);
    support::must(&["ip", "-n", &lab.ns, "link", "set", "lo", "up"]);
    let t0 = std::time::Instant::now();
    let o = Command::new("ip")
        .args(["netns", "exec", &lab.ns, "timeout", "300", BIN, "lab", "up"])
        .args([
            "--machines",
            "2",
            "--uefi",
            "1",
            "--memory",
            "1024",
            "--name",
            &name,
        ])
        .arg("--image")
        .arg(raw)
        .arg("--no-wait")
        .arg("--dir")
        .arg(&lab.dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "lab up: {}", text(&o));
    let ready = |n: &str| -> Option<serde_json::Value> {
        let o = lab.groundwork(&["get", "node", n, "-o", "json"]);
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        (j["status"]["phase"] == "Ready").then_some(j)
    };
    let deadline = t0 + std::time::Duration::from_secs(1200);
    let mut nodes = Vec::new();
    for n in ["lab-1", "lab-2"] {
        loop {
            if let Some(j) = ready(n) {
                nodes.push(j);
                break;
            }
            if std::time::Instant::now() > deadline {
                let tail = |p: &str| {
                    let t = String::from_utf8_lossy(
                        &std::fs::read(lab.dir.join(p)).unwrap_or_default(),
                    )
                    .into_owned();
                    t.chars()
                        .rev()
                        .take(3000)
                        .collect::<String>()
                        .chars()
                        .rev()
                        .collect::<String>()
                };
                panic!(
                    "{n} not Ready in 20 min: {}\nserver log: {}\nm1: {}\nm2: {}",
                    support::text(&lab.groundwork(&["get", "nodes"])),
                    tail("server.log"),
                    tail("m1/serial.log"),
                    tail("m2/serial.log")
                );
            }
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
    }
    eprintln!(
        "2 machines (TCG, BIOS + UEFI) from apply to Ready with the Packer image: {:?}",
        t0.elapsed()
    );
    let want = std::fs::read_to_string(format!("{}.sha256", raw.display())).unwrap();
    for (i, j) in nodes.iter().enumerate() {
        let p = &j["status"]["provisioning"];
        assert!(
            want.contains(
                p["installedChecksum"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("sha256:")
            ),
            "{j}"
        );
        let hist: Vec<groundwork_types::PhaseEntry> =
            serde_json::from_value(p["history"].clone()).unwrap();
        eprintln!("lab-{}: {}", i + 1, groundwork_types::phase_times(&hist));
    }
    // The node agents report cloud-init's outcome with their heartbeats ("not finished yet",
    // then its errors), which the server keeps as the Node's MachineConfigApplied condition:
    // wait for it to say cloud-init finished with no error.
    let t1 = std::time::Instant::now();
    for n in ["lab-1", "lab-2"] {
        loop {
            let o = lab.groundwork(&["get", "node", n, "-o", "json"]);
            let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            let c = j["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "MachineConfigApplied"))
                .cloned()
                .unwrap_or_default();
            if c["status"] == "True" {
                break;
            }
            assert!(
                c["reason"] != "NotApplied" && t1.elapsed() < std::time::Duration::from_secs(300),
                "{n}: cloud-init did not finish cleanly: {c}"
            );
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
    }
    eprintln!("cloud-init finished on both {:?} after Ready", t1.elapsed());
    let power = std::fs::read_to_string(lab.dir.join("m2/power.log")).unwrap();
    assert!(power.contains("boot=c firmware=uefi"), "{power}");

    // From the disks, once the machines are off. The machines were cut off, not shut down:
    // the loop device is writable so the read-only mount replays ext4's journal first.
    let o = Command::new("ip")
        .args(["netns", "exec", &lab.ns, BIN, "lab", "down", "--dir"])
        .arg(&lab.dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    for (m, host) in [("m1", "lab-1"), ("m2", "lab-2")] {
        let disk = lab.dir.join(format!("{m}/disk.img"));
        let mnt = tmp.join(format!("mnt-{m}"));
        let guard = mount_root(&disk, &mnt, true);
        let read = |p: &str| {
            std::fs::read_to_string(mnt.join(p)).unwrap_or_else(|e| panic!("{m}: {p}: {e}"))
        };
        assert_eq!(read("etc/hostname").trim(), host);
        assert!(read("home/ops/.ssh/authorized_keys").contains("ops@lab"));
        assert_eq!(read("etc/motd"), "Installed by Groundwork\n");
        use std::os::unix::fs::PermissionsExt;
        for f in [
            "var/lib/groundwork/machine.json",
            "var/lib/groundwork/credentials.json",
        ] {
            let mode = std::fs::metadata(mnt.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{m}: {f}");
        }
        assert!(
            !mnt.join("home/debian").exists(),
            "{m}: a distribution default user"
        );
        drop(guard);
    }
}

/// Mounts partition 3 (the root) of a disk image read-only on `mnt`; unmounted and detached
/// when the guard goes. `replay`: the loop device is writable, so ext4 replays its journal
/// (a machine that was cut off rather than shut down).
fn mount_root(image: &Path, mnt: &Path, replay: bool) -> Loop {
    let loopdev = support::stdout(
        &Command::new("losetup")
            .args(if replay {
                &["-f", "--show"][..]
            } else {
                &["-f", "--show", "-r"][..]
            })
            .arg(image)
            .output()
            .unwrap(),
    )
    .trim()
    .to_string();
    std::fs::create_dir_all(mnt).unwrap();
    let guard = Loop(loopdev.clone(), mnt.to_path_buf());
    support::must(&["partx", "-a", &loopdev]);
    let o = Command::new("mount")
        .args(["-o", "ro", &format!("{loopdev}p3")])
        .arg(mnt)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mount {}: {}",
        image.display(),
        text(&o)
    );
    guard
}

struct Loop(String, PathBuf);
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.1).output();
        let _ = Command::new("partx").args(["-d", &self.0]).output();
        let _ = Command::new("losetup").args(["-d", &self.0]).output();
    }
}
