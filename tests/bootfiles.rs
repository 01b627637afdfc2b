//! The boot file servers against real clients on 127.0.0.1: tftp-hpa, atftp (with blksize,
//! tsize, timeout and windowsize options) and curl over TFTP, checksums compared; curl over
//! HTTP for the iPXE scripts and a Range request; path traversal refused.

mod support;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Boot {
    child: Child,
    http: u16,
    tftp: u16,
    dir: tempfile::TempDir,
}

impl Drop for Boot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Boot {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    // 3 MiB + 77 bytes of pseudo-random data: several windows, a partial last block.
    let mut f = std::fs::File::create(root.join("kernel.bin")).unwrap();
    let mut x: u64 = 0x1234_5678_9abc_def0;
    let mut buf = Vec::with_capacity((3 << 20) + 77);
    for _ in 0..(3 << 20) + 77 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.push(x as u8);
    }
    f.write_all(&buf).unwrap();
    std::fs::write(dir.path().join("secret.txt"), "outside the root").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("escape")).unwrap();
    let log = std::fs::File::create(dir.path().join("boot.log")).unwrap();
    let child = Command::new(support::BIN)
        .args(["boot", "--root"])
        .arg(&root)
        .args(["--http", "127.0.0.1:0", "--tftp", "127.0.0.1:0"])
        .args([
            "--kernel",
            "kernel.bin",
            "--initrd",
            "initrd.img",
            "--cmdline",
            "console=ttyS0 quiet",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let (http, tftp) = ports_from_log(&dir.path().join("boot.log"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(Instant::now() < deadline, "boot servers did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Boot {
        child,
        http,
        tftp,
        dir,
    }
}

/// A server with the boot servers on ports of its choosing; returns it and its HTTP port.
fn boot_server(root: &std::path::Path) -> (support::Server, u16) {
    let s = support::Server::start_with(&[
        "--boot-root",
        root.to_str().unwrap(),
        "--boot-http",
        "127.0.0.1:0",
        "--boot-tftp",
        "127.0.0.1:0",
    ]);
    let (http, _tftp) = boot_ports(&s);
    (s, http)
}

/// The boot ports a server bound (it is started with port 0 and logs them): choosing free
/// ports in the test and passing them races with other ephemeral ports.
fn boot_ports(s: &support::Server) -> (u16, u16) {
    ports_from_log(&s.dir.path().join("server.log"))
}

fn ports_from_log(path: &std::path::Path) -> (u16, u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains("boot servers ready")) {
            let port = |key: &str| -> u16 {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("no {key} in {line:?}"))
            };
            return (port("http="), port("tftp="));
        }
        assert!(
            Instant::now() < deadline,
            "no boot ports in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn md5(p: &std::path::Path) -> String {
    let o = Command::new("md5sum").arg(p).output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

fn run(args: &[&str], cwd: &std::path::Path) -> String {
    let o = Command::new("timeout")
        .arg("60")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("client installed (tests/run installs tftp-hpa, atftp, curl)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn tftp_clients_fetch_files_with_options_and_cannot_escape_the_root() {
    let b = start();
    let want = md5(&b.dir.path().join("root/kernel.bin"));
    let out = b.dir.path();
    let port = b.tftp.to_string();

    // tftp-hpa: plain RFC 1350 (512-byte blocks).
    run(
        &[
            "tftp",
            "-m",
            "binary",
            "127.0.0.1",
            &port,
            "-c",
            "get",
            "kernel.bin",
            "hpa.bin",
        ],
        out,
    );
    assert_eq!(md5(&out.join("hpa.bin")), want, "tftp-hpa");

    // atftp with every option: blksize, tsize, timeout, windowsize.
    let trace = run(
        &[
            "atftp",
            "--trace",
            "--option",
            "blksize 1428",
            "--option",
            "tsize 0",
            "--option",
            "timeout 2",
            "--option",
            "windowsize 8",
            "--get",
            "-r",
            "kernel.bin",
            "-l",
            "atftp.bin",
            "127.0.0.1",
            &port,
        ],
        out,
    );
    assert_eq!(md5(&out.join("atftp.bin")), want, "atftp: {trace}");
    let oack = trace
        .lines()
        .find(|l| l.contains("OACK"))
        .unwrap_or_default()
        .to_string();
    assert!(
        oack.contains("blksize: 1428") && oack.contains("tsize: 3145805"),
        "OACK: {oack}\n{trace}"
    );
    assert!(oack.contains("windowsize: 8"), "OACK: {oack}");

    // curl with a large block size.
    run(
        &[
            "curl",
            "-sS",
            "--tftp-blksize",
            "1468",
            "-o",
            "curl.bin",
            &format!("tftp://127.0.0.1:{port}/kernel.bin"),
        ],
        out,
    );
    assert_eq!(md5(&out.join("curl.bin")), want, "curl tftp");

    // No way out: parent directories and symlinks leading outside are refused.
    for evil in ["../secret.txt", "escape", "/etc/passwd"] {
        let t = run(
            &[
                "curl",
                "-sS",
                "-o",
                "evil.bin",
                &format!("tftp://127.0.0.1:{port}/{evil}"),
            ],
            out,
        );
        assert!(
            !std::fs::read_to_string(out.join("evil.bin"))
                .unwrap_or_default()
                .contains("outside")
                && !std::fs::read_to_string(out.join("evil.bin"))
                    .unwrap_or_default()
                    .contains("root:"),
            "{evil}: {t}"
        );
        let _ = std::fs::remove_file(out.join("evil.bin"));
    }
}

#[test]
fn http_serves_ipxe_scripts_and_ranges() {
    let b = start();
    let base = format!("http://127.0.0.1:{}", b.http);
    let out = b.dir.path();
    let s = run(&["curl", "-sS", &format!("{base}/boot.ipxe")], out);
    assert!(
        s.starts_with("#!ipxe") && s.contains(&format!("chain {base}/ipxe?mac=${{net0/mac}}")),
        "{s}"
    );
    let s = run(
        &["curl", "-sS", &format!("{base}/ipxe?mac=52:54:00:AA:BB:CC")],
        out,
    );
    assert!(s.contains(&format!("kernel {base}/kernel.bin")), "{s}");
    assert!(
        s.contains("groundwork.mac=52:54:00:aa:bb:cc") && s.contains("console=ttyS0 quiet"),
        "{s}"
    );
    let bad = run(
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{base}/ipxe?mac=nope"),
        ],
        out,
    );
    assert_eq!(bad, "400");

    // Range: the last 1,000 bytes of the kernel.
    let all = std::fs::read(out.join("root/kernel.bin")).unwrap();
    let code = run(
        &[
            "curl",
            "-sS",
            "-r",
            "-1000",
            "-o",
            "tail.bin",
            "-w",
            "%{http_code}",
            &format!("{base}/kernel.bin"),
        ],
        out,
    );
    assert_eq!(code, "206");
    assert_eq!(
        std::fs::read(out.join("tail.bin")).unwrap(),
        all[all.len() - 1000..]
    );
    let code = run(
        &[
            "curl",
            "-sS",
            "-o",
            "full.bin",
            "-w",
            "%{http_code}",
            &format!("{base}/kernel.bin"),
        ],
        out,
    );
    assert_eq!(code, "200");
    assert_eq!(
        md5(&out.join("full.bin")),
        md5(&out.join("root/kernel.bin"))
    );
    let code = run(
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--path-as-is",
            &format!("{base}/../secret.txt"),
        ],
        out,
    );
    assert_ne!(code, "200");

    // A symlink leading out of the root is not followed.
    std::os::unix::fs::symlink(out.join("secret.txt"), out.join("root/escape.txt")).unwrap();
    let code = run(
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{base}/escape.txt"),
        ],
        out,
    );
    assert_eq!(code, "404");
    // A file (sendfile) and a script (handed to the router) on one keep-alive connection; the
    // router closes after its response, so the next file needs a new connection.
    let w = run(
        &[
            "curl",
            "-sS",
            "-w",
            "%{http_code} %{num_connects}\n",
            &format!("{base}/kernel.bin"),
            "-o",
            "k1.bin",
            &format!("{base}/boot.ipxe"),
            "-o",
            "s.ipxe",
            &format!("{base}/kernel.bin"),
            "-o",
            "k2.bin",
        ],
        out,
    );
    assert_eq!(w.trim(), "200 1\n200 0\n200 1");
    assert_eq!(md5(&out.join("k2.bin")), md5(&out.join("root/kernel.bin")));
    assert!(
        std::fs::read_to_string(out.join("s.ipxe"))
            .unwrap()
            .starts_with("#!ipxe")
    );
    // HEAD, an unsatisfiable range, HTTP/1.0.
    let head = run(&["curl", "-sSI", &format!("{base}/kernel.bin")], out);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {}", all.len())),
        "{head}"
    );
    let code = run(
        &[
            "curl",
            "-s",
            "-r",
            "99999999-",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{base}/kernel.bin"),
        ],
        out,
    );
    assert_eq!(code, "416");
    let code = run(
        &[
            "curl",
            "-sS",
            "-0",
            "-o",
            "h10.bin",
            "-w",
            "%{http_code}",
            &format!("{base}/kernel.bin"),
        ],
        out,
    );
    assert_eq!(code, "200");
    assert_eq!(md5(&out.join("h10.bin")), md5(&out.join("root/kernel.bin")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipxe_scripts_follow_the_node_phase_and_profile() {
    use kube::api::{Patch, PatchParams};
    let root = tempfile::tempdir().unwrap();
    let (s, http) = boot_server(root.path());
    let c = s.client().await;
    let yaml = "apiVersion: groundwork.dev/v1alpha1\nkind: Profile\nmetadata: {name: worker}\nspec:\n  boot: {kernel: install/vmlinuz, initrd: install/initrd.img, cmdline: 'root=/dev/ram0'}\n---\napiVersion: groundwork.dev/v1alpha1\nkind: Node\nmetadata: {name: n1}\nspec: {bootMACs: ['52-54-00-00-00-01']}\n";
    let f = support::write(s.dir.path(), "n.yaml", yaml);
    support::ok(s.groundwork(&["apply", "-f", f.to_str().unwrap()]));
    let base = format!("http://127.0.0.1:{http}");
    let get = |mac: &str| {
        let url = format!("{base}/ipxe?mac={mac}");
        async move {
            tokio::task::spawn_blocking(move || {
                run(&["curl", "-sS", &url], std::path::Path::new("/"))
            })
            .await
            .unwrap()
        }
    };
    let unknown = get("52:54:00:00:00:99").await;
    assert!(
        unknown.contains("kernel http://127.0.0.1")
            && unknown.contains("groundwork.node=m-525400000099"),
        "an unknown machine is enlisted under its MAC: {unknown}"
    );
    let known = support::eventually(Duration::from_secs(20), "the node is known", || async {
        let t = get("52:54:00:00:00:01").await;
        t.contains("groundwork.node=n1").then_some(t)
    })
    .await;
    assert!(known.contains("/vmlinuz"), "{known}");

    let nodes: kube::Api<groundwork_types::Node> = kube::Api::all(c.clone());
    nodes
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"status": {"phase": "Assigned", "profile": "worker"}}),
            ),
        )
        .await
        .unwrap();
    let install = support::eventually(Duration::from_secs(20), "install script", || async {
        let t = get("52:54:00:00:00:01").await;
        t.contains("groundwork.mode=install").then_some(t)
    })
    .await;
    assert!(
        install.contains(&format!("kernel {base}/install/vmlinuz"))
            && install.contains("root=/dev/ram0"),
        "{install}"
    );
    nodes
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"phase": "Provisioned"}})),
        )
        .await
        .unwrap();
    let local = support::eventually(Duration::from_secs(20), "local disk", || async {
        let t = get("52:54:00:00:00:01").await;
        t.contains("sanboot").then_some(t)
    })
    .await;
    assert!(local.starts_with("#!ipxe"), "{local}");
}

