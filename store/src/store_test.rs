use serde_json::json;

use super::*;
use crate::EventType;
use redb::ReadableDatabase;

fn open(dir: &tempfile::TempDir, retention: u64) -> Store {
    let mut c = StoreConfig::new(dir.path().join("db.redb"));
    c.history_retention = retention;
    Store::open(c).unwrap()
}

fn put(key: &str, v: Value, pre: Precondition) -> WriteOp {
    WriteOp::Put {
        key: key.into(),
        value: Json::encode(&v),
        precondition: pre,
    }
}

#[tokio::test]
async fn preconditions_and_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, 1000);
    assert_eq!(s.revision(), 1);
    let a = s
        .write(put(
            "k/a",
            json!({"metadata": {"name": "a"}}),
            Precondition::MustNotExist,
        ))
        .await
        .unwrap();
    assert_eq!(a.revision, 2);
    assert_eq!(
        a.object.decode(a.revision).unwrap()["metadata"]["resourceVersion"],
        "2"
    );
    let dup = s
        .write(put("k/a", json!({}), Precondition::MustNotExist))
        .await;
    assert!(
        matches!(dup, Err(StoreError::AlreadyExists { .. })),
        "{dup:?}"
    );
    let stale = s
        .write(put("k/a", json!({}), Precondition::Revision(1)))
        .await;
    assert!(
        matches!(
            stale,
            Err(StoreError::Conflict {
                expected: 1,
                actual: 2,
                ..
            })
        ),
        "{stale:?}"
    );
    // A failed write consumes no revision.
    let b = s
        .write(put("k/a", json!({"x": 1}), Precondition::Revision(2)))
        .await
        .unwrap();
    assert_eq!(b.revision, 3);
    let gone = s
        .write(WriteOp::Delete {
            key: "k/missing".into(),
            precondition: Precondition::None,
        })
        .await;
    assert!(matches!(gone, Err(StoreError::NotFound { .. })));
    let d = s
        .write(WriteOp::Delete {
            key: "k/a".into(),
            precondition: Precondition::Revision(3),
        })
        .await
        .unwrap();
    assert_eq!(d.revision, 4);
    assert_eq!(
        d.object.decode(d.revision).unwrap()["x"],
        1,
        "a delete returns the last state"
    );
    assert!(s.get("k/a").unwrap().is_none());
}

#[tokio::test]
async fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(&dir, 1000);
        for i in 0..20 {
            s.write(put(
                &format!("k/{i:02}"),
                json!({"i": i}),
                Precondition::None,
            ))
            .await
            .unwrap();
        }
    }
    // The writer thread holds only a weak reference; give it a moment to drop the database.
    let mut s = None;
    for _ in 0..50 {
        match Store::open(StoreConfig::new(dir.path().join("db.redb"))) {
            Ok(st) => {
                s = Some(st);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    let s = s.expect("reopens");
    assert_eq!(s.revision(), 21);
    let page = s.list("k/", None, 0, None).unwrap();
    assert_eq!(page.items.len(), 20);
    assert_eq!(page.revision, 21);
}

#[tokio::test]
async fn list_pages_and_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, 1000);
    for k in ["a/1", "a/2", "a/3", "ab/1", "b/1"] {
        s.write(put(k, json!({"k": k}), Precondition::None))
            .await
            .unwrap();
    }
    let p1 = s.list("a/", None, 2, None).unwrap();
    assert_eq!(p1.items.len(), 2);
    assert_eq!(p1.remaining, 1);
    let p2 = s.list("a/", p1.continue_after.as_deref(), 2, None).unwrap();
    assert_eq!(p2.items.len(), 1);
    assert_eq!(p2.items[0].object["k"], "a/3");
    assert!(p2.continue_after.is_none());
    let filtered = s
        .list("a/", None, 0, Some(&|v: &Value| v["k"] != "a/2"))
        .unwrap();
    assert_eq!(filtered.items.len(), 2);
}

