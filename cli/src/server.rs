//! `groundwork server`: the API server on an embedded store.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use groundwork_observe::LogHub;
use groundwork_store::{Store, StoreConfig};

#[derive(clap::Args, Debug)]
pub(crate) struct ServerArgs {
    /// Directory for the database and the generated kubeconfig.
    #[arg(long, default_value = "/var/lib/groundwork")]
    data_dir: PathBuf,
    /// Address for the Kubernetes-compatible API (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Replicate the store with raft: members talk on this address (port 0 picks a free
    /// port). Without --join, a member with no data starts a new group of one.
    #[arg(long)]
    raft_listen: Option<SocketAddr>,
    /// Join the raft group of the member whose --raft-listen address this is (any member:
    /// the request is forwarded to the leader). Needs --raft-listen.
    #[arg(long, requires = "raft_listen")]
    join: Option<String>,
    /// With --join and an empty --pki-dir: fetch the cluster's CA and secret key from the
    /// member with this token (`groundwork cluster join-token` prints one) instead of copying
    /// them in.
    #[arg(long, requires_all = ["join", "ca_cert_hash"])]
    join_token: Option<String>,
    /// The CA the --join member must present (sha256:HEX, printed with the join token).
    #[arg(long, requires = "join_token")]
    ca_cert_hash: Option<String>,
    /// Raft: take a snapshot after this many log entries (and purge the log behind it). An
    /// entry holds the writes that reached the leader together, up to 1 MiB. A snapshot is
    /// also taken when the log since the last one has outgrown it (and 64 MiB).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    raft_snapshot_every: u64,
    /// Raft: log entries kept behind a snapshot (followers further behind get the snapshot).
    #[arg(long, default_value_t = 1000)]
    raft_logs_to_keep: u64,
    /// Raft: persist applied writes to the store's file at least every this many
    /// milliseconds (also once the applies pause, see below, and whenever 64 MiB of them are
    /// in memory). The raft log is the durable record; this bounds what is applied again
    /// after a crash. Shorter trades write throughput for a lower tail latency under heavy
    /// load (docs/benchmarks.md).
    #[arg(long, default_value_t = groundwork_raft::FLUSH_EVERY.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    raft_persist_every_ms: u64,
    /// Raft: persist applied writes once no write has been applied for this many milliseconds
    /// (a burst is made durable as it ends; the period above bounds a steady load).
    #[arg(long, default_value_t = groundwork_raft::FLUSH_IDLE.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    raft_persist_idle_ms: u64,
    /// The cluster CA and the certificates it issued (default: DATA_DIR/pki). A new directory
    /// gets a new CA; members of one raft group share it (copy ca.crt and ca.key in first).
    #[arg(long)]
    pki_dir: Option<PathBuf>,
    /// More names or addresses for the server certificate (repeatable); localhost, the
    /// loopback addresses, the host name and the --listen address are always in it.
    #[arg(long = "tls-san")]
    tls_sans: Vec<String>,
    /// Bearer tokens: CSV lines `token,user,uid,"group1,group2"[,expires=RFC3339]`, read again
    /// when the file changes (delete a line to revoke).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Audit log of every write and every refused request: a file (rotated at
    /// --audit-log-max-mb, 5 kept) or - for stdout.
    #[arg(long)]
    audit_log: Option<String>,
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    audit_log_max_mb: u64,
    /// Serve plain HTTP with no authentication (loopback addresses only): for local
    /// benchmarks against servers that speak plain HTTP. Never in production.
    #[arg(long)]
    insecure_plain_http: bool,
    /// Events of history kept for watches to resume from.
    #[arg(long, default_value_t = 100_000)]
    history_retention: u64,
    /// Memory for the object store's page cache, in MiB. Reads that miss it are served from
    /// the operating system's file cache.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(8..=1 << 20))]
    store_cache_mib: u64,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
    #[command(flatten)]
    controllers: ControllerArgs,
    /// Boot files (undionly.kpxe, ipxe.efi, the discovery ramdisk): serves them over HTTP
    /// (--boot-http) and TFTP (--boot-tftp), with iPXE scripts rendered from the Nodes.
    #[arg(long)]
    boot_root: Option<PathBuf>,
    #[arg(long, default_value = "0.0.0.0:8080", requires = "boot_root")]
    boot_http: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:69", requires = "boot_root")]
    boot_tftp: SocketAddr,
    /// The agent API (TLS; machines join there and then call it with their own
    /// certificates). Default: --boot-http's address, port 8443.
    #[arg(long, requires = "boot_root")]
    boot_https: Option<SocketAddr>,
    /// How long the join token in an iPXE script is good for, in seconds (it is also good
    /// only once).
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(i64).range(60..=7 * 86400))]
    join_token_ttl_seconds: i64,
    /// How long a machine's certificate is valid, in hours (node agents renew theirs when a
    /// third of that is left).
    #[arg(long, default_value_t = 720, value_parser = clap::value_parser!(i64).range(1..=24 * 365))]
    machine_cert_hours: i64,
    /// Discovery ramdisk kernel, initrd (under --boot-root, or URLs) and command line.
    #[arg(long, default_value = "vmlinuz")]
    boot_kernel: String,
    #[arg(long, default_value = "initrd.img")]
    boot_initrd: String,
    #[arg(long, default_value = "console=ttyS0")]
    boot_cmdline: String,
    /// How often installed systems' node agents heartbeat, in seconds.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..=3600))]
    heartbeat_seconds: u32,
    /// Serve DHCP for this boot network (a `spec.bootNetworks[].name` of a Datacenter) on
    /// --dhcp-interface, configured and reconfigured from the API.
    #[arg(long, requires_all = ["dhcp_interface", "dhcp_server_ip"])]
    dhcp_network: Option<String>,
    #[arg(long)]
    dhcp_interface: Option<String>,
    /// This server's address on that boot network.
    #[arg(long)]
    dhcp_server_ip: Option<std::net::Ipv4Addr>,
}

