//! Building the lab: the boot images, the network namespace, BMCs, machines and the server.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::host::{sh, spawn_logged};
use super::machines::{chassis_script, mac, manifests};
use super::{BMC_IP, HOST_IP, State, UpArgs};

pub(super) async fn build(
    a: &UpArgs,
    dir: &Path,
    exe: &Path,
    checksum: &str,
    state: &mut State,
    save: &dyn Fn(&State) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let ns = state.netns.clone();
    let (h, b) = (state.host_if.clone(), format!("gw{}b", a.name));
    let _ = sh(&["ip", "netns", "del", &ns]);
    let _ = sh(&["ip", "link", "del", &h]);
    sh(&["ip", "netns", "add", &ns])?;
    sh(&["ip", "link", "add", &h, "type", "veth", "peer", "name", &b])?;
    sh(&["ip", "link", "set", &b, "netns", &ns])?;
    sh(&["ip", "addr", "add", &format!("{HOST_IP}/24"), "dev", &h])?;
    sh(&["ip", "link", "set", &h, "up"])?;
    sh(&["ip", "link", "set", "lo", "up"])?;
    let inns = |args: &[&str]| {
        let mut v = vec!["ip", "-n", ns.as_str()];
        v.extend_from_slice(args);
        sh(&v)
    };
    inns(&["link", "set", "lo", "up"])?;
    inns(&["link", "add", "br0", "type", "bridge"])?;
    inns(&["link", "set", &b, "master", "br0"])?;
    inns(&["link", "set", &b, "up"])?;
    inns(&["addr", "add", &format!("{BMC_IP}/24"), "dev", "br0"])?;
    inns(&["link", "set", "br0", "up"])?;

    // The control plane.
    // A new lab starts from an empty store.
    let data = dir.join("data");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data)?;
    let _ = std::fs::remove_file(&state.kubeconfig);
    let mut server = Command::new(exe);
    server
        .args(["server", "--data-dir"])
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{}", a.api_port)])
        .arg("--boot-root")
        .arg(dir.join("boot"))
        .args([
            "--boot-http",
            &format!("{HOST_IP}:8080"),
            "--boot-tftp",
            &format!("{HOST_IP}:69"),
        ])
        .args([
            "--dhcp-network",
            "lab-boot",
            "--dhcp-interface",
            &h,
            "--dhcp-server-ip",
            HOST_IP,
        ])
        .args(&a.server_args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
    state
        .pids
        .push(spawn_logged(&mut server, &dir.join("server.log"))?);
    save(state)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !state.kubeconfig.exists() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the server did not start in 30 s; see {}",
            dir.join("server.log").display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // One BMC (ipmi_sim) and one machine per Node, with a disk 1 GiB larger than the image.
    let image_bytes = match &a.image {
        Some(img) => std::fs::metadata(img)?.len(),
        None => 0,
    };
    let disk_bytes = (image_bytes + (1 << 30)).div_ceil(1 << 20) << 20;
    let chassis = dir.join("chassis.sh");
    std::fs::write(&chassis, chassis_script())?;
    sh(&["chmod", "+x", chassis.to_str().unwrap_or_default()])?;
    for i in 1..=a.machines {
        let w = dir.join(format!("m{i}"));
        let _ = std::fs::remove_dir_all(&w);
        std::fs::create_dir_all(w.join("state"))?;
        let tap = format!("gw{}t{i}", a.name);
        inns(&["tuntap", "add", "dev", &tap, "mode", "tap"])?;
        inns(&["link", "set", &tap, "master", "br0"])?;
        inns(&["link", "set", &tap, "up"])?;
        let uefi = i > a.machines.saturating_sub(a.uefi);
        std::fs::write(
            w.join("vm.conf"),
            format!(
                "MEM={}\nTAP={tap}\nMAC={}\nNAME=gw-{}-{i}\nFW={}\n",
                a.memory,
                mac(i),
                a.name,
                if uefi { "uefi" } else { "bios" }
            ),
        )?;
        let disk = std::fs::File::create(w.join("disk.img"))?;
        disk.set_len(disk_bytes)?;
        std::fs::write(
            w.join("sim.emu"),
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nsel_enable 0x20 1000 0x0a\nmc_enable 0x20\n",
        )?;
        std::fs::write(
            w.join("lan.conf"),
            format!(
                "name \"gw{i}\"\nset_working_mc 0x20\n  startlan 1\n    addr {BMC_IP} {}\n    priv_limit admin\n    allowed_auths_callback none md2 md5 straight\n    allowed_auths_user none md2 md5 straight\n    allowed_auths_operator none md2 md5 straight\n    allowed_auths_admin none md2 md5 straight\n    guid a123456789abcdefa123456789abcd{i:02x}\n  endlan\n  chassis_control \"{} {}\"\n  user 2 true  \"admin\" \"password\" admin 10 none md2 md5 straight\n",
                6230 + i as u16,
                chassis.display(),
                w.display()
            ),
        )?;
        let mut sim = Command::new("ip");
        sim.args(["netns", "exec", &ns, "ipmi_sim", "-n", "-c"])
            .arg(w.join("lan.conf"))
            .arg("-f")
            .arg(w.join("sim.emu"))
            .arg("-s")
            .arg(w.join("state"));
        state
            .pids
            .push(spawn_logged(&mut sim, &w.join("ipmi_sim.log"))?);
        state.qemu_pidfiles.push(w.join("qemu.pid"));
        save(state)?;
    }

    // The lab's manifests.
    let mdir = dir.join("manifests");
    std::fs::create_dir_all(&mdir)?;
    let mf = mdir.join("lab.yaml");
    let image = if a.image.is_some() {
        "image.raw"
    } else {
        "os.img"
    };
    std::fs::write(&mf, manifests(a.machines, image, checksum))?;
    crate::apply::run(Some(state.kubeconfig.clone()), &[mf], false).await?;
    Ok(())
}
