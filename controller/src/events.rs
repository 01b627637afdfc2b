//! Recording Events (core/v1, what `kubectl describe` and `groundwork events` show).
//!
//! kube-runtime's `Recorder` writes `events.k8s.io/v1` Events; the API serves core/v1 Events
//! (the form `kubectl describe` reads), so this small recorder writes those. Repeats of the
//! same event (same object, type, reason and message) update one Event's `count` and
//! `lastTimestamp`, as the Kubernetes event correlator does, rather than piling up objects; the
//! Event name is derived from those fields, so a restarted controller continues the count.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use groundwork_types::Event;
use k8s_openapi::api::core::v1::{EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// Events about cluster-scoped objects live in this namespace, as in Kubernetes.
pub const EVENT_NAMESPACE: &str = "default";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Writes Events on behalf of one controller.
pub struct Recorder {
    api: Api<Event>,
    component: String,
    instance: String,
    /// Event name → count last written by this process.
    counts: Mutex<HashMap<String, i32>>,
}

fn event_name(obj: &ObjectReference, type_: EventType, reason: &str, message: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        &obj.uid,
        &obj.kind,
        &obj.name,
        type_ == EventType::Warning,
        reason,
        message,
    )
        .hash(&mut h);
    format!(
        "{}.{:016x}",
        obj.name.as_deref().unwrap_or("unknown"),
        h.finish()
    )
}

impl Recorder {
    pub fn new(client: Client, component: &str, instance: &str) -> Self {
        Recorder {
            api: Api::namespaced(client, EVENT_NAMESPACE),
            component: component.to_string(),
            instance: instance.to_string(),
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Records an event about `obj`. Failures are logged, not returned: an Event is a report,
    /// and losing one must not fail the reconcile that caused it.
    pub async fn publish(
        &self,
        obj: &ObjectReference,
        type_: EventType,
        reason: &str,
        message: &str,
    ) {
        if let Err(e) = self.try_publish(obj, type_, reason, message).await {
            tracing::warn!(reason, error = %e, "could not record the Event");
        }
    }

    async fn try_publish(
        &self,
        obj: &ObjectReference,
        type_: EventType,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        let name = event_name(obj, type_, reason, message);
        let now = Time(jiff::Timestamp::now());
        let known = self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name)
            .copied();
        let count = match known {
            None => {
                let ev = Event {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(EVENT_NAMESPACE.into()),
                        ..Default::default()
                    },
                    involved_object: obj.clone(),
                    reason: Some(reason.into()),
                    message: Some(message.into()),
                    type_: Some(format!("{type_:?}")),
                    count: Some(1),
                    first_timestamp: Some(now.clone()),
                    last_timestamp: Some(now.clone()),
                    source: Some(EventSource {
                        component: Some(self.component.clone()),
                        host: Some(self.instance.clone()),
                    }),
                    reporting_component: Some(format!("groundwork.dev/{}", self.component)),
                    reporting_instance: Some(self.instance.clone()),
                    ..Default::default()
                };
                match self.api.create(&PostParams::default(), &ev).await {
                    Ok(_) => 1,
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        // Written before (by an earlier run): continue its count.
                        let cur = self.api.get(&name).await?;
                        self.bump(&name, cur.count.unwrap_or(1) + 1, &now).await?
                    }
                    Err(e) => return Err(e),
                }
            }
            Some(n) => match self.bump(&name, n + 1, &now).await {
                Ok(c) => c,
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    // Deleted meanwhile (e.g. by an operator): start over.
                    self.counts
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&name);
                    return Box::pin(self.try_publish(obj, type_, reason, message)).await;
                }
                Err(e) => return Err(e),
            },
        };
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, count);
        Ok(())
    }

    async fn bump(&self, name: &str, count: i32, now: &Time) -> Result<i32, kube::Error> {
        let patch = json!({"count": count, "lastTimestamp": now});
        self.api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_distinguish_reasons() {
        let o = ObjectReference {
            kind: Some("Rack".into()),
            name: Some("a1".into()),
            uid: Some("u1".into()),
            ..Default::default()
        };
        let a = event_name(&o, EventType::Warning, "Overlap", "x");
        assert_eq!(a, event_name(&o, EventType::Warning, "Overlap", "x"));
        assert_ne!(a, event_name(&o, EventType::Warning, "Overlap", "y"));
        assert_ne!(a, event_name(&o, EventType::Normal, "Overlap", "x"));
        assert!(a.starts_with("a1."));
    }
}
