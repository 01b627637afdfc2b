//! Test harness: runs the real `groundwork` binary on 127.0.0.1 with a fresh data directory,
//! and real `kubectl` against it. Every process started is killed when its guard drops, and
//! every wait is bounded.
#![allow(dead_code)]

pub mod console;
pub mod git;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_groundwork");

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One cluster CA for every server this test process starts (`groundwork pki init`), so one
/// client (the admin's certificate) reaches them all, raft members included.
pub fn shared_pki() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("gw-test-pki-{}", std::process::id()));
        let o = Command::new(BIN)
            .args(["pki", "init", "--dir"])
            .arg(&dir)
            .output()
            .expect("groundwork pki init");
        assert!(o.status.success(), "pki init: {}", text(&o));
        dir
    })
}

/// An HTTPS client that trusts the test CA and presents the admin's certificate.
pub fn https_client() -> reqwest::Client {
    let dir = shared_pki();
    let read = |f: &str| std::fs::read(dir.join(f)).expect("test PKI file");
    let mut id = read("admin.crt");
    id.extend(read("admin.key"));
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&read("ca.crt")).unwrap())
        .identity(reqwest::Identity::from_pem(&id).unwrap())
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// A running `groundwork server`.
pub struct Server {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub kubeconfig: PathBuf,
    pub url: String,
    extra: Vec<String>,
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Server {
            kubeconfig: dir.path().join("kubeconfig"),
            dir,
            child: None,
            url: String::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.launch();
        s
    }

    fn launch(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("log file");
        let child = Command::new(BIN)
            .args(["server", "--data-dir"])
            .arg(self.dir.path())
            .args(["--listen", "127.0.0.1:0"])
            .args(
                if self
                    .extra
                    .iter()
                    .any(|a| a == "--pki-dir" || a == "--insecure-plain-http")
                {
                    vec![]
                } else {
                    vec!["--pki-dir".to_string(), shared_pki().display().to_string()]
                },
            )
            .args(if self.extra.iter().any(|a| a == "--controllers") {
                &[][..]
            } else {
                // Tests that count writes or events run without controllers unless asked.
                &["--controllers", "none"][..]
            })
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start groundwork server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.kubeconfig.exists() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("server exited early ({status}); log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "server did not write its kubeconfig in 20 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let kc = std::fs::read_to_string(&self.kubeconfig).expect("kubeconfig");
        self.url = kc
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: "))
            .expect("server line")
            .to_string();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig parses");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("kube config");
        kube::Client::try_from(cfg).expect("kube client")
    }

    /// Runs kubectl against this server, bounded by 60 s.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_env(args, &[])
    }

    pub fn kubectl_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("timeout");
        cmd.arg("60")
            .arg("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run kubectl")
    }

    /// Starts kubectl in the background (killed on drop of the guard).
    pub fn kubectl_bg(&self, args: &[&str]) -> Bg {
        let child = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kubectl");
        Bg::new(child)
    }

    /// Runs `groundwork <args>` against this server.
    pub fn groundwork(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg("60")
            .arg(BIN)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .expect("run groundwork")
    }
}

/// A `groundwork controller` process against a server (killed by PID on drop).
pub struct Controllers {
    child: Option<Child>,
    pub log_path: PathBuf,
}

