//! The operations the store applies and the events it emits. These are the store's whole
//! write API, and what a raft log entry carries.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What must hold for a write to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precondition {
    /// Apply regardless of the current state.
    None,
    /// The key must not exist (create).
    MustNotExist,
    /// The key must exist at exactly this revision (optimistic concurrency).
    Revision(u64),
    /// The key must exist, at any revision.
    MustExist,
}

/// One write. `Put` stores `value` with `metadata.resourceVersion` set to the new revision.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum WriteOp {
    Put {
        key: String,
        value: Value,
        precondition: Precondition,
    },
    Delete {
        key: String,
        precondition: Precondition,
    },
}

impl WriteOp {
    pub fn key(&self) -> &str {
        match self {
            WriteOp::Put { key, .. } | WriteOp::Delete { key, .. } => key,
        }
    }
}

/// The result of an applied write.
#[derive(Clone, Debug)]
pub struct Committed {
    /// The revision the write was given.
    pub revision: u64,
    /// The object as stored (for a delete: its last state, at the deletion revision).
    pub object: Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change, as kept in history and delivered to watchers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WatchEvent {
    pub revision: u64,
    #[serde(rename = "type")]
    pub type_: EventType,
    pub key: String,
    pub object: Value,
    /// The object before the change (for selector transitions), absent on create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<Value>,
}
