//! `groundwork lab up|down`: a whole lab on one machine. N QEMU machines (TCG) behind
//! OpenIPMI `ipmi_sim` BMCs sit in a network namespace of their own, bridged to a veth whose
//! other end (10.98.0.1/24) stays in the namespace `lab up` runs in. There, a Groundwork
//! server serves the API on 127.0.0.1, DHCP/TFTP/HTTP on the veth, and runs every
//! controller. The lab's manifests (a Datacenter with the boot network, a Rack, the BMC
//! Credential, a Profile that installs bootimages' os.img, one Node per machine) are
//! written to DIR/manifests and applied; `lab up` then shows each machine's progress until
//! all are Ready. `lab down` stops every process it started (by PID) and removes the
//! namespace; DIR keeps the logs.
//!
//! With `--netns`, the machines are network namespaces running the node agent instead
//! (see [`netns`]); the lab then applies the platform stack and shows its layers' progress.

mod build;
mod host;
mod machines;
mod netns;
mod progress;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use build::build;
use host::{alive, ensure_packages, ours, sh};
use progress::progress;

pub(super) const BUILD_SH: &str = include_str!("../../../bootimages/build.sh");
pub(super) const HOST_IP: &str = "10.98.0.1";
pub(super) const BMC_IP: &str = "10.98.0.2";

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
    /// Cut a namespace machine's power (every process in it is killed) or start it again.
    Machine(MachineArgs),
    /// Kill the lab's server (SIGKILL, as a power cut) or start it again on its data
    /// (namespace labs).
    Server(ServerCtlArgs),
}

#[derive(clap::Args, Debug)]
struct ServerCtlArgs {
    #[arg(value_enum)]
    action: MachineAction,
    #[arg(long, default_value = "/var/lib/groundwork-lab")]
    dir: PathBuf,
}

