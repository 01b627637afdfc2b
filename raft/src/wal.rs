//! The raft log's write-ahead log: append-only segment files in `DATA_DIR/raft-wal/`.
//!
//! Why not redb (which held the log before): a redb commit rewrites the B-tree path of the
//! new entry, the table tree and the allocator state, about six scattered pages, each a
//! `pwrite` and an I/O for the `fdatasync` to wait on. On this project's virtual disk that
//! made an append of one small entry take 0.5 ms and ~180 µs of CPU; an append here is one
//! `write` and one `fdatasync` of the pages it touched (docs/decisions.md, "Raft log").
//!
//! Format. A segment is a sequence of records `[len u32][crc32 u32][body]` (little-endian),
//! body `[kind u8][index u64][payload]`. The CRC covers the segment's number (u64) and then
//! the body, so a record is only valid in the segment it was written to (segments written
//! before segments were reused have CRCs of the body alone: read as they are, and deleted,
//! not reused, once purged). Kinds: an entry (index and JSON), the vote, the committed log id and the purged
//! log id (JSON), and "recycled" (index: the number the file had before). A segment starts
//! with the vote, committed and purged records current at its creation, so deleting older
//! segments never loses them; the last record of a kind wins.
//!
//! Reuse. A purged segment's file is kept as a spare (`spare-N.wal`, at most
//! [`SPARE_SEGMENTS`]) and renamed to be a later segment: appends then overwrite blocks the
//! file system has already written, so an `fdatasync` writes only the data, not also the
//! conversion of preallocated blocks to written ones (measured: +4.6 % writes/s at 64
//! connections, docs/benchmarks.md). The old records after the new ones
//! fail their CRC for the new number, so a scan stops where the new records end. A spare is
//! only ever reused under a number above its own: truncation deletes the spares numbered above
//! the segment it cuts, as open deletes those at or above the next segment's.
//!
//! Crash safety. Every append and vote is `fdatasync`'d before it is acknowledged; the
//! committed and purged records ride along with the next one (a stale value is safe: the
//! committed index only ever lags). A crash can only tear the newest, unacknowledged write: at open, the
//! last segment is cut at its first record that is short or fails its CRC. A bad record in
//! an older segment is corruption, and opening fails naming the file and offset. Truncation
//! (raft replacing a follower's conflicting tail) cuts the file at the entry and deletes
//! later segments before anything is appended after it, so a removed entry cannot return.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A segment is closed and a new one started once it is this large.
const SEGMENT_BYTES: u64 = 64 << 20;
const HEADER: usize = 8;
const BODY_HEADER: usize = 9;

const ENTRY: u8 = 1;
const VOTE: u8 = 2;
const COMMITTED: u8 = 3;
const PURGED: u8 = 4;
const RECYCLED: u8 = 5;

/// Purged segments kept to be reused (each [`SEGMENT_BYTES`] on disk).
pub const SPARE_SEGMENTS: usize = 4;

/// Where an entry's payload is.
#[derive(Clone, Copy, Debug)]
struct Loc {
    segment: u64,
    /// Offset of the record (its header) in the segment.
    record: u64,
    len: u32,
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    /// Highest entry index in it (0: none).
    last_index: u64,
}

/// An open write-ahead log.
pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    segments: Vec<Segment>,
    active: File,
    active_len: u64,
    index: BTreeMap<u64, Loc>,
    vote: Option<Vec<u8>>,
    committed: Option<Vec<u8>>,
    /// The purge point's index and JSON.
    purged: Option<(u64, Vec<u8>)>,
    /// Open read handles of closed segments.
    readers: std::sync::Mutex<BTreeMap<u64, File>>,
    /// The record buffer, kept between appends ([`SCRATCH_KEEP`]).
    scratch: Vec<u8>,
    /// Purged segments' files kept for reuse, by the number they had.
    spares: Vec<u64>,
}

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

fn spare_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("spare-{seq:020}.wal"))
}

/// A record's CRC: of its segment's number and the body.
fn record_crc(key: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&key.to_le_bytes());
    h.update(body);
    h.finalize()
}

fn encode(out: &mut Vec<u8>, key: u64, kind: u8, index: u64, payload: &[u8]) {
    let _ = encode_with(out, key, kind, index, |o| {
        o.extend_from_slice(payload);
        Ok(())
    });
}

