//! Service layers: apply → every layer Ready on 4 namespace machines, against each
//! service's own start time measured by starting it by hand in the same run.
//!
//! `cargo bench --bench layers` (root: network namespaces). Everything runs in a network
//! namespace the bench creates (it re-executes itself there) and is removed at the end.
//!
//! By hand, on 127.0.0.x, with a minimal config and the same health checks the drivers
//! use, polled every 20 ms: Prometheus and Alertmanager (`/-/ready`), slapd (slapadd of a
//! base entry, then a rootDSE search), a 3-member Galera cluster (mariadb-install-db for
//! each, the first with `--wsrep-new-cluster`, then two joining by rsync SST, each until
//! `wsrep_local_state_comment` is Synced) and HAProxy. Then `groundwork lab up --netns
//! --machines 4` applies the lab's platform stack while this process polls the stack every
//! 50 ms. A layer's time runs from when it may start (apply, or its dependency Ready) to
//! Ready; its overhead is that minus the slowest of its services by hand. Also reported: the
//! node agents' resident memory (VmRSS and peak VmHWM) with the platform running.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use groundwork_types::{LayerPhase, ServiceStack};
use kube::Api;

const BIN: &str = env!("CARGO_BIN_EXE_groundwork");

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benches; nothing to list.
    }
    if std::env::var_os("GW_LAYERS_INNER").is_none() {
        outer();
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(inner());
}

