//! Event history: replay for watches, and compaction that bounds it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::store::{HISTORY, Inner, META};
use crate::{EventType, Json, StoreError, WatchEvent};

/// The history record format: a version byte, then the event type, the key and the object,
/// each text prefixed with its length (u32 little-endian), then the revision of the object's
/// previous version (u64 little-endian, 0 for none). The revision is the record's key. The
/// previous object is read from its own record when a watch replays history (for a delete,
/// it is the record's object), so each write stores its object once: keeping its text here
/// too doubled the bytes each write adds to history, and measured 8-22 % fewer writes/s at 64
/// connections on three members.
///
/// Replicated mode stores a persist's records in chunks ([`Chunk`]), one database value of
/// up to [`CHUNK_BYTES`] each, keyed by its first revision: a B-tree insert per record (and a
/// leaf split every few) was most of what persisting history cost, which was a fifth of each
/// member's CPU per write at 64 connections (docs/decisions.md, "History in chunks").
const RECORD_V2: u8 = 2;
const CHUNK_V1: u8 = 3;

/// Most bytes a chunk's value holds (unless one record alone is larger). redb gives a value
/// larger than a page a run of pages rounded up to a power of two, so a value just past
/// 64 KiB would take (and write) 128 KiB: a chunk is closed before a record would take it
/// past this, which leaves room for the leaf's own header in the 64 KiB.
pub(crate) const CHUNK_BYTES: usize = (64 << 10) - 256;

/// The bytes of `e`'s record as [`encode`] writes it.
fn record_len(e: &WatchEvent) -> usize {
    18 + e.key.len() + e.raw.as_str().len()
}

/// Encodes `e`, whose object's previous version is at `prev_revision` (0: none).
pub(crate) fn encode(e: &WatchEvent, prev_revision: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(record_len(e));
    encode_into(&mut out, e, prev_revision);
    out
}

fn encode_into(out: &mut Vec<u8>, e: &WatchEvent, prev_revision: u64) {
    let obj = e.raw.as_str().as_bytes();
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
}

/// Records of consecutive revisions gathered into one history value: `[3][count u32]`, then
/// each record's revision (u64) and end offset in the data (u32), ascending, then the
/// records' bytes (each as [`encode`] writes it). Little-endian.
#[derive(Default)]
pub(crate) struct Chunk {
    revisions: Vec<u64>,
    ends: Vec<u32>,
    data: Vec<u8>,
}

impl Chunk {
    /// Adds `e`'s record; returns the chunk before it (key and value) if the record would
    /// have taken that past [`CHUNK_BYTES`].
    pub(crate) fn push(&mut self, e: &WatchEvent, prev_revision: u64) -> Option<(u64, Vec<u8>)> {
        let full =
            5 + 12 * (self.revisions.len() + 1) + self.data.len() + record_len(e) > CHUNK_BYTES;
        let closed = if full { self.take() } else { None };
        encode_into(&mut self.data, e, prev_revision);
        self.revisions.push(e.revision);
        self.ends.push(self.data.len() as u32);
        closed
    }

    /// The chunk's key and value, if it has records; it is empty after.
    pub(crate) fn take(&mut self) -> Option<(u64, Vec<u8>)> {
        let key = *self.revisions.first()?;
        let n = self.revisions.len();
        let mut v = Vec::with_capacity(5 + 12 * n + self.data.len());
        v.push(CHUNK_V1);
        v.extend_from_slice(&(n as u32).to_le_bytes());
        for (r, e) in self.revisions.iter().zip(&self.ends) {
            v.extend_from_slice(&r.to_le_bytes());
            v.extend_from_slice(&e.to_le_bytes());
        }
        v.extend_from_slice(&self.data);
        self.revisions.clear();
        self.ends.clear();
        self.data.clear();
        Some((key, v))
    }
}

/// The records of the history value at `key`: a chunk's, or the one record (any earlier
/// format) whose revision is the key.
fn records(key: u64, v: &[u8]) -> Result<Vec<(u64, &[u8])>, StoreError> {
    if v.first() != Some(&CHUNK_V1) {
        return Ok(vec![(key, v)]);
    }
    let bad = || StoreError::Storage(format!("history chunk {key} is malformed"));
    let n = v
        .get(1..5)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(bad)? as usize;
    let index = v.get(5..5 + 12 * n).ok_or_else(bad)?;
    let data = &v[5 + 12 * n..];
    let mut out = Vec::with_capacity(n);
    let mut start = 0usize;
    for e in index.chunks_exact(12) {
        let rev = u64::from_le_bytes(e[..8].try_into().map_err(|_| bad())?);
        let end = u32::from_le_bytes(e[8..].try_into().map_err(|_| bad())?) as usize;
        let rec = data.get(start..end).ok_or_else(bad)?;
        if out.last().is_some_and(|(r, _)| *r >= rev) {
            return Err(bad());
        }
        out.push((rev, rec));
        start = end;
    }
    Ok(out)
}

