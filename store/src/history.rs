//! Event history: replay for watches, and compaction that bounds it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use redb::ReadableDatabase;

use crate::store::{HISTORY, Inner, META};
use crate::{StoreError, WatchEvent};

/// Every event after `revision`, read in one snapshot that also checks that history still
/// reaches back that far (so a concurrent compaction cannot open a silent gap).
pub(crate) fn after(inner: &Inner, revision: u64) -> Result<Vec<Arc<WatchEvent>>, StoreError> {
    let txn = inner.db.begin_read()?;
    let compacted = txn
        .open_table(META)?
        .get("compacted")?
        .map(|g| g.value())
        .unwrap_or(0);
    if revision < compacted {
        return Err(StoreError::Compacted {
            requested: revision,
            compacted,
        });
    }
    let table = txn.open_table(HISTORY)?;
    let mut out = Vec::new();
    for entry in table.range((revision + 1)..)? {
        let (_, v) = entry?;
        out.push(Arc::new(serde_json::from_slice::<WatchEvent>(v.value())?));
    }
    Ok(out)
}

/// Drops history older than the newest `retention` events, in bounded steps, once it has
/// grown 10% past the limit (so compaction is not a cost on every write).
pub(crate) fn maybe_compact(inner: &Inner, retention: u64) -> Result<(), StoreError> {
    let rev = inner.revision.load(Ordering::Acquire);
    let compacted = inner.compacted.load(Ordering::Acquire);
    let slack = (retention / 10).max(1);
    if rev.saturating_sub(compacted) <= retention + slack {
        return Ok(());
    }
    let target = rev - retention;
    // At most 10k deletions per transaction keeps the writer responsive.
    let upto = target.min(compacted + 10_000);
    let txn = inner.db.begin_write()?;
    {
        let mut hist = txn.open_table(HISTORY)?;
        let mut meta = txn.open_table(META)?;
        hist.retain_in((compacted + 1)..=upto, |_, _| false)?;
        meta.insert("compacted", upto)?;
    }
    txn.commit()?;
    inner.compacted.store(upto, Ordering::Release);
    tracing::debug!(compacted = upto, revision = rev, "history compacted");
    Ok(())
}
