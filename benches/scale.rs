//! Scale: N Nodes (default 10,000) in N/40 Racks go from apply to Ready.
//!
//! `cargo bench --bench scale` (env: GW_SCALE_NODES, GW_SCALE_WORKERS, GW_SCALE_TIMEOUT_S).
//!
//! The real `groundwork server` binary (release) stores everything; the controllers run in
//! this process (the same `groundwork_controller::run` the server runs) with a simulated BMC
//! behind the real `BmcPool`, and a simulated fleet: a machine told to boot from PXE runs a
//! "ramdisk agent" that reports inventory and then the install of its task; told to boot
//! from disk, a "node agent" that heartbeats. The agents write the status fields the agent API
//! writes for real agents (`server/src/agentapi.rs`), through the API's `/status`, without
//! TLS join (covered by tests/bootfiles.rs and tests/provision.rs). Machines act at once:
//! every second measured is the control plane's.
//!
//! Reported: the time from starting the controllers to every Node Ready, the server's peak
//! RSS, and per Node: reconciles by controller, 409 conflicts, and the most reconciles any one
//! Node had in one controller.

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use groundwork_bmc::{
    Bmc, BmcError, BmcInfo, BmcInventory, BootTarget, Connector, Endpoint, Power, PowerAction,
};
use groundwork_types::{Node, NodePhase};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_groundwork");

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What a simulated machine is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Running {
    Off,
    Ramdisk,
    Installed,
}

/// The simulated machines, by BMC address: power, next boot device, what runs.
#[derive(Default)]
struct Fleet {
    machines: Mutex<HashMap<String, (Running, BootTarget)>>,
    /// BMC address → Node name.
    names: HashMap<String, String>,
    sessions: AtomicU64,
}

struct FakeBmc {
    fleet: Arc<Fleet>,
    address: String,
    booted: mpsc::UnboundedSender<String>,
}

impl Bmc for FakeBmc {
    fn power_status(&self) -> BoxFuture<'_, Result<Power, BmcError>> {
        Box::pin(async {
            let m = self.fleet.machines.lock().unwrap();
            let on = m
                .get(&self.address)
                .is_some_and(|(r, _)| *r != Running::Off);
            Ok(if on { Power::On } else { Power::Off })
        })
    }
    fn set_power(&self, action: PowerAction) -> BoxFuture<'_, Result<(), BmcError>> {
        Box::pin(async move {
            {
                let mut m = self.fleet.machines.lock().unwrap();
                let e = m
                    .entry(self.address.clone())
                    .or_insert((Running::Off, BootTarget::Disk));
                e.0 = match action {
                    PowerAction::Off | PowerAction::Soft => Running::Off,
                    _ if e.1 == BootTarget::Pxe => Running::Ramdisk,
                    _ => Running::Installed,
                };
            }
            let _ = self.booted.send(self.address.clone());
            Ok(())
        })
    }
    fn set_boot(
        &self,
        target: BootTarget,
        _once: bool,
        _efi: bool,
    ) -> BoxFuture<'_, Result<(), BmcError>> {
        Box::pin(async move {
            let mut m = self.fleet.machines.lock().unwrap();
            m.entry(self.address.clone())
                .or_insert((Running::Off, target))
                .1 = target;
            Ok(())
        })
    }
    fn info(&self) -> BoxFuture<'_, Result<BmcInfo, BmcError>> {
        Box::pin(async { Ok(BmcInfo::default()) })
    }
    fn inventory(&self) -> BoxFuture<'_, Result<BmcInventory, BmcError>> {
        Box::pin(async {
            Ok(BmcInventory {
                manufacturer: Some("Sim".into()),
                model: Some("S1".into()),
                serial: Some(format!("SN-{}", self.address)),
                ..Default::default()
            })
        })
    }
}

struct FakeConnector {
    fleet: Arc<Fleet>,
    booted: mpsc::UnboundedSender<String>,
}

impl Connector for FakeConnector {
    fn connect(&self, ep: &Endpoint) -> Result<Arc<dyn Bmc>, BmcError> {
        self.fleet.sessions.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(FakeBmc {
            fleet: self.fleet.clone(),
            address: ep.address.clone(),
            booted: self.booted.clone(),
        }))
    }
}

