//! `groundwork pki`: the cluster CA and client certificates, offline (from the CA's files).

use std::path::PathBuf;

use anyhow::Context;
use groundwork_pki::{Pki, Usage};

#[derive(clap::Args, Debug)]
pub(crate) struct PkiArgs {
    #[command(subcommand)]
    cmd: PkiCmd,
}

#[derive(clap::Subcommand, Debug)]
enum PkiCmd {
    /// Create the CA (and the admin and controllers certificates) in DIR, unless it exists:
    /// copy DIR to every member of a raft group before their first start (--pki-dir).
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a client certificate and write a kubeconfig for it.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// The user (CN), e.g. alice, or system:node:NAME for a machine.
        #[arg(long)]
        user: String,
        /// The group (O), e.g. system:masters or system:nodes.
        #[arg(long)]
        group: Option<String>,
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(i64).range(1..=3650))]
        days: i64,
        /// The API server's URL, for the kubeconfig.
        #[arg(long)]
        server: String,
        /// Where to write the kubeconfig (mode 0600).
        #[arg(long)]
        out: PathBuf,
    },
    /// Rotate the cluster CA in three steps (copy DIR to every member and restart them one
    /// at a time after each): begin (trust a new CA), promote (it issues), finish (only it
    /// is trusted).
    RotateCa {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_enum)]
        step: Step,
    },
    /// Print a short-lived bearer token for the API (signed with DATA_DIR/secret.key, so any
    /// member accepts it; it cannot be revoked before it expires, except by rotating the key).
    Token {
        /// The member's data directory (its secret.key).
        #[arg(long, default_value = "/var/lib/groundwork")]
        data_dir: PathBuf,
        #[arg(long)]
        user: String,
        /// Groups (repeatable).
        #[arg(long)]
        group: Vec<String>,
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(i64).range(60..=7 * 86400))]
        ttl_seconds: i64,
    },
    /// Print a join token for a machine Groundwork did not install (a Node with
    /// `spec.provisioning: External`) and the CA's hash: run `groundwork node-agent --join
    /// URL --token TOKEN --ca-cert-hash HASH --mac MAC --agent-api ADDR` on it. The token is
    /// good once, for that MAC only.
    MachineToken {
        /// The member's data directory (its secret.key and pki/).
        #[arg(long, default_value = "/var/lib/groundwork")]
        data_dir: PathBuf,
        /// The Node's first boot MAC.
        #[arg(long)]
        mac: String,
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(i64).range(60..=7 * 86400))]
        ttl_seconds: i64,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Step {
    Begin,
    Promote,
    Finish,
}

pub(crate) fn run(a: PkiArgs) -> anyhow::Result<()> {
    match a.cmd {
        PkiCmd::RotateCa { dir, step } => {
            use groundwork_pki::Rotation;
            let step = match step {
                Step::Begin => Rotation::Begin,
                Step::Promote => Rotation::Promote,
                Step::Finish => Rotation::Finish,
            };
            let msg = groundwork_pki::rotate(&dir, step).map_err(anyhow::Error::msg)?;
            println!("{}: {msg}", dir.display());
            Ok(())
        }
        PkiCmd::Token {
            data_dir,
            user,
            group,
            ttl_seconds,
        } => {
            let path = data_dir.join("secret.key");
            let key = groundwork_types::secrets::SecretKey::decode(
                &std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?,
            )
            .with_context(|| format!("{}", path.display()))?;
            println!(
                "{}",
                key.issue_token(
                    groundwork_api::auth::API_AUDIENCE,
                    &user,
                    &group,
                    ttl_seconds
                )
            );
            Ok(())
        }
        PkiCmd::MachineToken {
            data_dir,
            mac,
            ttl_seconds,
        } => {
            let mac = groundwork_types::normalize_mac(&mac)
                .with_context(|| format!("--mac {mac:?}: not a MAC address"))?;
            let path = data_dir.join("secret.key");
            let key = groundwork_types::secrets::SecretKey::decode(
                &std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?,
            )
            .with_context(|| format!("{}", path.display()))?;
            let ca_path = data_dir.join("pki/ca.crt");
            let ca = std::fs::read_to_string(&ca_path)
                .with_context(|| format!("reading {}", ca_path.display()))?;
            let hash = groundwork_pki::ca_hash(&ca)
                .with_context(|| format!("{}: no certificate", ca_path.display()))?;
            println!(
                "token: {}",
                key.issue_token(
                    groundwork_server::AGENT_JOIN_AUDIENCE,
                    &mac,
                    &[],
                    ttl_seconds
                )
            );
            println!("ca-cert-hash: {hash}");
            Ok(())
        }
        PkiCmd::Init { dir } => {
            let pki = Pki::load_or_create(&dir).map_err(anyhow::Error::msg)?;
            pki.client("admin", "admin", Some(groundwork_pki::MASTERS))
                .map_err(anyhow::Error::msg)?;
            pki.client(
                "controllers",
                "groundwork:controllers",
                Some(groundwork_pki::MASTERS),
            )
            .map_err(anyhow::Error::msg)?;
            println!("CA ready in {}", dir.display());
            Ok(())
        }
        PkiCmd::Issue {
            dir,
            user,
            group,
            days,
            server,
            out,
        } => {
            let pki = Pki::load_or_create(&dir).map_err(anyhow::Error::msg)?;
            let ck = pki
                .issue(&user, group.as_deref(), &[], Usage::Client, days)
                .map_err(anyhow::Error::msg)?;
            let text = groundwork_server::kubeconfig(&server, Some((pki.ca_pem(), &ck)));
            groundwork_server::write_private(&out, &text)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("kubeconfig for {user} written to {}", out.display());
            Ok(())
        }
    }
}