/// Which controllers run, and how they elect a leader.
#[derive(clap::Args, Debug)]
pub(crate) struct ControllerArgs {
    /// Controllers to run: all, none, or a comma-separated list of
    /// datacenter, rack, node-placement, profile, profile-status, power, provisioning.
    #[arg(long, default_value = "all", value_parser = check_controllers)]
    controllers: String,
    /// Lease holder identity (default: host name and PID); unique per process.
    #[arg(long)]
    identity: Option<String>,
    /// How long a controller Lease lasts without renewal before another instance takes over.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    lease_duration_seconds: u64,
    /// Reconciles of different objects at once, per controller.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    workers: u64,
    /// Power controller: BMC calls in flight at once across all Nodes (one per BMC always).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    bmc_concurrency: u64,
    /// Power controller: time limit of each BMC call, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    bmc_timeout_seconds: u64,
    /// Power controller: how often the power of a settled Node is read again, in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    power_poll_seconds: u64,
    /// Provisioning: seconds from power-on through PXE to the inventory report before the
    /// machine is power-cycled again (it did not PXE-boot).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    discover_timeout_seconds: u64,
    /// Provisioning: seconds from a PXE boot into the ramdisk to its agent starting the
    /// install or wipe.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    task_start_timeout_seconds: u64,
    /// Provisioning: seconds an install or wipe may run.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    task_timeout_seconds: u64,
    /// Provisioning: seconds from the reset into the installed system to its first heartbeat.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    boot_timeout_seconds: u64,
    /// Provisioning: tries per phase before the Node is Failed.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    provision_attempts: u32,
    /// Provisioning: a Failed Node is tried again after this many seconds (at once when it or
    /// its Profile changes, or on `groundwork retry`).
    #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..))]
    failed_retry_seconds: u64,
}

fn check_controllers(s: &str) -> Result<String, String> {
    groundwork_controller::parse_controllers(s).map(|_| s.to_string())
}

