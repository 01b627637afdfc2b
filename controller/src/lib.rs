//! Groundwork's controllers and the runtime they share.
//!
//! Controllers only ever talk to the API server, through `kube::Client` (so every controller
//! is also a compatibility test of the API): kube-runtime's `watcher` and `reflector` keep
//! shared caches; our own [`queue::WorkQueue`] and [`runtime`] drive reconciles, because
//! kube-runtime's `Controller` exposes neither its queue depth nor a shared retry rate cap
//! (docs/decisions.md). Each controller holds a Lease while it acts ([`lease`]), so any number
//! of processes may run it and exactly one acts.

pub mod bmcpool;
pub mod caches;
pub mod crashpoint;
pub mod events;
pub mod gitsource;
pub mod lease;
pub mod power;
pub mod profile;
pub mod provision;
pub mod queue;
pub mod retry;
pub mod runtime;
pub mod stack;
pub mod topology;

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use lease::{LEASE_NAMESPACE, LeaseTiming};
pub use runtime::{Action, Ctx, Error, Reconciler, Settings};

/// Every controller's name, in the order they are started.
pub fn all() -> Vec<&'static str> {
    registry().iter().map(|r| r.name).collect()
}

/// Parses `all`, `none` or a comma-separated list of controller names.
pub fn parse_controllers(s: &str) -> Result<Vec<String>, String> {
    match s.trim() {
        "all" => Ok(all().iter().map(|s| s.to_string()).collect()),
        "none" | "" => Ok(Vec::new()),
        list => list
            .split(',')
            .map(str::trim)
            .map(|n| {
                if all().contains(&n) {
                    Ok(n.to_string())
                } else {
                    Err(format!(
                        "unknown controller {n:?}; known: {}, or all, or none",
                        all().join(", ")
                    ))
                }
            })
            .collect(),
    }
}

/// What to run and how.
#[derive(Clone)]
pub struct Options {
    pub controllers: Vec<String>,
    /// Who holds the Leases: unique per process (host name and PID by default).
    pub identity: String,
    pub lease: LeaseTiming,
    pub settings: Settings,
    /// Opens Credentials (the API server's secret key).
    pub secret_key: Option<groundwork_types::secrets::SecretKey>,
    pub bmc: Arc<dyn groundwork_bmc::Connector>,
    /// BMC calls in flight at once, across all Nodes (the pool's limit).
    pub bmc_global_limit: usize,
    /// Bound on each BMC call.
    pub bmc_timeout: Duration,
    /// Power controller: how often a synced Node's power is read again.
    pub power_poll: Duration,
    /// Provisioning controller: time limits and attempts.
    pub provisioning: provision::Timing,
    /// Groundwork's own metrics endpoint (`host:port`, plain HTTP) that the stacks'
    /// Prometheus scrapes.
    pub groundwork_metrics: Option<String>,
    /// The cluster CA (PEM): the services' certificates chain to it.
    pub cluster_ca: Option<String>,
    /// Where the GitSource controller keeps its cache repositories.
    pub git_cache: std::path::PathBuf,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("controllers", &self.controllers)
            .field("identity", &self.identity)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Options {
    pub fn new(controllers: Vec<String>) -> Self {
        Options {
            controllers,
            identity: default_identity(),
            lease: LeaseTiming::default(),
            settings: Settings::default(),
            secret_key: None,
            bmc: Arc::new(groundwork_bmc::NetConnector),
            bmc_global_limit: 32,
            bmc_timeout: Duration::from_secs(10),
            power_poll: Duration::from_secs(60),
            provisioning: provision::Timing::default(),
            groundwork_metrics: None,
            cluster_ca: None,
            git_cache: std::env::temp_dir().join(format!("groundwork-git-{}", std::process::id())),
        }
    }
}

/// `hostname-pid`.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "groundwork".into());
    format!("{host}-{}", std::process::id())
}

