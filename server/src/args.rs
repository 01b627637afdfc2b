//! The command-line flags of `groundwork server` and `groundwork controller`.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Directory for the database and the generated kubeconfig.
    #[arg(long, default_value = "/var/lib/groundwork")]
    pub(crate) data_dir: PathBuf,
    /// Address for the Kubernetes-compatible API (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub(crate) listen: SocketAddr,
    /// Replicate the store with raft: members talk on this address (port 0 picks a free
    /// port). Without --join, a member with no data starts a new group of one.
    #[arg(long)]
    pub(crate) raft_listen: Option<SocketAddr>,
    /// Join the raft group of the member whose --raft-listen address this is (any member:
    /// the request is forwarded to the leader). Needs --raft-listen.
    #[arg(long, requires = "raft_listen")]
    pub(crate) join: Option<String>,
    /// With --join and an empty --pki-dir: fetch the cluster's CA and secret key from the
    /// member with this token (`groundwork cluster join-token` prints one) instead of copying
    /// them in.
    #[arg(long, requires_all = ["join", "ca_cert_hash"])]
    pub(crate) join_token: Option<String>,
    /// The CA the --join member must present (sha256:HEX, printed with the join token).
    #[arg(long, requires = "join_token")]
    pub(crate) ca_cert_hash: Option<String>,
    /// Raft: take a snapshot after this many log entries (and purge the log behind it). An
    /// entry holds the writes that reached the leader together, up to 1 MiB. A snapshot is
    /// also taken when the log since the last one has outgrown it (and 64 MiB).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) raft_snapshot_every: u64,
    /// Raft: log entries kept behind a snapshot (followers further behind get the snapshot).
    #[arg(long, default_value_t = 1000)]
    pub(crate) raft_logs_to_keep: u64,
    /// Raft: persist applied writes to the store's file at least every this many
    /// milliseconds (also once the applies pause, see below, and whenever 64 MiB of them are
    /// in memory). The raft log is the durable record; this bounds what is applied again
    /// after a crash. Shorter trades write throughput for a lower tail latency under heavy
    /// load (docs/benchmarks.md).
    #[arg(long, default_value_t = groundwork_raft::FLUSH_EVERY.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub(crate) raft_persist_every_ms: u64,
    /// Raft: persist applied writes once no write has been applied for this many milliseconds
    /// (a burst is made durable as it ends; the period above bounds a steady load).
    #[arg(long, default_value_t = groundwork_raft::FLUSH_IDLE.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub(crate) raft_persist_idle_ms: u64,
    /// The cluster CA and the certificates it issued (default: DATA_DIR/pki). A new directory
    /// gets a new CA; members of one raft group share it (copy ca.crt and ca.key in first).
    #[arg(long)]
    pub(crate) pki_dir: Option<PathBuf>,
    /// More names or addresses for the server certificate (repeatable); localhost, the
    /// loopback addresses, the host name and the --listen address are always in it.
    #[arg(long = "tls-san")]
    pub(crate) tls_sans: Vec<String>,
    /// Bearer tokens: CSV lines `token,user,uid,"group1,group2"[,expires=RFC3339]`, read again
    /// when the file changes (delete a line to revoke).
    #[arg(long)]
    pub(crate) token_file: Option<PathBuf>,
    /// Audit log of every write and every refused request: a file (rotated at
    /// --audit-log-max-mb, 5 kept) or - for stdout.
    #[arg(long)]
    pub(crate) audit_log: Option<String>,
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) audit_log_max_mb: u64,
    /// Serve plain HTTP with no authentication (loopback addresses only): for local
    /// benchmarks against servers that speak plain HTTP. Never in production.
    #[arg(long)]
    pub(crate) insecure_plain_http: bool,
    /// Events of history kept for watches to resume from.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) history_retention: u64,
    /// Memory for the object store's page cache, in MiB. Reads that miss it are served from
    /// the operating system's file cache.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(8..=1 << 20))]
    pub(crate) store_cache_mib: u64,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    pub(crate) log_format: String,
    #[command(flatten)]
    pub(crate) controllers: ControllerArgs,
    /// Boot files (undionly.kpxe, ipxe.efi, the discovery ramdisk): serves them over HTTP
    /// (--boot-http) and TFTP (--boot-tftp), with iPXE scripts rendered from the Nodes.
    #[arg(long)]
    pub(crate) boot_root: Option<PathBuf>,
    #[arg(long, default_value = "0.0.0.0:8080", requires = "boot_root")]
    pub(crate) boot_http: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:69", requires = "boot_root")]
    pub(crate) boot_tftp: SocketAddr,
    /// The agent API (TLS; machines join there and then call it with their own
    /// certificates). Default: --boot-http's address, port 8443.
    #[arg(long, requires = "boot_root")]
    pub(crate) boot_https: Option<SocketAddr>,
    /// How long the join token in an iPXE script is good for, in seconds (it is also good
    /// only once).
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(i64).range(60..=7 * 86400))]
    pub(crate) join_token_ttl_seconds: i64,
    /// How long a machine's certificate is valid, in hours (node agents renew theirs when a
    /// third of that is left).
    #[arg(long, default_value_t = 720, value_parser = clap::value_parser!(i64).range(1..=24 * 365))]
    pub(crate) machine_cert_hours: i64,
    /// Discovery ramdisk kernel, initrd (under --boot-root, or URLs) and command line.
    #[arg(long, default_value = "vmlinuz")]
    pub(crate) boot_kernel: String,
    #[arg(long, default_value = "initrd.img")]
    pub(crate) boot_initrd: String,
    #[arg(long, default_value = "console=ttyS0")]
    pub(crate) boot_cmdline: String,
    /// How often installed systems' node agents heartbeat, in seconds.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub(crate) heartbeat_seconds: u32,
    /// Also serve `/metrics` (and only that) in plain HTTP here, for Prometheus servers
    /// without a client certificate, such as the ones a ServiceStack's metrics layer runs
    /// (it scrapes this address). Metrics carry no secrets; the API stays authenticated.
    #[arg(long)]
    pub(crate) metrics_listen: Option<SocketAddr>,
    /// Serve DHCP for this boot network (a `spec.bootNetworks[].name` of a Datacenter) on
    /// --dhcp-interface, configured and reconfigured from the API.
    #[arg(long, requires_all = ["dhcp_interface", "dhcp_server_ip"])]
    pub(crate) dhcp_network: Option<String>,
    #[arg(long)]
    pub(crate) dhcp_interface: Option<String>,
    /// This server's address on that boot network.
    #[arg(long)]
    pub(crate) dhcp_server_ip: Option<std::net::Ipv4Addr>,
}

