//! The boot plane: TFTP and HTTP for boot files and iPXE scripts, the agent API (TLS) that
//! machines join and report to, and DHCP for a boot network, all backed by the shared caches.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use groundwork_controller::caches::Caches;
use groundwork_types::agent::AGENT_SERVER_NAME;

use crate::agentapi::{Joining, MachineSigner, NodeScripts, ServiceSigner};
use crate::args::ServerArgs;
use crate::certs::Certificates;

/// Starts TFTP, the boot HTTP server and (with TLS) the agent API, when `--boot-root` is set.
pub(crate) async fn start(
    args: &ServerArgs,
    certs: Option<&Certificates>,
    key: &groundwork_types::secrets::SecretKey,
    client: &kube::Client,
    caches: &Caches,
) -> anyhow::Result<()> {
    let Some(root) = &args.boot_root else {
        return Ok(());
    };
    let stats = Arc::new(groundwork_boot::tftp::TftpStats::default());
    let (tftp, _t) = groundwork_boot::tftp::spawn(args.boot_tftp, root, stats)
        .with_context(|| format!("TFTP on {}", args.boot_tftp))?;
    let http = tokio::net::TcpListener::bind(args.boot_http)
        .await
        .with_context(|| format!("boot HTTP on {}", args.boot_http))?;
    let agent = match certs {
        Some(c) => Some(agent_api(args, c, key).await?),
        None => None,
    };
    let (agent_listener, joining, ca_pem) = match agent {
        Some((l, cfg, j, ca)) => (Some((l, cfg)), Some(j), Some(ca)),
        None => (None, None, None),
    };
    let scripts = Arc::new(NodeScripts {
        caches: caches.clone(),
        client: client.clone(),
        joining,
        kernel: args.boot_kernel.clone(),
        initrd: args.boot_initrd.clone(),
        cmdline: args.boot_cmdline.clone(),
        heartbeat_interval: args.heartbeat_seconds,
    });
    tracing::info!(%tftp, http = %http.local_addr()?, agent = ?agent_listener.as_ref().and_then(|(l, _)| l.local_addr().ok()), root = %root.display(), "boot servers ready");
    if let Some((listener, cfg)) = agent_listener {
        let sink: Arc<dyn groundwork_boot::http::InventorySink> = scripts.clone();
        let bundle: Arc<str> = ca_pem.clone().unwrap_or_default().into();
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
            ca_pem.map(Arc::from),
            std::future::pending(),
        )
        .await
        {
            tracing::error!(error = %e, "boot HTTP server stopped");
        }
    });
    Ok(())
}

/// The agent API's listener and TLS, and how machines join: a certificate naming
/// `groundwork-boot` (agents pin the cluster CA and connect under that name), the CA as
/// loaded at start to sign machines' requests (a rotation step takes a restart).
async fn agent_api(
    args: &ServerArgs,
    certs: &Certificates,
    key: &groundwork_types::secrets::SecretKey,
) -> anyhow::Result<(
    tokio::net::TcpListener,
    Arc<rustls::ServerConfig>,
    Joining,
    String,
)> {
    let pki = &certs.pki;
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
    let cfg = groundwork_pki::tls::server_config(&ck.cert_pem, &ck.key_pem, pki.ca_pem())
        .map_err(|e| anyhow::anyhow!("agent API TLS: {e}"))?;
    let ca_pem = pki.ca_pem().to_string();
    let ca_for_signing = Arc::new(
        groundwork_pki::Pki::load_or_create(pki.dir()).map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let hours = args.machine_cert_hours;
    let for_services = ca_for_signing.clone();
    let signer: MachineSigner = Arc::new(move |csr: &str, node: &str| {
        let pem = ca_for_signing.sign_machine(csr, node, hours)?;
        let der = groundwork_pki::pem_der(&pem).ok_or("the issued certificate does not parse")?;
        let serial = groundwork_pki::serial(&der).ok_or("the issued certificate has no serial")?;
        Ok((pem, serial))
    });
    // Instances renew at a third of this; a month bounds what a stolen key is good for.
    let service_signer: ServiceSigner = Arc::new(move |csr: &str, cn: &str, names: &[String]| {
        for_services.sign_service(csr, cn, names, 30 * 24)
    });
    let joining = Joining {
        key: key.clone(),
        signer,
        service_signer,
        ca_hash: groundwork_pki::ca_hash(&ca_pem).context("the cluster CA does not parse")?,
        ca_pem: ca_pem.clone(),
        agent_port: listener.local_addr()?.port(),
        token_ttl_seconds: args.join_token_ttl_seconds,
    };
    Ok((listener, cfg, joining, ca_pem))
}

/// Serves DHCP for `--dhcp-network` on `--dhcp-interface`, configured (and reconfigured) from
/// the Datacenters and Nodes in the caches.
pub(crate) fn start_dhcp(args: &ServerArgs, caches: &Caches) {
    let (Some(network), Some(iface), Some(server_ip)) = (
        args.dhcp_network.clone(),
        args.dhcp_interface.clone(),
        args.dhcp_server_ip,
    ) else {
        return;
    };
    let ipxe_url = args
        .boot_root
        .as_ref()
        .map(|_| format!("http://{server_ip}:{}/boot.ipxe", args.boot_http.port()));
    let lease_dir = args.data_dir.join("dhcp");
    let caches = caches.clone();
    tokio::spawn(async move {
        let srv = crate::bootnet::BootServer {
            server_ip,
            ipxe_url,
        };
        let (cfg, updates) = crate::bootnet::follow(caches, network, srv).await;
        let opts = groundwork_boot::dhcp::ServeOptions {
            interface: Some(iface),
            lease_dir: Some(lease_dir),
            ..Default::default()
        };
        let (_never, stop) = tokio::sync::watch::channel(false);
        let stats = Arc::new(groundwork_boot::dhcp::Stats::default());
        if let Err(e) =
            groundwork_boot::dhcp::serve_with_updates(cfg, updates, opts, stats, stop).await
        {
            tracing::error!(error = %e, "DHCP server stopped");
        }
    });
}

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
