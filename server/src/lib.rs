//! `groundwork server`, assembled: the store, raft, the API, the boot plane, the agent API and
//! the controllers, in small named steps that [`run`] reads as a table of contents. Every
//! in-process consumer of objects (boot scripts, the agent API, DHCP, the controllers) shares
//! one set of watch caches.

mod agentapi;
mod args;
mod boot;
mod bootnet;
mod certs;
mod instances;
pub mod join;
mod kubeconfig;
mod logging;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use groundwork_controller::caches::{Caches, Kinds};
use groundwork_observe::LogHub;
use groundwork_store::{Store, StoreConfig};

pub use agentapi::{AGENT_JOIN_AUDIENCE, enlisted_name};
pub use args::{ControllerArgs, ControllerOnlyArgs, ServerArgs};
pub use kubeconfig::{kubeconfig, write_private};
pub use logging::init_logging_plain;

use certs::Certificates;

/// `groundwork server`.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let hub = LogHub::new(1000, 10_000);
    logging::init_logging(&args.log_format, Some(&hub))?;
    prepare_data_dir(&args).await?;
    groundwork_controller::crashpoint::set_dir(&args.data_dir);
    let key = certs::secret_key(&args.data_dir)?;
    groundwork_api::set_secret_key(key.clone());
    let store = open_store(&args).await?;
    let certs = load_certificates(&args)?;
    start_raft_member(&args, &store, certs.as_ref(), &key).await?;
    let (listener, addr) = bind_api(&args, certs.is_some()).await?;
    let client = loopback_client(addr, certs.as_ref()).await?;
    let mut opts = controller_options(&args, key.clone());
    opts.cluster_ca = certs.as_ref().map(|c| c.pki.ca_pem().to_string());
    opts.git_cache = args.data_dir.join("git");
    if let Some(addr) = serve_metrics(&args).await? {
        opts.groundwork_metrics = Some(addr.to_string());
    }
    let caches = shared_caches(&args, &opts, &client);
    if let Some(caches) = &caches {
        boot::start(&args, certs.as_ref(), &key, &client, caches).await?;
        boot::start_dhcp(&args, caches);
    }
    // Written once every socket is bound: once the kubeconfig exists, the server answers,
    // and a port that could not be bound has already stopped it.
    write_admin_kubeconfig(&args, addr, certs.as_ref())?;
    tracing::info!(%addr, revision = store.revision(), "serving the Groundwork API");
    let with_controllers = !opts.controllers.is_empty();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let controllers = match caches {
        Some(c) => tokio::spawn(groundwork_controller::run(client, c, opts, stop_rx)),
        None => tokio::spawn(async {}),
    };
    let shutdown = async move {
        shutdown_signal().await;
        // Controllers first: they release their Leases through the API, which still serves.
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(8), controllers).await;
    };
    serve_api(
        &args,
        listener,
        store,
        certs,
        with_controllers.then_some(hub),
        shutdown,
    )
    .await?;
    tracing::info!("stopped");
    Ok(())
}

/// The data directory, and (joining with a token) the cluster's CA and secret key fetched
/// from the member joined.
async fn prepare_data_dir(args: &ServerArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating --data-dir {}", args.data_dir.display()))?;
    if let (Some(addr), Some(token), Some(hash)) =
        (&args.join, &args.join_token, &args.ca_cert_hash)
    {
        let dir = certs::pki_dir(args);
        join::fetch_bundle(addr, token, hash, &dir, &args.data_dir.join("secret.key")).await?;
    }
    Ok(())
}

async fn open_store(args: &ServerArgs) -> anyhow::Result<Store> {
    let mut cfg = StoreConfig::new(args.data_dir.join("groundwork.redb"));
    cfg.history_retention = args.history_retention.max(1);
    cfg.cache_bytes = (args.store_cache_mib as usize) << 20;
    Ok(tokio::task::spawn_blocking(move || Store::open(cfg)).await??)
}

fn load_certificates(args: &ServerArgs) -> anyhow::Result<Option<Certificates>> {
    if args.insecure_plain_http {
        tracing::warn!("--insecure-plain-http: the API has no TLS and no authentication");
        if !args.listen.ip().is_loopback() {
            anyhow::bail!(
                "--insecure-plain-http serves without authentication: only on a loopback --listen address, not {}",
                args.listen
            );
        }
        return Ok(None);
    }
    Certificates::load(args).map(Some)
}

/// With `--raft-listen`: this server is a member of a raft group that sits between the API
/// and the store.
async fn start_raft_member(
    args: &ServerArgs,
    store: &Store,
    certs: Option<&Certificates>,
    key: &groundwork_types::secrets::SecretKey,
) -> anyhow::Result<()> {
    let Some(raft_addr) = args.raft_listen else {
        return Ok(());
    };
    let mut expiries = certs.map(Certificates::expiries).unwrap_or_default();
    let tls = match certs {
        Some(c) => {
            let t = certs::member_tls(&c.pki, raft_addr, key)?;
            expiries.push(("member".into(), certs::expiry(&t.cert_pem)));
            Some(t)
        }
        None => None,
    };
    let raft_listener = tokio::net::TcpListener::bind(raft_addr)
        .await
        .with_context(|| format!("--raft-listen {raft_addr}"))?;
    let id = groundwork_raft::node_id(&args.data_dir)
        .with_context(|| format!("raft member ID in {}", args.data_dir.display()))?;
    let bound = raft_listener.local_addr()?;
    let member = groundwork_raft::Member::start(
        id,
        store.clone(),
        &args.data_dir.join("raft-wal"),
        raft_listener,
        args.join.clone(),
        groundwork_raft::Options {
            snapshot_every: args.raft_snapshot_every,
            logs_to_keep: args.raft_logs_to_keep,
            persist_every: Duration::from_millis(args.raft_persist_every_ms),
            persist_idle: Duration::from_millis(args.raft_persist_idle_ms),
            tls,
            certificates: expiries,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    tracing::info!(id = member.id, raft = %bound, join = ?args.join, "raft member started");
    Ok(())
}

async fn bind_api(
    args: &ServerArgs,
    tls: bool,
) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::debug!(%addr, tls, "API bound");
    Ok((listener, addr))
}

/// `--metrics-listen`: `/metrics` in plain HTTP.
async fn serve_metrics(args: &ServerArgs) -> anyhow::Result<Option<SocketAddr>> {
    let Some(addr) = args.metrics_listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-listen {addr}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    groundwork_observe::OPENMETRICS_CONTENT_TYPE,
                )],
                groundwork_observe::metrics().encode(),
            )
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    });
    tracing::info!(%bound, "serving /metrics in plain HTTP");
    Ok(Some(bound))
}

