//! Members join with a join token instead of a copied CA key.
//!
//! `groundwork cluster join-token` (on a member) prints a token (audience `member-join`,
//! signed with the cluster's secret key, good for `--ttl-seconds`) and the CA's hash. The new
//! member starts with `--join ADDR --join-token TOKEN --ca-cert-hash sha256:HEX`: it fetches
//! the CA from ADDR's raft port without trusting it, checks the hash, then, over TLS verified
//! against that CA, trades the token for the cluster's CA and secret key (what every member
//! holds), and starts as if they had been copied in. The same token works until it expires
//! (like kubeadm's bootstrap tokens); rotating the secret key revokes every token.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use groundwork_types::secrets::SecretKey;
use serde::{Deserialize, Serialize};

/// The audience of members' join tokens.
pub(crate) const MEMBER_JOIN_AUDIENCE: &str = "member-join";

#[derive(Serialize, Deserialize)]
struct JoinRequest {
    token: String,
}

/// What a joining member is given: what every member has.
#[derive(Serialize, Deserialize)]
struct Bundle {
    ca_crt: String,
    ca_key: String,
    secret_key: String,
}

/// The routes a caller without a certificate may reach on the raft port: `GET /raft/v2/ca`
/// (public) and `POST /raft/v2/join-bundle` (with a join token).
pub(crate) fn public_router(pki_dir: &Path, key: SecretKey) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    let (dir_ca, dir_bundle) = (pki_dir.to_path_buf(), pki_dir.to_path_buf());
    axum::Router::new()
        .route(
            "/raft/v2/ca",
            get(move || {
                let dir = dir_ca.clone();
                async move {
                    std::fs::read_to_string(dir.join("ca.crt"))
                        .map_err(|_| (StatusCode::SERVICE_UNAVAILABLE, "no CA\n".to_string()))
                }
            }),
        )
        .route(
            "/raft/v2/join-bundle",
            post(move |body: axum::Json<JoinRequest>| {
                let (dir, key) = (dir_bundle.clone(), key.clone());
                async move {
                    if let Err(e) = key.verify_token(&body.token, MEMBER_JOIN_AUDIENCE) {
                        tracing::warn!(error = %e, "member join refused");
                        return Err((StatusCode::UNAUTHORIZED, format!("join token: {e}\n")));
                    }
                    let read = |f: &str| {
                        std::fs::read_to_string(dir.join(f))
                            .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, format!("{f}: {e}\n")))
                    };
                    tracing::info!(
                        "a new member fetched the cluster CA and secret key with a join token"
                    );
                    Ok(axum::Json(Bundle {
                        ca_crt: read("ca.crt")?,
                        ca_key: read("ca.key")?,
                        secret_key: key.encode(),
                    }))
                }
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(16 << 10))
}

/// Fetches the CA and secret key from the member at `addr` (its raft address) into
/// `pki_dir` and `secret_key_path`, unless both are already there.
pub(crate) async fn fetch_bundle(
    addr: &str,
    token: &str,
    ca_hash: &str,
    pki_dir: &Path,
    secret_key_path: &Path,
) -> anyhow::Result<()> {
    if pki_dir.join("ca.crt").exists() && secret_key_path.exists() {
        return Ok(());
    }
    let base = format!("https://{addr}");
    // Step 1: the CA, from a server not yet trusted; the hash decides.
    let insecure = reqwest::Client::builder()
        .use_rustls_tls()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()?;
    let ca = insecure
        .get(format!("{base}/raft/v2/ca"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| anyhow::anyhow!("fetching the CA from {addr}: {}", e.without_url()))?
        .text()
        .await?;
    let got = groundwork_pki::ca_hash(&ca).context("the CA from --join does not parse")?;
    if got != ca_hash {
        anyhow::bail!(
            "the CA served by {addr} has hash {got}, not --ca-cert-hash {ca_hash}: refusing to join"
        );
    }
    // Step 2: the token, only to a server with a certificate from that CA: the pinned
    // certificate alone (anything appended to it was not pinned).
    let pinned = groundwork_pki::pem_certs(&ca)
        .into_iter()
        .next()
        .context("the CA from --join does not parse")?;
    let trusted = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pinned.as_bytes())?)
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        // Any server certificate from the pinned CA is a member's (machines' certificates
        // are for clients only); its name may be a wildcard listen address.
        .danger_accept_invalid_hostnames(true)
        .timeout(Duration::from_secs(10))
        .build()?;
    let resp = trusted
        .post(format!("{base}/raft/v2/join-bundle"))
        .json(&JoinRequest {
            token: token.to_string(),
        })
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("joining through {addr}: {}", e.without_url()))?;
    if !resp.status().is_success() {
        anyhow::bail!(
            "{addr} refused the join token: {}: {}",
            resp.status(),
            resp.text().await.unwrap_or_default().trim()
        );
    }
    let b: Bundle = resp.json().await.context("the join answer")?;
    if groundwork_pki::ca_hash(&b.ca_crt).as_deref() != Some(ca_hash) {
        anyhow::bail!("the CA in {addr}'s join answer is not the pinned one: refusing it");
    }
    std::fs::create_dir_all(pki_dir).with_context(|| format!("{}", pki_dir.display()))?;
    groundwork_pki::write_private(&pki_dir.join("ca.key"), &b.ca_key)
        .map_err(anyhow::Error::msg)?;
    std::fs::write(pki_dir.join("ca.crt"), &b.ca_crt)
        .with_context(|| format!("{}", pki_dir.display()))?;
    SecretKey::decode(&b.secret_key).context("the secret key from the join answer")?;
    groundwork_pki::write_private(secret_key_path, &format!("{}\n", b.secret_key))
        .map_err(anyhow::Error::msg)?;
    tracing::info!(%addr, "fetched the cluster CA and secret key with the join token");
    Ok(())
}

/// `groundwork cluster join-token`: a member join token and the command to use it.
pub fn print_token(
    data_dir: &Path,
    pki_dir: Option<&Path>,
    ttl_seconds: i64,
) -> anyhow::Result<()> {
    let key_path = data_dir.join("secret.key");
    let key = SecretKey::decode(
        &std::fs::read_to_string(&key_path)
            .with_context(|| format!("reading {} (run this on a member)", key_path.display()))?,
    )
    .with_context(|| format!("{}", key_path.display()))?;
    let pki = pki_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| data_dir.join("pki"));
    let ca = std::fs::read_to_string(pki.join("ca.crt"))
        .with_context(|| format!("reading {}", pki.join("ca.crt").display()))?;
    let hash = groundwork_pki::ca_hash(&ca).context("the CA does not parse")?;
    let token = key.issue_token(MEMBER_JOIN_AUDIENCE, "member", &[], ttl_seconds);
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(ttl_seconds);
    println!("{token}");
    eprintln!(
        "Good until {expires}. On the new member (empty --data-dir):\n  groundwork server --raft-listen ADDR --join MEMBER_RAFT_ADDR --join-token <the token above> --ca-cert-hash {hash}"
    );
    Ok(())
}