/// Creates the namespace, runs the bench inside it, removes it.
fn outer() {
    let ns = format!("gwbench-{}", std::process::id());
    let ip = |args: &[&str]| {
        let ok = Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip {args:?} failed (the bench needs root)");
    };
    ip(&["netns", "add", &ns]);
    ip(&["-n", &ns, "link", "set", "lo", "up"]);
    let me = std::env::current_exe().unwrap();
    let st = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(&me)
        .env("GW_LAYERS_INNER", "1")
        .status();
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    assert!(st.is_ok_and(|s| s.success()), "the bench failed");
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str], log: &Path) -> Proc {
    let f = std::fs::File::create(log).unwrap();
    Proc(
        Command::new(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", args[0])),
    )
}

fn ok(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn must(args: &[&str]) {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Polls `check` every 20 ms; the time from `t0` until it passes.
fn until(what: &str, t0: Instant, check: impl Fn() -> bool) -> Duration {
    while !check() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{what} never became healthy"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

fn http_ok(addr: &str, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").is_err() {
        return false;
    }
    let mut b = [0u8; 16];
    s.read(&mut b)
        .is_ok_and(|n| b[..n].starts_with(b"HTTP/1.1 200") || b[..n].starts_with(b"HTTP/1.0 200"))
}

fn by_hand_prometheus(dir: &Path) -> Duration {
    let d = dir.join("prometheus");
    std::fs::create_dir_all(&d).unwrap();
    let cfg = d.join("prometheus.yml");
    std::fs::write(
        &cfg,
        "global: {scrape_interval: 15s}\nscrape_configs:\n  - job_name: prometheus\n    static_configs: [{targets: ['127.0.0.1:19090']}]\n",
    )
    .unwrap();
    let t0 = Instant::now();
    let _p = spawn(
        &[
            "prometheus",
            &format!("--config.file={}", cfg.display()),
            &format!("--storage.tsdb.path={}", d.join("data").display()),
            "--web.listen-address=127.0.0.1:19090",
        ],
        &d.join("log"),
    );
    until("prometheus", t0, || http_ok("127.0.0.1:19090", "/-/ready"))
}

fn by_hand_alertmanager(dir: &Path) -> Duration {
    let d = dir.join("alertmanager");
    std::fs::create_dir_all(&d).unwrap();
    let cfg = d.join("alertmanager.yml");
    std::fs::write(&cfg, "route: {receiver: none}\nreceivers: [{name: none}]\n").unwrap();
    let t0 = Instant::now();
    let _p = spawn(
        &[
            "prometheus-alertmanager",
            &format!("--config.file={}", cfg.display()),
            &format!("--storage.path={}", d.join("data").display()),
            "--web.listen-address=127.0.0.1:19093",
            "--cluster.listen-address=",
        ],
        &d.join("log"),
    );
    until("alertmanager", t0, || {
        http_ok("127.0.0.1:19093", "/-/ready")
    })
}

fn by_hand_slapd(dir: &Path) -> Duration {
    let d = dir.join("slapd");
    std::fs::create_dir_all(d.join("data")).unwrap();
    let conf = d.join("slapd.conf");
    std::fs::write(
        &conf,
        format!(
            "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\nmodulepath /usr/lib/ldap\n\
             moduleload back_mdb\npidfile {d}/slapd.pid\ndatabase mdb\nsuffix \"dc=bench\"\n\
             rootdn \"cn=admin,dc=bench\"\nrootpw secret\ndirectory {d}/data\n",
            d = d.display()
        ),
    )
    .unwrap();
    let ldif = d.join("base.ldif");
    std::fs::write(
        &ldif,
        "dn: dc=bench\nobjectClass: dcObject\nobjectClass: organization\no: bench\ndc: bench\n",
    )
    .unwrap();
    let t0 = Instant::now();
    must(&[
        "slapadd",
        "-f",
        conf.to_str().unwrap(),
        "-l",
        ldif.to_str().unwrap(),
    ]);
    let _p = spawn(
        &[
            "slapd",
            "-d",
            "0",
            "-f",
            conf.to_str().unwrap(),
            "-h",
            "ldap://127.0.0.1:1389/",
        ],
        &d.join("log"),
    );
    until("slapd", t0, || {
        ok(&[
            "ldapsearch",
            "-x",
            "-H",
            "ldap://127.0.0.1:1389",
            "-s",
            "base",
            "-b",
            "",
            "namingContexts",
        ])
    })
}

/// A 3-member Galera cluster on 127.0.1.1-3, started as Groundwork's driver does it.
fn by_hand_galera(dir: &Path) -> Duration {
    let ips = ["127.0.1.1", "127.0.1.2", "127.0.1.3"];
    let members: Vec<PathBuf> = (1..=3).map(|i| dir.join(format!("galera{i}"))).collect();
    for (m, ip) in members.iter().zip(ips) {
        std::fs::create_dir_all(m.join("tmp")).unwrap();
        let cnf = format!(
            "[client]\nsocket={d}/mysql.sock\n[mysqld]\nuser=mysql\ndatadir={d}/data\nsocket={d}/mysql.sock\n\
             pid-file={d}/mysqld.pid\nlog-error={d}/error.log\ntmpdir={d}/tmp\nbind-address={ip}\nport=3306\n\
             binlog_format=ROW\ninnodb_autoinc_lock_mode=2\ndefault_storage_engine=InnoDB\n\
             wsrep_on=ON\nwsrep_provider=/usr/lib/galera/libgalera_smm.so\n\
             wsrep_cluster_address=gcomm://{all}\nwsrep_node_address={ip}\nwsrep_cluster_name=bench\n\
             wsrep_sst_method=rsync\nwsrep_sst_receive_address={ip}:4444\n\
             wsrep_provider_options=\"gmcast.listen_addr=tcp://{ip}:4567;ist.recv_addr={ip}\"\n",
            d = m.display(),
            all = ips.join(",")
        );
        std::fs::write(m.join("my.cnf"), cnf).unwrap();
        must(&["chown", "-R", "mysql:mysql", m.to_str().unwrap()]);
    }
    let synced = |m: &Path| {
        let o = Command::new("mariadb")
            .arg(format!("--defaults-file={}/my.cnf", m.display()))
            .args([
                "-N",
                "-B",
                "-e",
                "SHOW GLOBAL STATUS LIKE 'wsrep_local_state_comment'",
            ])
            .output();
        o.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Synced"))
    };
    let t0 = Instant::now();
    for m in &members {
        must(&[
            "mariadb-install-db",
            &format!("--defaults-file={}/my.cnf", m.display()),
            "--user=mysql",
            "--skip-test-db",
        ]);
    }
    let cnf = |m: &Path| format!("--defaults-file={}/my.cnf", m.display());
    let _a = spawn(
        &["mariadbd", &cnf(&members[0]), "--wsrep-new-cluster"],
        &members[0].join("out"),
    );
    until("galera member 1", t0, || synced(&members[0]));
    // One joiner at a time, as an operator does by hand: one rsync SST at a time.
    let _b = spawn(&["mariadbd", &cnf(&members[1])], &members[1].join("out"));
    until("galera member 2", t0, || synced(&members[1]));
    let _c = spawn(&["mariadbd", &cnf(&members[2])], &members[2].join("out"));
    let t = until("galera member 3", t0, || synced(&members[2]));
    for m in &members {
        let _ = Command::new("mariadb-admin")
            .arg(cnf(m))
            .arg("shutdown")
            .output();
    }
    t
}

fn by_hand_haproxy(dir: &Path) -> Duration {
    let d = dir.join("haproxy");
    std::fs::create_dir_all(&d).unwrap();
    let cfg = d.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        "global\n  maxconn 256\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
         frontend stats\n  mode http\n  bind 127.0.0.1:18404\n  http-request use-service prometheus-exporter if { path /metrics }\n\
         listen db\n  bind 127.0.0.1:13307\n  server a 127.0.1.1:3306 check inter 1s\n",
    )
    .unwrap();
    let t0 = Instant::now();
    let _p = spawn(
        &["haproxy", "-db", "-f", cfg.to_str().unwrap()],
        &d.join("log"),
    );
    until("haproxy", t0, || http_ok("127.0.0.1:18404", "/metrics"))
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn inner() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    eprintln!("layers: working in {}", dir.display());
    for (a, b) in [
        ("ip", "addr add 127.0.1.1/32 dev lo"),
        ("ip", "addr add 127.0.1.2/32 dev lo"),
        ("ip", "addr add 127.0.1.3/32 dev lo"),
    ] {
        let mut args = vec![a];
        args.extend(b.split(' '));
        let _ = ok(&args);
    }
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    // 1. By hand.
    let prom = by_hand_prometheus(dir);
    let am = by_hand_alertmanager(dir);
    let slapd = by_hand_slapd(dir);
    let galera = by_hand_galera(dir);
    let haproxy = by_hand_haproxy(dir);

    // 2. Through Groundwork.
    let lab = dir.join("lab");
    let name = format!("b{}", std::process::id() % 10_000);
    let mut up = Command::new(BIN)
        .args([
            "lab",
            "up",
            "--netns",
            "--machines",
            "4",
            "--name",
            &name,
            "--timeout",
            "300",
            "--dir",
        ])
        .arg(&lab)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let kubeconfig = lab.join("data/kubeconfig");
    let t0 = Instant::now();
    while !kubeconfig.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the lab's server did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(cfg).unwrap();
    let stacks: Api<ServiceStack> = Api::all(client);
    let mut applied: Option<Instant> = None;
    // Each layer's first Ready (when its dependents may start) and its last entry into
    // Ready (a layer can leave Ready again when a later layer changes it: Prometheus gets
    // new targets).
    let mut ready: std::collections::BTreeMap<String, Instant> = Default::default();
    let mut last: std::collections::BTreeMap<String, (bool, Instant)> = Default::default();
    let deadline = Instant::now() + Duration::from_secs(300);
    let layers = loop {
        assert!(
            Instant::now() < deadline,
            "the stack was not Ready in 300 s"
        );
        if let Ok(Some(s)) = stacks.get_opt("platform").await {
            applied.get_or_insert_with(Instant::now);
            let st = s.status.clone().unwrap_or_default();
            for l in &st.layers {
                let is = l.phase == Some(LayerPhase::Ready);
                if is {
                    ready.entry(l.name.clone()).or_insert_with(Instant::now);
                }
                let e = last
                    .entry(l.name.clone())
                    .or_insert((false, Instant::now()));
                if is && !e.0 {
                    *e = (true, Instant::now());
                } else if !is {
                    e.0 = false;
                }
            }
            let all = st.layers.len() == s.spec.layers.len()
                && st.layers.iter().all(|l| l.phase == Some(LayerPhase::Ready));
            if !s.spec.layers.is_empty() && all && st.observed_generation == s.metadata.generation {
                break s.spec.layers.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let applied = applied.unwrap();

    // Agents' memory with the platform running.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lab.join("lab.json")).unwrap()).unwrap();
    let nets: Vec<String> = state["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["net"].as_str().unwrap().to_string())
        .collect();
    let mut agents = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let net = std::fs::read_link(e.path().join("ns/net")).map(|l| l.display().to_string());
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if net.is_ok_and(|n| nets.contains(&n))
            && String::from_utf8_lossy(&cmd).contains("node-agent")
            && !String::from_utf8_lossy(&cmd).starts_with("sh")
        {
            agents.push(rss_kib(pid));
        }
    }
    // The lab's server log, for a closer look at where the time went.
    let kept = std::env::temp_dir().join("groundwork-layers-server.log");
    let _ = std::fs::copy(lab.join("server.log"), &kept);
    eprintln!("layers: the lab's server log is kept in {}", kept.display());
    let _ = Command::new(BIN)
        .args(["lab", "down", "--dir"])
        .arg(&lab)
        .output();
    let _ = up.wait();

    // 3. Report.
    let own = |services: &[groundwork_types::ServiceType]| -> Duration {
        use groundwork_types::ServiceType as S;
        services
            .iter()
            .map(|s| match s {
                S::Prometheus => prom,
                S::Alertmanager => am,
                S::Openldap => slapd,
                S::Mysql => galera,
                S::Haproxy => haproxy,
                _ => Duration::ZERO,
            })
            .max()
            .unwrap_or_default()
    };
    let all_ready = last.values().map(|x| x.1).max().unwrap_or(applied);
    println!("layers: apply → Ready on 4 namespace machines, against each service by hand");
    println!(
        "apply → every layer Ready: {:.2}s (by hand, the same order: {:.2}s)",
        all_ready.saturating_duration_since(applied).as_secs_f64(),
        (prom.max(am) + slapd.max(galera.max(haproxy))).as_secs_f64()
    );
    println!(
        "{:<10} {:>10} {:>12} {:>10}",
        "layer", "Groundwork", "by hand", "overhead"
    );
    for l in &layers {
        let from = l
            .depends_on
            .iter()
            .filter_map(|d| ready.get(d).copied())
            .max()
            .unwrap_or(applied);
        let took = ready[&l.name].saturating_duration_since(from);
        let hand = own(&l.services);
        println!(
            "{:<10} {:>9.2}s {:>11.2}s {:>9.2}s",
            l.name,
            took.as_secs_f64(),
            hand.as_secs_f64(),
            took.as_secs_f64() - hand.as_secs_f64()
        );
    }
    println!(
        "by hand: prometheus {:.2}s, alertmanager {:.2}s, slapd {:.2}s, galera x3 {:.2}s, haproxy {:.2}s",
        prom.as_secs_f64(),
        am.as_secs_f64(),
        slapd.as_secs_f64(),
        galera.as_secs_f64(),
        haproxy.as_secs_f64()
    );
    let max_rss = agents.iter().map(|a| a.0).max().unwrap_or(0);
    let max_hwm = agents.iter().map(|a| a.1).max().unwrap_or(0);
    println!(
        "node agents: {} running, RSS max {:.1} MiB, peak (VmHWM) max {:.1} MiB",
        agents.len(),
        max_rss as f64 / 1024.0,
        max_hwm as f64 / 1024.0
    );
    assert_eq!(agents.len(), 4, "the node agents were not found");
}
