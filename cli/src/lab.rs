//! `groundwork lab up|down`: a whole lab on one machine. N QEMU machines (TCG) behind
//! OpenIPMI `ipmi_sim` BMCs sit in a network namespace of their own, bridged to a veth whose
//! other end (10.98.0.1/24) stays in the namespace `lab up` runs in. There, a Groundwork
//! server serves the API on 127.0.0.1, DHCP/TFTP/HTTP on the veth, and runs every
//! controller. The lab's manifests (a Datacenter with the boot network, a Rack, the BMC
//! Credential, a Profile that installs bootimages' os.img, one Node per machine) are
//! written to DIR/manifests and applied; `lab up` then shows each machine's progress until
//! all are Ready. `lab down` stops every process it started (by PID) and removes the
//! namespace; DIR keeps the logs.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use groundwork_types::{Node, NodePhase};
use serde::{Deserialize, Serialize};

const BUILD_SH: &str = include_str!("../../bootimages/build.sh");
const HOST_IP: &str = "10.98.0.1";
const BMC_IP: &str = "10.98.0.2";

#[derive(clap::Args, Debug)]
pub(crate) struct LabArgs {
    #[command(subcommand)]
    cmd: LabCmd,
}

#[derive(clap::Subcommand, Debug)]
enum LabCmd {
    /// Create the lab, apply its manifests and show progress until every machine is Ready.
    Up(UpArgs),
    /// Stop everything the lab started and remove its network namespace.
    Down(DownArgs),
}

#[derive(clap::Args, Debug)]
struct UpArgs {
    /// Machines to create.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=16))]
    machines: u8,
    /// Directory for the lab's state, disks, logs and kubeconfig.
    #[arg(long, default_value = "/var/lib/groundwork-lab")]
    dir: PathBuf,
    /// Short name (letters and digits, at most 6): names the namespace and interfaces.
    #[arg(long, default_value = "lab")]
    name: String,
    /// Port of the API server on 127.0.0.1.
    #[arg(long, default_value_t = 16443)]
    api_port: u16,
    /// Memory of each machine, MiB.
    #[arg(long, default_value_t = 512)]
    memory: u32,
    /// Give up waiting for Ready after this many seconds.
    #[arg(long, default_value_t = 1200)]
    timeout: u64,
    /// Return once the manifests are applied, without waiting.
    #[arg(long)]
    no_wait: bool,
    /// Extra arguments for `groundwork server` (repeatable), e.g. --server-arg=--boot-timeout-seconds=300.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
}

#[derive(clap::Args, Debug)]
struct DownArgs {
    #[arg(long, default_value = "/var/lib/groundwork-lab")]
    dir: PathBuf,
}

/// What `down` needs to undo `up`.
#[derive(Serialize, Deserialize, Debug, Default)]
struct State {
    name: String,
    netns: String,
    host_if: String,
    /// Process groups we started (server, BMCs).
    pids: Vec<u32>,
    /// Pid files of the QEMU machines (daemonized by the chassis program).
    qemu_pidfiles: Vec<PathBuf>,
    kubeconfig: PathBuf,
}

pub(crate) async fn run(a: LabArgs) -> anyhow::Result<()> {
    match a.cmd {
        LabCmd::Up(u) => up(u).await,
        LabCmd::Down(d) => down(&d.dir),
    }
}

