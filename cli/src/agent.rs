//! `groundwork agent`: runs in the discovery ramdisk. Reads the machine's hardware from /sys
//! and /proc (DMI identity, CPUs, memory, disks, NICs) and reports it to the boot server with
//! the boot token from the kernel command line; retries until the report is taken or the time
//! budget runs out. `--print` only prints the inventory.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use groundwork_types::{Cpu, Disk, Inventory, Nic, SystemInfo};

#[derive(clap::Args, Debug)]
pub(crate) struct AgentArgs {
    /// Boot server base URL (default: groundwork.url= on the kernel command line).
    #[arg(long)]
    url: Option<String>,
    /// MAC the machine booted from (default: groundwork.mac=).
    #[arg(long)]
    mac: Option<String>,
    /// Boot token (default: groundwork.token=).
    #[arg(long)]
    token: Option<String>,
    /// Print the inventory as JSON and exit.
    #[arg(long)]
    print: bool,
    /// Give up reporting after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Root of /sys and /proc (tests).
    #[arg(long, default_value = "/", hide = true)]
    sysroot: std::path::PathBuf,
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

pub(crate) async fn run(a: AgentArgs) -> anyhow::Result<()> {
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
    let token = a
        .token
        .clone()
        .or_else(|| cmdline_arg(&a.sysroot, "groundwork.token"))
        .context("no boot token: --token or groundwork.token=")?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let mut delay = Duration::from_millis(500);
    loop {
        let r = client
            .post(format!("{}/inventory", url.trim_end_matches('/')))
            .query(&[("mac", mac.as_str()), ("token", token.as_str())])
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
                println!("{}", node.trim());
                return Ok(());
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
            Err(e) => eprintln!("groundwork agent: {e}; retrying"),
        }
        if Instant::now() + delay > deadline {
            anyhow::bail!("no boot server took the report within {} s", a.timeout);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
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
