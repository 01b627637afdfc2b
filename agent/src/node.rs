//! `groundwork node-agent`: runs on installed machines. At every boot it reads the machine
//! config the installer delivered (`/var/lib/groundwork/machine.json`, which cloud-init writes
//! from the seed, or the seed partition itself), applies it where cloud-init did not (host
//! name, users and their SSH keys, files, units), then heartbeats to the boot server with the
//! machine's addresses until the machine stops.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use groundwork_types::agent::{Heartbeat, HeartbeatReply, MachineCredentials, MachineFile};

#[derive(clap::Args, Debug)]
pub struct NodeAgentArgs {
    /// The disk holding the cloud-init seed (default: the first disk that has one).
    #[arg(long)]
    disk: Option<PathBuf>,
    /// Root of the file system the config is applied to.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Root of /sys and /proc (tests).
    #[arg(long, default_value = "/", hide = true)]
    sysroot: PathBuf,
    /// Where the disks' device files are (tests).
    #[arg(long, default_value = "/dev", hide = true)]
    dev_root: PathBuf,
    /// Renew the machine's certificate now (after a CA rotation, or to replace a key that
    /// may have leaked), rather than when a third of its life is left.
    #[arg(long)]
    renew: bool,
    /// Stop after this many accepted heartbeats (tests; default: never).
    #[arg(long, hide = true)]
    beats: Option<u32>,
    /// Join a machine that Groundwork did not install (`spec.provisioning: External`): the
    /// boot HTTP server's URL, e.g. `http://10.0.0.1:8080`. With --token, --ca-cert-hash,
    /// --mac and --agent-api; the machine config is then kept in
    /// `ROOT/var/lib/groundwork/machine.json` and later starts need none of them.
    #[arg(long, requires_all = ["token", "ca_cert_hash", "mac", "agent_api"])]
    join: Option<String>,
    /// A join token for this machine's MAC (`groundwork node join-token NODE`); good once.
    #[arg(long, env = "GROUNDWORK_JOIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// `sha256:HEX` of the cluster CA, as `groundwork node join-token` prints it.
    #[arg(long)]
    ca_cert_hash: Option<String>,
    /// The MAC the Node knows this machine by (its first `spec.bootMACs`).
    #[arg(long)]
    mac: Option<String>,
    /// The agent API, `HOST:PORT`.
    #[arg(long)]
    agent_api: Option<String>,
    /// Do not run the machine's ServiceInstances (heartbeats only).
    #[arg(long)]
    no_services: bool,
}

/// Where a joined machine keeps its config (mode 0600: it holds the machine's key).
fn joined_path(root: &Path) -> PathBuf {
    root.join("var/lib/groundwork/machine.json")
}

/// Joins with the token unless this machine has joined before.
async fn join_once(a: &NodeAgentArgs) -> anyhow::Result<Option<(PathBuf, MachineFile)>> {
    let path = joined_path(&a.root);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let m: MachineFile =
            serde_json::from_str(&text).with_context(|| path.display().to_string())?;
        return Ok(Some((path, m)));
    }
    let (Some(url), Some(token), Some(hash), Some(mac), Some(agent)) =
        (&a.join, &a.token, &a.ca_cert_hash, &a.mac, &a.agent_api)
    else {
        return Ok(None);
    };
    let mac = groundwork_types::normalize_mac(mac)
        .with_context(|| format!("--mac {mac:?}: not a MAC address"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let creds = crate::ramdisk::join(url, &mac, token, agent, hash, None, deadline).await?;
    let node = node_of(&creds.certificate).unwrap_or_default();
    let m = MachineFile {
        node,
        url: url.clone(),
        mac,
        credentials: Some(creds),
        ..Default::default()
    };
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| d.display().to_string())?;
    }
    groundwork_pki::write_private(&path, &serde_json::to_string(&m)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(Some((path, m)))
}

/// The Node a machine certificate is for (`system:node:NAME`).
fn node_of(cert_pem: &str) -> Option<String> {
    let (cn, _) = groundwork_pki::subject(&groundwork_pki::pem_der(cert_pem)?)?;
    cn.strip_prefix("system:node:").map(str::to_string)
}