#[tokio::test]
async fn watch_replays_then_streams_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, 1000);
    for i in 0..5 {
        s.write(put("k/x", json!({"i": i}), Precondition::None))
            .await
            .unwrap();
    }
    let mut w = s.watch(3).unwrap();
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 5..5000 {
                s.write(put("k/x", json!({"i": i}), Precondition::None))
                    .await
                    .unwrap();
            }
        })
    };
    // Revisions 4..=5001 (5000 puts after the initial revision 1), in order, none missing,
    // even though the live channel (4096) overflows while this watcher sleeps.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for want in 4..=5001u64 {
        let e = tokio::time::timeout(std::time::Duration::from_secs(20), w.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.revision, want);
        // The object as written, at its revision, and the one it replaced.
        assert_eq!(e.object()["i"], want - 2);
        assert_eq!(e.object()["metadata"]["resourceVersion"], want.to_string());
        assert_eq!(e.prev().unwrap()["i"], want - 3);
        assert_eq!(e.type_, EventType::Modified);
    }
    writer.await.unwrap();
}

#[tokio::test]
async fn history_names_the_previous_version_instead_of_copying_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, 10);
    let big = "x".repeat(1000);
    for v in 1..=2 {
        s.write(put("k/a", json!({"v": v, "pad": big}), Precondition::None))
            .await
            .unwrap();
    }
    // Revision 3 (the update) holds one copy of the 1 KB object, not two.
    {
        let txn = s.database().begin_read().unwrap();
        let t = txn.open_table(HISTORY).unwrap();
        let len = t.get(3u64).unwrap().unwrap().value().len();
        assert!((1000..1200).contains(&len), "record of {len} bytes");
    }
    s.write(WriteOp::Delete {
        key: "k/a".into(),
        precondition: Precondition::None,
    })
    .await
    .unwrap();
    let mut w = s.watch(1).unwrap();
    let created = w.recv().await.unwrap();
    assert!(!created.had_prev() && created.prev().is_none());
    let updated = w.recv().await.unwrap();
    assert_eq!(
        (updated.revision, updated.prev().unwrap()["v"].clone()),
        (3, json!(1))
    );
    let deleted = w.recv().await.unwrap();
    assert_eq!(deleted.type_, EventType::Deleted);
    assert_eq!(deleted.prev().unwrap()["v"], 2);

    // "k/b" is created, history moves past it, then it changes.
    s.write(put("k/b", json!({"v": 1}), Precondition::None))
        .await
        .unwrap();
    for i in 0..30 {
        s.write(put("k/c", json!({ "i": i }), Precondition::None))
            .await
            .unwrap();
    }
    let from = s.revision();
    s.write(put("k/b", json!({"v": 2}), Precondition::None))
        .await
        .unwrap();
    s.write(WriteOp::Delete {
        key: "k/c".into(),
        precondition: Precondition::None,
    })
    .await
    .unwrap();
    let mut w = s.watch(from).unwrap();
    let b = w.recv().await.unwrap();
    assert_eq!(b.object()["v"], 2);
    assert!(b.had_prev() && b.prev_unknown() && b.prev().is_none());
    let c = w.recv().await.unwrap();
    assert_eq!(
        (c.type_, c.prev().unwrap()["i"].clone()),
        (EventType::Deleted, json!(29))
    );
}

#[tokio::test]
async fn compaction_expires_old_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, 10);
    for i in 0..50 {
        s.write(put(&format!("k/{i}"), json!({}), Precondition::None))
            .await
            .unwrap();
    }
    assert!(s.compacted() >= 51 - 11, "compacted {}", s.compacted());
    match s.watch(2) {
        Err(StoreError::Compacted {
            requested: 2,
            compacted,
        }) => assert_eq!(compacted, s.compacted()),
        other => panic!("expected Compacted, got {:?}", other.map(|_| ())),
    }
    let mut w = s.watch(s.compacted()).unwrap();
    let e = w.recv().await.unwrap();
    assert_eq!(e.revision, s.compacted() + 1);
}

