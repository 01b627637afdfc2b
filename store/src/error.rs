/// Errors of the object store. Messages name the key and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object was changed since it was read.
    #[error(
        "{key}: the object has been modified (revision {actual}, expected {expected}); read it again and retry"
    )]
    Conflict {
        key: String,
        expected: u64,
        actual: u64,
    },
    /// The object does not exist.
    #[error("{key}: not found")]
    NotFound { key: String },
    /// An object with that key exists already.
    #[error("{key}: already exists")]
    AlreadyExists { key: String },
    /// The requested revision is older than the oldest kept in history.
    #[error("too old resource version: {requested} ({compacted})")]
    Compacted { requested: u64, compacted: u64 },
    /// The database could not be read or written.
    #[error("storage error: {0}")]
    Storage(String),
    /// The replicated store cannot serve this now (no leader, no quorum, a timeout); retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The object is larger than the store takes ([`crate::MAX_OBJECT_BYTES`]).
    #[error("{key}: the object is {size} bytes as JSON, more than the store's limit of {limit}")]
    TooLarge {
        key: String,
        size: usize,
        limit: usize,
    },
    /// The store has shut down.
    #[error("the store is shut down")]
    Closed,
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        StoreError::Storage(e.to_string())
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::from(redb::Error::from(e)) }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Storage(format!("corrupt record: {e}"))
    }
}