/// What starting a controller needs.
struct Env<'a> {
    client: &'a Client,
    caches: &'a caches::Caches,
    bmc: &'a Arc<bmcpool::BmcPool>,
    opts: &'a Options,
    stop: &'a watch::Receiver<bool>,
}

type Started = (JoinHandle<()>, JoinHandle<()>);

/// A controller the process can run: its name, the kinds it reads, how to start it.
struct Registration {
    name: &'static str,
    watches: fn(caches::Kinds) -> caches::Kinds,
    start: Box<dyn Fn(&Env) -> Started + Send + Sync>,
}

fn register<R: Reconciler>(make: impl Fn(&Options) -> R + Send + Sync + 'static) -> Registration {
    Registration {
        name: R::NAME,
        watches: |k| R::watches(k.watch::<R::K>()),
        start: Box::new(move |env| start(make(env.opts), env)),
    }
}

/// Every controller, in the order they are started: adding one is one line here.
fn registry() -> Vec<Registration> {
    vec![
        register(|_| topology::DatacenterController),
        register(|_| topology::RackController::default()),
        register(|_| topology::PlacementController::default()),
        register(|_| profile::ProfileController::default()),
        register(|_| profile::ProfileStatusController::default()),
        register(|o| power::PowerController::new(o.power_poll)),
        register(|o| provision::ProvisionController::new(o.provisioning.clone())),
        register(|o| stack::StackController::new(o.groundwork_metrics.clone())),
        register(|o| {
            gitsource::GitSourceController::new(o.git_cache.clone(), o.cluster_ca.clone())
        }),
    ]
}

/// The kinds the named controllers read: declare them to the process' caches.
pub fn watches(controllers: &[String], mut kinds: caches::Kinds) -> caches::Kinds {
    for r in registry() {
        if controllers.iter().any(|c| c == r.name) {
            kinds = (r.watches)(kinds);
        }
    }
    kinds
}

fn start<R: Reconciler>(r: R, env: &Env) -> Started {
    let ctx = Arc::new(Ctx {
        client: env.client.clone(),
        caches: env.caches.clone(),
        recorder: events::Recorder::new(env.client.clone(), R::NAME, &env.opts.identity),
        secret_key: env.opts.secret_key.clone(),
        bmc: env.bmc.clone(),
        cluster_ca: env.opts.cluster_ca.clone(),
    });
    let (lead_tx, lead_rx) = watch::channel(false);
    let elector = lease::Elector::new(
        env.client.clone(),
        R::NAME,
        &env.opts.identity,
        env.opts.lease.clone(),
    );
    let e = tokio::spawn(elector.run(lead_tx, env.stop.clone()));
    let c = tokio::spawn(runtime::run(
        Arc::new(r),
        ctx,
        env.opts.settings.clone(),
        lead_rx,
    ));
    (e, c)
}

/// Runs the chosen controllers on the process' shared `caches` (which must watch what
/// [`watches`] declares for them) until `stop` turns true, then releases their Leases.
pub async fn run(
    client: Client,
    caches: caches::Caches,
    opts: Options,
    mut stop: watch::Receiver<bool>,
) {
    if opts.controllers.is_empty() {
        return;
    }
    // One pool for the process: the per-BMC locks, the global limit, the deadline.
    let bmc = Arc::new(bmcpool::BmcPool::new(
        opts.bmc.clone(),
        opts.bmc_global_limit,
        opts.bmc_timeout,
    ));
    let env = Env {
        client: &client,
        caches: &caches,
        bmc: &bmc,
        opts: &opts,
        stop: &stop,
    };
    let mut tasks = Vec::new();
    for r in registry() {
        if opts.controllers.iter().any(|c| c == r.name) {
            tasks.push((r.start)(&env));
        }
    }
    tracing::info!(controllers = ?opts.controllers, identity = %opts.identity, "controllers started");
    let _ = stop.wait_for(|s| *s).await;
    // Electors release their Leases and end; each runtime ends when its elector does.
    for (elector, controller) in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), elector).await;
        controller.abort();
    }
    tracing::info!("controllers stopped");
}