#[tokio::test]
async fn objects_over_the_limit_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, 1000);
    let big = "x".repeat(crate::MAX_OBJECT_BYTES);
    let r = s
        .write(put("k/big", json!({ "v": big }), Precondition::None))
        .await;
    match r {
        Err(StoreError::TooLarge { key, size, limit }) => {
            assert_eq!(key, "k/big");
            assert!(size > limit);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(s.get("k/big").unwrap().is_none());
    assert_eq!(s.revision(), 1);
}

/// Replicated applies: readable at once from the in-memory tail (gets, lists with deletes
/// and paging across both sources, watch replay across the persist boundary), durable only
/// once persisted, and the raft metadata follows the same way.
#[tokio::test]
async fn replicated_applies_are_read_from_the_tail_then_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, 1000);
    let entry = |index: u64, ops: Vec<WriteOp>| crate::Entry { index, ops };
    let del = |k: &str| WriteOp::Delete {
        key: k.into(),
        precondition: Precondition::MustExist,
    };
    // Persisted: a/1..a/4 (revisions 2..=5).
    let ops = (1..=4)
        .map(|i| put(&format!("a/{i}"), json!({"v": i}), Precondition::None))
        .collect();
    s.apply_entries(&[entry(1, ops)], &[("applied", b"1".to_vec())])
        .unwrap();
    s.flush().unwrap();
    // In the tail only: a/2 changed (6), a/3 deleted (7), a/5 created (8); a failed
    // precondition consumes no revision.
    let r = s
        .apply_entries(
            &[entry(
                2,
                vec![
                    put("a/2", json!({"v": 20}), Precondition::Revision(3)),
                    del("a/3"),
                    put("a/5", json!({"v": 5}), Precondition::MustNotExist),
                    put("a/1", json!({"v": 0}), Precondition::Revision(99)),
                ],
            )],
            &[("applied", b"2".to_vec())],
        )
        .unwrap();
    assert!(matches!(
        r[0][3],
        Err(StoreError::Conflict { actual: 2, .. })
    ));
    assert_eq!(s.revision(), 8);
    assert_eq!(s.get("a/2").unwrap().unwrap().object["v"], 20);
    assert!(s.get("a/3").unwrap().is_none());
    assert_eq!(s.get("a/1").unwrap().unwrap().revision, 2);
    assert_eq!(s.sm_meta("applied").unwrap().unwrap(), b"2");
    let check_lists = |s: &Store| {
        let all = s.list("a/", None, 0, None).unwrap();
        let got: Vec<_> = all.items.iter().map(|o| o.object["v"].clone()).collect();
        assert_eq!(got, vec![json!(1), json!(20), json!(4), json!(5)]);
        assert_eq!(all.revision, 8);
        let p1 = s.list("a/", None, 2, None).unwrap();
        assert_eq!((p1.items.len(), p1.remaining), (2, 2));
        let p2 = s.list("a/", p1.continue_after.as_deref(), 2, None).unwrap();
        let got: Vec<_> = p2.items.iter().map(|o| o.object["v"].clone()).collect();
        assert_eq!(got, vec![json!(4), json!(5)]);
        assert!(p2.continue_after.is_none());
        // Replay from revision 4: 5 from the database, 6..=8 from the tail (or all from the
        // database once persisted), with their previous objects.
        let events = crate::history::after(&s.inner, 4).unwrap();
        let revs: Vec<_> = events.iter().map(|e| e.revision).collect();
        assert_eq!(revs, vec![5, 6, 7, 8]);
        assert_eq!(events[1].prev().unwrap()["v"], 2);
        assert_eq!(events[2].type_, EventType::Deleted);
        assert!(!events[3].had_prev());
    };
    check_lists(&s);
    // Not persisted: a reopen has the state of the last persist (openraft applies the
    // entries again from its log).
    drop(s);
    let s = open(&dir, 1000);
    assert_eq!(s.revision(), 5);
    assert_eq!(s.get("a/3").unwrap().unwrap().object["v"], 3);
    assert_eq!(s.sm_meta("applied").unwrap().unwrap(), b"1");
    s.apply_entries(
        &[entry(
            2,
            vec![
                put("a/2", json!({"v": 20}), Precondition::Revision(3)),
                del("a/3"),
                put("a/5", json!({"v": 5}), Precondition::MustNotExist),
            ],
        )],
        &[("applied", b"2".to_vec())],
    )
    .unwrap();
    check_lists(&s);
    s.flush().unwrap();
    check_lists(&s);
    drop(s);
    let s = open(&dir, 1000);
    check_lists(&s);
    assert_eq!(s.sm_meta("applied").unwrap().unwrap(), b"2");
}

