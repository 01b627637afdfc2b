//! `groundwork agent`: runs in the discovery ramdisk. Reads the machine's hardware from /sys
//! and /proc (DMI identity, CPUs, memory, disks, NICs), joins the cluster and reports it.
//!
//! Joining: the kernel command line carries a one-time join token, the agent API's address
//! and the cluster CA's hash. The agent fetches the CA from the boot server, checks it
//! against the hash, makes a key (which never leaves the machine) and trades the token, its
//! serial number and a certificate request for its certificate, over TLS. Every later call
//! (inventory, tasks, reports) uses that certificate. It retries until the report is taken or
//! the time budget runs out. `--print` only prints the inventory.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use groundwork_types::{Cpu, Disk, Inventory, Nic, SystemInfo};

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// Boot server base URL (default: groundwork.url= on the kernel command line).
    #[arg(long)]
    url: Option<String>,
    /// MAC the machine booted from (default: groundwork.mac=).
    #[arg(long)]
    mac: Option<String>,
    /// One-time join token (default: groundwork.token=).
    #[arg(long)]
    token: Option<String>,
    /// The agent API, HOST:PORT (default: groundwork.agent=).
    #[arg(long)]
    agent: Option<String>,
    /// The cluster CA's hash, sha256:HEX (default: groundwork.ca=).
    #[arg(long)]
    ca_hash: Option<String>,
    /// Print the inventory as JSON and exit.
    #[arg(long)]
    print: bool,
    /// Give up reporting after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Root of /sys and /proc (tests).
    #[arg(long, default_value = "/", hide = true)]
    sysroot: std::path::PathBuf,
    /// Where the disks' device files are (tests).
    #[arg(long, default_value = "/dev", hide = true)]
    dev_root: std::path::PathBuf,
    /// After the inventory, run the install/wipe tasks the boot server hands out. The default
    /// when the boot server comes from the kernel command line (the machine booted the
    /// ramdisk through us); given --url, only with this flag, so running the agent by hand
    /// never wipes the machine it runs on.
    #[arg(long)]
    tasks: bool,
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Collects the inventory under `root` (normally `/`).
pub fn collect(root: &Path) -> Inventory {
    let dmi = root.join("sys/class/dmi/id");
    let system = SystemInfo {
        vendor: read(&dmi.join("sys_vendor")),
        model: read(&dmi.join("product_name")),
        serial: read(&dmi.join("product_serial")),
        uuid: read(&dmi.join("product_uuid")),
    };
    // CPUs: one entry per physical package, with its cores and threads.
    let mut cpus: BTreeMap<String, (Option<String>, u32, u32)> = BTreeMap::new();
    if let Some(text) = read(&root.join("proc/cpuinfo")) {
        for block in text.split("\n\n") {
            let field = |k: &str| {
                block.lines().find_map(|l| {
                    let (a, b) = l.split_once(':')?;
                    (a.trim() == k).then(|| b.trim().to_string())
                })
            };
            if field("processor").is_none() {
                continue;
            }
            let pkg = field("physical id").unwrap_or_else(|| "0".into());
            let e = cpus.entry(pkg).or_insert((field("model name"), 0, 0));
            e.2 += 1;
            if let Some(c) = field("cpu cores").and_then(|c| c.parse().ok()) {
                e.1 = c;
            }
        }
    }
    let cpus = cpus
        .into_values()
        .map(|(model, cores, threads)| Cpu {
            model,
            cores: Some(if cores == 0 { threads } else { cores }),
            threads: Some(threads),
        })
        .collect();
    let memory_bytes = read(&root.join("proc/meminfo")).and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let mut disks = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root.join("sys/block")) {
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| {
                !["loop", "ram", "sr", "dm-", "zram", "md", "nbd"]
                    .iter()
                    .any(|p| n.starts_with(p))
            })
            .collect();
        names.sort();
        for n in names {
            let b = root.join("sys/block").join(&n);
            disks.push(Disk {
                size_bytes: read(&b.join("size"))
                    .and_then(|s| s.parse::<u64>().ok())
                    .map(|s| s * 512),
                model: read(&b.join("device/model")),
                serial: read(&b.join("device/serial")).or_else(|| read(&b.join("device/wwid"))),
                rotational: read(&b.join("queue/rotational")).map(|r| r == "1"),
                name: n,
            });
        }
    }
    let mut nics = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root.join("sys/class/net")) {
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n != "lo")
            .collect();
        names.sort();
        for n in names {
            let d = root.join("sys/class/net").join(&n);
            let Some(mac) = read(&d.join("address")).filter(|m| m != "00:00:00:00:00:00") else {
                continue;
            };
            nics.push(Nic {
                mac,
                driver: std::fs::read_link(d.join("device/driver"))
                    .ok()
                    .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned())),
                link: read(&d.join("carrier")).map(|c| c == "1"),
                speed_mbps: read(&d.join("speed"))
                    .and_then(|s| s.parse::<i64>().ok())
                    .filter(|s| *s > 0)
                    .map(|s| s as u32),
                name: n,
            });
        }
    }
    Inventory {
        system: Some(system),
        cpus,
        memory_bytes,
        disks,
        nics,
        facts: Default::default(),
    }
}