/// Counts "reconcile" spans by (controller, object).
#[derive(Clone, Default)]
struct SpanCounter(Arc<Mutex<HashMap<(String, String), u32>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SpanCounter {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() != "reconcile" {
            return;
        }
        #[derive(Default)]
        struct V(String, String);
        impl tracing::field::Visit for V {
            fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                if f.name() == "controller" {
                    self.0 = v.to_string();
                }
            }
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                match f.name() {
                    "controller" => self.0 = format!("{v:?}").trim_matches('"').to_string(),
                    "object" => self.1 = format!("{v:?}"),
                    _ => {}
                }
            }
        }
        let mut v = V::default();
        attrs.record(&mut v);
        *self.0.lock().unwrap().entry((v.0, v.1)).or_default() += 1;
    }
}

struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
    secret_key: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let child = Command::new(BIN)
        .args(["server", "--data-dir"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--controllers", "none"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start groundwork server");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !kubeconfig.exists() {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server {
        child,
        secret_key: dir.path().join("secret.key"),
        kubeconfig,
        _dir: dir,
    }
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident memory of a process, from /proc (KiB).
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn address(i: usize) -> String {
    format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256)
}

async fn create_all(client: &Client, n: usize) {
    let racks = n.div_ceil(40);
    let dyn_api = |plural: &str| {
        let ar = kube::api::ApiResource {
            group: "groundwork.dev".into(),
            version: "v1alpha1".into(),
            api_version: "groundwork.dev/v1alpha1".into(),
            kind: String::new(),
            plural: plural.into(),
        };
        Api::<kube::api::DynamicObject>::all_with(client.clone(), &ar)
    };
    let post = |plural: &'static str, body: Value| {
        let api = dyn_api(plural);
        async move {
            let obj: kube::api::DynamicObject = serde_json::from_value(body).unwrap();
            api.create(&PostParams::default(), &obj).await.unwrap();
        }
    };
    post(
        "credentials",
        json!({"apiVersion": "groundwork.dev/v1alpha1", "kind": "Credential", "metadata": {"name": "bmc"},
               "spec": {"username": "admin", "password": "scale-secret"}}),
    )
    .await;
    post(
        "datacenters",
        json!({"apiVersion": "groundwork.dev/v1alpha1", "kind": "Datacenter", "metadata": {"name": "dc1"},
               "spec": {"availabilityZones": [{"name": "az1"}]}}),
    )
    .await;
    post(
        "profiles",
        json!({"apiVersion": "groundwork.dev/v1alpha1", "kind": "Profile", "metadata": {"name": "worker"},
               "spec": {"selector": {"matchLabels": {"scale": "yes"}},
                        "os": {"url": "http://10.0.0.1/os.img", "checksum": format!("sha256:{}", "ab".repeat(32))}}}),
    )
    .await;
    futures::stream::iter(0..racks)
        .map(|r| {
            post(
                "racks",
                json!({"apiVersion": "groundwork.dev/v1alpha1", "kind": "Rack", "metadata": {"name": format!("r{r:03}")},
                       "spec": {"datacenter": "dc1", "availabilityZone": "az1", "heightU": 42}}),
            )
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    futures::stream::iter(0..n)
        .map(|i| {
            post(
                "nodes",
                json!({"apiVersion": "groundwork.dev/v1alpha1", "kind": "Node",
                       "metadata": {"name": format!("n{i:05}"), "labels": {"scale": "yes"}},
                       "spec": {"rack": {"name": format!("r{:03}", i / 40), "position": i % 40 + 1, "heightU": 1},
                                "bmc": {"address": address(i), "protocol": "ipmi", "credentialsRef": "bmc"},
                                "bootMACs": [format!("52:54:{:02x}:{:02x}:{:02x}:01", i / 65536, (i / 256) % 256, i % 256)],
                                "provisioning": "Provisioned"}}),
            )
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
}

/// What an agent on the machine writes now, if anything (as the agent API would).
fn agent_write(node: &Node, running: Running, i: usize) -> Option<Value> {
    let st = node.status.as_ref()?;
    let p = st.provisioning.clone().unwrap_or_default();
    if p.power_pending.is_some() {
        return None;
    }
    let now = jiff::Timestamp::now().to_string();
    match (running, st.phase?) {
        (Running::Ramdisk, NodePhase::Discovering)
            if st.inventory.as_ref().is_none_or(|i| i.nics.is_empty()) =>
        {
            Some(json!({
            "phase": "Inventoried",
            "inventory": {"system": {"vendor": "Sim", "model": "S1", "serial": format!("SN{i}")},
                          "cpus": [{"model": "x", "cores": 8, "threads": 16}], "memoryBytes": 34359738368u64,
                          "disks": [{"name": "sda", "sizeBytes": 480000000000u64}],
                          "nics": [{"name": "eth0", "mac": format!("52:54:{:02x}:{:02x}:{:02x}:01", i / 65536, (i / 256) % 256, i % 256)}]},
            }))
        }
        (Running::Ramdisk, NodePhase::Provisioning) => {
            let id = p.task_id.clone()?;
            let done = p
                .report
                .as_ref()
                .is_some_and(|r| r.task_id.as_deref() == Some(id.as_str()));
            (!done).then(|| {
                json!({"provisioning": {"report": {
                "task": "install", "attempt": p.attempt.unwrap_or(1), "taskId": id,
                "state": "Succeeded", "at": now}}})
            })
        }
        (Running::Installed, NodePhase::Provisioned) => {
            let beat: Option<jiff::Timestamp> =
                p.last_heartbeat.as_deref().and_then(|t| t.parse().ok());
            let since: Option<jiff::Timestamp> =
                p.phase_since.as_deref().and_then(|t| t.parse().ok());
            (beat.is_none() || beat < since).then(|| {
                json!({"addresses": [address(i)],
                       "provisioning": {"lastHeartbeat": now, "bootId": "boot-1"}})
            })
        }
        _ => None,
    }
}

fn main() {
    let n = env_num("GW_SCALE_NODES", 10_000) as usize;
    let workers = env_num("GW_SCALE_WORKERS", 8) as usize;
    let timeout = Duration::from_secs(env_num("GW_SCALE_TIMEOUT_S", 900));
    let spans = SpanCounter::default();
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        tracing_subscriber::registry()
            .with(spans.clone())
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(tracing_subscriber::EnvFilter::new(
                        std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
                    )),
            )
            .init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(n, workers, timeout, spans));
}

use tracing_subscriber::Layer;

async fn run(n: usize, workers: usize, timeout: Duration, spans: SpanCounter) {
    let server = start_server();
    let kc = kube::config::Kubeconfig::read_from(&server.kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = Client::try_from(cfg).unwrap();
    let t0 = Instant::now();
    create_all(&client, n).await;
    let applied = t0.elapsed();
    eprintln!(
        "applied {n} Nodes in {} Racks in {applied:.1?}",
        n.div_ceil(40)
    );

    // The simulated fleet.
    let (booted_tx, mut booted_rx) = mpsc::unbounded_channel::<String>();
    let fleet = Arc::new(Fleet {
        names: (0..n).map(|i| (address(i), format!("n{i:05}"))).collect(),
        ..Default::default()
    });
    let index: Arc<HashMap<String, usize>> =
        Arc::new((0..n).map(|i| (format!("n{i:05}"), i)).collect());

    // The controllers, as the server runs them, with the simulated BMCs.
    let secret = std::fs::read_to_string(&server.secret_key).unwrap();
    let mut opts = groundwork_controller::Options::new(
        groundwork_controller::parse_controllers("all").unwrap(),
    );
    opts.secret_key = Some(groundwork_types::secrets::SecretKey::decode(&secret).unwrap());
    opts.bmc = Arc::new(FakeConnector {
        fleet: fleet.clone(),
        booted: booted_tx,
    });
    opts.settings.workers = workers;
    opts.provisioning.heartbeat_grace = Duration::from_secs(600);
    let kinds = groundwork_controller::watches(
        &opts.controllers,
        groundwork_controller::caches::Kinds::new(),
    );
    let (caches, _tasks) = groundwork_controller::caches::Caches::start(&client, kinds);
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    tokio::spawn(groundwork_controller::run(
        client.clone(),
        caches.clone(),
        opts,
        stop_rx,
    ));

    // The agents: react to Node changes and to boots.
    let nodes: Api<Node> = Api::all(client.clone());
    let latest: Arc<Mutex<HashMap<String, Arc<Node>>>> = Arc::default();
    let agent_writes = Arc::new(AtomicU64::new(0));
    let (eval_tx, mut eval_rx) = mpsc::unbounded_channel::<String>();
    {
        let (latest, eval_tx) = (latest.clone(), eval_tx.clone());
        let nodes = nodes.clone();
        tokio::spawn(async move {
            let stream = watcher(nodes, watcher::Config::default())
                .default_backoff()
                .applied_objects();
            futures::pin_mut!(stream);
            while let Ok(Some(nd)) = stream.try_next().await {
                let name = nd.name_any();
                latest.lock().unwrap().insert(name.clone(), Arc::new(nd));
                let _ = eval_tx.send(name);
            }
        });
    }
    {
        let (fleet, eval_tx) = (fleet.clone(), eval_tx.clone());
        tokio::spawn(async move {
            while let Some(addr) = booted_rx.recv().await {
                if let Some(name) = fleet.names.get(&addr) {
                    let _ = eval_tx.send(name.clone());
                }
            }
        });
    }
    {
        let (latest, fleet, index, agent_writes) = (
            latest.clone(),
            fleet.clone(),
            index.clone(),
            agent_writes.clone(),
        );
        let nodes = nodes.clone();
        tokio::spawn(async move {
            // Written and not yet seen back: (name, resourceVersion written against).
            let inflight: Arc<Mutex<HashMap<String, String>>> = Arc::default();
            let sem = Arc::new(tokio::sync::Semaphore::new(64));
            while let Some(name) = eval_rx.recv().await {
                let Some(node) = latest.lock().unwrap().get(&name).cloned() else {
                    continue;
                };
                let i = index[&name];
                let running = fleet
                    .machines
                    .lock()
                    .unwrap()
                    .get(&address(i))
                    .map(|m| m.0)
                    .unwrap_or(Running::Off);
                let rv = node.resource_version().unwrap_or_default();
                if inflight.lock().unwrap().get(&name) == Some(&rv) {
                    continue;
                }
                let Some(status) = agent_write(&node, running, i) else {
                    continue;
                };
                inflight.lock().unwrap().insert(name.clone(), rv);
                let (nodes, permit, agent_writes) = (
                    nodes.clone(),
                    sem.clone().acquire_owned().await.unwrap(),
                    agent_writes.clone(),
                );
                tokio::spawn(async move {
                    let _p = permit;
                    let r = nodes
                        .patch_status(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"status": status})),
                        )
                        .await;
                    if let Err(e) = r {
                        eprintln!("agent write for {name}: {e}");
                    }
                    agent_writes.fetch_add(1, Ordering::Relaxed);
                });
            }
        });
    }

    // Progress, until every Node is Ready.
    let mut last = String::new();
    let ready_at = loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut phases: BTreeMap<String, usize> = BTreeMap::new();
        for nd in latest.lock().unwrap().values() {
            let p = nd
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .map(|p| format!("{p:?}"))
                .unwrap_or("-".into());
            *phases.entry(p).or_default() += 1;
        }
        let line = format!("{phases:?}");
        if line != last {
            eprintln!("{:>6.1}s {line}", started.elapsed().as_secs_f64());
            last = line;
        }
        if phases.get("Ready") == Some(&n) {
            break started.elapsed();
        }
        if started.elapsed() > timeout {
            eprintln!("TIMEOUT after {timeout:?}");
            break started.elapsed();
        }
    };
    let rss = peak_rss_kib(server.child.id());
    let server_cpu = cpu_seconds(&server.child.id().to_string());
    let own_cpu = cpu_seconds("self");
    let m = groundwork_observe::metrics();
    let counts = spans.0.lock().unwrap().clone();
    let mut per: BTreeMap<String, (u64, u32)> = BTreeMap::new();
    for ((controller, object), c) in &counts {
        if object.starts_with("node/") {
            let e = per.entry(controller.clone()).or_default();
            e.0 += *c as u64;
            e.1 = e.1.max(*c);
        }
    }
    println!("## scale: {n} Nodes in {} Racks", n.div_ceil(40));
    println!("apply (create every object): {applied:.1?}");
    println!("controllers started → all Ready: {:.1?}", ready_at);
    println!("server peak RSS: {} MiB", rss / 1024);
    println!(
        "CPU: server {server_cpu:.1} s, controllers and simulated fleet {own_cpu:.1} s (2 cores)"
    );
    println!(
        "agent status writes: {}",
        agent_writes.load(Ordering::Relaxed)
    );
    println!("BMC sessions: {}", fleet.sessions.load(Ordering::Relaxed));
    println!("controller workers: {workers}");
    println!("| controller | reconciles per Node | most on one Node | 409s per Node |");
    println!("|---|---|---|---|");
    for (controller, (total, most)) in &per {
        let conflicts = m
            .reconciles
            .get_or_create(&groundwork_observe::ReconcileLabels {
                controller: controller.clone(),
                result: "conflict".into(),
            })
            .get();
        println!(
            "| {controller} | {:.2} | {most} | {:.3} |",
            *total as f64 / n as f64,
            conflicts as f64 / n as f64
        );
    }
}