fn find_config(a: &NodeAgentArgs) -> anyhow::Result<(PathBuf, MachineFile)> {
    if let Some(d) = &a.disk {
        let m = crate::seed::read(d).map_err(anyhow::Error::msg)?;
        return Ok((d.clone(), m));
    }
    let inv = crate::ramdisk::collect(&a.sysroot);
    let mut errors = Vec::new();
    for d in &inv.disks {
        let dev = crate::install::device(&a.dev_root, &d.name);
        match crate::seed::read(&dev) {
            Ok(m) => return Ok((dev, m)),
            Err(e) => errors.push(e),
        }
    }
    anyhow::bail!("no disk holds a machine config: {}", errors.join("; "))
}

/// Whether cloud-init applies the machine config on this system (it is installed and its
/// generator enabled it for this boot), and what it reports: its errors once it has finished
/// (`result.json`), else that it has not finished yet.
fn cloud_init(root: &Path) -> Option<Vec<String>> {
    if !root.join("usr/bin/cloud-init").exists() || root.join("run/cloud-init/disabled").exists() {
        return None;
    }
    let Ok(result) = std::fs::read_to_string(root.join("var/lib/cloud/data/result.json")) else {
        return Some(vec!["cloud-init: not finished yet".into()]);
    };
    let errors = serde_json::from_str::<serde_json::Value>(&result)
        .ok()
        .and_then(|v| v["v1"]["errors"].as_array().cloned())
        .unwrap_or_default();
    Some(
        errors
            .iter()
            .map(|e| format!("cloud-init: {}", e.as_str().unwrap_or(&e.to_string())))
            .collect(),
    )
}

/// `root` + an absolute path, refusing `..`.
fn under(root: &Path, path: &str) -> anyhow::Result<PathBuf> {
    let p = Path::new(path);
    anyhow::ensure!(p.is_absolute(), "{path:?}: not an absolute path");
    anyhow::ensure!(
        !p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir)),
        "{path:?}: contains .."
    );
    Ok(root.join(p.strip_prefix("/").unwrap_or(p)))
}

fn write_mode(path: &Path, content: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| d.display().to_string())?;
    }
    std::fs::write(path, content).with_context(|| path.display().to_string())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| path.display().to_string())?;
    Ok(())
}

/// Applies the config under `root`; returns (items applied, items skipped with why).
pub(crate) fn apply(m: &MachineFile, root: &Path) -> (u32, Vec<String>) {
    let mut applied = 0;
    let mut skipped = Vec::new();
    let mut note = |what: String, r: anyhow::Result<()>| match r {
        Ok(()) => applied += 1,
        Err(e) => skipped.push(format!("{what}: {e:#}")),
    };
    if let Some(h) = &m.hostname {
        note(
            format!("hostname {h}"),
            (|| {
                write_mode(&root.join("etc/hostname"), &format!("{h}\n"), 0o644)?;
                if root == Path::new("/") {
                    std::fs::write("/proc/sys/kernel/hostname", h)
                        .context("setting the host name")?;
                }
                Ok(())
            })(),
        );
    }
    for (i, u) in m.users.iter().enumerate() {
        note(
            format!("user {}", u.name),
            (|| {
                anyhow::ensure!(
                    !u.name.is_empty()
                        && u.name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
                    "{:?}: not a valid user name",
                    u.name
                );
                let home = if u.name == "root" {
                    "/root".to_string()
                } else {
                    format!("/home/{}", u.name)
                };
                let passwd = root.join("etc/passwd");
                let have = std::fs::read_to_string(&passwd).unwrap_or_default();
                let existing = have.lines().find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.first() == Some(&u.name.as_str()))
                        .then(|| f.get(2).and_then(|x| x.parse::<u32>().ok()).unwrap_or(0))
                });
                let uid = match existing {
                    Some(uid) => uid,
                    None => {
                        // The next free uid from 1000.
                        let used: Vec<u32> = have
                            .lines()
                            .filter_map(|l| l.split(':').nth(2)?.parse().ok())
                            .collect();
                        let uid = (1000..)
                            .find(|x| !used.contains(x))
                            .unwrap_or(1000 + i as u32);
                        let line = format!("{}:x:{uid}:{uid}::{home}:/bin/sh\n", u.name);
                        write_mode(&passwd, &(have + &line), 0o644)?;
                        uid
                    }
                };
                let keys = under(root, &format!("{home}/.ssh/authorized_keys"))?;
                write_mode(&keys, &(u.ssh_authorized_keys.join("\n") + "\n"), 0o600)?;
                // sshd reads the keys as the user.
                let (o, g) = (
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(uid)),
                );
                for p in [
                    keys.parent().and_then(|p| p.parent()),
                    keys.parent(),
                    Some(keys.as_path()),
                ]
                .into_iter()
                .flatten()
                {
                    let _ = nix::unistd::chown(p, o, g);
                }
                if u.sudo {
                    write_mode(
                        &root.join(format!("etc/sudoers.d/{}", u.name)),
                        &format!("{} ALL=(ALL) NOPASSWD:ALL\n", u.name),
                        0o440,
                    )?;
                }
                Ok(())
            })(),
        );
    }
    for f in &m.files {
        note(
            format!("file {}", f.path),
            (|| {
                let mode = match &f.mode {
                    Some(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8)
                        .with_context(|| format!("mode {s:?}: not octal"))?,
                    None => 0o644,
                };
                write_mode(&under(root, &f.path)?, &f.content, mode)
            })(),
        );
    }
    let systemd = root.join("run/systemd/system").is_dir();
    for u in &m.units {
        if u.name.is_empty() || u.name.contains('/') || u.name.starts_with('.') {
            note(
                format!("unit {:?}", u.name),
                Err(anyhow::anyhow!("not a unit file name")),
            );
            continue;
        }
        if let Some(c) = &u.content {
            note(
                format!("unit {} file", u.name),
                write_mode(&root.join("etc/systemd/system").join(&u.name), c, 0o644),
            );
        }
        if !systemd && u.enabled {
            note(
                format!("unit {}", u.name),
                Err(anyhow::anyhow!(
                    "this system has no systemd; written, not started"
                )),
            );
        }
    }
    (applied, skipped)
}