/// The key of the history value holding `revision` (or the nearest before it).
fn value_at(
    table: &impl redb::ReadableTable<u64, &'static [u8]>,
    revision: u64,
) -> Result<Option<u64>, StoreError> {
    Ok(match table.range(..=revision)?.next_back() {
        Some(e) => Some(e?.0.value()),
        None => None,
    })
}

/// The object of the record at `revision`, if history still has it.
fn object_at(
    table: &impl redb::ReadableTable<u64, &'static [u8]>,
    revision: u64,
) -> Result<Option<Json>, StoreError> {
    let Some(e) = table.range(..=revision)?.next_back() else {
        return Ok(None);
    };
    let (k, v) = e?;
    let recs = records(k.value(), v.value())?;
    match recs.binary_search_by_key(&revision, |(r, _)| *r) {
        Ok(i) => Ok(Some(decode(revision, recs[i].1)?.event.raw)),
        Err(_) => Ok(None),
    }
}

/// A record read back: the event, and the revision of the previous object when it is still to
/// be looked up.
struct Decoded {
    event: WatchEvent,
    prev_at: Option<u64>,
}

fn decode(revision: u64, b: &[u8]) -> Result<Decoded, StoreError> {
    let bad = || StoreError::Storage(format!("history record {revision} is malformed"));
    if b.first() != Some(&RECORD_V2) || b.len() < 2 {
        return Err(bad());
    }
    let type_ = match b[1] {
        0 => EventType::Added,
        1 => EventType::Modified,
        2 => EventType::Deleted,
        _ => return Err(bad()),
    };
    let mut rest = &b[2..];
    let mut take = || -> Result<&[u8], StoreError> {
        let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(bad());
        }
        let (part, tail) = tail.split_at(len);
        rest = tail;
        Ok(part)
    };
    let key = std::str::from_utf8(take()?).map_err(|_| bad())?.to_string();
    let object = Json::from_stored(take()?)?;
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

/// Every event after `revision`, read in one snapshot that also checks that history still
/// reaches back that far (so a concurrent compaction cannot open a silent gap).
pub(crate) fn after(inner: &Inner, revision: u64) -> Result<Vec<Arc<WatchEvent>>, StoreError> {
    // Replicated mode: the newest events are in the in-memory tail (tail.rs); the database's
    // history is read below its first one, in the snapshot taken under its lock.
    let mut tail = inner.tail();
    let (layered, first_layered) = tail.events_after(revision);
    let txn = tail.snapshot(&inner.db)?;
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
    // A chunk that starts before `revision + 1` may hold it.
    let start = value_at(&table, revision + 1)?.unwrap_or(revision + 1);
    for entry in table.range(start..upper)? {
        let (k, v) = entry?;
        for (rev, rec) in records(k.value(), v.value())? {
            if rev <= revision || rev >= upper {
                continue;
            }
            let event = replay(&table, &mut seen, rev, rec)?;
            out.push(Arc::new(event));
        }
    }
    out.extend(layered);
    Ok(out)
}

/// Decodes the record at `rev`, finding its previous object among those replayed (`seen`)
/// or in history.
fn replay(
    table: &impl redb::ReadableTable<u64, &'static [u8]>,
    seen: &mut HashMap<u64, Json>,
    rev: u64,
    rec: &[u8],
) -> Result<WatchEvent, StoreError> {
    let Decoded { mut event, prev_at } = decode(rev, rec)?;
    if let Some(at) = prev_at {
        let prev = match seen.remove(&at) {
            Some(p) => Some(p),
            None => object_at(table, at)?,
        };
        event = match prev {
            Some(p) => WatchEvent::new(event.revision, event.type_, event.key, event.raw, Some(p)),
            // Compacted away: at or before the replay's start, so the watcher had it.
            None => event.with_prev_unknown(),
        };
    }
    seen.insert(event.revision, event.raw.clone());
    Ok(event)
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

/// Drops history up to `upto` in a write transaction's tables: every value before the one
/// holding `upto + 1` (a chunk that holds both stays whole; `compacted` refuses watches from
/// before it all the same).
fn drop_history(
    hist: &mut redb::Table<u64, &[u8]>,
    meta: &mut redb::Table<&str, u64>,
    (_, upto): (u64, u64),
    mut pace: Option<&mut crate::pace::Yielder>,
) -> Result<(), StoreError> {
    if let Some(keep) = value_at(hist, upto + 1)? {
        hist.retain_in(..keep, |_, _| {
            if let Some(p) = pace.as_deref_mut() {
                p.step();
            }
            false
        })?;
    }
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
    pace: &mut crate::pace::Yielder,
) -> Result<Option<u64>, StoreError> {
    let Some(range) = next_compaction(inner, persisted, PERSIST_COMPACT_MAX) else {
        return Ok(None);
    };
    drop_history(hist, meta, range, Some(pace))?;
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
        drop_history(&mut hist, &mut meta, range, None)?;
    }
    txn.commit()?;
    inner.tail().snapshot = None;
    inner.compacted.store(range.1, Ordering::Release);
    Ok(true)
}