fn sh(args: &[&str]) -> anyhow::Result<String> {
    let o = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    if !o.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn have(cmd: &str) -> bool {
    if cmd.starts_with('/') {
        return Path::new(cmd).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(cmd).is_file())
}

/// Installs the Debian packages the lab needs, or says exactly which are missing.
fn ensure_packages() -> anyhow::Result<()> {
    let needs = [
        ("ip", "iproute2"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("/usr/lib/ipxe/qemu/efi-e1000.rom", "ipxe-qemu"),
        ("ipmi_sim", "openipmi"),
    ];
    let missing: Vec<&str> = needs
        .iter()
        .filter(|(c, _)| !have(c))
        .map(|(_, p)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("lab: installing {}", missing.join(" "));
    let install = |update: bool| {
        if update {
            let _ = Command::new("apt-get").args(["update", "-q"]).status();
        }
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install(false) && !install(true) {
        bail!(
            "missing Debian packages and apt-get could not install them: {}",
            missing.join(" ")
        );
    }
    Ok(())
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> anyhow::Result<u32> {
    let f = std::fs::File::create(log).with_context(|| log.display().to_string())?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    Ok(child.id())
}

fn chassis_script() -> &'static str {
    r#"#!/bin/sh
# ipmi_sim "chassis_control" program of `groundwork lab`: power starts and stops this
# machine's QEMU (TCG); the boot device picks PXE or the disk. ipmi_sim calls
#   chassis.sh WORKDIR get power boot | set power 1|0 | set reset 1 | set boot pxe|default|...
W=$1 op=$2; shift 2
. "$W/vm.conf"
pid() { [ -s "$W/qemu.pid" ] && kill -0 "$(cat "$W/qemu.pid")" 2>/dev/null && cat "$W/qemu.pid"; }
on() {
  pid >/dev/null && return 0
  order=c; [ "$(cat "$W/bootdev" 2>/dev/null)" = pxe ] && order=n
  echo "$(date +%s.%N) power-on boot=$order" >>"$W/power.log"
  qemu-system-x86_64 -accel tcg -m "$MEM" -display none -vga none -nodefaults -monitor none \
    -chardev "file,id=s0,path=$W/serial.log,append=on" -serial chardev:s0 \
    -boot "order=$order" -name "$NAME" \
    -netdev "tap,id=n0,ifname=$TAP,script=no,downscript=no" \
    -device "e1000,netdev=n0,mac=$MAC,romfile=/usr/lib/ipxe/qemu/efi-e1000.rom" \
    -drive "file=$W/disk.img,if=virtio,format=raw" \
    -daemonize -pidfile "$W/qemu.pid" >>"$W/qemu.log" 2>&1
}
off() {
  p=$(pid) || return 0
  echo "$(date +%s.%N) power-off" >>"$W/power.log"
  kill "$p"
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$p"
}
echo "$(date +%T) $op $*" >>"$W/chassis.log"
case $op in
  get) for n in "$@"; do case $n in
         power) if pid >/dev/null; then echo power:1; else echo power:0; fi ;;
         boot)  echo "boot:$(cat "$W/bootdev" 2>/dev/null || echo default)" ;;
       esac; done ;;
  set) while [ $# -ge 2 ]; do n=$1 v=$2; shift 2; case $n in
         power) if [ "$v" = 1 ]; then on; else off; fi ;;
         reset) off; on ;;
         boot)  echo "$v" >"$W/bootdev" ;;
       esac; done ;;
esac
exit 0
"#
}

fn mac(i: u8) -> String {
    format!("52:54:00:98:00:{i:02x}")
}

