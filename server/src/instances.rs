//! The agent API's service half: a node agent reads its machine's ServiceInstances (a long
//! poll on a version), reports on them, and fetches the secrets they reference. A machine
//! certificate sees only the instances of its own Node, and only the Credentials those
//! instances list.

use std::sync::Arc;
use std::time::Duration;

use groundwork_boot::http::AgentError;
use groundwork_types::agent::{AssignedInstance, InstanceReports, InstanceSet, SecretValue};
use groundwork_types::{Credential, ServiceInstance};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use groundwork_controller::caches::Caches;

/// The instances of `node`, sorted by name, and their version.
fn instance_set(caches: &Caches, node: &str) -> InstanceSet {
    let mut list: Vec<Arc<ServiceInstance>> = caches
        .store::<ServiceInstance>()
        .state()
        .into_iter()
        .filter(|i| i.spec.node == node && i.metadata.deletion_timestamp.is_none())
        .collect();
    list.sort_by_key(|i| i.name_any());
    let instances: Vec<AssignedInstance> = list
        .iter()
        .map(|i| AssignedInstance {
            name: i.name_any(),
            spec: i.spec.clone(),
        })
        .collect();
    let version =
        groundwork_types::agent::sha256_tag(&serde_json::to_vec(&instances).unwrap_or_default());
    InstanceSet { version, instances }
}

/// Answers at once when the caller's `known` version is stale, else when the machine's
/// instances change, or after `wait` seconds.
pub(crate) async fn instances(
    caches: Caches,
    node: String,
    known: Option<String>,
    wait: u32,
) -> Result<InstanceSet, AgentError> {
    let mut changes = caches.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait as u64);
    loop {
        let set = instance_set(&caches, &node);
        if known.as_deref() != Some(set.version.as_str()) {
            return Ok(set);
        }
        // Any ServiceInstance change may be this machine's; recompute then (cheap: a cache
        // read).
        let next = async {
            loop {
                match changes.recv().await {
                    Ok(c) if c.is::<ServiceInstance>() => return,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await
                    }
                }
            }
        };
        if tokio::time::timeout_at(deadline, next).await.is_err() {
            return Ok(set);
        }
    }
}

/// Records the agent's reports, each on an instance of its own Node.
pub(crate) async fn reports(
    caches: Caches,
    client: Client,
    node: String,
    r: InstanceReports,
) -> Result<String, AgentError> {
    let api: Api<ServiceInstance> = Api::all(client);
    let now = jiff::Timestamp::now().to_string();
    let mut recorded = 0;
    for rep in r.reports {
        let Some(si) = caches
            .store::<ServiceInstance>()
            .get(&ObjectRef::new(&rep.name))
        else {
            // Deleted meanwhile: the agent stops it at its next read.
            continue;
        };
        if si.spec.node != node {
            tracing::warn!(%node, instance = %rep.name, "a report on another Node's instance refused");
            return Err(AgentError::Forbidden(format!(
                "ServiceInstance {} runs on Node {}, not {node}\n",
                rep.name, si.spec.node
            )));
        }
        let mut status = serde_json::to_value(&rep.status)
            .map_err(|e| AgentError::BadRequest(format!("status: {e}\n")))?;
        status["lastReport"] = json!(now);
        // The agent owns the whole status: what it no longer reports (a message, a refused
        // digest, a fact) is removed, which a merge patch does with nulls.
        if let Some(old) = si
            .status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
        {
            null_removed(&old, &mut status);
        }
        let before = si.status.as_ref().map(|s| {
            (
                s.phase,
                s.ready,
                s.running_digest.clone(),
                s.message.clone(),
            )
        });
        let after = (
            rep.status.phase,
            rep.status.ready,
            rep.status.running_digest.clone(),
            rep.status.message.clone(),
        );
        if before.as_ref() != Some(&after) {
            let span =
                tracing::info_span!("instance", object = %format!("serviceinstance/{}", rep.name));
            let _g = span.enter();
            tracing::info!(node = %node, phase = ?rep.status.phase, ready = rep.status.ready, message = ?rep.status.message, "instance report");
        }
        match api
            .patch_status(
                &rep.name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
        {
            Ok(_) => recorded += 1,
            // Deleted meanwhile.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(AgentError::Unavailable(format!(
                    "cannot record the report: {e}\n"
                )));
            }
        }
    }
    Ok(format!("{recorded} recorded\n"))
}

