//! `groundwork cluster status|add|remove`: the raft group, through any member's raft port.

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub(crate) struct ClusterArgs {
    /// A member's --raft-listen address.
    #[arg(long, default_value = "127.0.0.1:6444", global = true)]
    raft: String,
    /// The cluster's PKI directory: the raft port needs the admin certificate (mutual TLS).
    /// Without ca.crt and admin.crt there, plain HTTP (members started with
    /// --insecure-plain-http).
    #[arg(long, default_value = "/var/lib/groundwork/pki", global = true)]
    pki_dir: std::path::PathBuf,
    #[command(subcommand)]
    cmd: ClusterCmd,
}

#[derive(clap::Subcommand, Debug)]
enum ClusterCmd {
    /// Members, their roles, the leader, term and log positions (JSON with -o json).
    Status {
        #[arg(short, long, default_value = "table")]
        output: String,
    },
    /// Add a member that runs `groundwork server --raft-listen ADDR` (usually it joins by
    /// itself with --join; this is for a member started without it).
    Add { id: u64, addr: String },
    /// Remove a member (for example a dead one, before replacing it).
    Remove { id: u64 },
    /// Print a join token for a new member (run on a member: it reads DATA_DIR/secret.key and
    /// the CA), and on stderr the command that uses it.
    JoinToken {
        #[arg(long, default_value = "/var/lib/groundwork")]
        data_dir: std::path::PathBuf,
        /// How long the token is good for.
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(i64).range(60..=7 * 86400))]
        ttl_seconds: i64,
    },
}

pub(crate) async fn run(a: ClusterArgs) -> anyhow::Result<()> {
    if let ClusterCmd::JoinToken {
        data_dir,
        ttl_seconds,
    } = &a.cmd
    {
        return groundwork_server::join::print_token(data_dir, Some(&a.pki_dir), *ttl_seconds);
    }
    let mut http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(120));
    let read = |f: &str| std::fs::read(a.pki_dir.join(f));
    let scheme = match (read("ca.crt"), read("admin.crt"), read("admin.key")) {
        (Ok(ca), Ok(mut crt), Ok(key)) => {
            crt.extend(key);
            http = http
                .tls_built_in_root_certs(false)
                .identity(reqwest::Identity::from_pem(&crt)?);
            for c in reqwest::Certificate::from_pem_bundle(&ca)? {
                http = http.add_root_certificate(c);
            }
            "https"
        }
        _ => "http",
    };
    let http = http.build()?;
    let base = format!("{scheme}://{}", a.raft);
    match a.cmd {
        ClusterCmd::Status { output } => {
            let s: serde_json::Value = http
                .get(format!("{base}/raft/v2/status"))
                .send()
                .await
                .with_context(|| format!("no raft member answers at {}", a.raft))?
                .json()
                .await?;
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&s)?);
                return Ok(());
            }
            println!(
                "this member: {} at {} ({}), term {}, leader {}, last log {}, applied {}",
                s["id"],
                s["addr"].as_str().unwrap_or("?"),
                s["state"].as_str().unwrap_or("?"),
                s["term"],
                s["leader"],
                s["lastLogIndex"],
                s["applied"]
            );
            if s["membershipChanging"] == true {
                println!("a membership change is in progress");
            }
            let certs = s["certificates"].as_array().cloned().unwrap_or_default();
            if !certs.is_empty() {
                let list: Vec<String> = certs
                    .iter()
                    .map(|c| {
                        format!(
                            "{} until {}",
                            c["name"].as_str().unwrap_or("?"),
                            c["notAfter"].as_str().unwrap_or("?")
                        )
                    })
                    .collect();
                println!("certificates: {}", list.join(", "));
            }
            println!("{:<20} {:<24} ROLE", "ID", "RAFT ADDRESS");
            for m in s["members"].as_array().into_iter().flatten() {
                let role = if m["id"] == s["leader"] {
                    "leader"
                } else if m["voter"] == true {
                    "voter"
                } else {
                    "learner"
                };
                println!(
                    "{:<20} {:<24} {role}",
                    m["id"],
                    m["addr"].as_str().unwrap_or("?")
                );
            }
            Ok(())
        }
        ClusterCmd::Add { id, addr } => {
            post(
                &http,
                &base,
                "/raft/v2/join",
                serde_json::json!({"id": id, "addr": addr}),
            )
            .await
        }
        ClusterCmd::JoinToken { .. } => unreachable!("handled above"),
        ClusterCmd::Remove { id } => {
            post(
                &http,
                &base,
                "/raft/v2/remove",
                serde_json::json!({"id": id}),
            )
            .await
        }
    }
}

async fn post(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<()> {
    let r: Result<String, String> = http
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .with_context(|| format!("no raft member answers at {base}"))?
        .json()
        .await?;
    match r {
        Ok(m) => {
            println!("{m}");
            Ok(())
        }
        Err(e) => anyhow::bail!("{e}"),
    }
}
