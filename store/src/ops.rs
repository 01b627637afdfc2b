//! The operations the store applies and the events it emits. These are the store's whole
//! write API, and what a raft log entry carries.

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// An object as JSON text, shared (cloning is a reference count). The store keeps and
/// replicates objects as the text the API server encoded, once: a log entry, a raft RPC and an
/// apply embed it as it is, and only readers parse it. The text carries no meaningful
/// `metadata.resourceVersion`: that is the revision the object is stored at, set when it is
/// read ([`Json::decode`]).
#[derive(Clone, Debug)]
pub struct Json(Arc<RawValue>);

impl Json {
    /// Encodes `v` (its resourceVersion, if any, is kept in the text but never read back).
    pub fn encode(v: &Value) -> Json {
        Json(Arc::from(
            serde_json::value::to_raw_value(v).expect("a JSON value serialises"),
        ))
    }

    /// JSON text read back from the database (checked to be JSON).
    pub(crate) fn from_stored(bytes: &[u8]) -> Result<Json, serde_json::Error> {
        let raw: Box<RawValue> = serde_json::from_slice(bytes)?;
        Ok(Json(Arc::from(raw)))
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The object, with `metadata.resourceVersion` set to `revision`.
    pub fn decode(&self, revision: u64) -> Result<Value, serde_json::Error> {
        let mut v: Value = serde_json::from_str(self.0.get())?;
        set_resource_version(&mut v, revision);
        Ok(v)
    }
}

impl Serialize for Json {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(d).map(|b| Json(Arc::from(b)))
    }
}

/// Sets `metadata.resourceVersion` (creating `metadata` if needed).
pub fn set_resource_version(v: &mut Value, rev: u64) {
    if let Some(obj) = v.as_object_mut() {
        let meta = obj
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(m) = meta.as_object_mut() {
            m.insert("resourceVersion".into(), Value::String(rev.to_string()));
        }
    }
}

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

/// One write. `Put` stores `value` at the new revision (its `metadata.resourceVersion`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum WriteOp {
    Put {
        key: String,
        value: Json,
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
    /// The object as stored (for a delete: its last state); [`Json::decode`] with `revision`.
    pub object: Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change, as kept in history and delivered to watchers. The objects are parsed when
/// first asked for, once for all the watchers sharing the event.
#[derive(Debug)]
pub struct WatchEvent {
    pub revision: u64,
    pub type_: EventType,
    pub key: String,
    /// The object after the change (for a delete: its last state).
    pub raw: Json,
    /// The object before the change (for selector transitions), absent on create.
    pub raw_prev: Option<Json>,
    /// The object had a previous version, no longer in history: replayed events name the
    /// previous version by revision, and compaction may have removed it ([`Self::prev`] is
    /// then `None`).
    prev_unknown: bool,
    parsed: OnceLock<Option<Value>>,
    parsed_prev: OnceLock<Option<Value>>,
}

impl WatchEvent {
    pub fn new(
        revision: u64,
        type_: EventType,
        key: String,
        raw: Json,
        raw_prev: Option<Json>,
    ) -> WatchEvent {
        WatchEvent {
            revision,
            type_,
            key,
            raw,
            raw_prev,
            prev_unknown: false,
            parsed: OnceLock::new(),
            parsed_prev: OnceLock::new(),
        }
    }

    /// An event replayed from history whose previous version is no longer there.
    pub(crate) fn with_prev_unknown(mut self) -> WatchEvent {
        self.raw_prev = None;
        self.prev_unknown = true;
        self
    }

    /// Whether the object existed before this change (known without parsing anything).
    pub fn had_prev(&self) -> bool {
        self.raw_prev.is_some() || self.prev_unknown
    }

    /// Whether the object existed before this change but that version is no longer kept
    /// (only for events replayed from history): a watch that needs it to tell whether the
    /// object entered or left its selector cannot, and must start again from a list.
    pub fn prev_unknown(&self) -> bool {
        self.prev_unknown
    }

    /// The object, with `metadata.resourceVersion` = this event's revision (`Null` if the
    /// stored text does not parse, which the store never writes).
    pub fn object(&self) -> &Value {
        self.parsed
            .get_or_init(|| self.raw.decode(self.revision).ok())
            .as_ref()
            .unwrap_or(&Value::Null)
    }

    /// The object before the change.
    pub fn prev(&self) -> Option<&Value> {
        self.parsed_prev
            .get_or_init(|| {
                self.raw_prev
                    .as_ref()
                    .and_then(|p| serde_json::from_str(p.as_str()).ok())
            })
            .as_ref()
    }
}