/// A Credential's values, for an instance of the caller's Node that lists it.
pub(crate) fn secret(
    caches: &Caches,
    key: &groundwork_types::secrets::SecretKey,
    node: &str,
    instance: &str,
    credential: &str,
) -> Result<SecretValue, AgentError> {
    let si = caches
        .store::<ServiceInstance>()
        .get(&ObjectRef::new(instance))
        .ok_or_else(|| AgentError::NotFound(format!("no ServiceInstance {instance}\n")))?;
    if si.spec.node != node || !si.spec.secrets.iter().any(|c| c == credential) {
        tracing::warn!(%node, %instance, %credential, "a secret request outside the machine's instances refused");
        return Err(AgentError::Forbidden(format!(
            "ServiceInstance {instance} on this machine does not use Credential {credential}\n"
        )));
    }
    let cred = caches
        .store::<Credential>()
        .get(&ObjectRef::new(credential))
        .ok_or_else(|| {
            AgentError::NotFound(format!(
                "Credential {credential} does not exist (create it: the instance waits)\n"
            ))
        })?;
    let sealed = cred.spec.encrypted_password.as_deref().ok_or_else(|| {
        AgentError::NotFound(format!("Credential {credential} has no password\n"))
    })?;
    let password = key
        .open(&format!("credentials/{credential}"), sealed)
        .map_err(|e| AgentError::Unavailable(format!("Credential {credential}: {e}\n")))?;
    Ok(SecretValue {
        username: cred.spec.username.clone(),
        password,
    })
}

/// The names an instance's certificate is for, when it asks for one and runs on `node`:
/// its `tls` names and addresses and its own address, nothing from the request.
pub(crate) fn certificate_names(
    caches: &Caches,
    node: &str,
    instance: &str,
) -> Result<Vec<String>, AgentError> {
    let si = caches
        .store::<ServiceInstance>()
        .get(&ObjectRef::new(instance))
        .ok_or_else(|| AgentError::NotFound(format!("no ServiceInstance {instance}\n")))?;
    if si.spec.node != node {
        tracing::warn!(%node, %instance, "a certificate request for another machine's instance refused");
        return Err(AgentError::Forbidden(format!(
            "ServiceInstance {instance} does not run on this machine\n"
        )));
    }
    let tls = si.spec.tls.as_ref().ok_or_else(|| {
        AgentError::Forbidden(format!("ServiceInstance {instance} has no spec.tls\n"))
    })?;
    let mut names: Vec<String> = tls
        .dns_names
        .iter()
        .chain(&tls.ip_addresses)
        .chain(&si.spec.address)
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Sets to null, in the merge patch `new`, every key of `old` that `new` lacks (objects
/// recursively), so the patch replaces rather than merges.
fn null_removed(old: &serde_json::Value, new: &mut serde_json::Value) {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object_mut()) else {
        return;
    };
    for (k, v) in o {
        match n.get_mut(k) {
            None => {
                n.insert(k.clone(), serde_json::Value::Null);
            }
            Some(nv) => null_removed(v, nv),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn what_the_agent_no_longer_reports_is_removed() {
        let old = json!({"phase": "Running", "message": "installing",
            "facts": {"grastate.dat.seqno": "-1", "recovered.seqno": "12"}});
        let mut new = json!({"phase": "Running", "facts": {"grastate.dat.seqno": "40"}});
        super::null_removed(&old, &mut new);
        assert_eq!(
            new,
            json!({"phase": "Running", "message": null,
                "facts": {"grastate.dat.seqno": "40", "recovered.seqno": null}})
        );
    }
}