fn addresses() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(ifs) = nix::ifaddrs::getifaddrs() {
        for i in ifs {
            if i.interface_name == "lo" {
                continue;
            }
            if let Some(a) = i.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
                out.push(a.ip().to_string());
            }
        }
    }
    out
}

/// Where a renewed certificate is kept (mode 0600).
fn credentials_path(root: &Path) -> PathBuf {
    root.join("var/lib/groundwork/credentials.json")
}

/// When a third or less of the certificate's life is left (or it does not parse).
fn renewal_due(cert_pem: &str) -> bool {
    let now = jiff::Timestamp::now().as_second();
    match groundwork_pki::validity_of(cert_pem) {
        Some((from, to)) => to - now < (to - from) / 3,
        None => true,
    }
}

/// A new key and certificate, with the current certificate as proof.
async fn renew(
    client: &reqwest::Client,
    base: &str,
    mac: &str,
    creds: &MachineCredentials,
) -> anyhow::Result<MachineCredentials> {
    let (key, csr) = groundwork_pki::key_and_request(&format!("system:node:{mac}"))
        .map_err(anyhow::Error::msg)?;
    let resp = client
        .post(format!("{base}/agent/renew"))
        .query(&[("mac", mac)])
        .body(csr)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.without_url()))?;
    let code = resp.status();
    if !code.is_success() {
        anyhow::bail!("{code}: {}", resp.text().await.unwrap_or_default().trim());
    }
    let r: groundwork_types::agent::JoinReply = resp.json().await?;
    Ok(MachineCredentials {
        certificate: r.certificate,
        key,
        ca: if r.ca.is_empty() {
            creds.ca.clone()
        } else {
            r.ca
        },
        ..creds.clone()
    })
}