/// The in-process controllers' and boot plane's client: the API like any client, over
/// loopback, with the controllers' certificate.
async fn loopback_client(
    addr: SocketAddr,
    certs: Option<&Certificates>,
) -> anyhow::Result<kube::Client> {
    let local = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let scheme = if certs.is_some() { "https" } else { "http" };
    let text = kubeconfig(
        &format!("{scheme}://{local}"),
        certs.map(|c| (c.pki.ca_pem(), &c.controllers)),
    );
    let kc = kube::config::Kubeconfig::from_yaml(&text).context("controllers' kubeconfig")?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .context("controllers' kubeconfig")?;
    Ok(kube::Client::try_from(cfg)?)
}

fn controller_options(
    args: &ServerArgs,
    key: groundwork_types::secrets::SecretKey,
) -> groundwork_controller::Options {
    let mut opts = args.controllers.options();
    opts.secret_key = Some(key);
    // A Ready Node is "not heartbeating" after three missed heartbeats (at least 30 s).
    opts.provisioning.heartbeat_grace =
        Duration::from_secs((3 * args.heartbeat_seconds as u64).max(30));
    opts
}

/// The one set of watch caches for everything in this process that reads objects, started
/// only when something does (a server with neither controllers nor boot plane watches
/// nothing).
fn shared_caches(
    args: &ServerArgs,
    opts: &groundwork_controller::Options,
    client: &kube::Client,
) -> Option<Caches> {
    let mut kinds = groundwork_controller::watches(&opts.controllers, Kinds::new());
    if args.boot_root.is_some() {
        kinds = agentapi::watches(kinds);
    }
    if args.dhcp_network.is_some() {
        kinds = bootnet::watches(kinds);
    }
    (!kinds.is_empty()).then(|| Caches::start(client, kinds).0)
}

/// `DATA_DIR/kubeconfig`, the admin's: it carries the admin's key, readable by its owner only.
fn write_admin_kubeconfig(
    args: &ServerArgs,
    addr: SocketAddr,
    certs: Option<&Certificates>,
) -> anyhow::Result<()> {
    let scheme = if certs.is_some() { "https" } else { "http" };
    let path = args.data_dir.join("kubeconfig");
    let tmp = args.data_dir.join(".kubeconfig.tmp");
    let admin = certs.map(|c| (c.pki.ca_pem(), &c.admin));
    write_private(&tmp, &kubeconfig(&format!("{scheme}://{addr}"), admin))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)?;
    tracing::info!(kubeconfig = %path.display(), "kubeconfig written");
    Ok(())
}

/// Serves the API until `shutdown` completes: over TLS with authentication, or plain.
async fn serve_api(
    args: &ServerArgs,
    listener: tokio::net::TcpListener,
    store: Store,
    certs: Option<Certificates>,
    logs: Option<LogHub>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut cfg = groundwork_api::ServerConfig { logs, auth: None };
    let Some(certs) = certs else {
        return Ok(groundwork_api::serve(listener, store, cfg, shutdown).await?);
    };
    let tokens = match &args.token_file {
        Some(p) => Some(
            groundwork_api::auth::TokenFile::open(p.clone())
                .map_err(|e| anyhow::anyhow!("--token-file: {e}"))?,
        ),
        None => None,
    };
    let audit = match &args.audit_log {
        Some(p) => Some(
            groundwork_api::auth::Audit::open(p, args.audit_log_max_mb << 20, 5)
                .map_err(|e| anyhow::anyhow!("--audit-log: {e}"))?,
        ),
        None => None,
    };
    cfg.auth = Some(std::sync::Arc::new(groundwork_api::auth::Auth {
        store: store.clone(),
        tokens,
        audit,
    }));
    Ok(groundwork_api::serve_tls(listener, store, cfg, certs.api_tls, shutdown).await?)
}

/// `groundwork controller`: controllers only, against the API server `client` reaches.
pub async fn run_controllers(args: ControllerOnlyArgs, client: kube::Client) -> anyhow::Result<()> {
    logging::init_logging(&args.log_format, None)?;
    let mut opts = args.controllers.options();
    if let Some(f) = &args.secret_key_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading --secret-key-file {}", f.display()))?;
        opts.secret_key = Some(
            groundwork_types::secrets::SecretKey::decode(&text)
                .with_context(|| format!("--secret-key-file {}", f.display()))?,
        );
    }
    if opts.controllers.is_empty() {
        anyhow::bail!("--controllers none: nothing to run");
    }
    let kinds = groundwork_controller::watches(&opts.controllers, Kinds::new());
    let (caches, _tasks) = Caches::start(&client, kinds);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(groundwork_controller::run(client, caches, opts, stop_rx));
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(8), task).await;
    Ok(())
}

/// SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
