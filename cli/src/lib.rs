//! The `groundwork` command: the server, and kubectl-like commands for operators.

mod apply;
mod bmc;
mod boot;
mod client;
mod cluster;
mod commands;
mod dhcp;
mod lab;
mod manifests;
mod output;
mod pki;
mod schema;
mod secrets;

pub use apply::three_way_merge_patch;
pub use manifests::{Manifest, parse_documents, read_manifests};
pub use schema::schema_files;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Groundwork bootstraps a datacenter from bare metal.
#[derive(Parser, Debug)]
#[command(name = "groundwork", version, about)]
struct Cli {
    /// Kubeconfig to use (default: $KUBECONFIG, then ~/.kube/config), as kubectl.
    #[arg(long, global = true, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the API server on an embedded store, with the controllers.
    Server(Box<groundwork_server::ServerArgs>),
    /// Talk to one BMC directly (IPMI or Redfish): power, boot device, info.
    Bmc(bmc::BmcArgs),
    /// The ramdisk agent: report this machine's inventory, then install or wipe on request.
    Agent(groundwork_agent::ramdisk::AgentArgs),
    /// The installed system's agent: apply the machine config from disk, then heartbeat.
    NodeAgent(groundwork_agent::node::NodeAgentArgs),
    /// A whole lab on this machine: QEMU machines behind IPMI BMCs, provisioned to Ready.
    Lab(lab::LabArgs),
    /// The cluster CA and client certificates: init, issue.
    Pki(pki::PkiArgs),
    /// Rotate the key that seals Credentials and signs tokens: rotate-key, reseal,
    /// drop-retired.
    Secrets(secrets::SecretsArgs),
    /// Revoke a machine's certificates and the join tokens issued to it so far (node/NAME):
    /// it must PXE-boot again to join.
    Revoke {
        /// node/NAME
        object: String,
    },
    /// Retry a Failed Node now (sets its groundwork.dev/retry annotation).
    Retry {
        /// node/NAME
        object: String,
    },
    /// Run the boot file servers (TFTP and HTTP/iPXE) from one directory.
    Boot(boot::BootArgs),
    /// Run the DHCP server alone, configured by flags.
    Dhcp(dhcp::DhcpArgs),
    /// Run controllers only, against the API server of the kubeconfig.
    Controller(groundwork_server::ControllerOnlyArgs),
    /// Show and change the raft group: status, add, remove.
    Cluster(cluster::ClusterArgs),
    /// Show the controllers' log lines about one object (KIND/NAME), and follow them (-f).
    Logs {
        /// KIND/NAME, e.g. node/server-1 or rack/rack-a1.
        object: String,
        /// Keep streaming new lines.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines kept so far.
        #[arg(long)]
        tail: Option<usize>,
    },
    /// Create or update objects from YAML files, a directory, or stdin (-).
    Apply {
        /// File, directory (every .yaml/.yml/.json in it, sorted) or - for stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Validate on the server without storing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List objects of a kind, or show one.
    Get {
        /// Kind: Node, nodes, node, gn, nodes.groundwork.dev, ...
        kind: String,
        names: Vec<String>,
        /// Output: table (default), wide, yaml, json, name.
        #[arg(short, long, default_value = "table")]
        output: String,
        /// Label selector, e.g. role=worker.
        #[arg(short = 'l', long)]
        selector: Option<String>,
    },
    /// Show an object in full, with its Events.
    Describe { kind: String, name: String },
    /// Delete objects (graceful while finalizers remain).
    Delete {
        kind: String,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Stream changes of a kind (or one object): type, object, and its status.
    Watch {
        kind: String,
        name: Option<String>,
        /// Print the whole object as JSON on each change.
        #[arg(long)]
        full: bool,
    },
    /// List Events, for every object or for one (KIND/NAME).
    Events { object: Option<String> },
    /// Print the web console's URL (the API server's /ui/); opens nothing.
    Ui,
    /// Print the JSON Schema of a kind, or write every schema into a directory.
    Schema {
        /// Kind to print (omit with --write).
        kind: Option<String>,
        /// Print the CRD (YAML) instead of the JSON Schema.
        #[arg(long)]
        crd: bool,
        /// Write `<kind>.schema.json` and `<kind>.crd.yaml` for every kind into DIR.
        #[arg(long, value_name = "DIR")]
        write: Option<PathBuf>,
    },
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return 1;
        }
    };
    let result = rt.block_on(run(cli));
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let kc = cli.kubeconfig;
    match cli.command {
        Command::Server(args) => groundwork_server::run(*args).await,
        Command::Controller(args) => {
            let api = client::connect(kc).await?;
            groundwork_server::run_controllers(args, api.client).await
        }
        Command::Bmc(args) => bmc::run(args).await,
        Command::Dhcp(args) => dhcp::run(args).await,
        Command::Cluster(args) => cluster::run(args).await,
        Command::Boot(args) => boot::run(args).await,
        Command::Agent(args) => groundwork_agent::ramdisk::run(args).await,
        Command::NodeAgent(args) => groundwork_agent::node::run(args).await,
        Command::Lab(args) => lab::run(args).await,
        Command::Pki(args) => pki::run(args),
        Command::Secrets(args) => secrets::run(args, kc).await,
        Command::Retry { object } => commands::retry(kc, &object).await,
        Command::Revoke { object } => commands::revoke(kc, &object).await,
        Command::Logs {
            object,
            follow,
            tail,
        } => commands::logs(kc, &object, follow, tail).await,
        Command::Apply { files, dry_run } => apply::run(kc, &files, dry_run).await,
        Command::Get {
            kind,
            names,
            output,
            selector,
        } => commands::get(kc, &kind, &names, &output, selector.as_deref()).await,
        Command::Describe { kind, name } => commands::describe(kc, &kind, &name).await,
        Command::Delete { kind, names } => commands::delete(kc, &kind, &names).await,
        Command::Watch { kind, name, full } => {
            commands::watch(kc, &kind, name.as_deref(), full).await
        }
        Command::Events { object } => commands::events(kc, object.as_deref()).await,
        Command::Ui => commands::ui(kc).await,
        Command::Schema { kind, crd, write } => schema::run(kind.as_deref(), crd, write.as_deref()),
    }
}
