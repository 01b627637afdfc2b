//! The replicated API server: real `groundwork server` processes forming a raft group on
//! 127.0.X.Y addresses unique to this test run. Faults are real: SIGKILL, restarts, and
//! membership changes under a stream of concurrent writes from several clients.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::Server;

/// A loopback address for member `i` of the test `t`, unique to this process.
fn raft_addr(t: u8, i: u8) -> String {
    format!("127.{}.{}.{}:7100", 100 + t, std::process::id() % 250, i)
}

fn member(t: u8, i: u8, join: Option<u8>) -> Server {
    let addr = raft_addr(t, i);
    let mut args = vec!["--raft-listen".to_string(), addr];
    if let Some(j) = join {
        args.push("--join".into());
        args.push(raft_addr(t, j));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_with(&args)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

async fn status(c: &reqwest::Client, raft: &str) -> Option<Value> {
    c.get(format!("http://{raft}/raft/status"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// Waits until some member reports a leader with `voters` voters; returns the index (in
/// `addrs`) of the leader.
async fn wait_leader(
    c: &reqwest::Client,
    addrs: &[String],
    voters: usize,
    within: Duration,
) -> usize {
    let deadline = Instant::now() + within;
    loop {
        for a in addrs {
            if let Some(s) = status(c, a).await
                && let Some(l) = s["leader"].as_u64()
            {
                let members = s["members"].as_array().cloned().unwrap_or_default();
                let n_voters = members.iter().filter(|m| m["voter"] == true).count();
                if n_voters == voters
                    && let Some(m) = members.iter().find(|m| m["id"].as_u64() == Some(l))
                    && let Some(i) = addrs
                        .iter()
                        .position(|x| Some(x.as_str()) == m["addr"].as_str())
                {
                    return i;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no leader with {voters} voters within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn node(name: &str) -> Value {
    json!({"apiVersion": "groundwork.dev/v1alpha1", "kind": "Node", "metadata": {"name": name}})
}

const NODES: &str = "/apis/groundwork.dev/v1alpha1/nodes";

/// What happened to one create.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// 201, or AlreadyExists after an ambiguous first attempt: the object is in the log.
    Acked,
    /// Never acknowledged (the client gave up); may or may not exist.
    Unknown,
    /// An answer no client should get (the test fails on it).
    Wrong(String),
}

/// The members' API URLs as clients know them (updated when a member restarts on a new port).
type Urls = Arc<Mutex<Vec<String>>>;

fn urls_of(servers: &[Server]) -> Urls {
    Arc::new(Mutex::new(servers.iter().map(|s| s.url.clone()).collect()))
}

/// Creates `name` through any of `urls`, retrying on errors a client would retry.
async fn create(c: &reqwest::Client, urls: &Urls, name: &str, start: usize) -> Outcome {
    let mut ambiguous = false;
    for attempt in 0..60 {
        let url = {
            let u = urls.lock().unwrap();
            u[(start + attempt) % u.len()].clone()
        };
        match c
            .post(format!("{url}{NODES}"))
            .json(&node(name))
            .send()
            .await
        {
            Ok(r) if r.status() == 201 => return Outcome::Acked,
            Ok(r) if r.status() == 409 && ambiguous => return Outcome::Acked,
            Ok(r) if r.status() == 409 => {
                return Outcome::Wrong(format!(
                    "{name}: AlreadyExists on an unambiguous first write: {}",
                    r.text().await.unwrap_or_default()
                ));
            }
            // 503: no leader or no quorum yet; the write may or may not have happened.
            Ok(r) if r.status() == 503 => ambiguous = true,
            Ok(r) => {
                return Outcome::Wrong(format!(
                    "{name}: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                ));
            }
            // Refused (a killed member) or cut off mid-request (possibly applied).
            Err(e) => ambiguous |= !e.is_connect(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Outcome::Unknown
}

/// Every object's name → resourceVersion on one member, read locally (`resourceVersion=0`).
async fn local_nodes(c: &reqwest::Client, url: &str) -> BTreeMap<String, String> {
    let v: Value = c
        .get(format!("{url}{NODES}?resourceVersion=0"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["metadata"]["name"].as_str().unwrap().to_string(),
                o["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect()
}

/// Waits until every member has applied the same index, then returns each member's objects.
async fn converged(
    c: &reqwest::Client,
    servers: &[Server],
    addrs: &[String],
) -> Vec<BTreeMap<String, String>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut applied = BTreeSet::new();
        for a in addrs {
            applied.insert(status(c, a).await.and_then(|s| s["applied"].as_u64()));
        }
        if applied.len() == 1 && !applied.contains(&None) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "members never converged: {applied:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut out = Vec::new();
    for s in servers {
        out.push(local_nodes(c, &s.url).await);
    }
    out
}

/// ADDED events per object name in one member's watch history (from the start).
async fn added_events(c: &reqwest::Client, url: &str) -> BTreeMap<String, usize> {
    let body = c
        .get(format!(
            "{url}{NODES}?watch=true&resourceVersion=1&timeoutSeconds=2"
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut n = BTreeMap::new();
    for line in body.lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        if e["type"] == "ADDED" {
            *n.entry(
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
            .or_default() += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_survive_ten_leader_kills_under_concurrent_writes() {
    let c = http();
    let mut servers = vec![member(1, 1, None)];
    servers.push(member(1, 2, Some(1)));
    servers.push(member(1, 3, Some(1)));
    let addrs: Vec<String> = (1..=3).map(|i| raft_addr(1, i)).collect();
    wait_leader(&c, &addrs, 3, Duration::from_secs(30)).await;

    // Four clients write without pause, each to every member in turn.
    let urls = urls_of(&servers);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::<(String, Outcome)>::new()));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (c, urls, stop, outcomes) = (c.clone(), urls.clone(), stop.clone(), outcomes.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("w{w}-{i}");
                let o = create(&c, &urls, &name, w + i).await;
                outcomes.lock().unwrap().push((name, o));
                i += 1;
            }
        }));
    }

    let mut failovers = Vec::new();
    for round in 0..10 {
        let leader = wait_leader(&c, &addrs, 3, Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = outcomes.lock().unwrap().len();
        servers[leader].kill();
        let t0 = Instant::now();
        // A new leader serves: a write through a survivor succeeds.
        let survivor = &servers[(leader + 1) % 3].url;
        let probe = format!("probe-{round}");
        assert_eq!(
            create(&c, &Arc::new(Mutex::new(vec![survivor.clone()])), &probe, 0).await,
            Outcome::Acked,
            "no write accepted after killing the leader (round {round})"
        );
        failovers.push(t0.elapsed());
        servers[leader].restart();
        urls.lock().unwrap()[leader] = servers[leader].url.clone();
        // Writes kept being acknowledged through the kill.
        let deadline = Instant::now() + Duration::from_secs(20);
        while outcomes.lock().unwrap().len() < before + 20 {
            if Instant::now() > deadline {
                for (i, s) in servers.iter().enumerate() {
                    let log = s.log();
                    let tail: Vec<&str> = log.lines().rev().take(25).collect();
                    eprintln!(
                        "--- member {i} (last lines, newest first):\n{}",
                        tail.join("\n")
                    );
                }
                for s in &servers {
                    let r = c
                        .post(format!("{}{NODES}", s.url))
                        .json(&node("debug-probe"))
                        .send()
                        .await;
                    match r {
                        Ok(r) => eprintln!(
                            "probe via {}: {} {}",
                            s.url,
                            r.status(),
                            r.text().await.unwrap_or_default()
                        ),
                        Err(e) => eprintln!("probe via {}: {e}", s.url),
                    }
                }
                panic!("writes stalled after round {round}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    eprintln!("failover (kill -9 leader → a write accepted): {failovers:?}");
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let wrong: Vec<&String> = outcomes
        .iter()
        .filter_map(|(_, o)| match o {
            Outcome::Wrong(w) => Some(w),
            _ => None,
        })
        .collect();
    assert!(wrong.is_empty(), "wrong answers: {wrong:?}");
    let acked: Vec<&str> = outcomes
        .iter()
        .filter(|(_, o)| *o == Outcome::Acked)
        .map(|(n, _)| n.as_str())
        .collect();
    assert!(
        acked.len() > 200,
        "too few writes to mean anything: {}",
        acked.len()
    );

    // Every member has exactly the same objects at the same revisions, including every
    // acknowledged write, and each object was added once.
    let views = converged(&c, &servers, &addrs).await;
    for v in &views[1..] {
        assert_eq!(v, &views[0], "members disagree");
    }
    for n in &acked {
        assert!(views[0].contains_key(*n), "acknowledged write {n} lost");
    }
    for s in &servers {
        let added = added_events(&c, &s.url).await;
        assert!(
            added.values().all(|n| *n == 1),
            "an object was added twice: {added:?}"
        );
        assert_eq!(added.len(), views[0].len());
    }
    let revisions: BTreeSet<&String> = views[0].values().collect();
    assert_eq!(
        revisions.len(),
        views[0].len(),
        "two objects share a revision"
    );
    eprintln!(
        "{} writes acknowledged, {} unknown, {} objects on each of 3 members",
        acked.len(),
        outcomes.len() - acked.len(),
        views[0].len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_stop_and_restart_keeps_everything_and_watches_resume_on_any_member() {
    let c = http();
    let mut servers = vec![member(2, 1, None)];
    servers.push(member(2, 2, Some(1)));
    servers.push(member(2, 3, Some(1)));
    let addrs: Vec<String> = (1..=3).map(|i| raft_addr(2, i)).collect();
    wait_leader(&c, &addrs, 3, Duration::from_secs(30)).await;
    let urls = urls_of(&servers);
    for i in 0..30 {
        assert_eq!(create(&c, &urls, &format!("n{i}"), i).await, Outcome::Acked);
    }
    let before = converged(&c, &servers, &addrs).await;
    let rv: u64 = before[0]["n9"].parse().unwrap();
    for s in &mut servers {
        s.kill();
    }
    for s in &mut servers {
        s.restart();
    }
    wait_leader(&c, &addrs, 3, Duration::from_secs(30)).await;
    let after = converged(&c, &servers, &addrs).await;
    assert_eq!(after, before, "data after a full stop and restart");
    // A watch resumes on any member from a revision seen before the stop: it replays n10..n29.
    for s in &servers {
        let body = c
            .get(format!(
                "{}{NODES}?watch=true&resourceVersion={rv}&timeoutSeconds=1",
                s.url
            ))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let names: Vec<String> = body
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["type"] == "ADDED")
            .map(|e| {
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(names, (10..30).map(|i| format!("n{i}")).collect::<Vec<_>>());
    }
    // Writes work again, through a follower too.
    let leader = wait_leader(&c, &addrs, 3, Duration::from_secs(30)).await;
    let follower = &servers[(leader + 1) % 3].url;
    assert_eq!(
        create(
            &c,
            &Arc::new(Mutex::new(vec![follower.clone()])),
            "after",
            0
        )
        .await,
        Outcome::Acked
    );
    // Read-your-writes on the member that forwarded the write, without resourceVersion=0.
    let r = c
        .get(format!("{follower}{NODES}/after"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
