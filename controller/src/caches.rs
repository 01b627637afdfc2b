//! Shared caches: one watch (kube-runtime `watcher` + `reflector`) per kind for every
//! controller of the process, and a broadcast of what changed so each controller can map a
//! change to the objects it must reconcile.

use std::sync::Arc;

use futures::StreamExt;
use groundwork_types::{Datacenter, Node, Profile, Rack};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// An object that was added, changed or deleted (its last known state).
#[derive(Clone, Debug)]
pub enum Change {
    Datacenter(Arc<Datacenter>),
    Rack(Arc<Rack>),
    Node(Arc<Node>),
    Profile(Arc<Profile>),
}

/// Read-only caches of every kind the controllers read, kept current by watches.
#[derive(Clone)]
pub struct Caches {
    pub datacenters: Store<Datacenter>,
    pub racks: Store<Rack>,
    pub nodes: Store<Node>,
    pub profiles: Store<Profile>,
    changes: broadcast::Sender<Change>,
}

fn spawn_reflector<K>(
    client: &Client,
    wrap: fn(Arc<K>) -> Change,
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
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(
                    watcher::Event::Apply(o)
                    | watcher::Event::Delete(o)
                    | watcher::Event::InitApply(o),
                ) => {
                    // No receivers yet is fine: controllers enqueue everything when they start.
                    let _ = tx.send(wrap(Arc::new(o)));
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
        let (datacenters, t1) = spawn_reflector(client, Change::Datacenter, tx.clone());
        let (racks, t2) = spawn_reflector(client, Change::Rack, tx.clone());
        let (nodes, t3) = spawn_reflector(client, Change::Node, tx.clone());
        let (profiles, t4) = spawn_reflector(client, Change::Profile, tx.clone());
        (
            Caches {
                datacenters,
                racks,
                nodes,
                profiles,
                changes: tx,
            },
            vec![t1, t2, t3, t4],
        )
    }

    /// Waits until every cache has completed its first list.
    pub async fn wait_synced(&self) {
        let _ = futures::join!(
            self.datacenters.wait_until_ready(),
            self.racks.wait_until_ready(),
            self.nodes.wait_until_ready(),
            self.profiles.wait_until_ready(),
        );
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}