impl ControllerArgs {
    pub(crate) fn options(&self) -> groundwork_controller::Options {
        let list = groundwork_controller::parse_controllers(&self.controllers).unwrap_or_default();
        let mut o = groundwork_controller::Options::new(list);
        if let Some(id) = &self.identity {
            o.identity = id.clone();
        }
        o.lease = groundwork_controller::LeaseTiming::from_lease_duration(
            std::time::Duration::from_secs(self.lease_duration_seconds),
        );
        o.settings.workers = self.workers as usize;
        o.bmc_global_limit = self.bmc_concurrency as usize;
        o.bmc_timeout = std::time::Duration::from_secs(self.bmc_timeout_seconds);
        o.power_poll = std::time::Duration::from_secs(self.power_poll_seconds);
        let secs = std::time::Duration::from_secs;
        o.provisioning = groundwork_controller::provision::Timing {
            discover: secs(self.discover_timeout_seconds),
            task_start: secs(self.task_start_timeout_seconds),
            task: secs(self.task_timeout_seconds),
            boot: secs(self.boot_timeout_seconds),
            attempts: self.provision_attempts,
            failed_retry: secs(self.failed_retry_seconds),
            ..Default::default()
        };
        o
    }
}

/// `groundwork controller`: controllers only, against any API server (kubeconfig).
#[derive(clap::Args, Debug)]
pub(crate) struct ControllerOnlyArgs {
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
    /// The API server's secret key (its DATA_DIR/secret.key), to open Credentials for BMCs.
    #[arg(long)]
    secret_key_file: Option<PathBuf>,
    #[command(flatten)]
    controllers: ControllerArgs,
}

/// Logs to stderr (text or JSON lines) and, when `hub` is given, copies the lines about each
/// object into it for `groundwork logs`. `RUST_LOG` filters stderr; the hub keeps info and up.
fn init_logging(format: &str, hub: Option<&LogHub>) -> anyhow::Result<()> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = match format {
        "json" => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        "text" => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
        other => anyhow::bail!("--log-format {other:?}: use text or json"),
    };
    let hub_layer = hub.map(|h| {
        h.layer()
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(hub_layer)
        .try_init()
        .map_err(|e| anyhow::anyhow!("setting up logging: {e}"))?;
    Ok(())
}

use groundwork_types::agent::AGENT_SERVER_NAME;

/// Turns a verified client certificate from the cluster CA into the machine it names: only
/// `system:node:NAME` in group `system:nodes`; anything else is not a machine.
async fn machine_identity(
    axum::extract::State(ca): axum::extract::State<std::sync::Arc<str>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let id = req
        .extensions()
        .get::<groundwork_api::tls::PeerCert>()
        .and_then(|c| {
            let (cn, groups) = groundwork_pki::subject(&c.0)?;
            let node = cn.strip_prefix("system:node:")?.to_string();
            if !groups
                .iter()
                .any(|g| g == groundwork_api::auth::NODES_GROUP)
            {
                return None;
            }
            Some(groundwork_boot::http::AgentIdentity {
                node,
                serial: groundwork_pki::serial(&c.0)?,
                stale_issuer: !groundwork_pki::issued_by_first(&c.0, &ca),
            })
        });
    if let Some(id) = id {
        req.extensions_mut().insert(id);
    }
    next.run(req).await
}

/// The key that seals Credentials at rest: `DATA_DIR/secret.key`, created (mode 0600) on
/// first start. Every member of a cluster needs the same key; back it up with the data.
fn secret_key(dir: &std::path::Path) -> anyhow::Result<groundwork_types::secrets::SecretKey> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("secret.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => groundwork_types::secrets::SecretKey::decode(&text)
            .with_context(|| format!("{} is not a Groundwork secret key", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = groundwork_types::secrets::SecretKey::generate();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            writeln!(f, "{}", key.encode())?;
            f.sync_all()?;
            tracing::info!(path = %path.display(), "created the secret key for Credentials");
            Ok(key)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    }
}

/// A kubeconfig for `server`; over TLS with the CA and a client certificate.
pub(crate) fn kubeconfig(server: &str, tls: Option<(&str, &groundwork_pki::CertKey)>) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let (ca, user) = match tls {
        Some((ca, id)) => (
            format!("\n    certificate-authority-data: {}", b64(ca)),
            format!(
                "\n    client-certificate-data: {}\n    client-key-data: {}",
                b64(&id.cert_pem),
                b64(&id.key_pem)
            ),
        ),
        None => (String::new(), " {}".to_string()),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: groundwork\n  cluster:\n    server: {server}{ca}\nusers:\n- name: admin\n  user:{user}\ncontexts:\n- name: groundwork\n  context:\n    cluster: groundwork\n    user: admin\n    namespace: default\ncurrent-context: groundwork\n"
    )
}

/// The group of raft members' certificates.
const MEMBERS_GROUP: &str = "groundwork:members";

/// Who may talk to the raft port: members, and the operator's tools (system:masters).
fn raft_peer_allowed(der: &[u8]) -> bool {
    groundwork_pki::subject(der).is_some_and(|(cn, groups)| {
        (cn.starts_with("system:member:") && groups.iter().any(|g| g == MEMBERS_GROUP))
            || groups.iter().any(|g| g == groundwork_pki::MASTERS)
    })
}

/// Writes a file readable by its owner only.
pub(crate) fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    groundwork_pki::write_private(path, text).map_err(std::io::Error::other)
}

