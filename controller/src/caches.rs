//! Shared caches: one watch (kube-runtime `watcher` + `reflector`) per kind for every
//! controller of the process, and a broadcast of what changed so each controller can map a
//! change to the objects it must reconcile.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::StreamExt;
use groundwork_types::{Credential, Datacenter, Node, Profile, Rack};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// An object that was added, changed or deleted (its last known state).
#[derive(Clone, Debug)]
pub enum ChangedObject {
    Datacenter(Arc<Datacenter>),
    Rack(Arc<Rack>),
    Node(Arc<Node>),
    Profile(Arc<Profile>),
    Credential(Arc<Credential>),
}

/// A change, and whether it touched more than `status`: created, deleted, a new
/// `generation` (spec) or new labels. Controllers that derive things from specs skip the rest,
/// so their own status writes do not fan out into more reconciles.
#[derive(Clone, Debug)]
pub struct Change {
    pub object: ChangedObject,
    pub spec_changed: bool,
}

/// Read-only caches of every kind the controllers read, kept current by watches.
#[derive(Clone)]
pub struct Caches {
    pub datacenters: Store<Datacenter>,
    pub racks: Store<Rack>,
    pub nodes: Store<Node>,
    pub profiles: Store<Profile>,
    pub credentials: Store<Credential>,
    changes: broadcast::Sender<Change>,
    /// True once every store has completed its first list.
    ready: tokio::sync::watch::Receiver<bool>,
}

fn spawn_reflector<K>(
    client: &Client,
    wrap: fn(Arc<K>) -> ChangedObject,
    tx: broadcast::Sender<Change>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let api: Api<K> = Api::all(client.clone());
    let task = tokio::spawn(async move {
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff();
        futures::pin_mut!(stream);
        // name → (generation, labels) last seen, to tell spec changes from status writes.
        let mut seen: HashMap<String, (Option<i64>, BTreeMap<String, String>)> = HashMap::new();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                    let now = (o.meta().generation, o.labels().clone());
                    let before = seen.insert(o.name_any(), now.clone());
                    // No receivers yet is fine: controllers enqueue everything when they start.
                    let _ = tx.send(Change {
                        object: wrap(Arc::new(o)),
                        spec_changed: before.as_ref() != Some(&now),
                    });
                }
                Ok(watcher::Event::Delete(o)) => {
                    seen.remove(&o.name_any());
                    let _ = tx.send(Change {
                        object: wrap(Arc::new(o)),
                        spec_changed: true,
                    });
                }
                Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying with backoff")
                }
            }
        }
    });
    (reader, task)
}

impl Caches {
    /// Starts one watch per kind. The tasks run until aborted.
    pub fn start(client: &Client) -> (Caches, Vec<JoinHandle<()>>) {
        let (tx, _) = broadcast::channel(8192);
        let (datacenters, t1) = spawn_reflector(client, ChangedObject::Datacenter, tx.clone());
        let (racks, t2) = spawn_reflector(client, ChangedObject::Rack, tx.clone());
        let (nodes, t3) = spawn_reflector(client, ChangedObject::Node, tx.clone());
        let (profiles, t4) = spawn_reflector(client, ChangedObject::Profile, tx.clone());
        let (credentials, t5) = spawn_reflector(client, ChangedObject::Credential, tx.clone());
        // One waiter per store, here: kube's `Store::wait_until_ready` wakes only the last of
        // several concurrent waiters (a oneshot receiver polled from many places), which left
        // controllers waiting forever now and then. Everyone else waits on this watch.
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        let stores = (
            datacenters.clone(),
            racks.clone(),
            nodes.clone(),
            profiles.clone(),
            credentials.clone(),
        );
        let t6 = tokio::spawn(async move {
            let _ = futures::join!(
                stores.0.wait_until_ready(),
                stores.1.wait_until_ready(),
                stores.2.wait_until_ready(),
                stores.3.wait_until_ready(),
                stores.4.wait_until_ready(),
            );
            let _ = ready_tx.send(true);
        });
        (
            Caches {
                datacenters,
                racks,
                nodes,
                profiles,
                credentials,
                changes: tx,
                ready,
            },
            vec![t1, t2, t3, t4, t5, t6],
        )
    }

    /// Waits until every cache has completed its first list.
    pub async fn wait_synced(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}