/// Replicated mode compacts history in the persist's own transaction: never past what the
/// database holds, keeping the newest `retention` events, and the compaction point survives
/// a reopen.
#[tokio::test]
async fn replicated_history_is_compacted_with_the_persist() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, 20);
    let entry = |index: u64, ops: Vec<WriteOp>| crate::Entry { index, ops };
    let apply = |s: &Store, index: u64| {
        let ops = (0..10)
            .map(|i| put(&format!("k/{i}"), json!({"v": index}), Precondition::None))
            .collect();
        let applied = index.to_string().into_bytes();
        s.apply_entries(&[entry(index, ops)], &[("applied", applied)])
            .unwrap();
    };
    // 50 events (revisions 2..=51) in the tail: nothing is compacted before they persist.
    for i in 1..=5 {
        apply(&s, i);
    }
    assert_eq!(s.revision(), 51);
    assert!(crate::history::after(&s.inner, 1).is_ok());
    s.flush().unwrap();
    // Persisted, then compacted to the newest 20: revision 31 on.
    assert_eq!(s.inner.compacted.load(Ordering::Acquire), 31);
    assert!(matches!(
        crate::history::after(&s.inner, 30),
        Err(StoreError::Compacted { compacted: 31, .. })
    ));
    let revs: Vec<_> = crate::history::after(&s.inner, 31)
        .unwrap()
        .iter()
        .map(|e| e.revision)
        .collect();
    assert_eq!(revs, (32..=51).collect::<Vec<_>>());
    // 10 more in the tail: compaction waits for their persist, then keeps the newest 20.
    apply(&s, 6);
    assert_eq!(s.inner.compacted.load(Ordering::Acquire), 31);
    s.flush().unwrap();
    assert_eq!(s.inner.compacted.load(Ordering::Acquire), 41);
    drop(s);
    let s = open(&dir, 20);
    assert_eq!(s.revision(), 61);
    assert_eq!(s.inner.compacted.load(Ordering::Acquire), 41);
    assert_eq!(crate::history::after(&s.inner, 41).unwrap().len(), 20);
}

/// A tail that outgrows its limit is persisted before the period is up.
#[tokio::test]
async fn a_large_tail_is_persisted_early() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, 1000);
    let hour = std::time::Duration::from_secs(3600);
    s.spawn_flusher(hour, hour);
    // The interval's first tick is immediate: let it pass with nothing to persist.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let big = "x".repeat(1 << 20);
    let ops: Vec<_> = (0..80)
        .map(|i| put(&format!("big/{i}"), json!({ "v": big }), Precondition::None))
        .collect();
    s.apply_entries(
        &[crate::Entry { index: 1, ops }],
        &[("applied", b"1".to_vec())],
    )
    .unwrap();
    let persisted = || {
        let tail = s.inner.tail();
        tail.active.objects.is_empty() && tail.frozen.is_none()
    };
    // Early means long before the hour-long interval; writing 80 MiB in the dev profile
    // takes 8-10 s on a 2-core machine, so the bound is generous.
    for _ in 0..1200 {
        if persisted() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(persisted(), "80 MiB applied, still in memory after 60 s");
    let txn = s.inner.db.begin_read().unwrap();
    assert_eq!(crate::store::read_revision(&txn).unwrap(), 81);
}

/// The tail is persisted once the applies pause, not while they go on, and not only on the
/// period.
#[tokio::test]
async fn a_tail_is_persisted_when_the_applies_pause() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, 1000);
    let idle = std::time::Duration::from_millis(1000);
    s.spawn_flusher(std::time::Duration::from_secs(3600), idle);
    // The first tick, at once, finds nothing applied.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    // In memory until the flush has committed: the tail is frozen (out of `active`) while the
    // flush writes, and only then cleared.
    let in_memory = || {
        let t = s.inner.tail();
        !t.active.objects.is_empty() || t.frozen.is_some()
    };
    let started = std::time::Instant::now();
    let mut index = 0;
    // Applies every 10 ms for 0.5 s, well under `idle` apart: the tail stays in memory.
    while started.elapsed() < std::time::Duration::from_millis(500) {
        index += 1;
        s.apply_entries(
            &[crate::Entry {
                index,
                ops: vec![put(
                    &format!("k/{index}"),
                    json!({ "v": index }),
                    Precondition::None,
                )],
            }],
            &[("applied", index.to_string().into_bytes())],
        )
        .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert!(
            in_memory(),
            "persisted while entries were still being applied"
        );
    }
    let paused = std::time::Instant::now();
    for _ in 0..200 {
        if !in_memory() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(!in_memory(), "still in memory 5 s after the applies paused");
    assert!(
        paused.elapsed() >= idle - std::time::Duration::from_millis(100),
        "persisted before the pause was `idle` long"
    );
    let txn = s.inner.db.begin_read().unwrap();
    assert_eq!(crate::store::read_revision(&txn).unwrap(), index + 1);
}

