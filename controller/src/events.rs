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
/// Records Events without holding up the reconcile that asks: each is queued to one of a few
/// writer tasks, chosen by the object's name, so an object's Events keep their order and a
/// slow write never delays a phase change. A full queue drops the Event with a warning.
pub struct Recorder {
    shards: Vec<tokio::sync::mpsc::Sender<Job>>,
}

/// Events queued per writer task before new ones are dropped.
const QUEUE: usize = 4096;
/// Writer tasks per recorder.
const SHARDS: usize = 4;

struct Job {
    obj: ObjectReference,
    type_: EventType,
    reason: String,
    message: String,
}

/// One writer task's state: the Events it wrote and their counts.
struct Writer {
    api: Api<Event>,
    component: String,
    instance: String,
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
    /// Starts the writer tasks (on the current tokio runtime); they end when the recorder is
    /// dropped, after writing what was queued.
    pub fn new(client: Client, component: &str, instance: &str) -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<Job>(QUEUE);
                let w = Writer {
                    api: Api::namespaced(client.clone(), EVENT_NAMESPACE),
                    component: component.to_string(),
                    instance: instance.to_string(),
                    counts: Mutex::new(HashMap::new()),
                };
                tokio::spawn(async move {
                    while let Some(j) = rx.recv().await {
                        if let Err(e) = w.try_publish(&j.obj, j.type_, &j.reason, &j.message).await
                        {
                            tracing::warn!(reason = %j.reason, error = %e, "could not record the Event");
                        }
                    }
                });
                tx
            })
            .collect();
        Recorder { shards }
    }

    /// Queues an Event about `obj` (returns at once).
    pub async fn publish(
        &self,
        obj: &ObjectReference,
        type_: EventType,
        reason: &str,
        message: &str,
    ) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        obj.name.hash(&mut h);
        let shard = &self.shards[h.finish() as usize % self.shards.len()];
        let job = Job {
            obj: obj.clone(),
            type_,
            reason: reason.to_string(),
            message: message.to_string(),
        };
        if shard.try_send(job).is_err() {
            tracing::warn!(reason, "the Event queue is full; Event dropped");
        }
    }
}

impl Writer {
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
