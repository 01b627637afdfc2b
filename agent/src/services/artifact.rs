//! Installing what an instance runs: Debian packages (with apt where the OS has it), or a
//! file fetched from Groundwork's artifact store, resumed after an interruption and verified
//! against its sha256 before it is used. Fetched artifacts are kept by digest
//! (`ARTIFACTS/<sha256>`), so versions sit side by side and switching is choosing a path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use groundwork_types::ArtifactSource;
use tokio::io::AsyncWriteExt;

/// Whether Debian package `name` is installed.
async fn installed(name: &str) -> bool {
    tokio::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .await
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs the packages not yet installed, with apt-get if the system has it.
pub async fn ensure_packages(packages: &[String]) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for p in packages {
        if !installed(p).await {
            missing.push(p.clone());
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !Path::new("/usr/bin/apt-get").exists() {
        bail!(
            "packages not installed and this system has no apt-get: {}",
            missing.join(" ")
        );
    }
    let out = tokio::process::Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .await
        .context("running apt-get")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "apt-get install {} failed: {}",
            missing.join(" "),
            err.lines().last().unwrap_or("").trim()
        );
    }
    Ok(())
}

fn hex_of(sha: &str) -> String {
    sha.strip_prefix("sha256:")
        .unwrap_or(sha)
        .to_ascii_lowercase()
}

async fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut f = std::fs::File::open(&path)?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
        Ok(ctx
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    })
    .await?
}

/// The verified artifact's path: fetched (resuming a partial download) unless already there.
/// A file whose digest is not the one asked for is deleted and refused.
pub async fn fetch(dir: &Path, a: &ArtifactSource) -> anyhow::Result<PathBuf> {
    let want = hex_of(&a.sha256);
    let done = dir.join(&want);
    if done.exists() {
        return Ok(done);
    }
    tokio::fs::create_dir_all(dir)
        .await
        .with_context(|| dir.display().to_string())?;
    let part = dir.join(format!("{want}.part"));
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(30))
        .build()?;
    let have = tokio::fs::metadata(&part)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    let mut req = client.get(&a.url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let url = groundwork_types::agent::redact_url(&a.url);
    let mut resp = req
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("fetching {url}: {}", e.without_url()))?;
    let append = match resp.status().as_u16() {
        206 => true,
        200 => false,
        // The partial file is complete (or longer than the artifact): start again.
        416 => {
            let _ = tokio::fs::remove_file(&part).await;
            return Box::pin(fetch(dir, a)).await;
        }
        code => bail!("fetching {url}: HTTP {code}"),
    };
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(&part)
        .await
        .with_context(|| part.display().to_string())?;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| anyhow::anyhow!("fetching {url}: {}", e.without_url()))?
    {
        f.write_all(&chunk).await?;
    }
    f.flush().await?;
    f.sync_all().await?;
    drop(f);
    let got = sha256_file(&part).await?;
    if got != want {
        let _ = tokio::fs::remove_file(&part).await;
        bail!("{url}: sha256 is {got}, not {want}: refused");
    }
    {
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o755)).await?;
    }
    tokio::fs::rename(&part, &done).await?;
    Ok(done)
}