/// Which controllers run, and how they elect a leader.
#[derive(clap::Args, Debug)]
pub struct ControllerArgs {
    /// Controllers to run: all, none, or a comma-separated list of
    /// datacenter, rack, node-placement, profile, profile-status, power, provisioning.
    #[arg(long, default_value = "all", value_parser = check_controllers)]
    pub(crate) controllers: String,
    /// Lease holder identity (default: host name and PID); unique per process.
    #[arg(long)]
    pub(crate) identity: Option<String>,
    /// How long a controller Lease lasts without renewal before another instance takes over.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) lease_duration_seconds: u64,
    /// Reconciles of different objects at once, per controller.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub(crate) workers: u64,
    /// Power controller: BMC calls in flight at once across all Nodes (one per BMC always).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub(crate) bmc_concurrency: u64,
    /// Power controller: time limit of each BMC call, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub(crate) bmc_timeout_seconds: u64,
    /// Power controller: how often the power of a settled Node is read again, in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub(crate) power_poll_seconds: u64,
    /// Provisioning: seconds from power-on through PXE to the inventory report before the
    /// machine is power-cycled again (it did not PXE-boot).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) discover_timeout_seconds: u64,
    /// Provisioning: seconds from a PXE boot into the ramdisk to its agent starting the
    /// install or wipe.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) task_start_timeout_seconds: u64,
    /// Provisioning: seconds an install or wipe may run.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) task_timeout_seconds: u64,
    /// Provisioning: seconds from the reset into the installed system to its first heartbeat.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) boot_timeout_seconds: u64,
    /// Provisioning: tries per phase before the Node is Failed.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) provision_attempts: u32,
    /// Provisioning: a Failed Node is tried again after this many seconds (at once when it or
    /// its Profile changes, or on `groundwork retry`).
    #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) failed_retry_seconds: u64,
}

fn check_controllers(s: &str) -> Result<String, String> {
    groundwork_controller::parse_controllers(s).map(|_| s.to_string())
}

impl ControllerArgs {
    pub fn options(&self) -> groundwork_controller::Options {
        let list = groundwork_controller::parse_controllers(&self.controllers).unwrap_or_default();
        let mut o = groundwork_controller::Options::new(list);
        if let Some(id) = &self.identity {
            o.identity = id.clone();
        }
        o.lease = groundwork_controller::LeaseTiming::from_lease_duration(
            std::time::Duration::from_secs(self.lease_duration_seconds),
        );
        o.settings.workers = self.workers as usize;
        o.bmc_global_limit = self.bmc_concurrency as usize;
        o.bmc_timeout = std::time::Duration::from_secs(self.bmc_timeout_seconds);
        o.power_poll = std::time::Duration::from_secs(self.power_poll_seconds);
        let secs = std::time::Duration::from_secs;
        o.provisioning = groundwork_controller::provision::Timing {
            discover: secs(self.discover_timeout_seconds),
            task_start: secs(self.task_start_timeout_seconds),
            task: secs(self.task_timeout_seconds),
            boot: secs(self.boot_timeout_seconds),
            attempts: self.provision_attempts,
            failed_retry: secs(self.failed_retry_seconds),
            ..Default::default()
        };
        o
    }
}

/// `groundwork controller`: controllers only, against any API server (kubeconfig).
#[derive(clap::Args, Debug)]
pub struct ControllerOnlyArgs {
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    pub(crate) log_format: String,
    /// The API server's secret key (its DATA_DIR/secret.key), to open Credentials for BMCs.
    #[arg(long)]
    pub(crate) secret_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) controllers: ControllerArgs,
}
