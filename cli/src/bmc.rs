//! `groundwork bmc`: talk to one BMC directly, on the same clients the power controller uses.
//! The password comes from a file or the environment, never from the command line (where
//! every user on the machine could read it in the process list).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use groundwork_bmc::{BootTarget, Connector, Endpoint, NetConnector, PowerAction, Protocol};

#[derive(clap::Args, Debug)]
pub(crate) struct BmcArgs {
    /// ipmi (IPMI 2.0 over LAN, RMCP+) or redfish.
    #[arg(long, value_parser = ["ipmi", "redfish"])]
    protocol: String,
    /// HOST[:PORT] (IPMI port 623 by default); for Redfish also a URL (https:// by default).
    #[arg(long)]
    address: String,
    #[arg(long, short = 'U')]
    username: String,
    /// File holding the password (first line). Or set GROUNDWORK_BMC_PASSWORD.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// IPMI cipher suite: 3 (SHA-1) or 17 (SHA-256).
    #[arg(long, default_value_t = 3)]
    cipher_suite: u8,
    /// Redfish: accept a self-signed certificate.
    #[arg(long)]
    insecure: bool,
    /// Time budget per operation, in seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    #[command(subcommand)]
    op: BmcOp,
}

#[derive(clap::Subcommand, Debug)]
enum BmcOp {
    /// Power: status, on, off (hard), cycle, reset, soft (ACPI shutdown).
    Power {
        #[arg(value_parser = ["status", "on", "off", "cycle", "reset", "soft"])]
        action: String,
    },
    /// Next boot device: pxe, disk, cdrom or bios; persistent unless --once.
    Bootdev {
        #[arg(value_parser = ["pxe", "disk", "cdrom", "bios"])]
        device: String,
        #[arg(long)]
        once: bool,
        /// UEFI boot (default: legacy BIOS).
        #[arg(long)]
        efi: bool,
    },
    /// What the BMC says about itself.
    Info,
    /// What the BMC knows of the machine (IPMI: FRU; Redfish: the ComputerSystem).
    Inventory,
    /// The System Event Log (IPMI).
    Sel {
        /// At most this many records.
        #[arg(long, default_value_t = 100)]
        max: usize,
    },
}

fn password(args: &BmcArgs) -> anyhow::Result<String> {
    if let Some(f) = &args.password_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading --password-file {}", f.display()))?;
        return Ok(text.lines().next().unwrap_or("").to_string());
    }
    std::env::var("GROUNDWORK_BMC_PASSWORD").map_err(|_| {
        anyhow::anyhow!("no password: pass --password-file FILE or set GROUNDWORK_BMC_PASSWORD")
    })
}

pub(crate) async fn run(args: BmcArgs) -> anyhow::Result<()> {
    if args.cipher_suite != 3 && args.cipher_suite != 17 {
        anyhow::bail!("--cipher-suite {}: use 3 or 17", args.cipher_suite);
    }
    let ep = Endpoint {
        protocol: if args.protocol == "ipmi" {
            Protocol::Ipmi
        } else {
            Protocol::Redfish
        },
        address: args.address.clone(),
        username: args.username.clone(),
        password: password(&args)?,
        cipher_suite: args.cipher_suite,
        insecure_tls: args.insecure,
        timeout: Duration::from_secs(args.timeout.max(1)),
    };
    let bmc = NetConnector.connect(&ep)?;
    let budget = Duration::from_secs(args.timeout.max(1)) * 2;
    let bounded =
        async |f: futures::future::BoxFuture<'_, Result<(), groundwork_bmc::BmcError>>| {
            tokio::time::timeout(budget, f)
                .await
                .map_err(|_| anyhow::anyhow!("{}: no result in {budget:?}", args.address))?
                .map_err(anyhow::Error::from)
        };
    match &args.op {
        BmcOp::Power { action } if action == "status" => {
            let p = tokio::time::timeout(budget, bmc.power_status())
                .await
                .map_err(|_| anyhow::anyhow!("{}: no result in {budget:?}", args.address))??;
            println!(
                "Chassis Power is {}",
                if p == groundwork_bmc::Power::On {
                    "on"
                } else {
                    "off"
                }
            );
        }
        BmcOp::Power { action } => {
            let a: PowerAction = action.parse().map_err(anyhow::Error::msg)?;
            bounded(bmc.set_power(a)).await?;
            println!("Chassis Power Control: {action}");
        }
        BmcOp::Bootdev { device, once, efi } => {
            let t: BootTarget = device.parse().map_err(anyhow::Error::msg)?;
            bounded(bmc.set_boot(t, *once, *efi)).await?;
            println!(
                "Boot device set to {device} ({}, {})",
                if *once {
                    "next boot only"
                } else {
                    "persistent"
                },
                if *efi { "UEFI" } else { "BIOS" }
            );
        }
        BmcOp::Inventory => {
            let i = tokio::time::timeout(budget, bmc.inventory())
                .await
                .map_err(|_| anyhow::anyhow!("{}: no result in {budget:?}", args.address))??;
            println!("{}", serde_json::to_string_pretty(&i)?);
        }
        BmcOp::Sel { max } => {
            if ep.protocol != Protocol::Ipmi {
                anyhow::bail!("sel: IPMI only (Redfish keeps logs under LogServices)");
            }
            let mut cfg = groundwork_bmc::ipmi::IpmiConfig::new(
                ep.address
                    .parse()
                    .or_else(|_| format!("{}:623", ep.address).parse())?,
                &ep.username,
                &ep.password,
            );
            cfg.suite = groundwork_bmc::ipmi::CipherSuite::from_id(ep.cipher_suite)
                .ok_or_else(|| anyhow::anyhow!("cipher suite"))?;
            let entries = tokio::time::timeout(budget, async {
                let mut s = groundwork_bmc::ipmi::Session::open(&cfg).await?;
                let r = groundwork_bmc::ipmi::read_sel(&mut s, *max).await;
                s.close().await;
                r
            })
            .await
            .map_err(|_| anyhow::anyhow!("{}: no result in {budget:?}", args.address))??;
            for e in entries {
                let ts = jiff::Timestamp::from_second(i64::from(e.timestamp))
                    .map(|t| t.to_string())
                    .unwrap_or_default();
                println!(
                    "{:>5} | {ts} | sensor type {:#04x} #{:#04x} | event type {:#04x} | {} | data {:02x?}",
                    e.id,
                    e.sensor_type,
                    e.sensor_number,
                    e.event_type,
                    if e.asserted { "Asserted" } else { "Deasserted" },
                    e.data
                );
            }
        }
        BmcOp::Info => {
            let i = tokio::time::timeout(budget, bmc.info())
                .await
                .map_err(|_| anyhow::anyhow!("{}: no result in {budget:?}", args.address))??;
            println!("{}", serde_json::to_string_pretty(&i)?);
        }
    }
    Ok(())
}
