//! Groundwork's object store: JSON objects under string keys in one redb file, a single global
//! revision that becomes every object's `resourceVersion`, and an event history that watches
//! replay from. Every acknowledged write is durable (fsynced) before it is acknowledged.
//!
//! The store is the state machine of the API server. In a single-member server, writes are
//! batched by one writer thread (group commit); with raft, the same operations travel in log
//! entries and every member applies them in order. Callers only see [`Store`].

mod error;
mod history;
mod ops;
mod pace;
mod replicated;
mod store;
mod tail;
mod watch;

pub use error::StoreError;

/// The largest object the store takes, as JSON (a log entry of the replicated store must fit
/// the raft port's request limit).
pub const MAX_OBJECT_BYTES: usize = 3 << 20;
pub use ops::{
    Committed, EventType, Json, Precondition, WatchEvent, WriteOp, set_resource_version,
};
pub use replicated::{BoxFuture, Dump, Entry, Proposer};
pub use store::{ListPage, Store, StoreConfig, StoredObject};
pub use watch::WatchStream;
