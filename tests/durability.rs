//! Durability and watch semantics against a real server process, through kube-rs.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use groundwork_types::{Rack, RackSpec};
use kube::api::{ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use support::*;

fn rack(name: &str) -> Rack {
    Rack::new(
        name,
        RackSpec {
            datacenter: "dc1".into(),
            availability_zone: "az1".into(),
            height_u: 42,
            power_budget_kw: None,
            cooling_kw: None,
            pdus: vec![],
            location: None,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_write() {
    let mut s = Server::start();
    let client = s.client().await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8 {
        let api: kube::Api<Rack> = kube::Api::all(client.clone());
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..100_000 {
                let name = format!("w{w}-{i}");
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    api.create(&PostParams::default(), &rack(&name)),
                )
                .await
                {
                    Ok(Ok(_)) => acked.lock().unwrap().push(name),
                    _ => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.kill();
    for w in writers {
        let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "too few writes acknowledged before the kill: {}",
        acked.len()
    );
    s.restart();
    let api: kube::Api<Rack> = kube::Api::all(s.client().await);
    let stored: BTreeSet<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|r| r.metadata.name)
        .collect();
    let missing: Vec<&String> = acked.iter().filter(|n| !stored.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    // Revisions are unique: nothing applied twice.
    let rvs: BTreeSet<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|r| r.metadata.resource_version)
        .collect();
    assert_eq!(rvs.len(), stored.len());
    eprintln!(
        "acknowledged {} writes before SIGKILL; all {} present after restart",
        acked.len(),
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumed_from_last_revision_misses_nothing() {
    let s = Server::start();
    let client = s.client().await;
    let api: kube::Api<Rack> = kube::Api::all(client.clone());
    let r = api
        .create(&PostParams::default(), &rack("r"))
        .await
        .unwrap();
    let start_rv = r.metadata.resource_version.unwrap();
    let writer = {
        let api = api.clone();
        tokio::spawn(async move {
            for i in 1..=300u32 {
                let p = json!({"metadata": {"labels": {"seq": i.to_string()}}});
                api.patch("r", &PatchParams::default(), &Patch::Merge(&p))
                    .await
                    .unwrap();
            }
        })
    };
    // Watch in short sessions, reconnecting from the last revision seen each time.
    let mut seen = Vec::new();
    let mut rv = start_rv;
    while seen.len() < 300 {
        let mut stream = api
            .watch(&WatchParams::default().timeout(2), &rv)
            .await
            .unwrap()
            .boxed();
        let mut taken = 0;
        while let Some(ev) = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .expect("watch stalled")
            .unwrap()
        {
            match ev {
                WatchEvent::Modified(o) => {
                    rv = o.metadata.resource_version.clone().unwrap();
                    seen.push(o.metadata.labels.unwrap()["seq"].parse::<u32>().unwrap());
                    taken += 1;
                    if taken == 37 {
                        break; // disconnect mid-stream
                    }
                }
                WatchEvent::Bookmark(b) => rv = b.metadata.resource_version,
                other => panic!("unexpected event {other:?}"),
            }
        }
    }
    writer.await.unwrap();
    assert_eq!(
        seen,
        (1..=300).collect::<Vec<_>>(),
        "events missed or repeated across reconnects"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_revision_gives_410_and_watcher_relists() {
    let s = Server::start_with(&["--history-retention", "10"]);
    let client = s.client().await;
    let api: kube::Api<Rack> = kube::Api::all(client.clone());
    let first = api
        .create(&PostParams::default(), &rack("r0"))
        .await
        .unwrap();
    for i in 1..50 {
        api.create(&PostParams::default(), &rack(&format!("r{i}")))
            .await
            .unwrap();
    }
    let old = first.metadata.resource_version.unwrap();
    let mut stream = api
        .watch(&WatchParams::default(), &old)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("no answer")
    {
        Some(Ok(WatchEvent::Error(e))) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        Some(Err(kube::Error::Api(e))) => assert_eq!(e.code, 410),
        other => panic!("expected a 410 Expired error event, got {other:?}"),
    }
    // kube-runtime's watcher recovers by relisting.
    let objs = kube::runtime::watcher(api.clone(), Default::default());
    let mut objs = Box::pin(objs);
    let mut count = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), objs.try_next())
            .await
            .expect("watcher stalled")
            .unwrap()
        {
            Some(kube::runtime::watcher::Event::InitApply(_)) => count += 1,
            Some(kube::runtime::watcher::Event::InitDone) => break,
            _ => {}
        }
    }
    assert_eq!(count, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pagination_and_selectors() {
    let s = Server::start();
    let api: kube::Api<Rack> = kube::Api::all(s.client().await);
    for i in 0..25 {
        let mut r = rack(&format!("r{i:02}"));
        r.metadata.labels = Some(
            [(
                "parity".to_string(),
                if i % 2 == 0 { "even" } else { "odd" }.to_string(),
            )]
            .into(),
        );
        api.create(&PostParams::default(), &r).await.unwrap();
    }
    let mut names = Vec::new();
    let mut lp = ListParams::default().limit(10);
    let mut first_rv = None;
    loop {
        let page = api.list(&lp).await.unwrap();
        first_rv.get_or_insert(page.metadata.resource_version.clone());
        assert_eq!(&page.metadata.resource_version, first_rv.as_ref().unwrap());
        names.extend(page.items.into_iter().filter_map(|r| r.metadata.name));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(
        names,
        (0..25).map(|i| format!("r{i:02}")).collect::<Vec<_>>()
    );
    let odd = api
        .list(&ListParams::default().labels("parity=odd"))
        .await
        .unwrap();
    assert_eq!(odd.items.len(), 12);
    let one = api
        .list(&ListParams::default().fields("metadata.name=r03"))
        .await
        .unwrap();
    assert_eq!(one.items.len(), 1);
    let bad = api
        .list(&ListParams::default().fields("spec.heightU=42"))
        .await
        .unwrap_err();
    assert!(
        matches!(bad, kube::Error::Api(ref s) if s.code == 400),
        "{bad:?}"
    );
}