/// Appends a record whose payload `write` appends to `out`; its length (header included).
/// On an error `out` is as it was.
fn encode_with(
    out: &mut Vec<u8>,
    key: u64,
    kind: u8,
    index: u64,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
) -> Result<usize, String> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.push(kind);
    out.extend_from_slice(&index.to_le_bytes());
    if let Err(e) = write(out) {
        out.truncate(start);
        return Err(e);
    }
    let len = out.len() - start;
    let crc = record_crc(key, &out[start + HEADER..]);
    out[start..start + 4].copy_from_slice(&((len - HEADER) as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(len)
}

/// The record buffer is kept between appends up to this size: a fresh buffer for each
/// append (~50 KiB at 64 connections) came from fresh pages more often than not, and zeroing
/// them was a sixth of a follower's CPU.
const SCRATCH_KEEP: usize = 4 << 20;

/// Reserves a segment's blocks up front, so an append's `fdatasync` need not also write the
/// allocation and the file size (measured here: 1.5 KiB append + fdatasync, p50 173 µs in a
/// growing file, 144 µs in a preallocated one). Best effort: without it appends grow the file.
fn preallocate(f: &File, bytes: u64) {
    if let Err(e) = rustix::fs::fallocate(f, rustix::fs::FallocateFlags::empty(), 0, bytes) {
        tracing::debug!(error = %e, "raft log: preallocating a segment failed; appends grow it");
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn err(path: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", path.display())
}

impl Wal {
    /// Opens the log in `dir` (created if missing), reading every segment and cutting a torn
    /// tail off the last one.
    pub fn open(dir: &Path) -> Result<Wal, String> {
        Self::open_with(dir, SEGMENT_BYTES)
    }

    /// [`Wal::open`] with segments of `segment_bytes`.
    pub fn open_with(dir: &Path, segment_bytes: u64) -> Result<Wal, String> {
        std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
        let mut seqs = Vec::new();
        let mut spares = Vec::new();
        for f in std::fs::read_dir(dir).map_err(|e| err(dir, e))? {
            let f = f.map_err(|e| err(dir, e))?;
            let name = f.file_name();
            let name = name.to_string_lossy();
            let Some(stem) = name.strip_suffix(".wal") else {
                continue;
            };
            if let Some(seq) = stem.strip_prefix("spare-") {
                if let Ok(seq) = seq.parse::<u64>() {
                    spares.push(seq);
                }
            } else if let Ok(seq) = stem.parse::<u64>() {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        // A spare's old records must fail their CRC in every segment it may become: only
        // numbers below the next segment's are kept (always so, unless files were moved by
        // hand).
        let next = seqs.last().map(|s| s + 1).unwrap_or(1);
        spares.sort_unstable();
        for &s in spares.iter().filter(|&&s| s >= next) {
            let p = spare_path(dir, s);
            std::fs::remove_file(&p).map_err(|e| err(&p, e))?;
        }
        spares.retain(|&s| s < next);
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments: Vec::new(),
            active: File::open(dir).map_err(|e| err(dir, e))?,
            active_len: 0,
            index: BTreeMap::new(),
            vote: None,
            committed: None,
            purged: None,
            readers: Default::default(),
            scratch: Vec::new(),
            spares,
        };
        for (i, &seq) in seqs.iter().enumerate() {
            let last = i + 1 == seqs.len();
            wal.scan(seq, last)?;
        }
        if let Some((p, _)) = wal.purged {
            wal.index = wal.index.split_off(&(p + 1));
        }
        // What was read may be only in the page cache: the leader's appends are synced by its
        // flusher thread, and a killed process leaves them unsynced. Sync the last segment
        // before anything counts them as durable (earlier segments were synced when closed).
        if let Some(&seq) = seqs.last() {
            let path = seg_path(&wal.dir, seq);
            OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.sync_data())
                .map_err(|e| err(&path, e))?;
        }
        // Appends go to a new segment that starts with the state just read: a segment whose
        // creation a crash interrupted (before its state records) is then never the only
        // holder of the vote once older ones are purged.
        wal.start_segment(next)?;
        Ok(wal)
    }

    /// Reads one segment into the index; `last`: a bad record is a torn tail, cut off.
    fn scan(&mut self, seq: u64, last: bool) -> Result<(), String> {
        let path = seg_path(&self.dir, seq);
        let mut data = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(|e| err(&path, e))?;
        let mut off = 0usize;
        let mut seg = Segment { seq, last_index: 0 };
        let mut recycled = None;
        let good_end = loop {
            if off == data.len() {
                break off;
            }
            let Some(h) = data.get(off..off + HEADER) else {
                break off;
            };
            let len = u32::from_le_bytes(h[0..4].try_into().unwrap_or_default()) as usize;
            let crc = u32::from_le_bytes(h[4..8].try_into().unwrap_or_default());
            let Some(body) = data.get(off + HEADER..off + HEADER + len) else {
                break off;
            };
            if len < BODY_HEADER {
                break off;
            }
            if record_crc(seq, body) != crc {
                break off;
            }
            let kind = body[0];
            let index = u64::from_le_bytes(body[1..9].try_into().unwrap_or_default());
            let payload = &body[BODY_HEADER..];
            match kind {
                ENTRY => {
                    self.place(
                        index,
                        Loc {
                            segment: seq,
                            record: off as u64,
                            len: (HEADER + len) as u32,
                        },
                    );
                    seg.last_index = index;
                }
                VOTE => self.vote = Some(payload.to_vec()),
                COMMITTED => self.committed = Some(payload.to_vec()),
                PURGED => self.purged = Some((index, payload.to_vec())),
                RECYCLED => recycled = Some(index),
                k => {
                    return Err(err(
                        &path,
                        format!("record at offset {off} has unknown kind {k}"),
                    ));
                }
            }
            off += HEADER + len;
        };
        // Space preallocated for appends reads as zeros: a clean end (a closed segment keeps it
        // if the trim at its close was lost in a crash).
        let zero_tail = data[good_end..].iter().all(|&b| b == 0);
        if good_end != data.len() && !zero_tail {
            if !last {
                return Err(err(
                    &path,
                    format!(
                        "the raft log is corrupt at offset {good_end} of a closed segment \
                         (a record is short or fails its checksum)"
                    ),
                ));
            }
            if let Some(was) = recycled {
                // The rest is mostly the old records of the file's previous use.
                tracing::debug!(
                    file = %path.display(),
                    offset = good_end,
                    was,
                    "raft log: a reused segment's records end here; cutting the rest"
                );
            } else {
                tracing::warn!(
                    file = %path.display(),
                    offset = good_end,
                    dropped = data.len() - good_end,
                    "raft log: cutting a torn write off the end (it was never acknowledged)"
                );
            }
        }
        if good_end != data.len() {
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| err(&path, e))?;
            f.set_len(good_end as u64)
                .and_then(|_| f.sync_all())
                .map_err(|e| err(&path, e))?;
        }
        self.segments.push(seg);
        Ok(())
    }

    /// Starts segment `seq` with the current vote, committed and purged records: in a spare's
    /// file when there is one, else in a new, preallocated one.
    fn start_segment(&mut self, seq: u64) -> Result<(), String> {
        let path = seg_path(&self.dir, seq);
        let mut buf = Vec::new();
        self.state_records(&mut buf, seq);
        let f = match self.reuse_spare(&path, seq) {
            Some((f, was)) => {
                encode(&mut buf, seq, RECYCLED, was, &[]);
                if let Err(e) = f.write_all_at(&buf, 0).and_then(|_| f.sync_data()) {
                    // The next append starts this segment again, in a new file.
                    let _ = std::fs::remove_file(&path);
                    return Err(err(&path, e));
                }
                // Appends write part of a page: have the rest of each page read in now, not
                // by every append (the file was written to recently, so usually a no-op).
                let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::WillNeed);
                f
            }
            None => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| err(&path, e))?;
                preallocate(&f, self.segment_bytes);
                f.write_all_at(&buf, 0)
                    .and_then(|_| f.sync_all())
                    .map_err(|e| err(&path, e))?;
                f
            }
        };
        sync_dir(&self.dir).map_err(|e| err(&self.dir, e))?;
        self.active = f;
        self.active_len = buf.len() as u64;
        self.segments.push(Segment { seq, last_index: 0 });
        Ok(())
    }

    /// Renames the newest spare to `path`, segment `seq`; its file and old number. None (a
    /// spare that cannot be reused is deleted): start a new file.
    fn reuse_spare(&mut self, path: &Path, seq: u64) -> Option<(File, u64)> {
        let was = self.spares.pop()?;
        let spare = spare_path(&self.dir, was);
        if was >= seq {
            // Its records could be keyed with a number this or a later segment has: never
            // so (truncation and open drop such spares), but cheap to refuse.
            let _ = std::fs::remove_file(&spare);
            return self.reuse_spare(path, seq);
        }
        let r = std::fs::rename(&spare, path)
            .and_then(|_| OpenOptions::new().read(true).write(true).open(path));
        match r {
            Ok(f) => Some((f, was)),
            Err(e) => {
                tracing::warn!(file = %spare.display(), error = %e,
                    "raft log: reusing a spare segment failed; starting a new one");
                let _ = std::fs::remove_file(&spare);
                let _ = std::fs::remove_file(path);
                None
            }
        }
    }

    fn state_records(&self, buf: &mut Vec<u8>, key: u64) {
        if let Some(v) = &self.vote {
            encode(buf, key, VOTE, 0, v);
        }
        if let Some(c) = &self.committed {
            encode(buf, key, COMMITTED, 0, c);
        }
        if let Some((i, p)) = &self.purged {
            encode(buf, key, PURGED, *i, p);
        }
    }

    /// The active segment's CRC key (see [`record_crc`]).
    fn active_key(&self) -> u64 {
        self.active_seq()
    }

    fn active_seq(&self) -> u64 {
        self.segments.last().map(|s| s.seq).unwrap_or(1)
    }

    /// Appends `entries` (index, JSON) and, when given, the committed log id; durable on
    /// return.
    pub fn append<'a>(
        &mut self,
        entries: impl IntoIterator<Item = (u64, &'a [u8])>,
        committed: Option<Vec<u8>>,
    ) -> Result<(), String> {
        self.append_with(
            entries.into_iter().map(|(i, p)| {
                (i, move |out: &mut Vec<u8>| {
                    out.extend_from_slice(p);
                    Ok(())
                })
            }),
            committed,
            true,
        )
        .map(|_| ())
    }

    /// A handle on the segment being appended to, and its path. `sync_data` on it makes every
    /// write made before it was taken durable: writes to earlier segments already are, as a
    /// segment is synced when it is closed and when a truncation cuts it.
    pub fn sync_handle(&self) -> Result<(File, PathBuf), String> {
        let path = seg_path(&self.dir, self.active_seq());
        let f = self.active.try_clone().map_err(|e| err(&path, e))?;
        Ok((f, path))
    }

    /// [`Wal::append`] with each entry's JSON written by a function straight into the record
    /// buffer (no copy of its own); the bytes of entries appended. Without `sync`, the
    /// entries are readable on return and durable once `sync_data` on a [`Wal::sync_handle`]
    /// taken after this call returns (the leader's appends, synced by the flusher thread).
    pub fn append_with<W>(
        &mut self,
        entries: impl IntoIterator<Item = (u64, W)>,
        committed: Option<Vec<u8>>,
        sync: bool,
    ) -> Result<usize, String>
    where
        W: FnOnce(&mut Vec<u8>) -> Result<(), String>,
    {
        if self.active_len >= self.segment_bytes {
            // The segment closed is trimmed to its records first, durably: `scan` refuses
            // anything but zeros after the records of a closed segment, and a reused file
            // has its old records there.
            let old = seg_path(&self.dir, self.active_seq());
            self.active
                .set_len(self.active_len)
                .and_then(|_| self.active.sync_all())
                .map_err(|e| err(&old, e))?;
            let next = self.active_seq() + 1;
            self.start_segment(next)?;
        }
        let seq = self.active_seq();
        let key = self.active_key();
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let mut locs = Vec::new();
        let mut bytes = 0;
        for (index, write) in entries {
            let at = self.active_len + buf.len() as u64;
            let len = encode_with(&mut buf, key, ENTRY, index, write)?;
            bytes += len;
            locs.push((
                index,
                Loc {
                    segment: seq,
                    record: at,
                    len: len as u32,
                },
            ));
        }
        if let Some(c) = &committed {
            encode(&mut buf, key, COMMITTED, 0, c);
        }
        let written = self.write_end(&buf, sync);
        if buf.capacity() <= SCRATCH_KEEP {
            self.scratch = buf;
        }
        written?;
        if committed.is_some() {
            self.committed = committed;
        }
        for (index, loc) in locs {
            self.place(index, loc);
            if let Some(s) = self.segments.last_mut() {
                s.last_index = index;
            }
        }
        Ok(bytes)
    }

    /// Records where entry `index` is. A write of an index at or below the last one replaces
    /// it and everything after it (raft's log matching); appends past the end, the usual
    /// case, only insert.
    fn place(&mut self, index: u64, loc: Loc) {
        if self
            .index
            .last_key_value()
            .is_some_and(|(&last, _)| last >= index)
        {
            let _ = self.index.split_off(&index);
        }
        self.index.insert(index, loc);
    }

    fn write_synced(&mut self, buf: &[u8]) -> Result<(), String> {
        self.write_end(buf, true)
    }

    /// Writes `buf` at the end of the active segment, and `fdatasync`s it if `sync`.
    fn write_end(&mut self, buf: &[u8], sync: bool) -> Result<(), String> {
        let path = seg_path(&self.dir, self.active_seq());
        let r = self
            .active
            .write_all_at(buf, self.active_len)
            .and_then(|_| {
                if sync {
                    self.active.sync_data()
                } else {
                    Ok(())
                }
            });
        match r {
            Ok(()) => {
                self.active_len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // A partial write would leave a torn record in the middle of later ones: cut
                // it off (what open does after a crash) before anything else is appended.
                let _ = self.active.set_len(self.active_len);
                Err(err(&path, e))
            }
        }
    }

    /// Saves the vote; durable on return.
    pub fn save_vote(&mut self, vote: Vec<u8>) -> Result<(), String> {
        let mut buf = Vec::new();
        encode(&mut buf, self.active_key(), VOTE, 0, &vote);
        self.write_synced(&buf)?;
        self.vote = Some(vote);
        Ok(())
    }

    /// Removes the entries from `index` on; durable on return.
    pub fn truncate(&mut self, index: u64) -> Result<(), String> {
        let Some((_, &loc)) = self.index.range(index..).next() else {
            return Ok(());
        };
        // Later segments go entirely (deleted, not kept as spares: their numbers are used
        // again next); the entry's own segment is cut at the entry.
        while self.segments.len() > 1 && self.segments.last().is_some_and(|s| s.seq > loc.segment) {
            if let Some(s) = self.segments.pop() {
                let path = seg_path(&self.dir, s.seq);
                std::fs::remove_file(&path).map_err(|e| err(&path, e))?;
                self.readers_lock().remove(&s.seq);
            }
        }
        // So do spares numbered above it (a purge can spare a segment that held no entries
        // while an earlier one stays): the segments started next take those numbers, and a
        // spare's records would pass their CRC under its own.
        while let Some(&s) = self.spares.last().filter(|&&s| s > loc.segment) {
            let p = spare_path(&self.dir, s);
            std::fs::remove_file(&p).map_err(|e| err(&p, e))?;
            self.spares.pop();
        }
        let path = seg_path(&self.dir, loc.segment);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| err(&path, e))?;
        f.set_len(loc.record)
            .and_then(|_| f.sync_all())
            .map_err(|e| err(&path, e))?;
        sync_dir(&self.dir).map_err(|e| err(&self.dir, e))?;
        self.readers_lock().remove(&loc.segment);
        self.active = f;
        self.active_len = loc.record;
        let _ = self.index.split_off(&index);
        let last = self
            .index
            .range(..index)
            .next_back()
            .filter(|(_, l)| l.segment == loc.segment)
            .map(|(i, _)| *i)
            .unwrap_or(0);
        if let Some(s) = self.segments.last_mut() {
            s.last_index = last;
        }
        // The cut may have taken vote or purged records written after the entry.
        let mut buf = Vec::new();
        self.state_records(&mut buf, self.active_key());
        self.write_synced(&buf)
    }

    /// Records the purge point (made durable by the next synced write) and deletes the
    /// closed segments that hold only entries at or below `index`.
    pub fn purge(&mut self, index: u64, purged: Vec<u8>) -> Result<(), String> {
        let mut buf = Vec::new();
        encode(&mut buf, self.active_key(), PURGED, index, &purged);
        let path = seg_path(&self.dir, self.active_seq());
        self.active
            .write_all_at(&buf, self.active_len)
            .map_err(|e| err(&path, e))?;
        self.active_len += buf.len() as u64;
        self.purged = Some((index, purged));
        self.index = self.index.split_off(&(index + 1));
        // Before deleting segments that may hold the newest purged record's predecessors,
        // the new one must be durable.
        let deletable: Vec<u64> = self.segments[..self.segments.len().saturating_sub(1)]
            .iter()
            .filter(|s| s.last_index <= index)
            .map(|s| s.seq)
            .collect();
        if deletable.is_empty() {
            return Ok(());
        }
        self.active.sync_data().map_err(|e| err(&path, e))?;
        for seq in &deletable {
            let p = seg_path(&self.dir, *seq);
            let to = spare_path(&self.dir, *seq);
            std::fs::rename(&p, &to).map_err(|e| err(&p, e))?;
            self.spares.push(*seq);
            self.readers_lock().remove(seq);
        }
        // The newest spares are kept: their pages are the likeliest still cached.
        while self.spares.len() > SPARE_SEGMENTS {
            let p = spare_path(&self.dir, self.spares.remove(0));
            std::fs::remove_file(&p).map_err(|e| err(&p, e))?;
        }
        self.segments.retain(|s| !deletable.contains(&s.seq));
        Ok(())
    }

    fn readers_lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, File>> {
        self.readers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The JSON of the entries in `start..end` that are present, in order.
    pub fn read(&self, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, String> {
        let mut out = Vec::new();
        for (&index, loc) in self.index.range(start..end) {
            let mut rec = vec![0u8; loc.len as usize];
            let path = seg_path(&self.dir, loc.segment);
            if loc.segment == self.active_seq() {
                self.active.read_exact_at(&mut rec, loc.record)
            } else {
                let mut readers = self.readers_lock();
                let f = match readers.entry(loc.segment) {
                    std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(File::open(&path).map_err(|e| err(&path, e))?)
                    }
                };
                f.read_exact_at(&mut rec, loc.record)
            }
            .map_err(|e| err(&path, e))?;
            if record_crc(loc.segment, &rec[HEADER..])
                != u32::from_le_bytes(rec[4..8].try_into().unwrap_or_default())
            {
                return Err(err(&path, format!("entry {index} fails its checksum")));
            }
            out.push((index, rec[HEADER + BODY_HEADER..].to_vec()));
        }
        Ok(out)
    }

    /// The newest entry's index and JSON.
    pub fn last(&self) -> Result<Option<(u64, Vec<u8>)>, String> {
        match self.index.keys().next_back() {
            Some(&i) => Ok(self.read(i, i + 1)?.pop()),
            None => Ok(None),
        }
    }

    pub fn vote(&self) -> Option<&[u8]> {
        self.vote.as_deref()
    }

    pub fn committed(&self) -> Option<&[u8]> {
        self.committed.as_deref()
    }

    pub fn purged(&self) -> Option<&[u8]> {
        self.purged.as_ref().map(|(_, p)| p.as_slice())
    }

    /// Segment files, oldest first (for tests and diagnostics).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(w: &Wal) -> Vec<(u64, Vec<u8>)> {
        w.read(0, u64::MAX).expect("read")
    }

    /// One append per entry (a segment is closed between appends).
    fn append(w: &mut Wal, from: u64, to: u64, tag: &str) {
        for i in from..=to {
            let body = format!("{{\"i\":{i},\"t\":\"{tag}\"}}").into_bytes();
            w.append([(i, body.as_slice())], None).expect("append");
        }
    }

    #[test]
    fn reopens_with_entries_vote_committed_and_purge_point() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Wal::open(dir.path()).expect("open");
        append(&mut w, 1, 5, "a");
        w.save_vote(b"v1".to_vec()).expect("vote");
        w.append(std::iter::empty(), Some(b"c4".to_vec()))
            .expect("committed");
        w.purge(2, b"p2".to_vec()).expect("purge");
        append(&mut w, 6, 6, "a");
        drop(w);
        let w = Wal::open(dir.path()).expect("reopen");
        let got: Vec<u64> = entries(&w).iter().map(|(i, _)| *i).collect();
        assert_eq!(got, vec![3, 4, 5, 6], "purged entries are gone");
        assert_eq!(w.vote(), Some(&b"v1"[..]));
        assert_eq!(w.committed(), Some(&b"c4"[..]));
        assert_eq!(w.purged(), Some(&b"p2"[..]));
        assert_eq!(w.last().expect("last").map(|(i, _)| i), Some(6));
    }

    #[test]
    fn a_torn_tail_is_cut_and_appends_continue() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Wal::open(dir.path()).expect("open");
        append(&mut w, 1, 3, "a");
        let (path, end) = (seg_path(dir.path(), w.active_seq()), w.active_len);
        drop(w);
        // A crash in the middle of the next append: half a record.
        let mut rec = Vec::new();
        encode(&mut rec, 1, ENTRY, 4, b"{\"i\":4}");
        let f = OpenOptions::new().write(true).open(&path).expect("seg");
        f.write_all_at(&rec[..rec.len() / 2], end).expect("torn");
        drop(f);
        let mut w = Wal::open(dir.path()).expect("reopen cuts the tail");
        assert_eq!(entries(&w).len(), 3);
        append(&mut w, 4, 5, "b");
        drop(w);
        let w = Wal::open(dir.path()).expect("reopen");
        let got: Vec<u64> = entries(&w).iter().map(|(i, _)| *i).collect();
        assert_eq!(got, vec![1, 2, 3, 4, 5]);
        // A flipped bit in the last record written before the crash also ends the log there.
        let mut w = w;
        append(&mut w, 6, 6, "c");
        let (active, end) = (seg_path(dir.path(), w.active_seq()), w.active_len);
        drop(w);
        let f = OpenOptions::new().write(true).open(&active).expect("seg");
        f.write_all_at(b"X", end - 2).expect("flip");
        drop(f);
        let w = Wal::open(dir.path()).expect("reopen");
        assert_eq!(w.last().expect("last").map(|(i, _)| i), Some(5));
    }

    #[test]
    fn truncated_entries_never_come_back() {
        let dir = tempfile::tempdir().expect("dir");
        // Small segments: the truncation crosses segment boundaries.
        let mut w = Wal::open_with(dir.path(), 64).expect("open");
        append(&mut w, 1, 10, "old");
        w.save_vote(b"v2".to_vec()).expect("vote");
        assert!(w.segment_count() > 3, "{} segments", w.segment_count());
        w.truncate(6).expect("truncate");
        // Same sizes as the removed records, so they would line up with the old bytes.
        append(&mut w, 6, 7, "new");
        drop(w);
        let w = Wal::open_with(dir.path(), 64).expect("reopen");
        let got: Vec<(u64, String)> = entries(&w)
            .into_iter()
            .map(|(i, b)| (i, String::from_utf8(b).expect("utf8")))
            .collect();
        assert_eq!(got.len(), 7, "{got:?}");
        assert!(
            got[5].1.contains("new") && got[6].1.contains("new"),
            "{got:?}"
        );
        assert!(got[..5].iter().all(|(_, b)| b.contains("old")));
        assert_eq!(w.vote(), Some(&b"v2"[..]), "the vote survives the cut");
    }

    #[test]
    fn purge_deletes_old_segments_and_keeps_the_state() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Wal::open_with(dir.path(), 128).expect("open");
        w.save_vote(b"v3".to_vec()).expect("vote");
        append(&mut w, 1, 40, "a");
        let before = w.segment_count();
        w.purge(30, b"p30".to_vec()).expect("purge");
        assert!(
            w.segment_count() < before,
            "{before} -> {}",
            w.segment_count()
        );
        drop(w);
        let w = Wal::open_with(dir.path(), 128).expect("reopen");
        let got: Vec<u64> = entries(&w).iter().map(|(i, _)| *i).collect();
        assert_eq!(got, (31..=40).collect::<Vec<_>>());
        assert_eq!(w.vote(), Some(&b"v3"[..]));
        assert_eq!(w.purged(), Some(&b"p30"[..]));
    }

    /// The leader's appends (written now, synced by the flusher thread): readable at once,
    /// and the sync handle is always the segment being appended to.
    #[test]
    fn unsynced_appends_are_readable_and_the_sync_handle_follows_the_active_segment() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Wal::open_with(dir.path(), 128).expect("open");
        for i in 1..=12u64 {
            let body = format!("{{\"i\":{i}}}");
            let record = |out: &mut Vec<u8>| {
                out.extend_from_slice(body.as_bytes());
                Ok(())
            };
            w.append_with([(i, record)], None, false).expect("append");
            assert_eq!(w.last().expect("last").map(|(i, _)| i), Some(i));
            let (f, path) = w.sync_handle().expect("handle");
            assert_eq!(
                path,
                seg_path(dir.path(), w.active_seq()),
                "after entry {i}"
            );
            f.sync_data().expect("sync");
        }
        assert!(w.segment_count() > 1, "the appends crossed segments");
        drop(w);
        let w = Wal::open_with(dir.path(), 128).expect("reopen");
        let got: Vec<u64> = entries(&w).iter().map(|(i, _)| *i).collect();
        assert_eq!(got, (1..=12).collect::<Vec<_>>());
    }

    #[test]
    fn corruption_in_a_closed_segment_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Wal::open_with(dir.path(), 64).expect("open");
        append(&mut w, 1, 6, "a");
        assert!(w.segment_count() > 2);
        drop(w);
        let path = seg_path(dir.path(), 1);
        let f = OpenOptions::new().write(true).open(&path).expect("seg");
        f.write_all_at(b"X", 12).expect("flip");
        let e = Wal::open_with(dir.path(), 64).err().expect("refused");
        assert!(
            e.contains("00000000000000000001.wal") && e.contains("corrupt"),
            "{e}"
        );
    }

    fn spare_files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|f| f.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("spare-"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn purged_segments_are_reused_and_their_old_records_never_return() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Wal::open_with(dir.path(), 200).expect("open");
        w.save_vote(b"v1".to_vec()).expect("vote");
        append(&mut w, 1, 60, "old");
        w.purge(40, b"p40".to_vec()).expect("purge");
        let spares = spare_files(dir.path());
        assert_eq!(spares.len(), SPARE_SEGMENTS, "{spares:?}");
        // Enough appends to start new segments, each in a spare's file.
        append(&mut w, 61, 75, "new");
        let left = spare_files(dir.path());
        assert!(left.len() < spares.len(), "{spares:?} -> {left:?}");
        drop(w);
        for _ in 0..2 {
            // The reused files hold valid records of their old numbers (entries 1-40 "old")
            // after the new ones: none may come back, nor cut the log short.
            let w = Wal::open_with(dir.path(), 200).expect("reopen");
            let got = entries(&w);
            let idx: Vec<u64> = got.iter().map(|(i, _)| *i).collect();
            assert_eq!(idx, (41..=75).collect::<Vec<_>>());
            for (i, b) in &got {
                let tag = if *i > 60 { "new" } else { "old" };
                assert!(String::from_utf8_lossy(b).contains(tag), "{i}: {b:?}");
            }
            assert_eq!(w.vote(), Some(&b"v1"[..]));
            assert_eq!(w.purged(), Some(&b"p40"[..]));
        }
    }

    #[test]
    fn corruption_in_a_closed_reused_segment_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Wal::open_with(dir.path(), 200).expect("open");
        append(&mut w, 1, 40, "old");
        w.purge(30, b"p30".to_vec()).expect("purge");
        let before: std::collections::BTreeSet<u64> = w.segments.iter().map(|s| s.seq).collect();
        append(&mut w, 41, 60, "new");
        // A segment started in a spare's file and closed since.
        let reused = w.segments[..w.segments.len() - 1]
            .iter()
            .map(|s| s.seq)
            .find(|s| !before.contains(s))
            .expect("a closed new segment");
        drop(w);
        let path = seg_path(dir.path(), reused);
        let f = OpenOptions::new().write(true).open(&path).expect("seg");
        f.write_all_at(b"X", 12).expect("flip");
        let e = Wal::open_with(dir.path(), 200).err().expect("refused");
        assert!(
            e.contains(&format!("{reused:020}.wal")) && e.contains("corrupt"),
            "{e}"
        );
    }

    #[test]
    fn a_record_is_valid_only_in_the_segment_it_was_written_to() {
        let dir = tempfile::tempdir().expect("dir");
        // Segment 7, a reused file: its own records, then (at a record boundary) records the
        // file held as segment 3.
        let mut buf = Vec::new();
        encode(&mut buf, 7, VOTE, 0, b"v7");
        encode(&mut buf, 7, RECYCLED, 3, &[]);
        encode(&mut buf, 7, ENTRY, 10, b"{\"t\":\"new\"}");
        for i in 4..=6u64 {
            encode(&mut buf, 3, ENTRY, i, b"{\"t\":\"old\"}");
        }
        std::fs::write(seg_path(dir.path(), 7), &buf).expect("segment");
        let w = Wal::open(dir.path()).expect("open");
        let got: Vec<u64> = entries(&w).iter().map(|(i, _)| *i).collect();
        assert_eq!(got, vec![10]);
        assert_eq!(w.vote(), Some(&b"v7"[..]));
    }

    #[test]
    fn truncation_drops_spares_whose_numbers_come_again() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Wal::open_with(dir.path(), 1024).expect("open");
        append(&mut w, 1, 2, "a");
        drop(w);
        // Two restarts: segment 2 holds only state records, 3 is active.
        drop(Wal::open_with(dir.path(), 1024).expect("reopen"));
        let mut w = Wal::open_with(dir.path(), 1024).expect("reopen");
        w.save_vote(b"v-old".to_vec()).expect("vote");
        // Purging nothing spares segment 2 (no entries) and keeps 1.
        w.purge(0, b"p0".to_vec()).expect("purge");
        assert_eq!(
            spare_files(dir.path()),
            vec![format!("spare-{:020}.wal", 2)]
        );
        // Raft replaces entry 2: segment 1 is active again, and the next one will be 2.
        w.truncate(2).expect("truncate");
        assert!(
            spare_files(dir.path()).is_empty(),
            "{:?}",
            spare_files(dir.path())
        );
        w.save_vote(b"v-new".to_vec()).expect("vote");
        append(&mut w, 2, 80, "b");
        assert!(w.segment_count() > 2);
        drop(w);
        let w = Wal::open_with(dir.path(), 1024).expect("reopen");
        assert_eq!(w.vote(), Some(&b"v-new"[..]));
        let idx: Vec<u64> = entries(&w).iter().map(|(i, _)| *i).collect();
        assert_eq!(idx, (1..=80).collect::<Vec<_>>());
    }
}
