//! `groundwork dhcp`: the DHCP server on its own, configured by flags (for a boot network that
//! is not (yet) described by a Datacenter, and for benchmarks).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use groundwork_boot::dhcp::{self, BootFiles, Config, Mode, ServeOptions};

#[derive(clap::Args, Debug)]
pub(crate) struct DhcpArgs {
    /// Interface to serve (SO_BINDTODEVICE), e.g. eth1.
    #[arg(long)]
    interface: Option<String>,
    /// This server's address on the boot network (DHCP server identifier).
    #[arg(long)]
    server_ip: Ipv4Addr,
    /// The boot network, e.g. 10.0.0.0/24.
    #[arg(long)]
    subnet: ipnet::Ipv4Net,
    #[arg(long)]
    pool_start: Ipv4Addr,
    #[arg(long)]
    pool_end: Ipv4Addr,
    #[arg(long)]
    router: Option<Ipv4Addr>,
    #[arg(long, value_delimiter = ',')]
    dns: Vec<Ipv4Addr>,
    #[arg(long, value_delimiter = ',')]
    ntp: Vec<Ipv4Addr>,
    #[arg(long, default_value_t = 3600)]
    lease_seconds: u32,
    /// Directory of the lease log (leases are fsync'd there before each ACK).
    #[arg(long)]
    lease_dir: Option<PathBuf>,
    /// Keep leases in memory only (a restart forgets them).
    #[arg(long)]
    no_persist: bool,
    /// Proxy DHCP: boot options only, beside another DHCP server (ports 67 and 4011).
    #[arg(long)]
    proxy: bool,
    /// TFTP server for first-stage boot files (default: --server-ip).
    #[arg(long)]
    tftp_server: Option<Ipv4Addr>,
    #[arg(long, default_value = "undionly.kpxe")]
    bios_file: String,
    #[arg(long, default_value = "ipxe.efi")]
    efi_file: String,
    /// Where iPXE is sent, e.g. http://10.0.0.1:8080/boot.ipxe.
    #[arg(long)]
    ipxe_url: Option<String>,
    /// Fixed address for a MAC: MAC=IP (repeatable).
    #[arg(long = "reserve")]
    reservations: Vec<String>,
    #[arg(long, default_value_t = 67)]
    port: u16,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
}

pub(crate) async fn run(a: DhcpArgs) -> anyhow::Result<()> {
    groundwork_server::init_logging_plain(&a.log_format)?;
    let mut reservations = HashMap::new();
    for r in &a.reservations {
        let (m, ip) = r
            .split_once('=')
            .with_context(|| format!("--reserve {r:?}: use MAC=IP"))?;
        let mac =
            dhcp::leases::parse_mac(m).with_context(|| format!("--reserve {r:?}: bad MAC"))?;
        reservations.insert(
            mac,
            ip.parse()
                .with_context(|| format!("--reserve {r:?}: bad IP"))?,
        );
    }
    let cfg = Config {
        mode: if a.proxy {
            Mode::Proxy
        } else {
            Mode::Authoritative
        },
        server_ip: a.server_ip,
        subnet: a.subnet,
        pool_start: a.pool_start,
        pool_end: a.pool_end,
        router: a.router,
        dns: a.dns,
        ntp: a.ntp,
        lease_secs: a.lease_seconds,
        offer_secs: 30,
        boot: Some(BootFiles {
            tftp_server: a.tftp_server.unwrap_or(a.server_ip),
            bios: a.bios_file,
            efi: a.efi_file,
            ipxe_url: a.ipxe_url,
        }),
        reservations,
    };
    cfg.validate().map_err(anyhow::Error::msg)?;
    let opts = ServeOptions {
        interface: a.interface,
        port: a.port,
        lease_dir: a.lease_dir,
        persist: !a.no_persist,
        ..Default::default()
    };
    if opts.persist && opts.lease_dir.is_none() {
        anyhow::bail!("--lease-dir DIR is required unless --no-persist");
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stats = Arc::new(dhcp::Stats::default());
    let server = tokio::spawn(dhcp::serve(cfg, opts, stats, rx));
    tokio::select! {
        r = server => r??,
        _ = groundwork_server::shutdown_signal() => { let _ = tx.send(true); }
    }
    Ok(())
}