fn cmdline_arg(root: &Path, key: &str) -> Option<String> {
    read(&root.join("proc/cmdline"))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")).map(String::from))
}

pub async fn run(a: AgentArgs) -> anyhow::Result<()> {
    let inv = collect(&a.sysroot);
    if a.print {
        println!("{}", serde_json::to_string_pretty(&inv)?);
        return Ok(());
    }
    let url = a
        .url
        .clone()
        .or_else(|| cmdline_arg(&a.sysroot, "groundwork.url"))
        .context(
            "no boot server: pass --url or boot with groundwork.url= on the kernel command line",
        )?;
    let mac = a
        .mac
        .clone()
        .or_else(|| cmdline_arg(&a.sysroot, "groundwork.mac"))
        .context("no MAC: --mac or groundwork.mac=")?;
    let arg = |given: &Option<String>, key: &str| {
        given
            .clone()
            .or_else(|| cmdline_arg(&a.sysroot, key))
            .with_context(|| format!("no {key}= on the kernel command line (or its flag)"))
    };
    let token = arg(&a.token, "groundwork.token")?;
    let agent = arg(&a.agent, "groundwork.agent")?;
    let ca_hash = arg(&a.ca_hash, "groundwork.ca")?;
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let serial = inv.system.as_ref().and_then(|s| s.serial.clone());
    let creds = join(&url, &mac, &token, &agent, &ca_hash, serial, deadline).await?;
    let client = agent_client(&creds, Duration::from_secs(10))?;
    let base = agent_base(&creds.agent);
    let mut delay = Duration::from_millis(500);
    loop {
        let r = client
            .post(format!("{base}/inventory"))
            .query(&[("mac", mac.as_str())])
            .json(&inv)
            .send()
            .await;
        match r {
            Ok(resp) if resp.status().is_success() => {
                let node = resp.text().await.unwrap_or_default();
                eprintln!(
                    "groundwork agent: inventory reported for node {}",
                    node.trim()
                );
                println!("GROUNDWORK-AGENT-DONE node={}", node.trim());
                if !(a.tasks || a.url.is_none()) {
                    return Ok(());
                }
                return tasks(&a, &url, &mac, &creds).await;
            }
            // A refusal will not change by retrying.
            Ok(resp) if resp.status().is_client_error() => {
                let code = resp.status();
                anyhow::bail!(
                    "the boot server refused the report: {code}: {}",
                    resp.text().await.unwrap_or_default().trim()
                );
            }
            Ok(resp) => eprintln!("groundwork agent: {}; retrying", resp.status()),
            Err(e) => eprintln!("groundwork agent: {}; retrying", e.without_url()),
        }
        if Instant::now() + delay > deadline {
            anyhow::bail!("no boot server took the report within {} s", a.timeout);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// `https://groundwork-boot:PORT`: the agent API under the name its certificate carries.
pub(crate) fn agent_base(agent: &str) -> String {
    let port = agent.rsplit_once(':').map(|(_, p)| p).unwrap_or("8443");
    format!(
        "https://{}:{port}",
        groundwork_types::agent::AGENT_SERVER_NAME
    )
}

/// A client for the agent API: TLS trusting only the cluster CA, the server known as
/// `groundwork-boot` at the agent address, and the machine's certificate.
pub(crate) fn agent_client(
    creds: &groundwork_types::agent::MachineCredentials,
    timeout: Duration,
) -> anyhow::Result<reqwest::Client> {
    let mut b = base_client(&creds.agent, &creds.ca)?.timeout(timeout);
    if !creds.certificate.is_empty() {
        let pem = format!("{}\n{}", creds.certificate, creds.key);
        b = b.identity(
            reqwest::Identity::from_pem(pem.as_bytes()).context("the machine's certificate")?,
        );
    }
    Ok(b.build()?)
}

fn base_client(agent: &str, ca_pem: &str) -> anyhow::Result<reqwest::ClientBuilder> {
    use std::net::ToSocketAddrs;
    let addr = agent
        .to_socket_addrs()
        .with_context(|| format!("agent API address {agent:?}"))?
        .next()
        .with_context(|| format!("agent API address {agent:?} resolves to nothing"))?;
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .https_only(true)
        .resolve(groundwork_types::agent::AGENT_SERVER_NAME, addr);
    // Every CA of the bundle (two during a CA rotation).
    for c in reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes()).context("the cluster CA")? {
        b = b.add_root_certificate(c);
    }
    Ok(b)
}

/// Joins: fetches and checks the CA, then trades the join token and a certificate request
/// for the machine's certificate. Retries what may pass later; a refusal ends it.
pub(crate) async fn join(
    url: &str,
    mac: &str,
    token: &str,
    agent: &str,
    ca_hash: &str,
    serial: Option<String>,
    deadline: Instant,
) -> anyhow::Result<groundwork_types::agent::MachineCredentials> {
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let (key, csr) = groundwork_pki::key_and_request(&format!("system:node:{mac}"))
        .map_err(anyhow::Error::msg)?;
    let mut delay = Duration::from_millis(500);
    let mut ca: Option<String> = None;
    loop {
        let step: anyhow::Result<Option<groundwork_types::agent::MachineCredentials>> = async {
            if ca.is_none() {
                let resp = plain
                    .get(format!("{}/ca.crt", url.trim_end_matches('/')))
                    .send()
                    .await
                    .map_err(|e| anyhow::anyhow!("fetching the CA: {}", e.without_url()))?;
                if !resp.status().is_success() {
                    return Err(anyhow::anyhow!("fetching the CA: {}", resp.status()));
                }
                let pem = resp.text().await?;
                let got = groundwork_pki::ca_hash(&pem);
                if got.as_deref() != Some(ca_hash) {
                    // Not retried: someone else answers for the boot server.
                    return Ok(None);
                }
                // Only the pinned certificate is trusted for the join; the bundle comes
                // with the answer, over that connection.
                ca = groundwork_pki::pem_certs(&pem).into_iter().next();
            }
            let ca_pem = ca.clone().expect("set above");
            let client = base_client(agent, &ca_pem)?
                .timeout(Duration::from_secs(10))
                .build()?;
            let req = groundwork_types::agent::JoinRequest {
                token: token.to_string(),
                serial: serial.clone(),
                csr: csr.clone(),
            };
            let resp = client
                .post(format!("{}/agent/join", agent_base(agent)))
                .query(&[("mac", mac)])
                .json(&req)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("join: {}", e.without_url()))?;
            let code = resp.status();
            if code.is_success() {
                let r: groundwork_types::agent::JoinReply = resp.json().await?;
                eprintln!("groundwork agent: joined as node {}", r.node);
                return Ok(Some(groundwork_types::agent::MachineCredentials {
                    agent: agent.to_string(),
                    ca: if r.ca.is_empty() { ca_pem } else { r.ca },
                    certificate: r.certificate,
                    key: key.clone(),
                }));
            }
            let text = resp.text().await.unwrap_or_default();
            if code.is_client_error() && code != reqwest::StatusCode::CONFLICT {
                anyhow::bail!(
                    "JOIN-REFUSED the agent API refused to join: {code}: {}",
                    text.trim()
                );
            }
            Err(anyhow::anyhow!("join: {code}: {}", text.trim()))
        }
        .await;
        match step {
            Ok(Some(creds)) => return Ok(creds),
            Ok(None) => anyhow::bail!(
                "the CA served at {url}/ca.crt does not match groundwork.ca={ca_hash}: refusing to join"
            ),
            Err(e) if e.to_string().starts_with("JOIN-REFUSED ") => {
                anyhow::bail!("{}", e.to_string().trim_start_matches("JOIN-REFUSED "))
            }
            Err(e) => eprintln!("groundwork agent: {e}; retrying"),
        }
        if Instant::now() + delay > deadline {
            anyhow::bail!("could not join within the time budget");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Asks the boot server for work until the machine is powered off: install an image, wipe
/// the disks, or wait.
async fn tasks(
    a: &AgentArgs,
    url: &str,
    mac: &str,
    creds: &groundwork_types::agent::MachineCredentials,
) -> anyhow::Result<()> {
    use groundwork_types::agent::Task;
    use groundwork_types::{TaskReport, TaskState};
    let boot = url.trim_end_matches('/');
    let base = agent_base(&creds.agent);
    let base = base.as_str();
    let api = agent_client(creds, Duration::from_secs(10))?;
    // Images are large: no limit on the whole transfer, only on silence.
    let bulk = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .build()?;
    let q = [("mac", mac)];
    let report = |r: TaskReport| {
        let api = api.clone();
        async move {
            for _ in 0..30 {
                match api
                    .post(format!("{base}/agent/report"))
                    .query(&q)
                    .json(&r)
                    .send()
                    .await
                {
                    Ok(resp) if resp.status().is_success() => return,
                    Ok(resp) if resp.status().is_client_error() => {
                        eprintln!(
                            "groundwork agent: report refused: {}: {}",
                            resp.status(),
                            resp.text().await.unwrap_or_default().trim()
                        );
                        return;
                    }
                    Ok(resp) => eprintln!("groundwork agent: report: {}; retrying", resp.status()),
                    Err(e) => eprintln!("groundwork agent: report: {}; retrying", e.without_url()),
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let done = |task: &str, attempt: u32, id: &str, r: Result<String, crate::install::Failure>| {
        let (state, reason, message) = match r {
            Ok(m) => (TaskState::Succeeded, None, m),
            Err(f) => (TaskState::Failed, Some(f.reason.to_string()), f.message),
        };
        eprintln!("groundwork agent: {task} {state:?}: {message}");
        TaskReport {
            task: task.into(),
            attempt,
            task_id: Some(id.to_string()),
            state,
            reason,
            message: Some(message),
            at: None,
        }
    };
    let started = |task: &str, attempt: u32, id: &str| TaskReport {
        task: task.into(),
        attempt,
        task_id: Some(id.to_string()),
        state: TaskState::Started,
        reason: None,
        message: None,
        at: None,
    };
    // A task whose report was lost is handed out again: send the result again, do not redo.
    let mut finished: std::collections::HashMap<String, TaskReport> = Default::default();
    loop {
        let task = match api.get(format!("{base}/agent/next")).query(&q).send().await {
            Ok(resp) if resp.status().is_success() => resp.json::<Task>().await.ok(),
            Ok(resp) => {
                eprintln!("groundwork agent: next task: {}", resp.status());
                None
            }
            Err(e) => {
                eprintln!("groundwork agent: next task: {}", e.without_url());
                None
            }
        };
        match task {
            None => tokio::time::sleep(Duration::from_secs(2)).await,
            Some(Task::Wait { seconds }) => {
                tokio::time::sleep(Duration::from_secs(seconds.clamp(1, 60) as u64)).await
            }
            Some(Task::Install {
                attempt,
                task_id,
                image_url,
                checksum,
                target_disk,
                mut config,
                user_data,
            }) => {
                // Relative image URLs are on the boot server; the node agent gets this
                // machine's certificate.
                let image_url =
                    if image_url.starts_with("http://") || image_url.starts_with("https://") {
                        image_url
                    } else {
                        format!("{boot}/{}", image_url.trim_start_matches('/'))
                    };
                config.url = boot.to_string();
                config.credentials = Some(creds.clone());
                if let Some(r) = finished.get(&task_id) {
                    report(r.clone()).await;
                    continue;
                }
                eprintln!(
                    "groundwork agent: installing {} (attempt {attempt})",
                    groundwork_types::agent::redact_url(&image_url)
                );
                report(started("install", attempt, &task_id)).await;
                let inv = collect(&a.sysroot);
                let r = match crate::install::target_disk(target_disk.as_deref(), &inv) {
                    Ok(name) => {
                        let dev = crate::install::device(&a.dev_root, &name);
                        // A new instance ID per install: cloud-init applies users and files
                        // again only for a new one.
                        let seed = crate::seed::render(
                            &config,
                            &format!("{}-{task_id}", config.node),
                            user_data.as_deref(),
                        );
                        crate::install::install(&bulk, &dev, &image_url, &checksum, &seed).await
                    }
                    Err(f) => Err(f),
                };
                let r = done("install", attempt, &task_id, r);
                finished.insert(task_id, r.clone());
                report(r).await;
            }
            Some(Task::Wipe { attempt, task_id }) => {
                if let Some(r) = finished.get(&task_id) {
                    report(r.clone()).await;
                    continue;
                }
                eprintln!("groundwork agent: wiping every disk (attempt {attempt})");
                report(started("wipe", attempt, &task_id)).await;
                let inv = collect(&a.sysroot);
                let mut wiped = Vec::new();
                let mut r = Ok(());
                for d in inv.disks.iter().filter(|d| d.size_bytes.unwrap_or(0) > 0) {
                    match crate::install::wipe(&crate::install::device(&a.dev_root, &d.name)) {
                        Ok(n) => wiped.push(format!("{} ({n} bytes)", d.name)),
                        Err(f) => {
                            r = Err(f);
                            break;
                        }
                    }
                }
                let r = r.map(|_| format!("wiped {}", wiped.join(", ")));
                let r = done("wipe", attempt, &task_id, r);
                finished.insert(task_id, r.clone());
                report(r).await;
            }
            Some(Task::Reboot { .. }) => {
                eprintln!("groundwork agent: rebooting into the installed system");
                if a.sysroot == std::path::Path::new("/") {
                    nix::unistd::sync();
                    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
                }
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_from_a_sysroot() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let w = |p: &str, c: &str| {
            let p = r.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, c).unwrap();
        };
        w("sys/class/dmi/id/sys_vendor", "QEMU\n");
        w(
            "sys/class/dmi/id/product_name",
            "Standard PC (i440FX + PIIX, 1996)\n",
        );
        w(
            "sys/class/dmi/id/product_uuid",
            "6ef7c7a6-0000-0000-0000-000000000001\n",
        );
        let cpu = |p: u32, id: u32| {
            format!("processor\t: {p}\nmodel name\t: Xeon\nphysical id\t: {id}\ncpu cores\t: 2\n\n")
        };
        w(
            "proc/cpuinfo",
            &(cpu(0, 0) + &cpu(1, 0) + &cpu(2, 1) + &cpu(3, 1)),
        );
        w(
            "proc/meminfo",
            "MemTotal:        2048000 kB\nMemFree: 1 kB\n",
        );
        w("sys/block/vda/size", "16777216\n");
        w("sys/block/vda/queue/rotational", "0\n");
        w("sys/block/vda/device/serial", "disk-1\n");
        w("sys/block/loop0/size", "100\n");
        w("sys/class/net/lo/address", "00:00:00:00:00:00\n");
        w("sys/class/net/eth0/address", "52:54:00:12:34:56\n");
        w("sys/class/net/eth0/carrier", "1\n");
        w("sys/class/net/eth0/speed", "1000\n");
        w(
            "proc/cmdline",
            "console=ttyS0 groundwork.url=http://10.0.0.1:8080 groundwork.token=abc\n",
        );
        let inv = collect(r);
        let sys = inv.system.unwrap();
        assert_eq!(sys.vendor.as_deref(), Some("QEMU"));
        assert_eq!(inv.cpus.len(), 2, "two packages");
        assert_eq!((inv.cpus[0].cores, inv.cpus[0].threads), (Some(2), Some(2)));
        assert_eq!(inv.memory_bytes, Some(2048000 * 1024));
        assert_eq!(inv.disks.len(), 1, "loop devices are not disks");
        assert_eq!(inv.disks[0].size_bytes, Some(8 << 30));
        assert_eq!(inv.disks[0].rotational, Some(false));
        assert_eq!(inv.nics.len(), 1);
        assert_eq!(inv.nics[0].link, Some(true));
        assert_eq!(inv.nics[0].speed_mbps, Some(1000));
        assert_eq!(cmdline_arg(r, "groundwork.token").as_deref(), Some("abc"));
        assert_eq!(
            cmdline_arg(r, "groundwork.url").as_deref(),
            Some("http://10.0.0.1:8080")
        );
    }
}