pub async fn run(a: NodeAgentArgs) -> anyhow::Result<()> {
    // The allocator asks for transparent huge pages for its arenas; each 2 MiB page it
    // touches is then resident. An agent that sits next to the services it runs should not
    // hold 16 MiB for a few KiB of state (measured: 33 MiB resident with them, 17 without).
    let _ = nix::sys::prctl::set_thp_disable(true);
    let (disk, m) = match join_once(&a).await? {
        Some(found) => found,
        None => find_config(&a)?,
    };
    eprintln!(
        "groundwork node-agent: machine config for {} from {}",
        m.node,
        disk.display()
    );
    let outcome = cloud_init(&a.root);
    let with_cloud_init = outcome.is_some();
    let (applied, mut skipped) = match outcome {
        // cloud-init applied it from the seed; its errors are reported as the skipped items.
        Some(errors) => (0, errors),
        None => apply(&m, &a.root),
    };
    for s in &skipped {
        eprintln!("groundwork node-agent: not applied: {s}");
    }
    let boot_id = std::fs::read_to_string(a.sysroot.join("proc/sys/kernel/random/boot_id"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("pid-{}", std::process::id()));
    let saved = credentials_path(&a.root);
    // A renewed certificate is kept on the root file system, newer than the machine config's.
    let mut creds = match std::fs::read_to_string(&saved)
        .ok()
        .and_then(|t| serde_json::from_str::<MachineCredentials>(&t).ok())
    {
        Some(c) => c,
        None => m.credentials.clone().context(
            "the machine config has no credentials (installed before machine certificates): reinstall the machine",
        )?,
    };
    let mut client = crate::ramdisk::agent_client(&creds, Duration::from_secs(10))?;
    // The installer's key sits on a FAT partition (no permissions): replaced at once by one
    // kept 0600 on the root file system; the server retires the old one when the new is used.
    let mut force_renewal = a.renew || !saved.exists();
    let save = |c: &MachineCredentials| {
        if let Some(dir) = saved.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        groundwork_pki::write_private(&saved, &serde_json::to_string(c).unwrap_or_default())
    };
    let base = crate::ramdisk::agent_base(&creds.agent);
    let (client_tx, client_rx) = tokio::sync::watch::channel(client.clone());
    if !a.no_services {
        tokio::spawn(crate::services::run(
            crate::services::Api {
                client: client_rx,
                base: base.clone(),
                mac: m.mac.clone(),
                ca_pem: creds.ca.clone(),
                addr: creds.agent.clone(),
            },
            a.root.clone(),
        ));
    }
    let mut accepted = 0u32;
    let mut interval = Duration::from_secs(15);
    let mut failures = 0u32;
    loop {
        let uptime = std::fs::read_to_string(a.sysroot.join("proc/uptime"))
            .ok()
            .and_then(|s| s.split('.').next().and_then(|x| x.parse().ok()))
            .unwrap_or(0);
        let beat = Heartbeat {
            ca_bundle: Some(groundwork_types::agent::bundle_digest(&creds.ca)),
            node: m.node.clone(),
            boot_id: boot_id.clone(),
            addresses: addresses(),
            uptime_seconds: uptime,
            applied,
            skipped: {
                // cloud-init finishes after the agent starts: its outcome is read again.
                if with_cloud_init {
                    skipped = cloud_init(&a.root).unwrap_or_default();
                }
                skipped.clone()
            },
        };
        if renewal_due(&creds.certificate) || force_renewal {
            match renew(&client, &base, &m.mac, &creds).await {
                Ok(c) => {
                    force_renewal = false;
                    // Used only once it is saved: after a reboot the machine must still have
                    // a certificate the server accepts.
                    match save(&c) {
                        Ok(()) => {
                            eprintln!("groundwork node-agent: certificate renewed");
                            client = crate::ramdisk::agent_client(&c, Duration::from_secs(10))?;
                            let _ = client_tx.send(client.clone());
                            creds = c;
                        }
                        Err(e) => eprintln!(
                            "groundwork node-agent: certificate renewed, but not saved ({e}): keeping the current one"
                        ),
                    }
                }
                Err(e) => eprintln!("groundwork node-agent: renewing the certificate: {e}"),
            }
        }
        let r = client
            .post(format!("{base}/agent/heartbeat"))
            .query(&[("mac", m.mac.as_str())])
            .json(&beat)
            .send()
            .await;
        let wait = match r {
            Ok(resp) if resp.status().is_success() => {
                if let Ok(reply) = resp.json::<HeartbeatReply>().await {
                    interval = Duration::from_secs(reply.interval_seconds.clamp(1, 3600) as u64);
                    // A CA rotation: trust the new bundle, and renew from the new CA.
                    if let Some(ca) = reply.ca.filter(|ca| *ca != creds.ca) {
                        let mut c = creds.clone();
                        c.ca = ca;
                        match save(&c).and_then(|()| {
                            crate::ramdisk::agent_client(&c, Duration::from_secs(10))
                                .map_err(|e| e.to_string())
                        }) {
                            Ok(cl) => {
                                eprintln!(
                                    "groundwork node-agent: the cluster's CA bundle changed: updated"
                                );
                                let _ = client_tx.send(cl.clone());
                                client = cl;
                                creds = c;
                            }
                            Err(e) => {
                                eprintln!("groundwork node-agent: new CA bundle not taken: {e}")
                            }
                        }
                    }
                    if reply.renew {
                        force_renewal = true;
                    }
                    if reply.reboot {
                        eprintln!(
                            "groundwork node-agent: the server asks for a reboot (deprovisioning)"
                        );
                        if a.root == Path::new("/") {
                            nix::unistd::sync();
                            let _ =
                                nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
                        }
                        return Ok(());
                    }
                }
                if accepted == 0 {
                    println!("GROUNDWORK-NODE-READY node={}", m.node);
                }
                accepted += 1;
                failures = 0;
                if a.beats.is_some_and(|b| accepted >= b) {
                    return Ok(());
                }
                interval
            }
            Ok(resp) => {
                failures += 1;
                eprintln!(
                    "groundwork node-agent: heartbeat: {}: {}",
                    resp.status(),
                    resp.text().await.unwrap_or_default().trim()
                );
                Duration::from_secs(2u64.pow(failures.min(4)))
            }
            Err(e) => {
                failures += 1;
                eprintln!("groundwork node-agent: heartbeat: {}", e.without_url());
                Duration::from_secs(2u64.pow(failures.min(4)))
            }
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use groundwork_types::{File, Unit, User};

    #[test]
    fn cloud_init_outcome_from_its_files() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        assert_eq!(
            cloud_init(r),
            None,
            "no cloud-init: the agent applies the config"
        );
        let w = |p: &str, c: &str| {
            std::fs::create_dir_all(r.join(p).parent().unwrap()).unwrap();
            std::fs::write(r.join(p), c).unwrap();
        };
        w("usr/bin/cloud-init", "");
        assert_eq!(
            cloud_init(r),
            Some(vec!["cloud-init: not finished yet".to_string()])
        );
        w(
            "var/lib/cloud/data/result.json",
            r#"{"v1": {"datasource": "x", "errors": []}}"#,
        );
        assert_eq!(cloud_init(r), Some(vec![]));
        w(
            "var/lib/cloud/data/result.json",
            r#"{"v1": {"errors": ["('users-groups', KeyError('x'))"]}}"#,
        );
        assert_eq!(
            cloud_init(r),
            Some(vec![
                "cloud-init: ('users-groups', KeyError('x'))".to_string()
            ])
        );
        w("run/cloud-init/disabled", "");
        assert_eq!(
            cloud_init(r),
            None,
            "disabled for this boot: the agent applies"
        );
    }

    #[test]
    fn applies_users_files_and_hostname_under_a_root() {
        let d = tempfile::tempdir().unwrap();
        let m = MachineFile {
            hostname: Some("n1.lab".into()),
            users: vec![User {
                name: "ops".into(),
                ssh_authorized_keys: vec!["ssh-ed25519 AAAA ops@x".into()],
                groups: vec![],
                sudo: true,
            }],
            files: vec![
                File {
                    path: "/etc/motd".into(),
                    content: "hi\n".into(),
                    mode: Some("0600".into()),
                },
                File {
                    path: "/../escape".into(),
                    content: "x".into(),
                    mode: None,
                },
            ],
            units: vec![Unit {
                name: "x.service".into(),
                content: Some("[Unit]\n".into()),
                enabled: true,
            }],
            ..Default::default()
        };
        let (applied, skipped) = apply(&m, d.path());
        assert_eq!(
            std::fs::read_to_string(d.path().join("etc/hostname")).unwrap(),
            "n1.lab\n"
        );
        assert!(
            std::fs::read_to_string(d.path().join("etc/passwd"))
                .unwrap()
                .starts_with("ops:x:1000:")
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("home/ops/.ssh/authorized_keys")).unwrap(),
            "ssh-ed25519 AAAA ops@x\n"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join("etc/motd"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!d.path().parent().unwrap().join("escape").exists());
        assert!(
            skipped
                .iter()
                .any(|s| s.contains("/../escape") && s.contains("..")),
            "{skipped:?}"
        );
        assert!(
            skipped.iter().any(|s| s.contains("no systemd")),
            "{skipped:?}"
        );
        assert_eq!(
            applied, 4,
            "hostname, user, one file, unit file: {skipped:?}"
        );
        // Applied again at the next boot: the user is not added twice.
        apply(&m, d.path());
        let passwd = std::fs::read_to_string(d.path().join("etc/passwd")).unwrap();
        assert_eq!(passwd.lines().count(), 1, "{passwd}");
    }
}
