//! The image templates under `packer/` with Debian's real Packer 1.6.6 (installed by
//! `tests/run`): `packer validate` accepts every build (bootstrap server, cluster node,
//! worker) with the binary under test, `packer fmt -check` finds them formatted, and a
//! template with a broken provisioner path is refused, naming it.

mod support;

use std::path::Path;
use std::process::Command;

use support::{BIN, text};

fn packer(dir: &Path, args: &[&str], key: &Path) -> std::process::Output {
    Command::new("packer")
        .args(args)
        .arg("-var")
        .arg(format!("ssh_private_key_file={}", key.display()))
        .arg("-var")
        .arg(format!("groundwork_binary={BIN}"))
        .arg(dir)
        .env("CHECKPOINT_DISABLE", "1")
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
        t.replace("scripts/server.sh", "scripts/no-such.sh"),
    )
    .unwrap();
    let o = packer(&broken, &["validate"], &key);
    assert!(!o.status.success(), "a broken template validated");
    assert!(text(&o).contains("no-such.sh"), "{}", text(&o));
}
