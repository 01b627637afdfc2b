//! `groundwork boot`: the boot file servers on their own: TFTP (first iPXE stage) and HTTP
//! (iPXE scripts, kernels, ramdisks, images) from one directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use groundwork_boot::http::{ScriptSource, StaticScripts};

#[derive(clap::Args, Debug)]
pub(crate) struct BootArgs {
    /// Directory of boot files (undionly.kpxe, ipxe.efi, kernels, ramdisks, images).
    #[arg(long)]
    root: PathBuf,
    /// HTTP address (iPXE scripts and files, with Range).
    #[arg(long, default_value = "0.0.0.0:8080")]
    http: SocketAddr,
    /// TFTP address (read-only; blksize, tsize, timeout and windowsize options).
    #[arg(long, default_value = "0.0.0.0:69")]
    tftp: SocketAddr,
    /// Kernel of the discovery ramdisk (file under --root, or a URL).
    #[arg(long, default_value = "vmlinuz")]
    kernel: String,
    #[arg(long, default_value = "initrd.img")]
    initrd: String,
    #[arg(long, default_value = "console=ttyS0")]
    cmdline: String,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
}

pub(crate) async fn run(a: BootArgs) -> anyhow::Result<()> {
    groundwork_server::init_logging_plain(&a.log_format)?;
    let stats = Arc::new(groundwork_boot::tftp::TftpStats::default());
    let (tftp_addr, _t) = groundwork_boot::tftp::spawn(a.tftp, &a.root, stats)
        .with_context(|| format!("TFTP on {} from {}", a.tftp, a.root.display()))?;
    let listener = tokio::net::TcpListener::bind(a.http)
        .await
        .with_context(|| format!("HTTP on {}", a.http))?;
    let scripts: Arc<dyn ScriptSource> = Arc::new(StaticScripts {
        kernel: a.kernel,
        initrd: a.initrd,
        cmdline: a.cmdline,
    });
    tracing::info!(tftp = %tftp_addr, http = %listener.local_addr()?, root = %a.root.display(), "boot servers ready");
    groundwork_boot::http::serve(
        listener,
        &a.root,
        scripts,
        None,
        groundwork_server::shutdown_signal(),
    )
    .await?;
    Ok(())
}
