//! `groundwork server`: the API server on an embedded store.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use groundwork_store::{Store, StoreConfig};

#[derive(clap::Args, Debug)]
pub(crate) struct ServerArgs {
    /// Directory for the database and the generated kubeconfig.
    #[arg(long, default_value = "/var/lib/groundwork")]
    data_dir: PathBuf,
    /// Address for the Kubernetes-compatible API (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Events of history kept for watches to resume from.
    #[arg(long, default_value_t = 100_000)]
    history_retention: u64,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
}

fn init_logging(format: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => anyhow::bail!("--log-format {other:?}: use text or json"),
    }
    Ok(())
}

fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: groundwork\n  cluster:\n    server: {server}\nusers:\n- name: admin\n  user: {{}}\ncontexts:\n- name: groundwork\n  context:\n    cluster: groundwork\n    user: admin\n    namespace: default\ncurrent-context: groundwork\n"
    )
}

pub(crate) async fn run(args: ServerArgs) -> anyhow::Result<()> {
    init_logging(&args.log_format)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating --data-dir {}", args.data_dir.display()))?;
    let mut cfg = StoreConfig::new(args.data_dir.join("groundwork.redb"));
    cfg.history_retention = args.history_retention.max(1);
    let store = tokio::task::spawn_blocking(move || Store::open(cfg)).await??;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    // Written after the socket is bound: once the kubeconfig exists, the server answers.
    let kc_path = args.data_dir.join("kubeconfig");
    let tmp = args.data_dir.join(".kubeconfig.tmp");
    std::fs::write(&tmp, kubeconfig(&format!("http://{addr}")))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &kc_path)?;
    tracing::info!(%addr, kubeconfig = %kc_path.display(), revision = store.revision(), "serving the Groundwork API");
    groundwork_api::serve(listener, store, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