fn manifests(n: u8, checksum: &str) -> String {
    let mut y = format!(
        r#"# Written by `groundwork lab up`: the lab's datacenter, shaped like manifests/.
apiVersion: groundwork.dev/v1alpha1
kind: Datacenter
metadata: {{name: lab}}
spec:
  displayName: Groundwork lab
  availabilityZones: [{{name: az1}}]
  bootNetworks:
    - name: lab-boot
      availabilityZone: az1
      cidr: 10.98.0.0/24
      gateway: {HOST_IP}
      dhcpMode: Authoritative
      discoveryPool: {{start: 10.98.0.100, end: 10.98.0.199}}
      leaseSeconds: 3600
  powerBudgetKw: 10
---
apiVersion: groundwork.dev/v1alpha1
kind: Rack
metadata: {{name: lab-rack}}
spec: {{datacenter: lab, availabilityZone: az1, heightU: 42, powerBudgetKw: 10}}
---
apiVersion: groundwork.dev/v1alpha1
kind: Credential
metadata: {{name: lab-bmc}}
spec: {{username: admin, password: password}}
---
apiVersion: groundwork.dev/v1alpha1
kind: Profile
metadata: {{name: lab-os}}
spec:
  priority: 10
  os: {{url: "http://{HOST_IP}:8080/os.img", checksum: "{checksum}"}}
  machineConfig:
    hostname: "{{{{name}}}}.lab"
    users: [{{name: ops, sshAuthorizedKeys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGroundworkLabExampleKeyOnly ops@lab"], sudo: true}}]
    files: [{{path: /etc/motd, content: "Installed by Groundwork\n"}}]
"#
    );
    for i in 1..=n {
        y.push_str(&format!(
            r#"---
apiVersion: groundwork.dev/v1alpha1
kind: Node
metadata: {{name: lab-{i}}}
spec:
  rack: {{name: lab-rack, position: {i}}}
  bmc: {{address: {BMC_IP}, port: {}, protocol: ipmi, credentialsRef: lab-bmc}}
  bootMACs: ["{}"]
  profile: lab-os
  provisioning: Provisioned
"#,
            6230 + i as u16,
            mac(i)
        ));
    }
    y
}

async fn up(a: UpArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !a.name.is_empty()
            && a.name.len() <= 6
            && a.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
        "--name {:?}: 1 to 6 lower-case letters or digits",
        a.name
    );
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "lab up needs root: it creates network namespaces, tap devices and BMCs"
    );
    let dir = std::path::absolute(&a.dir)?;
    if let Ok(text) = std::fs::read_to_string(dir.join("lab.json")) {
        let st: State = serde_json::from_str(&text).unwrap_or_default();
        if st.pids.iter().any(|p| ours(*p)) {
            bail!(
                "a lab is already up in {}: run `groundwork lab down --dir {}` first",
                dir.display(),
                dir.display()
            );
        }
        // What a crashed or half-removed lab left behind (QEMUs, the namespace) goes first.
        let _ = down(&dir);
    }
    ensure_packages()?;
    std::fs::create_dir_all(&dir)?;
    let exe = std::env::current_exe()?;
    let t0 = Instant::now();

    // Boot images, with this binary as the agents.
    let boot = dir.join("boot");
    std::fs::write(dir.join("build.sh"), BUILD_SH)?;
    eprintln!("lab: building boot images into {}", boot.display());
    let st = Command::new("bash")
        .arg(dir.join("build.sh"))
        .arg(&boot)
        .arg(&exe)
        .status()?;
    anyhow::ensure!(st.success(), "bootimages/build.sh failed");
    let checksum = std::fs::read_to_string(boot.join("os.img.sha256"))?
        .trim()
        .to_string();

    let mut state = State {
        name: a.name.clone(),
        netns: format!("gw-{}-m", a.name),
        host_if: format!("gw{}h", a.name),
        kubeconfig: dir.join("data/kubeconfig"),
        ..Default::default()
    };
    // Write what we create as we go, so `down` can undo a half-made lab.
    let save = |s: &State| {
        std::fs::write(
            dir.join("lab.json"),
            serde_json::to_vec_pretty(s).unwrap_or_default(),
        )
    };
    save(&state)?;
    match build(&a, &dir, &exe, &checksum, &mut state, &save).await {
        Ok(()) => {}
        Err(e) => {
            eprintln!("lab: {e:#}; removing what was created");
            let _ = down(&dir);
            return Err(e);
        }
    }
    println!(
        "lab: up in {:.1}s; kubeconfig: {}",
        t0.elapsed().as_secs_f64(),
        state.kubeconfig.display()
    );
    println!("lab:   export KUBECONFIG={}", state.kubeconfig.display());
    println!("lab:   kubectl get nodes.groundwork.dev -w     groundwork logs node/lab-1 -f");
    println!(
        "lab:   machines' consoles: {}/m*/serial.log; remove all: groundwork lab down --dir {}",
        dir.display(),
        dir.display()
    );
    if a.no_wait {
        return Ok(());
    }
    progress(
        &state.kubeconfig,
        a.machines,
        Duration::from_secs(a.timeout),
    )
    .await
}

async fn build(
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

    // One BMC (ipmi_sim) and one machine per Node.
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
        std::fs::write(
            w.join("vm.conf"),
            format!(
                "MEM={}\nTAP={tap}\nMAC={}\nNAME=gw-{}-{i}\n",
                a.memory,
                mac(i),
                a.name
            ),
        )?;
        let disk = std::fs::File::create(w.join("disk.img"))?;
        disk.set_len(1 << 30)?;
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
    std::fs::write(&mf, manifests(a.machines, checksum))?;
    crate::apply::run(Some(state.kubeconfig.clone()), &[mf], false).await?;
    Ok(())
}

/// Shows each machine's phase changes until all are Ready, then the time in each phase.
async fn progress(kubeconfig: &Path, n: u8, timeout: Duration) -> anyhow::Result<()> {
    let api = crate::client::connect(Some(kubeconfig.to_path_buf())).await?;
    let nodes: kube::Api<Node> = kube::Api::all(api.client);
    let t0 = Instant::now();
    let mut seen: BTreeMap<String, Option<NodePhase>> = BTreeMap::new();
    loop {
        let list = nodes.list(&Default::default()).await?;
        let mut ready = 0;
        for node in list.items.iter().filter(|n| {
            n.metadata
                .name
                .as_deref()
                .is_some_and(|x| x.starts_with("lab-"))
        }) {
            let name = node.metadata.name.clone().unwrap_or_default();
            let st = node.status.clone().unwrap_or_default();
            if st.phase == Some(NodePhase::Ready) {
                ready += 1;
            }
            if seen.get(&name) != Some(&st.phase) {
                let why = st
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Provisioned")
                    .map(|c| c.message.clone())
                    .unwrap_or_default();
                println!(
                    "[{:>6.1}s] {name:<8} {:<15} {why}",
                    t0.elapsed().as_secs_f64(),
                    st.phase
                        .map(|p| format!("{p:?}"))
                        .unwrap_or_else(|| "-".into())
                );
                seen.insert(name, st.phase);
            }
        }
        if ready == n as usize {
            println!(
                "lab: all {n} machines Ready in {:.1}s",
                t0.elapsed().as_secs_f64()
            );
            for node in &list.items {
                let hist = node
                    .status
                    .as_ref()
                    .and_then(|s| s.provisioning.as_ref())
                    .map(|p| p.history.clone())
                    .unwrap_or_default();
                println!(
                    "  {}: {}",
                    node.metadata.name.as_deref().unwrap_or(""),
                    groundwork_types::phase_times(&hist)
                );
            }
            return Ok(());
        }
        if t0.elapsed() > timeout {
            bail!(
                "not every machine was Ready within {timeout:?}; see `groundwork describe node NAME` and the lab's logs"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The process exists and is one the lab starts (not a PID reused after a reboot).
fn ours(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let c = String::from_utf8_lossy(&c);
        ["groundwork", "ipmi_sim", "qemu-system"]
            .iter()
            .any(|n| c.contains(n))
    })
}

fn down(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("lab.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no lab in {} ({} is missing)",
            dir.display(),
            path.display()
        )
    })?;
    let st: State = serde_json::from_str(&text).with_context(|| path.display().to_string())?;
    let mut pids: Vec<u32> = st
        .qemu_pidfiles
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
        .collect();
    pids.extend(&st.pids);
    pids.retain(|p| ours(*p));
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;
    for p in &pids {
        let _ = killpg(Pid::from_raw(*p as i32), Signal::SIGTERM);
        let _ = kill(Pid::from_raw(*p as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for p in pids.iter().filter(|p| alive(**p) && ours(**p)) {
        let _ = killpg(Pid::from_raw(*p as i32), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(*p as i32), Signal::SIGKILL);
    }
    if !st.netns.is_empty() {
        let _ = sh(&["ip", "netns", "del", &st.netns]);
    }
    if !st.host_if.is_empty() {
        let _ = sh(&["ip", "link", "del", &st.host_if]);
    }
    std::fs::remove_file(&path)?;
    println!(
        "lab: down ({} processes stopped, namespace {} removed; logs kept in {})",
        pids.len(),
        st.netns,
        dir.display()
    );
    Ok(())
}