/// Replicated mode persists history in chunks: a replay starting inside one, and previous
/// objects looked up in earlier ones, see every record once; compaction drops only chunks
/// entirely at or before the compaction point.
/// Applies raft entry `index` (replicated mode): a put of `{"v": index, "pad": pad}` to each
/// of `k/0` .. `k/{keys - 1}`.
fn apply_puts(s: &Store, index: u64, keys: usize, pad: &str) {
    let ops = (0..keys)
        .map(|i| {
            put(
                &format!("k/{i}"),
                json!({"v": index, "pad": pad}),
                Precondition::None,
            )
        })
        .collect();
    s.apply_entries(
        &[crate::Entry { index, ops }],
        &[("applied", index.to_string().into_bytes())],
    )
    .unwrap();
}

#[tokio::test]
async fn replicated_history_is_stored_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, 100);
    let pad = "x".repeat(2000);
    // Ten keys, each written once per entry: the previous version of an object is ten
    // revisions back.
    let apply = |s: &Store, index: u64| apply_puts(s, index, 10, &pad);
    for i in 1..=10 {
        apply(&s, i);
    }
    s.flush().unwrap();
    assert_eq!(s.revision(), 101);
    let keys = |s: &Store| -> Vec<u64> {
        let txn = s.inner.db.begin_read().unwrap();
        let t = txn.open_table(HISTORY).unwrap();
        t.iter().unwrap().map(|e| e.unwrap().0.value()).collect()
    };
    let k = keys(&s);
    assert!(k.len() > 2 && k.len() < 10, "100 records of 2 KB in {k:?}");
    let check = |s: &Store, from: u64, to: u64| {
        let events = crate::history::after(&s.inner, from).unwrap();
        let revs: Vec<u64> = events.iter().map(|e| e.revision).collect();
        assert_eq!(revs, ((from + 1)..=to).collect::<Vec<_>>());
        for e in &events {
            // Revision r is entry (r - 2) / 10 + 1's write; its previous version, one entry
            // earlier (the first entry's creates have none).
            let entry = (e.revision - 2) / 10 + 1;
            assert_eq!(e.object()["v"], entry, "revision {}", e.revision);
            if entry == 1 {
                assert_eq!(e.type_, EventType::Added);
            } else {
                assert_eq!(e.prev().unwrap()["v"], entry - 1, "revision {}", e.revision);
            }
        }
    };
    // From the middle of a chunk: revision 51's previous object (41) is in an earlier one.
    check(&s, 50, 101);
    check(&s, 1, 101);
    for i in 11..=16 {
        apply(&s, i);
    }
    s.flush().unwrap();
    let compacted = s.inner.compacted.load(Ordering::Acquire);
    assert_eq!(compacted, 61);
    let k = keys(&s);
    // The first chunk kept holds revision 62; every earlier one is gone.
    assert!(k[0] <= 62 && k.get(1).is_some_and(|&n| n > 62), "{k:?}");
    check(&s, 61, 161);
    assert!(matches!(
        crate::history::after(&s.inner, 60),
        Err(StoreError::Compacted { compacted: 61, .. })
    ));
    drop(s);
    let s = open(&dir, 100);
    check(&s, 61, 161);
    check(&s, 120, 161);
}

