//! Fetching a GitSource's commit with the `git` command (see docs/decisions.md: the one Git
//! implementation every operator already trusts with their credentials and proxies): a
//! shallow fetch of the ref into a bare cache repository, then the manifests under the path
//! read out of that commit with one `git cat-file --batch`. Every call is bounded in time;
//! the files in count and size. Credentials go in an HTTP header through the environment,
//! never on the command line or in a URL, and git's messages are returned without them.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use groundwork_types::GitRef;
use tokio::io::AsyncWriteExt;

/// What a fetch found.
#[derive(Debug)]
pub struct Fetched {
    pub commit: String,
    /// The commit message's first line.
    pub message: String,
    /// Manifest files under the path: (path in the repository, text).
    pub files: Vec<(String, String)>,
}

/// Bounds on a fetch.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub timeout: Duration,
    pub max_files: usize,
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(120),
            max_files: 20_000,
            max_bytes: 64 << 20,
        }
    }
}

fn is_manifest(p: &str) -> bool {
    p.ends_with(".yaml") || p.ends_with(".yml") || p.ends_with(".json")
}

/// How a fetch authenticates.
pub enum Auth<'a> {
    None,
    /// HTTP Basic: user name and password (a token).
    Basic(&'a str, &'a str),
    /// SSH: the private key and the server's known_hosts lines.
    Ssh {
        key: &'a str,
        known_hosts: &'a str,
    },
}

/// Runs git in `repo` with `args` (and `stdin`), bounded by `timeout`; its standard output.
async fn git(
    repo: &Path,
    args: &[&str],
    auth: Option<&str>,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    git_with(repo, args, auth, None, stdin, timeout).await
}

async fn git_with(
    repo: &Path,
    args: &[&str],
    auth: Option<&str>,
    ca: Option<&Path>,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("-C")
        .arg(repo)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_ASKPASS", "true")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(ca) = ca {
        cmd.env("GIT_SSL_CAINFO", ca);
    }
    if let Some(ssh) = auth.and_then(|a| a.strip_prefix("ssh:")) {
        cmd.env("GIT_SSH_COMMAND", ssh);
    } else if let Some(header) = auth {
        cmd.env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "http.extraHeader")
            .env("GIT_CONFIG_VALUE_0", header);
    }
    let mut child = cmd.spawn().map_err(|e| format!("git: {e}"))?;
    if let (Some(input), Some(mut w)) = (stdin, child.stdin.take()) {
        let input = input.to_vec();
        tokio::spawn(async move {
            let _ = w.write_all(&input).await;
        });
    }
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| format!("git {}: no answer in {} s", args[0], timeout.as_secs()))?
        .map_err(|e| format!("git: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        // The line that says why, not git's generic advice after it.
        let telling = [
            "Host key verification failed",
            "Permission denied",
            "Authentication failed",
            "not found",
            "Could not resolve",
            "Connection refused",
            "couldn't find remote ref",
        ];
        let last = lines
            .iter()
            .find(|l| telling.iter().any(|t| l.contains(t)))
            .or_else(|| lines.iter().rfind(|l| l.starts_with("fatal:")))
            .or(lines.last())
            .copied()
            .unwrap_or("failed");
        return Err(format!("git {}: {}", args[0], last.trim()));
    }
    Ok(out.stdout)
}

