//! `groundwork secrets`: rotating the key that seals Credentials and signs tokens.
//!
//! 1. `groundwork secrets rotate-key --data-dir D` on one member puts a new active key in front
//!    of D/secret.key (the old one stays, retired, to open what it sealed). Copy the file to
//!    every member, then restart them one at a time.
//! 2. `groundwork secrets reseal` writes every Credential back through the API; the server
//!    seals each with the active key.
//! 3. `groundwork secrets drop-retired --data-dir D` on every member (and a rolling restart):
//!    only the active key remains. Tokens signed with a retired key stop working then.

use std::path::{Path, PathBuf};

use anyhow::Context;
use groundwork_types::Credential;
use groundwork_types::secrets::SecretKey;
use kube::api::{Api, PostParams};

#[derive(clap::Args, Debug)]
pub(crate) struct SecretsArgs {
    #[command(subcommand)]
    cmd: SecretsCmd,
}

#[derive(clap::Subcommand, Debug)]
enum SecretsCmd {
    /// Put a new active key in front of DATA_DIR/secret.key (offline; then copy the file to
    /// every member and restart them one at a time).
    RotateKey {
        #[arg(long, default_value = "/var/lib/groundwork")]
        data_dir: PathBuf,
    },
    /// Write every Credential back through the API, so the server seals it with the active
    /// key.
    Reseal,
    /// Print a Credential's user name and password (`credential/NAME` or `NAME`): for
    /// operators with the `use` verb on it (generated secrets such as Consul's management
    /// token are Credentials). The request is audited; the value is not.
    Reveal {
        /// `credential/NAME` or `NAME`.
        what: String,
        /// Print only the password (for scripts: `$(groundwork secrets reveal X --password)`).
        #[arg(long)]
        password: bool,
    },
    /// Remove the retired keys from DATA_DIR/secret.key (after `reseal`, on every member).
    DropRetired {
        #[arg(long, default_value = "/var/lib/groundwork")]
        data_dir: PathBuf,
    },
}

fn read_key(path: &Path) -> anyhow::Result<SecretKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    SecretKey::decode(&text).with_context(|| format!("{}", path.display()))
}

fn write_key(path: &Path, key: &SecretKey) -> anyhow::Result<()> {
    groundwork_pki::write_private(path, &format!("{}\n", key.encode())).map_err(anyhow::Error::msg)
}

pub(crate) async fn run(a: SecretsArgs, kubeconfig: Option<PathBuf>) -> anyhow::Result<()> {
    match a.cmd {
        SecretsCmd::RotateKey { data_dir } => {
            let path = data_dir.join("secret.key");
            let key = read_key(&path)?.rotated();
            write_key(&path, &key)?;
            println!(
                "{}: a new active key, {} retired. Copy it to every member, restart them one at a time, then run `groundwork secrets reseal`.",
                path.display(),
                key.len() - 1
            );
            Ok(())
        }
        SecretsCmd::DropRetired { data_dir } => {
            let path = data_dir.join("secret.key");
            let key = read_key(&path)?;
            let dropped = key.len() - 1;
            write_key(&path, &key.active_only())?;
            println!(
                "{}: {dropped} retired key(s) removed. Restart this member.",
                path.display()
            );
            Ok(())
        }
        SecretsCmd::Reveal { what, password } => {
            let name = match what.split_once('/') {
                Some((k, n))
                    if ["credential", "credentials", "credentials.groundwork.dev"]
                        .contains(&k.to_ascii_lowercase().as_str()) =>
                {
                    n.to_string()
                }
                Some((k, _)) => anyhow::bail!(
                    "{what}: only Credentials hold secrets (credential/NAME), not {k}"
                ),
                None => what.clone(),
            };
            let api = crate::client::connect(kubeconfig).await?;
            let req = http::Request::get(format!(
                "/apis/groundwork.dev/v1alpha1/credentials/{name}/reveal"
            ))
            .body(Vec::new())?;
            let v: serde_json::Value = api
                .client
                .request(req)
                .await
                .with_context(|| format!("credential/{name}"))?;
            let pw = v["password"].as_str().unwrap_or_default();
            if password {
                println!("{pw}");
            } else {
                println!(
                    "username: {}\npassword: {pw}",
                    v["username"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }
        SecretsCmd::Reseal => {
            let api = crate::client::connect(kubeconfig).await?;
            let creds: Api<Credential> = Api::all(api.client);
            let list = creds
                .list(&Default::default())
                .await
                .map_err(crate::client::explain)?;
            let mut n = 0;
            for c in list.items {
                let name = c.metadata.name.clone().unwrap_or_default();
                // A replace with the resourceVersion read: a concurrent change wins, and is
                // sealed by the server anyway.
                match creds.replace(&name, &PostParams::default(), &c).await {
                    Ok(_) => n += 1,
                    Err(kube::Error::Api(s)) if s.code == 409 => n += 1,
                    Err(e) => {
                        return Err(crate::client::explain(e))
                            .with_context(|| format!("credential {name}"));
                    }
                }
            }
            println!("{n} Credential(s) sealed with the active key");
            Ok(())
        }
    }
}