impl Controllers {
    /// Starts `groundwork controller --identity ID` with `extra` arguments.
    pub fn start(server: &Server, id: &str, extra: &[&str]) -> Controllers {
        let log_path = server.dir.path().join(format!("controller-{id}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file");
        let child = Command::new(BIN)
            .args(["controller", "--identity", id])
            .args(extra)
            .env("KUBECONFIG", &server.kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start groundwork controller");
        Controllers {
            child: Some(child),
            log_path,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGKILL: no lease release, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (bounded) for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Controllers {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- controllers log (tail) ---\n{}", tail(&self.log(), 80));
        }
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        // A failing test shows what the server did.
        if std::thread::panicking() {
            eprintln!("--- server log (tail) ---\n{}", tail(&self.log(), 80));
        }
    }
}

/// A background process whose stdout lines arrive on a channel.
pub struct Bg {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Bg {
    pub fn from_child(child: Child) -> Bg {
        Self::new(child)
    }

    fn new(mut child: Child) -> Bg {
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Bg { child, lines: rx }
    }

    /// Waits (bounded) for a stdout line containing `needle`.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Exit status if it has exited within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stderr(&mut self) -> String {
        use std::io::Read;
        let mut s = String::new();
        if let Some(e) = self.child.stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[track_caller]
pub fn ok(o: Output) -> String {
    assert!(o.status.success(), "command failed: {}", text(&o));
    stdout(&o)
}

pub fn manifests() -> PathBuf {
    repo_root().join("manifests")
}

pub fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).expect("write file");
    p
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A UDP port free on 127.0.0.1 right now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a command (no shell) and returns its output.
pub fn sh(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run")
}

/// Runs a command that must succeed.
#[track_caller]
pub fn must(args: &[&str]) {
    let o = sh(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A `groundwork lab` inside a network namespace of the test's own (`ip netns`), so the lab's
/// bridge and machines touch nothing outside it. On drop: `lab down`, then the namespace is
/// deleted, also when the test fails.
pub struct NetnsLab {
    pub outer: String,
    /// The lab's `--dir`.
    pub dir: PathBuf,
}

impl NetnsLab {
    /// Creates the namespace `outer` (a stale one of the same name is removed first).
    pub fn new(outer: &str, dir: PathBuf) -> NetnsLab {
        let _ = sh(&["ip", "netns", "del", outer]);
        must(&["ip", "netns", "add", outer]);
        must(&["ip", "-n", outer, "link", "set", "lo", "up"]);
        NetnsLab {
            outer: outer.to_string(),
            dir,
        }
    }

    /// A command inside the namespace, bounded by `secs`, with the lab's kubeconfig.
    pub fn run(&self, secs: u32, args: &[&str]) -> Output {
        run_in(&self.outer, &self.dir, secs, args)
    }

    /// As `run` (200 s), asserting success; its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(200, args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl NetnsLab {
    /// `groundwork lab up --netns --no-stack` with `machines` machines named `name`, and
    /// `extra` arguments (e.g. `--server-arg=...`).
    pub fn up(&self, name: &str, machines: u8, extra: &[&str]) {
        let n = machines.to_string();
        let dir = self.dir.to_string_lossy().to_string();
        let mut args = vec![
            BIN,
            "lab",
            "up",
            "--netns",
            "--no-stack",
            "--machines",
            &n,
            "--name",
            name,
            "--dir",
            &dir,
        ];
        args.extend_from_slice(extra);
        self.ok(&args);
    }

    /// Puts `src` in the lab's artifact store as `name`; its sha256.
    pub fn artifact(&self, name: &str, src: &Path) -> String {
        let art = self.dir.join("boot/artifacts").join(name);
        std::fs::copy(src, &art).unwrap();
        sha256_hex(&art)
    }

    /// A Credential's value, revealed by the administrator (`groundwork secrets reveal`,
    /// audited).
    pub fn reveal(&self, credential: &str) -> String {
        let kc = self.dir.join("data/kubeconfig");
        self.ok(&[
            BIN,
            "--kubeconfig",
            kc.to_str().unwrap(),
            "secrets",
            "reveal",
            &format!("credential/{credential}"),
            "--password",
        ])
        .trim()
        .to_string()
    }

    /// Waits (bounded) until the lab's server has exited at the crash point `point`, which
    /// the test wrote into `DATA_DIR/crashpoint`.
    pub fn wait_server_crash(&self, point: &str, secs: u64) {
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.dir.join("lab.json")).unwrap())
                .unwrap();
        let pid = state["server_pid"].as_u64().unwrap();
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(
                Instant::now() < deadline,
                "the server did not reach the crash point {point} in {secs} s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        assert!(
            log.contains(&format!("crash point {point}")),
            "the server died elsewhere than {point}"
        );
    }
}

/// A file's SHA-256, hex.
pub fn sha256_hex(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().unwrap();
    stdout(&o).split_whitespace().next().unwrap().to_string()
}

/// Every file below `d` (symbolic links not followed).
pub fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(d) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out
}

impl Drop for NetnsLab {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.outer, "timeout", "120", BIN, "lab"])
            .args(["down", "--dir"])
            .arg(&self.dir)
            .output();
        let _ = sh(&["ip", "netns", "del", &self.outer]);
    }
}

/// A command inside network namespace `outer`, bounded by `secs`, with `dir`'s lab
/// kubeconfig (for threads that outlive no guard).
pub fn run_in(outer: &str, dir: &Path, secs: u32, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", outer, "timeout", &secs.to_string()])
        .args(args)
        .env("KUBECONFIG", dir.join("data/kubeconfig"))
        // curl trusts the lab's cluster CA, which the services' certificates chain to.
        .env("CURL_CA_BUNDLE", dir.join("data/pki/ca.crt"))
        .output()
        .unwrap()
}
