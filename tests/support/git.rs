//! A Git server for the GitOps tests and benches: Debian's `git http-backend` behind
//! tests/doubles/git-http, and the operator's side (commit, push, a signed webhook).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct GitHttp {
    child: Child,
    pub port: u16,
    root: PathBuf,
}

impl Drop for GitHttp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GitHttp {
    pub fn start(root: &Path) -> GitHttp {
        Self::start_with_auth(root, None)
    }

    /// As [`GitHttp::start`], requiring HTTP Basic `user:password` when given.
    pub fn start_with_auth(root: &Path, auth: Option<&str>) -> GitHttp {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/doubles/git-http");
        let port_file = root.join("port");
        let mut cmd = Command::new("python3");
        if let Some(a) = auth {
            cmd.env("GIT_HTTP_AUTH", a);
        }
        let child = cmd
            .arg(script)
            .arg(root)
            .arg(&port_file)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !port_file.exists() {
            assert!(Instant::now() < deadline, "git-http did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let port = std::fs::read_to_string(&port_file)
            .unwrap()
            .parse()
            .unwrap();
        GitHttp {
            child,
            port,
            root: root.to_path_buf(),
        }
    }

    pub fn fetches(&self) -> usize {
        std::fs::read_to_string(self.root.join("fetches.log"))
            .unwrap_or_default()
            .lines()
            .count()
    }
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Operator",
            "-c",
            "user.email=ops@example.invalid",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "git {args:?}: {}", super::text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Commits everything in the work tree and pushes it; the new commit.
pub fn push(work: &Path, message: &str) -> String {
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "--allow-empty", "-m", message]);
    git(work, &["push", "-q", "origin", "HEAD:main"]);
    git(work, &["rev-parse", "HEAD"])
}

/// POSTs a push payload to the GitSource's webhook, signed with `secret` in `header`
/// (`gitea`, `github`, or none); the HTTP status.
pub fn webhook(server_url: &str, name: &str, secret: Option<&str>, header: &str) -> String {
    let body = format!(
        r#"{{"ref":"refs/heads/main","after":"{}","repository":{{"full_name":"ops/infra"}}}}"#,
        "0".repeat(40)
    );
    let mut args = vec![
        "-s".to_string(),
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_code}".into(),
        "--cacert".into(),
        super::shared_pki().join("ca.crt").display().to_string(),
        "-X".into(),
        "POST".into(),
        "-H".into(),
        "Content-Type: application/json".into(),
        "-H".into(),
        "X-Gitea-Event: push".into(),
        "--data-binary".into(),
        body.clone(),
    ];
    if let Some(secret) = secret {
        let sig = hmac(secret, &body);
        args.push("-H".into());
        args.push(match header {
            "github" => format!("X-Hub-Signature-256: sha256={sig}"),
            _ => format!("X-Gitea-Signature: {sig}"),
        });
    }
    args.push(format!("{server_url}/hooks/gitsource/{name}"));
    let o = Command::new("curl").args(&args).output().unwrap();
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn hmac(secret: &str, body: &str) -> String {
    use std::io::Write;
    let mut c = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .last()
        .unwrap()
        .to_string()
}
