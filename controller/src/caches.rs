//! Shared caches: one watch (kube-runtime `watcher` + `reflector`) per kind for everything in
//! the process that reads objects, and a broadcast of what changed so each controller can map
//! a change to the objects it must reconcile.
//!
//! Open over kinds: consumers declare the kinds they read ([`Kinds`]), the process starts one
//! watch per kind declared, and reads a kind's cache with [`Caches::store`]. A [`Change`]
//! carries its object type-erased; [`Change::get`] gives it back typed. Adding a kind touches
//! no file here.

use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use futures::future::BoxFuture;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// A kind the caches can hold: a cluster-scoped API object.
pub trait Kind:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}
impl<K> Kind for K where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

/// An object that was added, changed or deleted (its last known state), and whether the
/// change touched more than `status`: created, deleted, a new `generation` (spec) or new
/// labels. Controllers that derive things from specs skip the rest, so their own status
/// writes do not fan out into more reconciles.
#[derive(Clone)]
pub struct Change {
    object: Arc<dyn Any + Send + Sync>,
    kind: Cow<'static, str>,
    name: String,
    pub spec_changed: bool,
}

impl Change {
    /// The object, if it is a `K`.
    pub fn get<K: Kind>(&self) -> Option<Arc<K>> {
        self.object.clone().downcast::<K>().ok()
    }

    pub fn is<K: Kind>(&self) -> bool {
        self.object.is::<K>()
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The object's kind, e.g. `Node`.
    pub fn kind(&self) -> &str {
        &self.kind
    }
}

impl Debug for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Change({}/{}, spec_changed: {})",
            self.kind, self.name, self.spec_changed
        )
    }
}

type Starter = Box<
    dyn FnOnce(
            &Client,
            broadcast::Sender<Change>,
        ) -> (
            Box<dyn Any + Send + Sync>,
            JoinHandle<()>,
            BoxFuture<'static, ()>,
        ) + Send,
>;

/// The kinds to watch, declared by the consumers of the caches.
#[derive(Default)]
pub struct Kinds {
    starters: Vec<(TypeId, Starter)>,
}

impl Kinds {
    pub fn new() -> Self {
        Kinds::default()
    }

    /// Watch `K` too (once, however often it is declared).
    pub fn watch<K: Kind>(mut self) -> Self {
        if self.starters.iter().any(|(id, _)| *id == TypeId::of::<K>()) {
            return self;
        }
        self.starters.push((
            TypeId::of::<K>(),
            Box::new(|client: &Client, tx| {
                let (store, task) = spawn_reflector::<K>(client, tx);
                let ready = store.clone();
                let ready: BoxFuture<'static, ()> = Box::pin(async move {
                    let _ = ready.wait_until_ready().await;
                });
                (Box::new(store) as Box<dyn Any + Send + Sync>, task, ready)
            }),
        ));
        self
    }

    pub fn len(&self) -> usize {
        self.starters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starters.is_empty()
    }
}

/// Read-only caches of the declared kinds, kept current by watches.
#[derive(Clone)]
pub struct Caches {
    stores: Arc<HashMap<TypeId, Box<dyn Any + Send + Sync>>>,
    changes: broadcast::Sender<Change>,
    /// True once every store has completed its first list.
    ready: tokio::sync::watch::Receiver<bool>,
}

fn spawn_reflector<K: Kind>(
    client: &Client,
    tx: broadcast::Sender<Change>,
) -> (Store<K>, JoinHandle<()>) {
    let (reader, writer) = reflector::store::<K>();
    let api: Api<K> = Api::all(client.clone());
    let kind: Cow<'static, str> = K::kind(&());
    let task = tokio::spawn(async move {
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff();
        futures::pin_mut!(stream);
        // name → (generation, labels) last seen, to tell spec changes from status writes.
        let mut seen: HashMap<String, (Option<i64>, BTreeMap<String, String>)> = HashMap::new();
        let change = |o: K, spec_changed: bool| Change {
            name: o.name_any(),
            kind: kind.clone(),
            object: Arc::new(o),
            spec_changed,
        };
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                    let now = (o.meta().generation, o.labels().clone());
                    let before = seen.insert(o.name_any(), now.clone());
                    // No receivers yet is fine: controllers enqueue everything when they start.
                    let _ = tx.send(change(o, before.as_ref() != Some(&now)));
                }
                Ok(watcher::Event::Delete(o)) => {
                    seen.remove(&o.name_any());
                    let _ = tx.send(change(o, true));
                }
                Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                Err(e) => {
                    tracing::warn!(kind = %kind, error = %e, "watch failed; retrying with backoff")
                }
            }
        }
    });
    (reader, task)
}

impl Caches {
    /// Starts one watch per declared kind. The tasks run until aborted.
    pub fn start(client: &Client, kinds: Kinds) -> (Caches, Vec<JoinHandle<()>>) {
        let (tx, _) = broadcast::channel(8192);
        let mut stores = HashMap::new();
        let mut tasks = Vec::new();
        let mut waits = Vec::new();
        for (id, start) in kinds.starters {
            let (store, task, ready) = start(client, tx.clone());
            stores.insert(id, store);
            tasks.push(task);
            waits.push(ready);
        }
        // One waiter per store, here: kube's `Store::wait_until_ready` wakes only the last of
        // several concurrent waiters (a oneshot receiver polled from many places), which left
        // controllers waiting forever now and then. Everyone else waits on this watch.
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        tasks.push(tokio::spawn(async move {
            futures::future::join_all(waits).await;
            let _ = ready_tx.send(true);
        }));
        (
            Caches {
                stores: Arc::new(stores),
                changes: tx,
                ready,
            },
            tasks,
        )
    }

    /// The cache of `K`. A kind nobody declared is a bug in the composition: it panics,
    /// naming the kind (every controller is started in the tests).
    pub fn store<K: Kind>(&self) -> &Store<K> {
        self.stores
            .get(&TypeId::of::<K>())
            .and_then(|s| s.downcast_ref::<Store<K>>())
            .unwrap_or_else(|| {
                panic!(
                    "the caches do not watch {}: declare it in the consumer's Kinds",
                    K::kind(&())
                )
            })
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
