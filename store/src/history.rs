//! Event history: replay for watches, and compaction that bounds it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use redb::ReadableDatabase;

use crate::store::{HISTORY, Inner, META};
use crate::{EventType, Json, StoreError, WatchEvent};

/// The history record format: a version byte, then the event type, the key and the object,
/// each text prefixed with its length (u32 little-endian), then the revision of the object's
/// previous version (u64 little-endian, 0 for none). The revision is the record's key. The
/// previous object is read from its own record when a watch replays history (for a delete,
/// it is the record's object), so each write stores its object once: keeping its text here
/// too (version 1) doubled the bytes each write adds to history, and measured 8-22 % fewer
/// writes/s at 64 connections on three members.
///
/// Version 1 records (the previous object's text, absent: length `u32::MAX`, after the
/// object) and JSON records of earlier versions (they start with `{`) are still read.
const RECORD_V1: u8 = 1;
const RECORD_V2: u8 = 2;

/// Encodes `e`, whose object's previous version is at `prev_revision` (0: none).
pub(crate) fn encode(e: &WatchEvent, prev_revision: u64) -> Vec<u8> {
    let obj = e.raw.as_str().as_bytes();
    let mut out = Vec::with_capacity(18 + e.key.len() + obj.len());
    out.push(RECORD_V2);
    out.push(match e.type_ {
        EventType::Added => 0,
        EventType::Modified => 1,
        EventType::Deleted => 2,
    });
    for part in [e.key.as_bytes(), obj] {
        out.extend_from_slice(&(part.len() as u32).to_le_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(&prev_revision.to_le_bytes());
    out
}

/// A record read back: the event, and the revision of the previous object when it is still to
/// be looked up.
struct Decoded {
    event: WatchEvent,
    prev_at: Option<u64>,
}

fn decode(revision: u64, b: &[u8]) -> Result<Decoded, StoreError> {
    let bad = || StoreError::Storage(format!("history record {revision} is malformed"));
    if b.first() == Some(&b'{') {
        return Ok(Decoded {
            event: decode_json(revision, b)?,
            prev_at: None,
        });
    }
    let version = b.first().copied();
    if !matches!(version, Some(RECORD_V1 | RECORD_V2)) || b.len() < 2 {
        return Err(bad());
    }
    let type_ = match b[1] {
        0 => EventType::Added,
        1 => EventType::Modified,
        2 => EventType::Deleted,
        _ => return Err(bad()),
    };
    let mut rest = &b[2..];
    let mut take = || -> Result<Option<&[u8]>, StoreError> {
        let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
        let len = u32::from_le_bytes(*len);
        if len == u32::MAX {
            rest = tail;
            return Ok(None);
        }
        let len = len as usize;
        if tail.len() < len {
            return Err(bad());
        }
        let (part, tail) = tail.split_at(len);
        rest = tail;
        Ok(Some(part))
    };
    let key = take()?.ok_or_else(bad)?;
    let key = std::str::from_utf8(key).map_err(|_| bad())?.to_string();
    let object = Json::from_stored(take()?.ok_or_else(bad)?)?;
    if version == Some(RECORD_V1) {
        let prev = take()?.map(Json::from_stored).transpose()?;
        return Ok(Decoded {
            event: WatchEvent::new(revision, type_, key, object, prev),
            prev_at: None,
        });
    }
    let prev_at = match rest {
        [a, b, c, d, e, f, g, h] => u64::from_le_bytes([*a, *b, *c, *d, *e, *f, *g, *h]),
        _ => return Err(bad()),
    };
    Ok(match type_ {
        // A delete's previous object is its last state: the record's object.
        EventType::Deleted => Decoded {
            event: WatchEvent::new(revision, type_, key, object.clone(), Some(object)),
            prev_at: None,
        },
        _ => Decoded {
            event: WatchEvent::new(revision, type_, key, object, None),
            prev_at: (prev_at != 0).then_some(prev_at),
        },
    })
}

/// A record written before the binary format: a JSON event.
fn decode_json(revision: u64, b: &[u8]) -> Result<WatchEvent, StoreError> {
    #[derive(serde::Deserialize)]
    struct Old {
        #[serde(rename = "type")]
        type_: EventType,
        key: String,
        object: Json,
        #[serde(default)]
        prev: Option<Json>,
    }
    let o: Old = serde_json::from_slice(b)?;
    Ok(WatchEvent::new(revision, o.type_, o.key, o.object, o.prev))
}

/// Every event after `revision`, read in one snapshot that also checks that history still
/// reaches back that far (so a concurrent compaction cannot open a silent gap).
pub(crate) fn after(inner: &Inner, revision: u64) -> Result<Vec<Arc<WatchEvent>>, StoreError> {
    // Replicated mode: the newest events are in the in-memory tail (tail.rs); the database's
    // history is read below its first one, in a read transaction begun under its lock.
    let tail = inner.tail();
    let (layered, first_layered) = tail.events_after(revision);
    let txn = inner.db.begin_read()?;
    drop(tail);
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
    // Objects replayed so far, by revision: most previous versions are among them.
    let mut seen: HashMap<u64, Json> = HashMap::new();
    let upper = first_layered.unwrap_or(u64::MAX);
    for entry in table.range((revision + 1)..upper)? {
        let (k, v) = entry?;
        let Decoded { mut event, prev_at } = decode(k.value(), v.value())?;
        if let Some(at) = prev_at {
            let prev = match seen.remove(&at) {
                Some(p) => Some(p),
                None => match table.get(at)? {
                    Some(g) => Some(decode(at, g.value())?.event.raw),
                    None => None,
                },
            };
            event = match prev {
                Some(p) => {
                    WatchEvent::new(event.revision, event.type_, event.key, event.raw, Some(p))
                }
                // Compacted away: at or before `revision`, so the watcher had it.
                None => event.with_prev_unknown(),
            };
        }
        seen.insert(event.revision, event.raw.clone());
        out.push(Arc::new(event));
    }
    out.extend(layered);
    Ok(out)
}

/// Most history records one compaction deletes. Compaction runs on the writer, between
/// batches: 10,000 at once (as before) stalled every write for ~100 ms once the history was
/// full, which was the 64-connection benchmark's p99.
const COMPACT_STEP: u64 = 1_000;

/// Most history records a persist of replicated mode deletes (`compact_in`): several seconds
/// of the fastest writes measured, so a backlog (after the retention was lowered) is worked
/// off over a few persists instead of in one long transaction.
const PERSIST_COMPACT_MAX: u64 = 100 * COMPACT_STEP;

/// The history compaction drops next: the newest `inner.retention` events are kept, and
/// compaction waits until history has grown past that by 10 % of it (or a
/// [`COMPACT_STEP`], if smaller; so it is not a cost on every write). Counts only up to
/// `persisted` (the revision the database's history reaches) and takes at most `step`
/// records. `Some((compacted, upto))`: drop `compacted + 1 ..= upto`.
fn next_compaction(inner: &Inner, persisted: u64, step: u64) -> Option<(u64, u64)> {
    let rev = inner.revision.load(Ordering::Acquire).min(persisted);
    let compacted = inner.compacted.load(Ordering::Acquire);
    let retention = inner.retention;
    let slack = (retention / 10).clamp(1, COMPACT_STEP);
    if rev.saturating_sub(compacted) <= retention + slack {
        return None;
    }
    Some((compacted, (rev - retention).min(compacted + step)))
}

/// Drops history `compacted + 1 ..= upto` in a write transaction's tables.
fn drop_history(
    hist: &mut redb::Table<u64, &[u8]>,
    meta: &mut redb::Table<&str, u64>,
    (compacted, upto): (u64, u64),
) -> Result<(), StoreError> {
    hist.retain_in((compacted + 1)..=upto, |_, _| false)?;
    meta.insert("compacted", upto)?;
    tracing::debug!(compacted = upto, "history compacted");
    Ok(())
}

/// Replicated mode, in the persist's own transaction, whose history reaches `persisted`:
/// compacts up to [`PERSIST_COMPACT_MAX`] records. Returns the new compaction point, which
/// the caller publishes once the transaction has committed.
pub(crate) fn compact_in(
    inner: &Inner,
    hist: &mut redb::Table<u64, &[u8]>,
    meta: &mut redb::Table<&str, u64>,
    persisted: u64,
) -> Result<Option<u64>, StoreError> {
    let Some(range) = next_compaction(inner, persisted, PERSIST_COMPACT_MAX) else {
        return Ok(None);
    };
    drop_history(hist, meta, range)?;
    Ok(Some(range.1))
}

/// Single-server mode, on the writer between batches: compacts a [`COMPACT_STEP`] at most,
/// in a transaction of its own. Not fsync'd: the next durable commit carries it, and a
/// compaction lost in a crash is done again. Returns whether it deleted anything.
pub(crate) fn maybe_compact(inner: &Inner) -> Result<bool, StoreError> {
    let Some(range) = next_compaction(inner, u64::MAX, COMPACT_STEP) else {
        return Ok(false);
    };
    let mut txn = inner.db.begin_write()?;
    txn.set_durability(redb::Durability::None)?;
    {
        let mut hist = txn.open_table(HISTORY)?;
        let mut meta = txn.open_table(META)?;
        drop_history(&mut hist, &mut meta, range)?;
    }
    txn.commit()?;
    inner.compacted.store(range.1, Ordering::Release);
    Ok(true)
}