#[test]
fn a_malformed_history_chunk_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _g = rt.enter();
    let s = open(&dir, 1000);
    {
        let txn = s.database().begin_write().unwrap();
        // A chunk claiming 5 records with the index of one.
        let mut v = vec![3u8];
        v.extend_from_slice(&5u32.to_le_bytes());
        v.extend_from_slice(&7u64.to_le_bytes());
        v.extend_from_slice(&4u32.to_le_bytes());
        txn.open_table(HISTORY)
            .unwrap()
            .insert(7u64, v.as_slice())
            .unwrap();
        let mut m = txn.open_table(crate::store::META).unwrap();
        m.insert("revision", 7u64).unwrap();
        drop(m);
        txn.commit().unwrap();
    }
    let Err(e) = crate::history::after(&s.inner, 1) else {
        panic!("a malformed chunk was read");
    };
    assert!(
        e.to_string().contains("history chunk 7 is malformed"),
        "{e}"
    );
}

#[tokio::test]
async fn history_chunks_fit_a_64_kib_page() {
    // redb rounds a value larger than a page up to a power-of-two run of pages: a chunk
    // closed just past 64 KiB took 128 KiB, half of it written for nothing.
    use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, 100_000);
    // Records of ~1.3 KiB, of varying size, and one larger than a chunk (its own chunk).
    for index in 1..=200u64 {
        let pad = "x".repeat(if index == 150 {
            100_000
        } else {
            1000 + (index as usize * 37) % 500
        });
        apply_puts(&s, index, 5, &pad);
    }
    s.flush().unwrap();
    let txn = s.inner.db.begin_read().unwrap();
    let t = txn.open_table(HISTORY).unwrap();
    let lens: Vec<(u64, usize)> = t
        .iter()
        .unwrap()
        .map(|e| {
            let (k, v) = e.unwrap();
            (k.value(), v.value().len())
        })
        .collect();
    let big: Vec<_> = lens.iter().filter(|(_, l)| *l > 100_000).collect();
    assert_eq!(
        big.len(),
        5,
        "each record over a chunk's size is a chunk: {lens:?}"
    );
    for (i, (k, l)) in lens.iter().enumerate() {
        if *l > 100_000 {
            continue;
        }
        assert!(*l <= crate::history::CHUNK_BYTES, "chunk {k}: {l} bytes");
        let last = i + 1 == lens.len() || lens[i + 1].1 > 100_000;
        assert!(
            last || *l > crate::history::CHUNK_BYTES - 2_000,
            "chunk {k}: only {l} bytes"
        );
    }
    let stats = t.stats().unwrap();
    assert!(
        stats.fragmented_bytes() * 10 < stats.stored_bytes(),
        "history pages are mostly unused: {} bytes stored, {} fragmented",
        stats.stored_bytes(),
        stats.fragmented_bytes()
    );
    // Everything reads back, in order.
    let events = crate::history::after(&s.inner, 0).unwrap();
    assert_eq!(events.len(), 1000);
    assert!(events.iter().zip(1..).all(|(e, r)| e.revision == r + 1));
}

/// Readers share one database snapshot until the next commit (`Tail::snapshot`): a read
/// after a write, in either mode, finds it, whether a snapshot was taken before it or not.
#[tokio::test]
async fn reads_after_a_commit_see_it() {
    // Single server: every write is a commit.
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, 1000);
    assert!(s.get("k/a").unwrap().is_none());
    s.write(put("k/a", json!({ "v": 1 }), Precondition::None))
        .await
        .unwrap();
    assert!(
        s.get("k/a").unwrap().is_some(),
        "a write missing from the next read"
    );
    assert_eq!(s.list("k/", None, 0, None).unwrap().items.len(), 1);
    drop(s);

    // Replicated: the apply goes to the tail, and the persist moves it to the database.
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir, 1000);
    assert!(s.get("k/a").unwrap().is_none());
    s.apply_entries(
        &[crate::Entry {
            index: 1,
            ops: vec![put("k/a", json!({ "v": 1 }), Precondition::None)],
        }],
        &[("applied", b"1".to_vec())],
    )
    .unwrap();
    assert!(s.get("k/a").unwrap().is_some());
    s.flush().unwrap();
    assert!(s.inner.tail().active.objects.is_empty());
    let got = s
        .get("k/a")
        .unwrap()
        .expect("a persisted write missing from the next read");
    assert_eq!(got.object["v"], 1);
    assert_eq!(s.list("k/", None, 0, None).unwrap().items.len(), 1);
    assert_eq!(s.sm_meta("applied").unwrap().as_deref(), Some(&b"1"[..]));
}
