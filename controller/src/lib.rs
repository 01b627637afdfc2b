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
pub mod events;
pub mod lease;
pub mod power;
pub mod profile;
pub mod provision;
pub mod queue;
pub mod retry;
pub mod runtime;
pub mod topology;

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use lease::{LEASE_NAMESPACE, LeaseTiming};
pub use runtime::{Action, Ctx, Error, Reconciler, Settings};

/// Every controller, in the order they are started.
pub const ALL: &[&str] = &[
    "datacenter",
    "rack",
    "node-placement",
    "profile",
    "profile-status",
    "power",
    "provisioning",
];

/// Parses `all`, `none` or a comma-separated list of controller names.
pub fn parse_controllers(s: &str) -> Result<Vec<String>, String> {
    match s.trim() {
        "all" => Ok(ALL.iter().map(|s| s.to_string()).collect()),
        "none" | "" => Ok(Vec::new()),
        list => list
            .split(',')
            .map(str::trim)
            .map(|n| {
                if ALL.contains(&n) {
                    Ok(n.to_string())
                } else {
                    Err(format!(
                        "unknown controller {n:?}; known: {}, or all, or none",
                        ALL.join(", ")
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

fn start<R: Reconciler>(
    r: R,
    client: &Client,
    caches: &caches::Caches,
    bmc: &Arc<bmcpool::BmcPool>,
    opts: &Options,
    stop: &watch::Receiver<bool>,
) -> (JoinHandle<()>, JoinHandle<()>) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        caches: caches.clone(),
        recorder: events::Recorder::new(client.clone(), R::NAME, &opts.identity),
        secret_key: opts.secret_key.clone(),
        bmc: bmc.clone(),
    });
    let (lead_tx, lead_rx) = watch::channel(false);
    let elector = lease::Elector::new(client.clone(), R::NAME, &opts.identity, opts.lease.clone());
    let e = tokio::spawn(elector.run(lead_tx, stop.clone()));
    let c = tokio::spawn(runtime::run(
        Arc::new(r),
        ctx,
        opts.settings.clone(),
        lead_rx,
    ));
    (e, c)
}

/// Runs the chosen controllers on the process' shared `caches` until `stop` turns true, then
/// releases their Leases.
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
    let mut tasks = Vec::new();
    for name in &opts.controllers {
        let t = match name.as_str() {
            "datacenter" => start(
                topology::DatacenterController,
                &client,
                &caches,
                &bmc,
                &opts,
                &stop,
            ),
            "rack" => start(
                topology::RackController::default(),
                &client,
                &caches,
                &bmc,
                &opts,
                &stop,
            ),
            "node-placement" => start(
                topology::PlacementController::default(),
                &client,
                &caches,
                &bmc,
                &opts,
                &stop,
            ),
            "profile" => start(
                profile::ProfileController,
                &client,
                &caches,
                &bmc,
                &opts,
                &stop,
            ),
            "profile-status" => start(
                profile::ProfileStatusController,
                &client,
                &caches,
                &bmc,
                &opts,
                &stop,
            ),
            "power" => start(
                power::PowerController {
                    poll: opts.power_poll,
                },
                &client,
                &caches,
                &bmc,
                &opts,
                &stop,
            ),
            "provisioning" => start(
                provision::ProvisionController::new(opts.provisioning.clone()),
                &client,
                &caches,
                &bmc,
                &opts,
                &stop,
            ),
            other => {
                tracing::error!(controller = other, "unknown controller; skipped");
                continue;
            }
        };
        tasks.push(t);
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