/// Fetches `r` of `url` into the bare repository `cache` (made if missing) and reads the
/// manifests under `path` at that commit.
pub async fn fetch(
    cache: &Path,
    url: &str,
    r: &GitRef,
    path: &str,
    how: Auth<'_>,
    ca: Option<&Path>,
    limits: Limits,
) -> Result<Fetched, String> {
    use base64::Engine;
    let t = limits.timeout;
    if !cache.join("HEAD").exists() {
        std::fs::create_dir_all(cache).map_err(|e| format!("{}: {e}", cache.display()))?;
        git(cache, &["init", "--bare", "-q"], None, None, t).await?;
    }
    // SSH: the key and known_hosts in files of the cache (0600), the key removed after.
    let _key = match &how {
        Auth::Ssh { key, known_hosts } => Some(SshFiles::write(cache, key, known_hosts)?),
        _ => None,
    };
    let header = match &how {
        Auth::None => None,
        Auth::Basic(u, p) => Some(format!(
            "Authorization: Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )),
        Auth::Ssh { .. } => Some(format!(
            "ssh:ssh -i '{}' -o IdentitiesOnly=yes -o UserKnownHostsFile='{}' \
             -o StrictHostKeyChecking=yes -o BatchMode=yes -o ConnectTimeout=20",
            cache.join("ssh-key").display(),
            cache.join("known_hosts").display()
        )),
    };
    let auth = header.as_deref();
    let want = r.fetch_spec();
    let commit = if let Some(sha) = &r.commit {
        // A pinned commit: fetched by ID where the server allows it, else with the branches.
        let direct = git_with(
            cache,
            &["fetch", "-q", "--depth", "1", "--no-tags", url, sha],
            auth,
            ca,
            None,
            t,
        )
        .await;
        if direct.is_err() {
            git_with(
                cache,
                &[
                    "fetch",
                    "-q",
                    "--no-tags",
                    url,
                    "+refs/heads/*:refs/groundwork/heads/*",
                ],
                auth,
                ca,
                None,
                t,
            )
            .await?;
        }
        git(
            cache,
            &["cat-file", "-e", &format!("{sha}^{{commit}}")],
            None,
            None,
            t,
        )
        .await
        .map_err(|_| format!("commit {sha} is not in the repository"))?;
        sha.clone()
    } else {
        let spec = format!("+{want}:refs/groundwork/head");
        git_with(
            cache,
            &["fetch", "-q", "--depth", "1", "--no-tags", url, &spec],
            auth,
            ca,
            None,
            t,
        )
        .await?;
        let out = git(
            cache,
            &["rev-parse", "refs/groundwork/head^{commit}"],
            None,
            None,
            t,
        )
        .await?;
        String::from_utf8_lossy(&out).trim().to_string()
    };
    let msg = git(cache, &["log", "-1", "--format=%s", &commit], None, None, t).await?;
    let message = String::from_utf8_lossy(&msg).trim().to_string();
    // The manifests under the path.
    let mut ls = vec!["ls-tree", "-r", "-z", "--name-only", commit.as_str()];
    let dir = path.trim_matches('/');
    if !dir.is_empty() {
        ls.extend(["--", dir]);
    }
    let names = git(cache, &ls, None, None, t).await?;
    let names: Vec<String> = names
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).to_string())
        .filter(|n| is_manifest(n))
        .collect();
    if names.len() > limits.max_files {
        return Err(format!(
            "{} manifest files under {path:?}: more than the limit of {}",
            names.len(),
            limits.max_files
        ));
    }
    let mut files = Vec::with_capacity(names.len());
    if names.is_empty() {
        return Ok(Fetched {
            commit,
            message,
            files,
        });
    }
    let input: String = names.iter().map(|n| format!("{commit}:{n}\n")).collect();
    let out = git(
        cache,
        &["cat-file", "--batch"],
        None,
        Some(input.as_bytes()),
        t,
    )
    .await?;
    // Each answer: "<sha> blob <size>\n<content>\n".
    let mut at = 0;
    let mut total = 0;
    for n in &names {
        let nl = out[at..]
            .iter()
            .position(|b| *b == b'\n')
            .ok_or("git cat-file: a truncated answer")?;
        let head = String::from_utf8_lossy(&out[at..at + nl]).to_string();
        at += nl + 1;
        let size: usize = head
            .split(' ')
            .nth(2)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("git cat-file: {n}: {head}"))?;
        total += size;
        if total > limits.max_bytes {
            return Err(format!(
                "the manifests under {path:?} are over the limit of {} MiB",
                limits.max_bytes >> 20
            ));
        }
        let body = out
            .get(at..at + size)
            .ok_or("git cat-file: a truncated answer")?;
        let text = String::from_utf8(body.to_vec()).map_err(|_| format!("{n}: not UTF-8 text"))?;
        files.push((n.clone(), text));
        at += size + 1;
    }
    Ok(Fetched {
        commit,
        message,
        files,
    })
}

/// The SSH key and known_hosts a fetch uses, in the cache directory; the key is removed when
/// the fetch ends.
struct SshFiles(std::path::PathBuf);

impl SshFiles {
    fn write(cache: &Path, key: &str, known_hosts: &str) -> Result<SshFiles, String> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let write = |name: &str, text: &str| -> Result<(), String> {
            let p = cache.join(name);
            let _ = std::fs::remove_file(&p);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p)
                .map_err(|e| format!("{}: {e}", p.display()))?;
            let mut text = text.trim_end().to_string();
            text.push('\n');
            f.write_all(text.as_bytes())
                .map_err(|e| format!("{}: {e}", p.display()))
        };
        write("known_hosts", known_hosts)?;
        write("ssh-key", key)?;
        Ok(SshFiles(cache.join("ssh-key")))
    }
}

impl Drop for SshFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