/// The names and addresses the server certificate is valid for.
fn server_sans(listen: SocketAddr, extra: &[String]) -> Vec<String> {
    let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        sans.push(h.trim().to_string());
    }
    if listen.ip().is_unspecified() {
        // Every address of this machine.
        if let Ok(ifs) = nix::ifaddrs::getifaddrs() {
            for i in ifs {
                if let Some(a) = i.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
                    sans.push(a.ip().to_string());
                }
            }
        }
    } else {
        sans.push(listen.ip().to_string());
    }
    sans.extend(extra.iter().cloned());
    sans.sort();
    sans.dedup();
    sans.retain(|s| !s.is_empty());
    sans
}

pub(crate) async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let hub = LogHub::new(1000, 10_000);
    init_logging(&args.log_format, Some(&hub))?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating --data-dir {}", args.data_dir.display()))?;
    if let (Some(addr), Some(token), Some(hash)) =
        (&args.join, &args.join_token, &args.ca_cert_hash)
    {
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("{}", args.data_dir.display()))?;
        let dir = args
            .pki_dir
            .clone()
            .unwrap_or_else(|| args.data_dir.join("pki"));
        crate::join::fetch_bundle(addr, token, hash, &dir, &args.data_dir.join("secret.key"))
            .await?;
    }
    let key = secret_key(&args.data_dir)?;
    groundwork_api::set_secret_key(key.clone());
    let mut cfg = StoreConfig::new(args.data_dir.join("groundwork.redb"));
    cfg.history_retention = args.history_retention.max(1);
    cfg.cache_bytes = (args.store_cache_mib as usize) << 20;
    let store = tokio::task::spawn_blocking(move || Store::open(cfg)).await??;
    // TLS: the cluster CA, this server's certificate, the operator's and the controllers'
    // client certificates (group system:masters).
    let tls = if args.insecure_plain_http {
        tracing::warn!("--insecure-plain-http: the API has no TLS and no authentication");
        None
    } else {
        let dir = args
            .pki_dir
            .clone()
            .unwrap_or_else(|| args.data_dir.join("pki"));
        let pki = groundwork_pki::Pki::load_or_create(&dir)
            .map_err(|e| anyhow::anyhow!("--pki-dir {}: {e}", dir.display()))?;
        let server = pki
            .server(&server_sans(args.listen, &args.tls_sans))
            .map_err(|e| anyhow::anyhow!("server certificate: {e}"))?;
        let admin = pki
            .client("admin", "admin", Some(groundwork_pki::MASTERS))
            .map_err(|e| anyhow::anyhow!("admin certificate: {e}"))?;
        let ctrl = pki
            .client(
                "controllers",
                "groundwork:controllers",
                Some(groundwork_pki::MASTERS),
            )
            .map_err(|e| anyhow::anyhow!("controllers' certificate: {e}"))?;
        let rustls =
            groundwork_pki::tls::server_config(&server.cert_pem, &server.key_pem, pki.ca_pem())
                .map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
        Some((pki, admin, ctrl, rustls, server))
    };
    // When each certificate this server uses expires (shown by `groundwork cluster status`).
    let expiry = |pem: &str| {
        groundwork_pki::not_after(pem)
            .and_then(|t| jiff::Timestamp::from_second(t).ok())
            .map(|t| t.to_string())
            .unwrap_or_else(|| "?".into())
    };
    let mut cert_expiries: Vec<(String, String)> = match &tls {
        Some((pki, admin, ctrl, _, server)) => vec![
            ("ca".into(), expiry(pki.ca_pem())),
            ("apiserver".into(), expiry(&server.cert_pem)),
            ("admin".into(), expiry(&admin.cert_pem)),
            ("controllers".into(), expiry(&ctrl.cert_pem)),
        ],
        None => Vec::new(),
    };
    // Raft over mutual TLS: this member's certificate (server and client) from the same CA.
    let raft_tls = match (&tls, args.raft_listen) {
        (Some((pki, _, _, _, _)), Some(raft)) => {
            let cn = format!("system:member:{raft}");
            let ck = pki
                .issue(
                    &cn,
                    Some(MEMBERS_GROUP),
                    &[raft.ip().to_string()],
                    groundwork_pki::Usage::Member,
                    365,
                )
                .map_err(|e| anyhow::anyhow!("raft member certificate: {e}"))?;
            // A caller without a certificate reaches only the join routes (RaftTls::public).
            let server = groundwork_pki::tls::server_config_with(
                &ck.cert_pem,
                &ck.key_pem,
                pki.ca_pem(),
                false,
            )
            .map_err(|e| anyhow::anyhow!("raft TLS: {e}"))?;
            cert_expiries.push(("member".into(), expiry(&ck.cert_pem)));
            Some(groundwork_raft::RaftTls {
                cert_pem: ck.cert_pem,
                key_pem: ck.key_pem,
                ca_pem: pki.ca_pem().to_string(),
                server,
                allow: raft_peer_allowed,
                public: Some(crate::join::public_router(pki.dir(), key.clone())),
            })
        }
        _ => None,
    };
    if let Some(raft_addr) = args.raft_listen {
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
                persist_every: std::time::Duration::from_millis(args.raft_persist_every_ms),
                persist_idle: std::time::Duration::from_millis(args.raft_persist_idle_ms),
                tls: raft_tls.clone(),
                certificates: cert_expiries.clone(),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
        tracing::info!(id = member.id, raft = %bound, join = ?args.join, "raft member started");
    }
    if args.insecure_plain_http && !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "--insecure-plain-http serves without authentication: only on a loopback --listen address, not {}",
            args.listen
        );
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    // Controllers reach the API like any client, over loopback.
    let local = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let mut opts = args.controllers.options();
    opts.secret_key = Some(key);
    // A Ready Node is "not heartbeating" after three missed heartbeats (at least 30 s).
    opts.provisioning.heartbeat_grace =
        std::time::Duration::from_secs((3 * args.heartbeat_seconds as u64).max(30));
    let with_controllers = !opts.controllers.is_empty();
    let client = {
        let ctrl = tls
            .as_ref()
            .map(|(pki, _, ctrl, _, _)| (pki.ca_pem(), ctrl));
        let text = kubeconfig(&format!("{scheme}://{local}"), ctrl);
        let kc = kube::config::Kubeconfig::from_yaml(&text).context("controllers' kubeconfig")?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .context("controllers' kubeconfig")?;
        kube::Client::try_from(cfg)?
    };
    if let Some(root) = &args.boot_root {
        let stats = std::sync::Arc::new(groundwork_boot::tftp::TftpStats::default());
        let (tftp, _t) = groundwork_boot::tftp::spawn(args.boot_tftp, root, stats)
            .with_context(|| format!("TFTP on {}", args.boot_tftp))?;
        let http = tokio::net::TcpListener::bind(args.boot_http)
            .await
            .with_context(|| format!("boot HTTP on {}", args.boot_http))?;
        let (caches, _tasks) = groundwork_controller::caches::Caches::start(&client);
        // Machines join over TLS: the agent API, with a certificate that names
        // `groundwork-boot` (agents pin the cluster CA and connect under that name).
        let agent = match (&tls, &opts.secret_key) {
            (Some((pki, _, _, _, _)), Some(key)) => {
                let addr = args.boot_https.unwrap_or_else(|| {
                    // Port 0 (tests) for HTTP means any free port here too.
                    let port = if args.boot_http.port() == 0 { 0 } else { 8443 };
                    SocketAddr::new(args.boot_http.ip(), port)
                });
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("agent API (--boot-https) on {addr}"))?;
                let ck = pki
                    .issue(
                        "groundwork-boot",
                        None,
                        &[AGENT_SERVER_NAME.to_string()],
                        groundwork_pki::Usage::Server,
                        365,
                    )
                    .map_err(|e| anyhow::anyhow!("agent API certificate: {e}"))?;
                let cfg =
                    groundwork_pki::tls::server_config(&ck.cert_pem, &ck.key_pem, pki.ca_pem())
                        .map_err(|e| anyhow::anyhow!("agent API TLS: {e}"))?;
                let ca_pem = pki.ca_pem().to_string();
                // The CA as loaded at start (a rotation step takes a restart).
                let ca_for_signing = std::sync::Arc::new(
                    groundwork_pki::Pki::load_or_create(pki.dir())
                        .map_err(|e| anyhow::anyhow!("{e}"))?,
                );
                let hours = args.machine_cert_hours;
                let signer: groundwork_controller::bootscripts::MachineSigner =
                    std::sync::Arc::new(move |csr: &str, node: &str| {
                        let pem = ca_for_signing.sign_machine(csr, node, hours)?;
                        let der = groundwork_pki::pem_der(&pem)
                            .ok_or("the issued certificate does not parse")?;
                        let serial = groundwork_pki::serial(&der)
                            .ok_or("the issued certificate has no serial")?;
                        Ok((pem, serial))
                    });
                let joining = groundwork_controller::bootscripts::Joining {
                    key: key.clone(),
                    signer,
                    ca_hash: groundwork_pki::ca_hash(&ca_pem)
                        .context("the cluster CA does not parse")?,
                    ca_pem: ca_pem.clone(),
                    agent_port: listener.local_addr()?.port(),
                    token_ttl_seconds: args.join_token_ttl_seconds,
                };
                Some((listener, cfg, joining, ca_pem))
            }
            _ => None,
        };
        let (agent_listener, joining, ca_pem) = match agent {
            Some((l, cfg, j, ca)) => (Some((l, cfg)), Some(j), Some(ca)),
            None => (None, None, None),
        };
        let scripts = std::sync::Arc::new(groundwork_controller::bootscripts::NodeScripts {
            caches,
            client: client.clone(),
            joining,
            kernel: args.boot_kernel.clone(),
            initrd: args.boot_initrd.clone(),
            cmdline: args.boot_cmdline.clone(),
            heartbeat_interval: args.heartbeat_seconds,
        });
        tracing::info!(%tftp, http = %http.local_addr()?, agent = ?agent_listener.as_ref().and_then(|(l, _)| l.local_addr().ok()), root = %root.display(), "boot servers ready");
        if let Some((listener, cfg)) = agent_listener {
            let sink: std::sync::Arc<dyn groundwork_boot::http::InventorySink> = scripts.clone();
            let bundle: std::sync::Arc<str> = ca_pem.clone().unwrap_or_default().into();
            let app = groundwork_boot::http::agent_router(sink).layer(
                axum::middleware::from_fn_with_state(bundle, machine_identity),
            );
            tokio::spawn(async move {
                if let Err(e) =
                    groundwork_api::tls::serve(listener, app, cfg, std::future::pending()).await
                {
                    tracing::error!(error = %e, "agent API stopped");
                }
            });
        }
        let root = root.clone();
        tokio::spawn(async move {
            if let Err(e) = groundwork_boot::http::serve(
                http,
                &root,
                scripts,
                ca_pem.map(std::sync::Arc::from),
                std::future::pending(),
            )
            .await
            {
                tracing::error!(error = %e, "boot HTTP server stopped");
            }
        });
    }
    if let (Some(network), Some(iface), Some(server_ip)) = (
        args.dhcp_network.clone(),
        args.dhcp_interface.clone(),
        args.dhcp_server_ip,
    ) {
        let ipxe_url = args
            .boot_root
            .as_ref()
            .map(|_| format!("http://{server_ip}:{}/boot.ipxe", args.boot_http.port()));
        let (caches, _tasks) = groundwork_controller::caches::Caches::start(&client);
        let lease_dir = args.data_dir.join("dhcp");
        tokio::spawn(async move {
            let srv = groundwork_controller::bootnet::BootServer {
                server_ip,
                ipxe_url,
            };
            let (cfg, updates) = groundwork_controller::bootnet::follow(caches, network, srv).await;
            let opts = groundwork_boot::dhcp::ServeOptions {
                interface: Some(iface),
                lease_dir: Some(lease_dir),
                ..Default::default()
            };
            let (_never, stop) = tokio::sync::watch::channel(false);
            let stats = std::sync::Arc::new(groundwork_boot::dhcp::Stats::default());
            if let Err(e) =
                groundwork_boot::dhcp::serve_with_updates(cfg, updates, opts, stats, stop).await
            {
                tracing::error!(error = %e, "DHCP server stopped");
            }
        });
    }
    // Written once every socket is bound (API, boot servers): once the kubeconfig exists, the
    // server answers, and a port that could not be bound has already stopped it.
    let kc_path = args.data_dir.join("kubeconfig");
    let tmp = args.data_dir.join(".kubeconfig.tmp");
    // It carries the admin's key: readable by its owner only.
    let admin = tls
        .as_ref()
        .map(|(pki, admin, _, _, _)| (pki.ca_pem(), admin));
    write_private(&tmp, &kubeconfig(&format!("{scheme}://{addr}"), admin))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &kc_path)?;
    tracing::info!(%addr, kubeconfig = %kc_path.display(), revision = store.revision(), "serving the Groundwork API");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let controllers = tokio::spawn(groundwork_controller::run(client, opts, stop_rx));
    let shutdown = async move {
        shutdown_signal().await;
        // Controllers first: they release their Leases through the API, which still serves.
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(8), controllers).await;
    };
    let mut cfg = groundwork_api::ServerConfig {
        logs: with_controllers.then_some(hub),
        auth: None,
    };
    match tls {
        Some((_, _, _, rustls, _)) => {
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
            groundwork_api::serve_tls(listener, store, cfg, rustls, shutdown).await?;
        }
        None => groundwork_api::serve(listener, store, cfg, shutdown).await?,
    }
    tracing::info!("stopped");
    Ok(())
}

/// `groundwork controller`: runs controllers against the API server of the kubeconfig.
pub(crate) async fn run_controllers(
    args: ControllerOnlyArgs,
    kubeconfig: Option<PathBuf>,
) -> anyhow::Result<()> {
    init_logging(&args.log_format, None)?;
    let api = crate::client::connect(kubeconfig).await?;
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
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(groundwork_controller::run(api.client, opts, stop_rx));
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(8), task).await;
    Ok(())
}

/// Logging for the standalone services (stderr only).
pub(crate) fn init_logging_plain(format: &str) -> anyhow::Result<()> {
    init_logging(format, None)
}

pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