#[derive(clap::Args, Debug)]
struct MachineArgs {
    #[arg(value_enum)]
    action: MachineAction,
    /// The machine's number (1 for lab-1).
    index: u8,
    #[arg(long, default_value = "/var/lib/groundwork-lab")]
    dir: PathBuf,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(super) enum MachineAction {
    Stop,
    Start,
}

#[derive(clap::Args, Debug)]
pub(super) struct UpArgs {
    /// Machines to create.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=16))]
    pub(super) machines: u8,
    /// Directory for the lab's state, disks, logs and kubeconfig.
    #[arg(long, default_value = "/var/lib/groundwork-lab")]
    pub(super) dir: PathBuf,
    /// Short name (letters and digits, at most 6): names the namespace and interfaces.
    #[arg(long, default_value = "lab")]
    pub(super) name: String,
    /// Port of the API server on 127.0.0.1.
    #[arg(long, default_value_t = 16443)]
    pub(super) api_port: u16,
    /// Memory of each machine, MiB.
    #[arg(long, default_value_t = 512)]
    pub(super) memory: u32,
    /// Give up waiting for Ready after this many seconds.
    #[arg(long, default_value_t = 1200)]
    pub(super) timeout: u64,
    /// Return once the manifests are applied, without waiting.
    #[arg(long)]
    pub(super) no_wait: bool,
    /// Machines as network namespaces running the node agent (Ready in seconds) instead of
    /// QEMU machines that PXE-boot; the lab then brings up the platform stack on them.
    #[arg(long)]
    pub(super) netns: bool,
    /// With --netns: do not apply the platform stack.
    #[arg(long)]
    pub(super) no_stack: bool,
    /// A raw disk image to install instead of bootimages' small os.img, e.g. the Packer-built
    /// `groundwork-cluster-node.raw`; its sha256 is taken from IMAGE.sha256 when that exists.
    /// The machines' disks are made 1 GiB larger than it.
    #[arg(long)]
    pub(super) image: Option<PathBuf>,
    /// How many machines (counted from the last) boot with UEFI firmware (OVMF) instead of
    /// BIOS (SeaBIOS).
    #[arg(long, default_value_t = 0)]
    pub(super) uefi: u8,
    /// Extra arguments for `groundwork server` (repeatable), e.g. --server-arg=--boot-timeout-seconds=300.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub(super) server_args: Vec<String>,
}

#[derive(clap::Args, Debug)]
struct DownArgs {
    #[arg(long, default_value = "/var/lib/groundwork-lab")]
    dir: PathBuf,
}

/// What `down` needs to undo `up`.
#[derive(Serialize, Deserialize, Debug, Default)]
pub(super) struct State {
    pub(super) name: String,
    pub(super) netns: String,
    pub(super) host_if: String,
    /// Process groups we started (server, BMCs).
    pub(super) pids: Vec<u32>,
    /// Pid files of the QEMU machines (daemonized by the chassis program).
    pub(super) qemu_pidfiles: Vec<PathBuf>,
    pub(super) kubeconfig: PathBuf,
    /// --netns: the bridge and the machines' namespaces.
    #[serde(default)]
    pub(super) bridge: String,
    #[serde(default)]
    pub(super) machines: Vec<netns::Holder>,
    /// The binary that runs the lab (machines are started again with it).
    #[serde(default)]
    pub(super) exe: PathBuf,
    /// --netns: the server's arguments and process, to kill and start it again.
    #[serde(default)]
    pub(super) server_args: Vec<String>,
    #[serde(default)]
    pub(super) server_pid: u32,
}

pub(crate) async fn run(a: LabArgs) -> anyhow::Result<()> {
    match a.cmd {
        LabCmd::Up(u) => up(u).await,
        LabCmd::Down(d) => down(&d.dir),
        LabCmd::Machine(m) => machine(m),
        LabCmd::Server(c) => netns::server_ctl(&std::path::absolute(&c.dir)?, c.action).await,
    }
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
    std::fs::create_dir_all(&dir)?;
    let exe = std::env::current_exe()?;
    let t0 = Instant::now();
    if a.netns {
        return up_netns(&a, &dir, &exe, t0).await;
    }
    ensure_packages()?;

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
    let checksum = match &a.image {
        None => std::fs::read_to_string(boot.join("os.img.sha256"))?
            .trim()
            .to_string(),
        Some(img) => serve_image(img, &boot)?,
    };

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

/// Puts IMAGE in the boot server's root as `image.raw` (a hard link, else a sparse copy: the
/// boot server serves no symlink leading out) and returns its `sha256:HEX`.
fn serve_image(img: &Path, boot: &Path) -> anyhow::Result<String> {
    anyhow::ensure!(img.is_file(), "--image {}: no such file", img.display());
    let to = boot.join("image.raw");
    let _ = std::fs::remove_file(&to);
    if std::fs::hard_link(img, &to).is_err() {
        let st = Command::new("cp")
            .args(["--sparse=always", "--reflink=auto"])
            .arg(img)
            .arg(&to)
            .status()?;
        anyhow::ensure!(
            st.success(),
            "copying {} to {}",
            img.display(),
            to.display()
        );
    }
    let side = PathBuf::from(format!("{}.sha256", img.display()));
    let hex = match std::fs::read_to_string(&side) {
        // Packer's checksum post-processor and sha256sum: "HEX  NAME".
        Ok(t) => t.split_whitespace().next().unwrap_or_default().to_string(),
        Err(_) => {
            eprintln!("lab: hashing {}", img.display());
            let o = Command::new("sha256sum").arg(img).output()?;
            anyhow::ensure!(o.status.success(), "sha256sum {}", img.display());
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string()
        }
    };
    anyhow::ensure!(
        hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "{}: not a sha256 checksum",
        side.display()
    );
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
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
    // Namespace machines: their services too (they run in the namespace, not our groups).
    let mut machine_procs = 0;
    for h in &st.machines {
        machine_procs += h.kill(true);
    }
    if !st.bridge.is_empty() {
        let _ = sh(&["ip", "link", "del", &st.bridge]);
    }
    std::fs::remove_file(&path)?;
    if st.machines.is_empty() {
        println!(
            "lab: down ({} processes stopped, namespace {} removed; logs kept in {})",
            pids.len(),
            st.netns,
            dir.display()
        );
    } else {
        println!(
            "lab: down ({} processes stopped, {} machines' namespaces with {machine_procs} processes removed; logs kept in {})",
            pids.len(),
            st.machines.len(),
            dir.display()
        );
    }
    Ok(())
}

async fn up_netns(a: &UpArgs, dir: &Path, exe: &Path, t0: Instant) -> anyhow::Result<()> {
    let mut state = State {
        name: a.name.clone(),
        kubeconfig: dir.join("data/kubeconfig"),
        exe: exe.to_path_buf(),
        ..Default::default()
    };
    let save = |s: &State| {
        std::fs::write(
            dir.join("lab.json"),
            serde_json::to_vec_pretty(s).unwrap_or_default(),
        )
    };
    save(&state)?;
    if let Err(e) = netns::build(a, dir, exe, &mut state, &save).await {
        eprintln!("lab: {e:#}; removing what was created");
        let _ = down(dir);
        return Err(e);
    }
    println!("lab: export KUBECONFIG={}", state.kubeconfig.display());
    println!(
        "lab:   kubectl get servicestacks,serviceinstances     groundwork logs servicestack/platform -f"
    );
    println!(
        "lab:   machines' agents: {}/machines/n*/agent.log; cut one's power: groundwork lab machine stop 2 --dir {}",
        dir.display(),
        dir.display()
    );
    if a.no_wait {
        return Ok(());
    }
    let timeout = Duration::from_secs(a.timeout);
    progress(&state.kubeconfig, a.machines, timeout).await?;
    if a.no_stack {
        println!("lab: up in {:.1}s (no stack)", t0.elapsed().as_secs_f64());
        return Ok(());
    }
    let mf = dir.join("manifests/platform.yaml");
    std::fs::write(&mf, netns::stack_manifests())?;
    crate::apply::run(Some(state.kubeconfig.clone()), &[mf], false).await?;
    progress::layers(&state.kubeconfig, "platform", timeout).await?;
    println!(
        "lab: datacenter and platform up in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The lab in `dir` (`lab.json`) and that file's path.
pub(super) fn load_state(dir: &Path) -> anyhow::Result<(State, PathBuf)> {
    let path = dir.join("lab.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no lab in {} ({} is missing)",
            dir.display(),
            path.display()
        )
    })?;
    let st: State = serde_json::from_str(&text).with_context(|| path.display().to_string())?;
    Ok((st, path))
}

fn machine(m: MachineArgs) -> anyhow::Result<()> {
    let dir = std::path::absolute(&m.dir)?;
    let (mut st, path) = load_state(&dir)?;
    anyhow::ensure!(
        !st.machines.is_empty(),
        "the lab in {} has no namespace machines (it was not started with --netns)",
        dir.display()
    );
    anyhow::ensure!(
        m.index >= 1 && (m.index as usize) <= st.machines.len(),
        "machine {}: the lab has machines 1 to {}",
        m.index,
        st.machines.len()
    );
    match m.action {
        MachineAction::Stop => {
            let h = &st.machines[m.index as usize - 1];
            let n = netns::stop_machine(h);
            println!("lab: machine {} stopped ({n} processes killed)", m.index);
        }
        MachineAction::Start => {
            let h = st.machines[m.index as usize - 1].clone();
            netns::stop_machine(&h);
            let pid = netns::start_machine(&dir, &st.exe, &h, m.index)?;
            st.pids.push(pid);
            std::fs::write(&path, serde_json::to_vec_pretty(&st)?)?;
            println!("lab: machine {} started (agent pid {pid})", m.index);
        }
    }
    Ok(())
}
