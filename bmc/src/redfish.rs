//! A Redfish client for the few resources provisioning needs: the ComputerSystem's power state
//! and `ComputerSystem.Reset` action, boot source override, and the system inventory
//! (processors, memory, NICs, storage). Written against DMTF DSP0266/DSP8010 with reqwest;
//! the generated-schema crates were either stale or pinned to the newest compiler
//! (docs/decisions.md).

use futures::future::BoxFuture;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::{Bmc, BmcError, BmcInfo, BmcInventory, BootTarget, Endpoint, Power, PowerAction};

pub struct RedfishBmc {
    base: String,
    client: reqwest::Client,
    username: String,
    password: String,
    /// The ComputerSystem's path (the first member of /redfish/v1/Systems).
    system: OnceCell<String>,
}

/// A summary of the system as Redfish reports it, to merge with in-band inventory.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct RedfishInventory {
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub uuid: Option<String>,
    pub processors: Option<u64>,
    pub logical_processors: Option<u64>,
    pub memory_gib: Option<f64>,
    pub mac_addresses: Vec<String>,
    pub drives_bytes: Vec<u64>,
}

fn base_url(address: &str) -> String {
    let a = address.trim_end_matches('/');
    if a.starts_with("http://") || a.starts_with("https://") {
        a.to_string()
    } else {
        format!("https://{a}")
    }
}

impl RedfishBmc {
    pub fn new(ep: &Endpoint) -> Result<Self, BmcError> {
        let client = reqwest::Client::builder()
            .timeout(ep.timeout)
            .connect_timeout(ep.timeout)
            .danger_accept_invalid_certs(ep.insecure_tls)
            .build()
            .map_err(|e| BmcError::Config(format!("Redfish client: {e}")))?;
        Ok(RedfishBmc {
            base: base_url(&ep.address),
            client,
            username: ep.username.clone(),
            password: ep.password.clone(),
            system: OnceCell::new(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Result<Value, BmcError> {
        let resp = req
            .basic_auth(&self.username, Some(&self.password))
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    BmcError::Timeout(format!("{}: {what}", self.base))
                } else {
                    BmcError::Http(format!("{}: {what}: {e}", self.base))
                }
            })?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(BmcError::Auth(format!(
                "{}: {what}: {status} for user {:?}",
                self.base, self.username
            )));
        }
        let text = resp
            .text()
            .await
            .map_err(|e| BmcError::Http(format!("{}: {what}: {e}", self.base)))?;
        if !status.is_success() {
            // Redfish errors carry error.message / @Message.ExtendedInfo.
            let detail = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(String::from))
                .unwrap_or_else(|| text.chars().take(200).collect());
            return Err(BmcError::Http(format!(
                "{}: {what}: {status}: {detail}",
                self.base
            )));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text)
            .map_err(|e| BmcError::Protocol(format!("{}: {what}: not JSON: {e}", self.base)))
    }

    async fn get(&self, path: &str) -> Result<Value, BmcError> {
        self.send(self.client.get(self.url(path)), &format!("GET {path}"))
            .await
    }

    async fn system_path(&self) -> Result<String, BmcError> {
        self.system
            .get_or_try_init(|| async {
                let v = self.get("/redfish/v1/Systems").await?;
                v["Members"][0]["@odata.id"]
                    .as_str()
                    .map(String::from)
                    .ok_or_else(|| {
                        BmcError::Protocol(format!(
                            "{}: no ComputerSystem in /redfish/v1/Systems",
                            self.base
                        ))
                    })
            })
            .await
            .cloned()
    }

    async fn system(&self) -> Result<(String, Value), BmcError> {
        let p = self.system_path().await?;
        let v = self.get(&p).await?;
        Ok((p, v))
    }

    pub async fn power(&self) -> Result<Power, BmcError> {
        let (_, v) = self.system().await?;
        match v["PowerState"].as_str() {
            Some("On") | Some("PoweringOff") => Ok(Power::On),
            Some("Off") | Some("PoweringOn") => Ok(Power::Off),
            other => Err(BmcError::Protocol(format!(
                "{}: PowerState {other:?}",
                self.base
            ))),
        }
    }

    pub async fn reset(&self, action: PowerAction) -> Result<(), BmcError> {
        let (path, v) = self.system().await?;
        let target = v["Actions"]["#ComputerSystem.Reset"]["target"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| format!("{path}/Actions/ComputerSystem.Reset"));
        let kind = match action {
            PowerAction::On => "On",
            PowerAction::Off => "ForceOff",
            PowerAction::Cycle => "PowerCycle",
            PowerAction::Reset => "ForceRestart",
            PowerAction::Soft => "GracefulShutdown",
        };
        self.send(
            self.client
                .post(self.url(&target))
                .json(&json!({"ResetType": kind})),
            &format!("POST {target} ResetType={kind}"),
        )
        .await
        .map(|_| ())
    }

    pub async fn boot(&self, target: BootTarget, once: bool, efi: bool) -> Result<(), BmcError> {
        let path = self.system_path().await?;
        let t = match target {
            BootTarget::Pxe => "Pxe",
            BootTarget::Disk => "Hdd",
            BootTarget::Cdrom => "Cd",
            BootTarget::BiosSetup => "BiosSetup",
        };
        let body = json!({"Boot": {
            "BootSourceOverrideTarget": t,
            "BootSourceOverrideEnabled": if once { "Once" } else { "Continuous" },
            "BootSourceOverrideMode": if efi { "UEFI" } else { "Legacy" },
        }});
        self.send(
            self.client.patch(self.url(&path)).json(&body),
            &format!("PATCH {path} Boot"),
        )
        .await
        .map(|_| ())
    }

    /// The system's inventory: summary fields plus NIC MACs and drive sizes (best effort: a
    /// collection the BMC does not have is skipped).
    pub async fn inventory(&self) -> Result<RedfishInventory, BmcError> {
        let (_, v) = self.system().await?;
        let s = |k: &str| v[k].as_str().map(String::from);
        let mut inv = RedfishInventory {
            manufacturer: s("Manufacturer"),
            model: s("Model"),
            serial: s("SerialNumber"),
            uuid: s("UUID"),
            processors: v["ProcessorSummary"]["Count"].as_u64(),
            logical_processors: v["ProcessorSummary"]["LogicalProcessorCount"].as_u64(),
            memory_gib: v["MemorySummary"]["TotalSystemMemoryGiB"].as_f64(),
            ..Default::default()
        };
        if let Some(nics) = v["EthernetInterfaces"]["@odata.id"].as_str()
            && let Ok(c) = self.get(nics).await
        {
            for m in c["Members"].as_array().into_iter().flatten() {
                if let Some(p) = m["@odata.id"].as_str()
                    && let Ok(nic) = self.get(p).await
                    && let Some(mac) = nic["MACAddress"]
                        .as_str()
                        .or(nic["PermanentMACAddress"].as_str())
                {
                    inv.mac_addresses.push(mac.to_ascii_lowercase());
                }
            }
        }
        for coll in ["SimpleStorage", "Storage"] {
            let Some(p) = v[coll]["@odata.id"].as_str() else {
                continue;
            };
            let Ok(c) = self.get(p).await else { continue };
            for m in c["Members"].as_array().into_iter().flatten() {
                let Some(mp) = m["@odata.id"].as_str() else {
                    continue;
                };
                let Ok(st) = self.get(mp).await else { continue };
                // SimpleStorage lists Devices inline; Storage links Drives.
                for d in st["Devices"].as_array().into_iter().flatten() {
                    if let Some(b) = d["CapacityBytes"].as_u64() {
                        inv.drives_bytes.push(b);
                    }
                }
                for d in st["Drives"].as_array().into_iter().flatten() {
                    if let Some(dp) = d["@odata.id"].as_str()
                        && let Ok(drive) = self.get(dp).await
                        && let Some(b) = drive["CapacityBytes"].as_u64()
                    {
                        inv.drives_bytes.push(b);
                    }
                }
            }
            if !inv.drives_bytes.is_empty() {
                break;
            }
        }
        Ok(inv)
    }
}

