//! The node agent's service half: it follows its machine's ServiceInstances (a long poll on
//! the agent API), runs one [`instance`] actor per instance, and sends their reports back.
//! Only this machine's instances reach it: the server answers per machine certificate.

mod artifact;
mod expand;
mod health;
mod instance;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use groundwork_types::ServiceInstanceSpec;
use groundwork_types::agent::{InstanceReport, InstanceReports, InstanceSet, SecretValue};
use tokio::sync::{mpsc, watch};

/// What every instance actor shares.
pub struct Env {
    /// `ROOT/var/lib/groundwork/services`: one directory per instance.
    pub services: PathBuf,
    /// Fetched artifacts, by sha256.
    pub artifacts: PathBuf,
    /// The cluster CA's PEM, for services that call Groundwork over TLS (`{cluster_ca}`).
    pub cluster_ca: PathBuf,
    pub(crate) api: Api,
}

/// The agent API with the machine's current certificate (renewals replace the client).
#[derive(Clone)]
pub struct Api {
    pub client: watch::Receiver<reqwest::Client>,
    pub base: String,
    pub mac: String,
    /// The cluster CA (PEM).
    pub ca_pem: String,
    /// The agent API's address (`IP:PORT`).
    pub addr: String,
}

impl Env {
    /// The certificate for one of this machine's instances, for the request's key.
    async fn certificate(&self, instance: &str, csr: String) -> Result<String, String> {
        let client = self.api.client.borrow().clone();
        let resp = client
            .post(format!("{}/agent/certificate", self.api.base))
            .query(&[("mac", self.api.mac.as_str()), ("instance", instance)])
            .body(csr)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        let code = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !code.is_success() {
            return Err(format!("{code}: {}", text.trim()));
        }
        Ok(text)
    }

    async fn secret(&self, instance: &str, credential: &str) -> Result<SecretValue, String> {
        let client = self.api.client.borrow().clone();
        let resp = client
            .get(format!("{}/agent/secret", self.api.base))
            .query(&[
                ("mac", self.api.mac.as_str()),
                ("instance", instance),
                ("credential", credential),
            ])
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        let code = resp.status();
        if !code.is_success() {
            return Err(format!(
                "{code}: {}",
                resp.text().await.unwrap_or_default().trim()
            ));
        }
        resp.json().await.map_err(|e| e.to_string())
    }
}

struct Running {
    spec: watch::Sender<Option<ServiceInstanceSpec>>,
    task: tokio::task::JoinHandle<()>,
}

/// Follows the machine's instances until the process ends.
pub async fn run(api: Api, root: PathBuf) {
    let base = root.join("var/lib/groundwork");
    let cluster_ca = base.join("cluster-ca.pem");
    let _ = std::fs::create_dir_all(&base);
    if let Err(e) = std::fs::write(&cluster_ca, &api.ca_pem) {
        eprintln!("groundwork node-agent: {}: {e}", cluster_ca.display());
    }
    let env = Arc::new(Env {
        services: base.join("services"),
        artifacts: base.join("artifacts"),
        cluster_ca,
        api: api.clone(),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(reporter(api.clone(), rx));
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut known: Option<String> = None;
    let mut failures = 0u32;
    loop {
        let client = api.client.borrow().clone();
        let mut q = vec![("mac", api.mac.clone()), ("wait", "25".to_string())];
        if let Some(k) = &known {
            q.push(("known", k.clone()));
        }
        let r = client
            .get(format!("{}/agent/instances", api.base))
            .query(&q)
            .timeout(Duration::from_secs(40))
            .send()
            .await;
        let set: InstanceSet = match r {
            Ok(resp) if resp.status().is_success() => match resp.json().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("groundwork node-agent: instances: {e}");
                    failures += 1;
                    tokio::time::sleep(Duration::from_secs(2u64.pow(failures.min(4)))).await;
                    continue;
                }
            },
            Ok(resp) => {
                failures += 1;
                let code = resp.status();
                // 404/409 until the machine is Ready; quietly.
                if failures == 1 || failures.is_multiple_of(30) {
                    eprintln!(
                        "groundwork node-agent: instances: {code}: {}",
                        resp.text().await.unwrap_or_default().trim()
                    );
                }
                tokio::time::sleep(Duration::from_secs(2u64.pow(failures.min(3)))).await;
                continue;
            }
            Err(e) => {
                failures += 1;
                eprintln!("groundwork node-agent: instances: {}", e.without_url());
                tokio::time::sleep(Duration::from_secs(2u64.pow(failures.min(3)))).await;
                continue;
            }
        };
        failures = 0;
        if known.as_deref() == Some(set.version.as_str()) {
            continue;
        }
        known = Some(set.version.clone());
        let names: std::collections::HashSet<String> =
            set.instances.iter().map(|i| i.name.clone()).collect();
        for i in set.instances {
            match running.get(&i.name) {
                Some(r) if !r.task.is_finished() => {
                    r.spec.send_if_modified(|s| {
                        let new = Some(i.spec.clone());
                        let changed = *s != new;
                        *s = new;
                        changed
                    });
                }
                _ => {
                    let (stx, srx) = watch::channel(Some(i.spec.clone()));
                    eprintln!(
                        "groundwork node-agent: {}: assigned ({})",
                        i.name, i.spec.service
                    );
                    let task =
                        tokio::spawn(instance::run(i.name.clone(), srx, env.clone(), tx.clone()));
                    running.insert(i.name, Running { spec: stx, task });
                }
            }
        }
        // Removed instances stop; their data stays on the machine.
        running.retain(|name, r| {
            if names.contains(name) {
                return true;
            }
            let _ = r.spec.send(None);
            false
        });
    }
}

/// Sends reports in batches: whatever changed, at most every 200 ms.
async fn reporter(api: Api, mut rx: mpsc::UnboundedReceiver<InstanceReport>) {
    let mut pending: HashMap<String, InstanceReport> = HashMap::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(r) => {
                    pending.insert(r.name.clone(), r);
                }
                None => return,
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        while let Ok(r) = rx.try_recv() {
            pending.insert(r.name.clone(), r);
        }
        let batch = InstanceReports {
            reports: pending.values().cloned().collect(),
        };
        let client = api.client.borrow().clone();
        let r = client
            .post(format!("{}/agent/instances", api.base))
            .query(&[("mac", api.mac.as_str())])
            .json(&batch)
            .send()
            .await;
        match r {
            Ok(resp) if resp.status().is_success() => pending.clear(),
            Ok(resp) if resp.status().as_u16() == 404 || resp.status().as_u16() == 403 => {
                // An instance deleted meanwhile: its report has no object to go to.
                pending.clear();
            }
            Ok(resp) => {
                eprintln!(
                    "groundwork node-agent: reports: {}: {}",
                    resp.status(),
                    resp.text().await.unwrap_or_default().trim()
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                eprintln!("groundwork node-agent: reports: {}", e.without_url());
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