/// `groundwork.KEY=VALUE` from an iPXE script's kernel command line.
fn script_arg(script: &str, key: &str) -> String {
    script
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("groundwork.{key}=")))
        .unwrap_or_else(|| panic!("groundwork.{key}= in the script: {script}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_machines_join_once_with_their_token_and_report_with_their_certificate() {
    let root = tempfile::tempdir().unwrap();
    let (s, http) = boot_server(root.path());
    let c = s.client().await;
    let base = format!("http://127.0.0.1:{http}");
    let mac = "52:54:00:00:00:99";
    let fetch = |mac: &str| {
        let url = format!("{base}/ipxe?mac={mac}");
        tokio::task::block_in_place(|| run(&["curl", "-sS", &url], std::path::Path::new("/")))
    };
    let script = fetch(mac);
    assert!(
        script.contains("groundwork.node=m-525400000099"),
        "{script}"
    );
    let (token, agent_addr, ca) = (
        script_arg(&script, "token"),
        script_arg(&script, "agent"),
        script_arg(&script, "ca"),
    );
    assert!(
        token.starts_with("gw1.") && ca.starts_with("sha256:"),
        "{script}"
    );
    let nodes: kube::Api<groundwork_types::Node> = kube::Api::all(c.clone());
    support::eventually(
        Duration::from_secs(20),
        "enlisted in phase Discovering",
        || async {
            let n = nodes.get("m-525400000099").await.ok()?;
            (n.status?.phase == Some(groundwork_types::NodePhase::Discovering)).then_some(())
        },
    )
    .await;

    let agent = |mac: &str, token: &str, ca: &str| {
        let out = Command::new(support::BIN)
            .args(["agent", "--url", &base, "--mac", mac, "--token", token])
            .args(["--agent", &agent_addr, "--ca-hash", ca, "--timeout", "20"])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let inventory = || async {
        nodes
            .get("m-525400000099")
            .await
            .unwrap()
            .status
            .unwrap()
            .inventory
    };
    // A forged token, another MAC's token, or a CA that is not the pinned one: refused,
    // nothing written.
    let forged = format!("{}x", &token[..token.len() - 1]);
    let (ok, _, err) = tokio::task::block_in_place(|| agent(mac, &forged, &ca));
    assert!(
        !ok && err.contains("401") && err.contains("signature"),
        "{err}"
    );
    let other = script_arg(&fetch("52:54:00:00:00:98"), "token");
    let (ok, _, err) = tokio::task::block_in_place(|| agent(mac, &other, &ca));
    assert!(
        !ok && err.contains("403") && err.contains("another MAC"),
        "{err}"
    );
    let wrong_ca = format!("sha256:{}", "0".repeat(64));
    let (ok, _, err) = tokio::task::block_in_place(|| agent(mac, &token, &wrong_ca));
    assert!(!ok && err.contains("does not match groundwork.ca"), "{err}");
    assert!(inventory().await.is_none());
    assert!(!s.log().contains(&token[4..]), "the token is not logged");

    // This machine's real inventory, with the right token: it joins, then reports with its
    // certificate.
    let (ok, out, err) = tokio::task::block_in_place(|| agent(mac, &token, &ca));
    assert!(ok, "{err}");
    assert!(err.contains("joined as node m-525400000099"), "{err}");
    assert_eq!(out.trim(), "GROUNDWORK-AGENT-DONE node=m-525400000099");
    let n = nodes.get("m-525400000099").await.unwrap();
    let st = n.status.unwrap();
    assert_eq!(st.phase, Some(groundwork_types::NodePhase::Inventoried));
    let inv = st.inventory.unwrap();
    assert!(
        !inv.cpus.is_empty() && inv.memory_bytes.unwrap_or(0) > 0,
        "{inv:?}"
    );
    assert!(!inv.nics.is_empty(), "{inv:?}");
    let issued = st
        .provisioning
        .unwrap()
        .agent
        .expect("the join is recorded");
    assert_eq!(issued.certificates.len(), 1, "{issued:?}");

    // The token is good once.
    let (ok, _, err) = tokio::task::block_in_place(|| agent(mac, &token, &ca));
    assert!(!ok && err.contains("already used"), "{err}");

    // The serial number is bound: a Node that names another serial refuses the machine.
    nodes
        .patch(
            "m-525400000099",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"serial": "NOT-THIS-ONE"}})),
        )
        .await
        .unwrap();
    let fresh = script_arg(&fetch(mac), "token");
    let (ok, _, err) = tokio::task::block_in_place(|| agent(mac, &fresh, &ca));
    assert!(
        !ok && err.contains("403") && err.contains("serial"),
        "{err}"
    );

    // The agent API without a certificate, or with one that is no longer the Node's: refused.
    let ca_pem = reqwest::get(format!("{base}/ca.crt"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let addr: std::net::SocketAddr = agent_addr.parse().unwrap();
    let anon = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .resolve("groundwork-boot", addr)
        .build()
        .unwrap();
    let r = anon
        .get(format!(
            "https://groundwork-boot:{}/agent/next?mac={mac}",
            addr.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("join first"));
}
