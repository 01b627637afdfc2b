//! The server's keys and certificates: the secret key that seals Credentials, the cluster CA,
//! the API's serving certificate, the admin's and the controllers' client certificates, and a
//! raft member's certificate.

use std::net::SocketAddr;

use anyhow::Context;
use groundwork_pki::{CertKey, Pki};

use crate::args::ServerArgs;

/// The TLS material of an API server (absent with `--insecure-plain-http`).
pub(crate) struct Certificates {
    pub pki: Pki,
    pub admin: CertKey,
    pub controllers: CertKey,
    pub server: CertKey,
    pub api_tls: std::sync::Arc<rustls::ServerConfig>,
}

impl Certificates {
    /// Loads the CA (creating it on first start) and issues this start's certificates.
    pub fn load(args: &ServerArgs) -> anyhow::Result<Certificates> {
        let dir = pki_dir(args);
        let pki = Pki::load_or_create(&dir)
            .map_err(|e| anyhow::anyhow!("--pki-dir {}: {e}", dir.display()))?;
        let server = pki
            .server(&server_sans(args.listen, &args.tls_sans))
            .map_err(|e| anyhow::anyhow!("server certificate: {e}"))?;
        let admin = pki
            .client("admin", "admin", Some(groundwork_pki::MASTERS))
            .map_err(|e| anyhow::anyhow!("admin certificate: {e}"))?;
        let controllers = pki
            .client(
                "controllers",
                "groundwork:controllers",
                Some(groundwork_pki::MASTERS),
            )
            .map_err(|e| anyhow::anyhow!("controllers' certificate: {e}"))?;
        let api_tls =
            groundwork_pki::tls::server_config(&server.cert_pem, &server.key_pem, pki.ca_pem())
                .map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
        Ok(Certificates {
            pki,
            admin,
            controllers,
            server,
            api_tls,
        })
    }

    /// When each certificate this server uses expires (shown by `groundwork cluster status`).
    pub fn expiries(&self) -> Vec<(String, String)> {
        vec![
            ("ca".into(), expiry(self.pki.ca_pem())),
            ("apiserver".into(), expiry(&self.server.cert_pem)),
            ("admin".into(), expiry(&self.admin.cert_pem)),
            ("controllers".into(), expiry(&self.controllers.cert_pem)),
        ]
    }
}

pub(crate) fn pki_dir(args: &ServerArgs) -> std::path::PathBuf {
    args.pki_dir
        .clone()
        .unwrap_or_else(|| args.data_dir.join("pki"))
}

pub(crate) fn expiry(pem: &str) -> String {
    groundwork_pki::not_after(pem)
        .and_then(|t| jiff::Timestamp::from_second(t).ok())
        .map(|t| t.to_string())
        .unwrap_or_else(|| "?".into())
}

/// A raft member's TLS: its certificate (server and client) from the cluster CA, and who may
/// call it.
pub(crate) fn member_tls(
    pki: &Pki,
    raft: SocketAddr,
    key: &groundwork_types::secrets::SecretKey,
) -> anyhow::Result<groundwork_raft::RaftTls> {
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
    groundwork_raft::RaftTls::from_pem(
        ck.cert_pem,
        ck.key_pem,
        pki.ca_pem().to_string(),
        raft_peer_allowed,
        Some(crate::join::public_router(pki.dir(), key.clone())),
    )
    .map_err(|e| anyhow::anyhow!("raft TLS: {e}"))
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

/// The key that seals Credentials at rest: `DATA_DIR/secret.key`, created (mode 0600) on
/// first start. Every member of a cluster needs the same key; back it up with the data.
pub(crate) fn secret_key(
    dir: &std::path::Path,
) -> anyhow::Result<groundwork_types::secrets::SecretKey> {
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