impl Bmc for RedfishBmc {
    fn power_status(&self) -> BoxFuture<'_, Result<Power, BmcError>> {
        Box::pin(self.power())
    }
    fn set_power(&self, action: PowerAction) -> BoxFuture<'_, Result<(), BmcError>> {
        Box::pin(self.reset(action))
    }
    fn set_boot(
        &self,
        target: BootTarget,
        once: bool,
        efi: bool,
    ) -> BoxFuture<'_, Result<(), BmcError>> {
        Box::pin(self.boot(target, once, efi))
    }
    fn inventory(&self) -> BoxFuture<'_, Result<BmcInventory, BmcError>> {
        Box::pin(async move {
            let i = RedfishBmc::inventory(self).await?;
            Ok(BmcInventory {
                manufacturer: i.manufacturer,
                model: i.model,
                serial: i.serial,
                uuid: i.uuid,
                logical_processors: i.logical_processors,
                memory_gib: i.memory_gib,
                mac_addresses: i.mac_addresses,
                drives_bytes: i.drives_bytes,
            })
        })
    }
    fn info(&self) -> BoxFuture<'_, Result<BmcInfo, BmcError>> {
        Box::pin(async move {
            let (_, v) = self.system().await?;
            Ok(BmcInfo {
                protocol: "redfish".into(),
                firmware: v["BiosVersion"].as_str().unwrap_or("").to_string(),
                ipmi_version: None,
                manufacturer: v["Manufacturer"].as_str().map(String::from),
                model: v["Model"].as_str().map(String::from),
                serial: v["SerialNumber"].as_str().map(String::from),
                uuid: v["UUID"].as_str().map(String::from),
            })
        })
    }
}
