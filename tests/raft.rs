//! The replicated API server: real `groundwork server` processes forming a raft group on
//! 127.0.X.Y addresses unique to this test run. Faults are real: SIGKILL, restarts, and
//! membership changes under a stream of concurrent writes from several clients.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::Server;

/// A loopback address for member `i` of the test `t`, unique to this process.
fn raft_addr(t: u8, i: u8) -> String {
    format!("127.{}.{}.{}:7100", 100 + t, std::process::id() % 250, i)
}

fn member(t: u8, i: u8, join: Option<u8>) -> Server {
    member_with(t, i, join, &[])
}

fn member_with(t: u8, i: u8, join: Option<u8>, extra: &[&str]) -> Server {
    let addr = raft_addr(t, i);
    let mut args = vec!["--raft-listen".to_string(), addr];
    args.extend(extra.iter().map(|s| s.to_string()));
    if let Some(j) = join {
        args.push("--join".into());
        args.push(raft_addr(t, j));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_with(&args)
}

/// These tests time failovers and partitions on 2 cores: they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn http() -> reqwest::Client {
    support::https_client()
}

async fn status(c: &reqwest::Client, raft: &str) -> Option<Value> {
    c.get(format!("https://{raft}/raft/v2/status"))
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
                // A settled configuration: not joint, and applied (a kill during a joint
                // configuration can block the change until the member returns).
                if n_voters == voters
                    && s["membershipChanging"] == false
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

/// A group of three members for test `t` (1 bootstraps, 2 and 3 join it), with `extra` server
/// flags, once it has a leader over a settled configuration; and their raft addresses.
async fn group_of_three(c: &reqwest::Client, t: u8, extra: &[&str]) -> (Vec<Server>, Vec<String>) {
    let servers = vec![
        member_with(t, 1, None, extra),
        member_with(t, 2, Some(1), extra),
        member_with(t, 3, Some(1), extra),
    ];
    let addrs: Vec<String> = (1..=3).map(|i| raft_addr(t, i)).collect();
    wait_leader(c, &addrs, 3, Duration::from_secs(30)).await;
    (servers, addrs)
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
    // Bounded: 60 attempts, and 60 s in all (a request may wait out the server's 10 s timeout).
    let deadline = Instant::now() + Duration::from_secs(60);
    for attempt in 0..60 {
        if Instant::now() > deadline {
            break;
        }
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

/// Outcomes of the writers' creates, by name.
type Outcomes = Arc<Mutex<Vec<(String, Outcome)>>>;

/// The flag that stops the writers, their outcomes, and their tasks.
type Writers = (
    Arc<std::sync::atomic::AtomicBool>,
    Outcomes,
    Vec<tokio::task::JoinHandle<()>>,
);

/// `n` clients creating `w{n}-{i}` objects without pause through every member in turn, until
/// the returned flag is set.
fn spawn_writers(n: usize, c: &reqwest::Client, urls: &Urls) -> Writers {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let outcomes = Outcomes::default();
    let mut writers = Vec::new();
    for w in 0..n {
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
    (stop, outcomes, writers)
}

/// GETs `url` and parses the body as JSON.
async fn get_json(c: &reqwest::Client, url: String) -> Value {
    c.get(url).send().await.unwrap().json().await.unwrap()
}

/// Every object's name → resourceVersion on one member, read locally (`resourceVersion=0`).
async fn local_nodes(c: &reqwest::Client, url: &str) -> BTreeMap<String, String> {
    let v = get_json(c, format!("{url}{NODES}?resourceVersion=0")).await;
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

/// Waits until every member has applied its whole log, the same on all, then returns each
/// member's objects.
async fn converged(
    c: &reqwest::Client,
    servers: &[Server],
    addrs: &[String],
) -> Vec<BTreeMap<String, String>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut applied = BTreeSet::new();
        let mut last = BTreeSet::new();
        for a in addrs {
            let s = status(c, a).await;
            applied.insert(s.as_ref().and_then(|s| s["applied"].as_u64()));
            last.insert(s.as_ref().and_then(|s| s["lastLogIndex"].as_u64()));
        }
        if applied.len() == 1 && !applied.contains(&None) && last.last() == applied.first() {
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
    let _serial = SERIAL.lock().await;
    let c = http();
    let (mut servers, addrs) = group_of_three(&c, 1, &[]).await;

    // Four clients write without pause, each to every member in turn.
    let urls = urls_of(&servers);
    let (stop, outcomes, writers) = spawn_writers(4, &c, &urls);

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
    let _serial = SERIAL.lock().await;
    let c = http();
    let (mut servers, addrs) = group_of_three(&c, 2, &[]).await;
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
    // A linearizable read right away, on every member, has every acknowledged write: the
    // applies since the last flush are lost in the kill and applied again from the log.
    for s in &servers {
        let v = get_json(&c, format!("{}{NODES}/n29", s.url)).await;
        assert_eq!(
            v["metadata"]["name"], "n29",
            "the last write, read after the restart"
        );
    }
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

/// An nftables table that drops traffic between one member's raft address and the others'
/// (members send from their raft address); the table is deleted on drop.
struct Partition {
    table: String,
}

impl Partition {
    fn isolate(t: u8, who: u8, others: &[u8]) -> Partition {
        let table = format!("gwraft{}t{t}", std::process::id());
        let ip = |i: u8| raft_addr(t, i).split(':').next().unwrap().to_string();
        let mut script = format!(
            "table inet {table} {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n"
        );
        for o in others {
            script += &format!(
                "  ip saddr {a} ip daddr {b} drop\n  ip saddr {b} ip daddr {a} drop\n",
                a = ip(who),
                b = ip(*o)
            );
        }
        script += " }\n}\n";
        let mut child = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("nft (tests/run installs nftables)");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nft rejected:\n{script}");
        Partition { table }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_refuses_and_the_majority_goes_on() {
    let _serial = SERIAL.lock().await;
    let c = http();
    let (servers, addrs) = group_of_three(&c, 3, &[]).await;
    let old = wait_leader(&c, &addrs, 3, Duration::from_secs(30)).await;
    let urls = urls_of(&servers);
    assert_eq!(create(&c, &urls, "before", 0).await, Outcome::Acked);

    let others: Vec<u8> = (1..=3u8).filter(|i| usize::from(*i) != old + 1).collect();
    let cut = Partition::isolate(3, old as u8 + 1, &others);
    let t0 = Instant::now();
    // The majority elects a leader and accepts writes.
    let majority = Arc::new(Mutex::new(
        others
            .iter()
            .map(|i| servers[usize::from(*i) - 1].url.clone())
            .collect(),
    ));
    for i in 0..20 {
        assert_eq!(
            create(&c, &majority, &format!("majority-{i}"), i).await,
            Outcome::Acked
        );
    }
    eprintln!(
        "majority accepted 20 writes {:?} after the cut",
        t0.elapsed()
    );

    // The old leader, alone, refuses writes and linearizable reads with 503 and a reason...
    let minority = &servers[old].url;
    let r = c
        .post(format!("{minority}{NODES}"))
        .json(&node("minority-write"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let msg = r.text().await.unwrap();
    assert!(
        msg.contains("ServiceUnavailable") && msg.contains("quorum"),
        "{msg}"
    );
    let r = c
        .get(format!("{minority}{NODES}/before"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "a linearizable read on the minority");
    // ...but serves a read that accepts any version (resourceVersion=0).
    let r = c
        .get(format!("{minority}{NODES}/before?resourceVersion=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Healed: everyone converges on the majority's history; the minority's write never
    // committed, so it exists nowhere.
    drop(cut);
    let views = converged(&c, &servers, &addrs).await;
    for v in &views {
        assert_eq!(v, &views[0]);
        assert!(v.contains_key("majority-19") && v.contains_key("before"));
        assert!(!v.contains_key("minority-write"));
    }
    let r = c
        .get(format!("{minority}{NODES}/majority-19"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "the old leader serves linearizable reads again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_grows_one_three_five_and_shrinks_to_three_under_writes() {
    let _serial = SERIAL.lock().await;
    let c = http();
    let addrs: Vec<String> = (1..=5).map(|i| raft_addr(4, i)).collect();
    let mut servers = vec![member(4, 1, None)];
    wait_leader(&c, &addrs[..1], 1, Duration::from_secs(30)).await;
    let urls = urls_of(&servers);
    let (stop, outcomes, writers) = spawn_writers(3, &c, &urls);
    let t0 = Instant::now();
    for (i, voters) in [(2u8, 2usize), (3, 3), (4, 4), (5, 5)] {
        servers.push(member(4, i, Some(1)));
        wait_leader(&c, &addrs, voters, Duration::from_secs(60)).await;
        urls.lock()
            .unwrap()
            .push(servers.last().unwrap().url.clone());
        eprintln!("{voters} voters after {:?}", t0.elapsed());
        // Writes go on in each configuration, through every member.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // Shrink: remove members 4 and 5 through member 2 (forwarded to the leader), then stop them.
    for i in [5u8, 4] {
        let s = status(&c, &addrs[usize::from(i) - 1]).await.unwrap();
        let id = s["id"].as_u64().unwrap().to_string();
        let out = servers[0].groundwork(&[
            "cluster",
            "--pki-dir",
            support::shared_pki().to_str().unwrap(),
            "--raft",
            &addrs[1],
            "remove",
            &id,
        ]);
        assert!(
            out.status.success(),
            "cluster remove {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        urls.lock().unwrap().pop();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let leader = wait_leader(&c, &addrs[..3], 3, Duration::from_secs(30)).await;
    assert!(leader < 3);
    for s in servers.iter_mut().skip(3) {
        s.kill();
    }
    servers.truncate(3);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let not_acked: Vec<&(String, Outcome)> = outcomes
        .iter()
        .filter(|(_, o)| *o != Outcome::Acked)
        .collect();
    assert!(
        not_acked.is_empty(),
        "clients saw more than retries: {not_acked:?}"
    );
    let views = converged(&c, &servers, &addrs[..3]).await;
    for v in &views {
        assert_eq!(v, &views[0]);
    }
    for (n, _) in &outcomes {
        assert!(views[0].contains_key(n), "acknowledged write {n} lost");
    }
    let st = status(&c, &addrs[0]).await.unwrap();
    assert_eq!(st["members"].as_array().unwrap().len(), 3, "{st}");
    eprintln!(
        "{} writes through 1 → 5 → 3 members, none lost",
        outcomes.len()
    );
}

#[path = "support/linearizability.rs"]
mod linearizability;

/// One client operation on a register (a Node's label `v`), with its outcome.
async fn register_op(
    c: &reqwest::Client,
    url: &str,
    key: &str,
    op: u8,
    value: u64,
    t0: Instant,
) -> Option<linearizability::Event> {
    use linearizability::{Event, Op};
    let now = || t0.elapsed().as_nanos();
    let item = format!("{url}{NODES}/{key}");
    let invoke = now();
    let read = |r: reqwest::Response| async move {
        let v: Value = r.json().await.ok()?;
        let val = v["metadata"]["labels"]["v"].as_str()?.parse::<u64>().ok()?;
        Some((val, v))
    };
    match op {
        // Read (linearizable).
        0 => {
            let r = c.get(&item).send().await.ok()?;
            if r.status() != 200 {
                return None; // refused (503): no effect
            }
            let (v, _) = read(r).await?;
            Some(Event {
                op: Op::Read(Some(v)),
                invoke,
                ret: Some(now()),
            })
        }
        // Unconditional write.
        1 => {
            let patch = json!({"metadata": {"labels": {"v": value.to_string()}}});
            let r = c
                .patch(&item)
                .header("Content-Type", "application/merge-patch+json")
                .body(patch.to_string())
                .send()
                .await;
            let ret = match r {
                Ok(r) if r.status() == 200 => Some(now()),
                Ok(r) if r.status() == 503 => None,
                Ok(r) => panic!(
                    "write {key}: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                ),
                Err(e) if e.is_connect() => return None,
                Err(_) => None,
            };
            Some(Event {
                op: Op::Write(value),
                invoke,
                ret,
            })
        }
        // Compare-and-set: read the value and resourceVersion, then PUT with that version.
        _ => {
            let r = c.get(&item).send().await.ok()?;
            if r.status() != 200 {
                return None;
            }
            let (from, mut obj) = read(r).await?;
            // A CAS whose expected value is the one just read: exercises the success path.
            obj["metadata"]["labels"]["v"] = json!(value.to_string());
            let r = c.put(&item).json(&obj).send().await;
            let (ok, ret) = match r {
                Ok(r) if r.status() == 200 => (true, Some(now())),
                Ok(r) if r.status() == 409 => (false, Some(now())),
                Ok(r) if r.status() == 503 => (true, None),
                Ok(r) => panic!(
                    "cas {key}: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                ),
                Err(e) if e.is_connect() => return None,
                Err(_) => (true, None),
            };
            Some(Event {
                op: Op::Cas {
                    from,
                    to: value,
                    ok,
                },
                invoke,
                ret,
            })
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_histories_through_kills_and_partitions_are_linearizable() {
    let _serial = SERIAL.lock().await;
    let c = http();
    let (mut servers, addrs) = group_of_three(&c, 5, &[]).await;
    let keys = ["reg-a", "reg-b", "reg-c"];
    for k in keys {
        let mut n = node(k);
        n["metadata"]["labels"] = json!({"v": "0"});
        let r = c
            .post(format!("{}{NODES}", servers[0].url))
            .json(&n)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let urls = urls_of(&servers);
    let t0 = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let history = Arc::new(Mutex::new(
        BTreeMap::<&str, Vec<linearizability::Event>>::new(),
    ));
    let mut clients = Vec::new();
    for client in 0..4u64 {
        let (c, urls, stop, history) = (c.clone(), urls.clone(), stop.clone(), history.clone());
        clients.push(tokio::spawn(async move {
            let mut seq = 0u64;
            // A small deterministic generator per client: which key, which operation, where.
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ client;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                seq += 1;
                let key = keys[(x % 3) as usize];
                let op = ((x >> 8) % 4).min(2) as u8; // read 50 %, write 25 %, cas 25 %
                let url = {
                    let u = urls.lock().unwrap();
                    u[((x >> 16) % u.len() as u64) as usize].clone()
                };
                let value = (client + 1) * 1_000_000 + seq;
                match register_op(&c, &url, key, op, value, t0).await {
                    Some(e) if e.ret.is_some() => {
                        history.lock().unwrap().entry(key).or_default().push(e)
                    }
                    // Refused or unknown: a client backs off a little before the next call.
                    other => {
                        if let Some(e) = other {
                            history.lock().unwrap().entry(key).or_default().push(e);
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    // The nemesis: kill -9 the leader, restart it; cut the leader off, heal.
    for round in 0..4 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let leader = wait_leader(&c, &addrs, 3, Duration::from_secs(30)).await;
        if round % 2 == 0 {
            servers[leader].kill();
            tokio::time::sleep(Duration::from_secs(2)).await;
            servers[leader].restart();
            urls.lock().unwrap()[leader] = servers[leader].url.clone();
        } else {
            let others: Vec<u8> = (1..=3u8)
                .filter(|i| usize::from(*i) != leader + 1)
                .collect();
            let cut = Partition::isolate(5, leader as u8 + 1, &others);
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(cut);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for cl in clients {
        cl.await.unwrap();
    }
    let history = std::mem::take(&mut *history.lock().unwrap());
    let mut total = 0;
    for (key, h) in &history {
        let done = h.iter().filter(|e| e.ret.is_some()).count();
        total += done;
        let t = Instant::now();
        let r = linearizability::check_from(Some(0), h);
        eprintln!(
            "{key}: {} operations ({done} completed, {} unknown), checked in {:?}",
            h.len(),
            h.len() - done,
            t.elapsed()
        );
        assert!(r.is_ok(), "{key}: {}", r.unwrap_err());
    }
    assert!(total > 150, "too few operations to mean anything: {total}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_behind_the_compacted_log_catches_up_by_snapshot() {
    let _serial = SERIAL.lock().await;
    let c = http();
    // Snapshots every 50 entries, 5 kept behind: a member down for 200 writes needs one.
    let tight = ["--raft-snapshot-every", "50", "--raft-logs-to-keep", "5"];
    let (mut servers, addrs) = group_of_three(&c, 6, &tight).await;
    let leader = wait_leader(&c, &addrs, 3, Duration::from_secs(30)).await;
    let down = (leader + 1) % 3;
    servers[down].kill();
    let live = Arc::new(Mutex::new(
        (0..3)
            .filter(|i| *i != down)
            .map(|i| servers[i].url.clone())
            .collect(),
    ));
    for i in 0..200 {
        assert_eq!(create(&c, &live, &format!("s{i}"), i).await, Outcome::Acked);
    }
    servers[down].restart();
    let views = converged(&c, &servers, &addrs).await;
    for v in &views {
        assert_eq!(v, &views[0]);
        assert_eq!(v.len(), 200);
    }
    assert!(
        servers[down].log().contains("state replaced by a snapshot"),
        "the lagging member caught up without a snapshot: the log was not compacted?"
    );
    let st = status(&c, &addrs[leader]).await.unwrap();
    assert!(st["snapshot"].as_u64().unwrap_or(0) >= 150, "{st}");
}

/// Raft traffic is mutual TLS with member certificates from the cluster CA: a server whose
/// certificates come from another CA cannot join, and plain HTTP gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_a_certificate_from_the_cluster_ca_cannot_join() {
    let _serial = SERIAL.lock().await;
    let c = http();
    let one = member(7, 1, None);
    let a1 = raft_addr(7, 1);
    wait_leader(&c, std::slice::from_ref(&a1), 1, Duration::from_secs(30)).await;

    // Another CA (a fresh --pki-dir): its member certificate is not ours.
    let foreign = tempfile::tempdir().unwrap();
    let impostor = member_with(
        7,
        2,
        Some(1),
        &["--pki-dir", foreign.path().to_str().unwrap()],
    );
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        let s = status(&c, &a1)
            .await
            .expect("member 1 answers its operator");
        assert_eq!(
            s["members"].as_array().map(Vec::len),
            Some(1),
            "the impostor was added: {s}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        one.log().contains("raft connection refused: TLS"),
        "member 1 refused the handshake:\n{}",
        one.log()
    );
    assert!(
        impostor.log().contains("join"),
        "the impostor kept trying to join:\n{}",
        impostor.log()
    );

    // Certificate expiry is visible in `cluster status` (and its JSON).
    let s1 = status(&c, &a1).await.unwrap();
    let names: Vec<&str> = s1["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["ca", "apiserver", "admin", "controllers", "member"],
        "{s1}"
    );
    for cert in s1["certificates"].as_array().unwrap() {
        let until: jiff::Timestamp = cert["notAfter"].as_str().unwrap().parse().unwrap();
        assert!(until > jiff::Timestamp::now(), "{cert}");
    }
    let out = support::ok(one.groundwork(&[
        "cluster",
        "--pki-dir",
        support::shared_pki().to_str().unwrap(),
        "--raft",
        &a1,
        "status",
    ]));
    assert!(
        out.contains("certificates: ca until") && out.contains("member until"),
        "{out}"
    );

    // Plain HTTP to the raft port: no answer at all.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(format!("http://{a1}/raft/v2/status"))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    // The API's CA-signed admin certificate may ask (the operator's tools); a client with no
    // certificate reaches only the join routes.
    let ca = std::fs::read(support::shared_pki().join("ca.crt")).unwrap();
    let anon = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let r = anon
        .get(format!("https://{a1}/raft/v2/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "no client certificate, yet an answer");
    let r = anon
        .post(format!("https://{a1}/raft/v2/join"))
        .json(&serde_json::json!({"id": 9, "addr": "127.0.0.1:1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "no client certificate, yet a membership change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_joins_with_a_join_token_and_the_ca_hash_instead_of_copied_keys() {
    let _serial = SERIAL.lock().await;
    // Member 1 with a CA of its own.
    let pki1 = tempfile::tempdir().unwrap();
    let pki1_dir = pki1.path().to_str().unwrap().to_string();
    let one = member_with(8, 1, None, &["--pki-dir", &pki1_dir]);
    let a1 = raft_addr(8, 1);
    let read = |f: &str| std::fs::read(pki1.path().join(f)).unwrap();
    let mut id = read("admin.crt");
    id.extend(read("admin.key"));
    let c = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&read("ca.crt")).unwrap())
        .identity(reqwest::Identity::from_pem(&id).unwrap())
        .build()
        .unwrap();
    wait_leader(&c, std::slice::from_ref(&a1), 1, Duration::from_secs(30)).await;

    let out = one.groundwork(&[
        "cluster",
        "--pki-dir",
        &pki1_dir,
        "join-token",
        "--data-dir",
        one.dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", support::text(&out));
    let token = support::stdout(&out).trim().to_string();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let hash = err
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("the CA hash in: {err}"))
        .to_string();
    assert!(token.starts_with("gw1."), "{token}");

    // A wrong token, or a CA that is not the pinned one: the new member does not start, and
    // says why.
    let attempt = |token: &str, hash: &str| {
        let data = tempfile::tempdir().unwrap();
        let o = Command::new("timeout")
            .args(["30", support::BIN, "server", "--data-dir"])
            .arg(data.path())
            .args(["--listen", "127.0.0.1:0", "--controllers", "none"])
            .args(["--raft-listen", &raft_addr(8, 3), "--join", &a1])
            .args(["--join-token", token, "--ca-cert-hash", hash])
            .output()
            .unwrap();
        assert!(!o.status.success());
        assert!(
            !data.path().join("pki/ca.key").exists(),
            "no key was written"
        );
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let forged = format!("{}x", &token[..token.len() - 1]);
    let e = attempt(&forged, &hash);
    assert!(
        e.contains("refused the join token") && e.contains("401"),
        "{e}"
    );
    let e = attempt(&token, &format!("sha256:{}", "0".repeat(64)));
    assert!(e.contains("refusing to join"), "{e}");

    // The right token and hash: an empty member fetches the CA and the secret key and joins
    // as a voter.
    let pki2 = tempfile::tempdir().unwrap();
    let two = member_with(
        8,
        2,
        Some(1),
        &[
            "--pki-dir",
            pki2.path().to_str().unwrap(),
            "--join-token",
            &token,
            "--ca-cert-hash",
            &hash,
        ],
    );
    wait_leader(
        &c,
        &[a1.clone(), raft_addr(8, 2)],
        2,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        std::fs::read(pki2.path().join("ca.crt")).unwrap(),
        read("ca.crt")
    );
    assert_eq!(
        std::fs::read_to_string(two.dir.path().join("secret.key"))
            .unwrap()
            .trim(),
        std::fs::read_to_string(one.dir.path().join("secret.key"))
            .unwrap()
            .trim(),
        "the secret key is the cluster's"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        for f in [
            pki2.path().join("ca.key"),
            two.dir.path().join("secret.key"),
        ] {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
    }
    // Neither member logs the token.
    assert!(!one.log().contains(&token[4..]) && !two.log().contains(&token[4..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_concurrent_linearizable_reads_all_succeed() {
    // Each linearizable read once sent every follower a heartbeat of its own: 100 lists at
    // once (a watch benchmark's start) missed openraft's timeout and failed with 503. Reads
    // waiting together now share one round, and a round without a quorum is retried.
    let _serial = SERIAL.lock().await;
    let c = http();
    let (servers, addrs) = group_of_three(&c, 9, &[]).await;
    let leader = wait_leader(&c, &addrs, 3, Duration::from_secs(30)).await;
    let urls = urls_of(&servers);
    for i in 0..10 {
        assert_eq!(create(&c, &urls, &format!("r{i}"), i).await, Outcome::Acked);
    }
    let follower = (leader + 1) % 3;
    let mut reads = tokio::task::JoinSet::new();
    for i in 0..300usize {
        let c = c.clone();
        // Two thirds on the leader, a third through a follower (which asks the leader).
        let base = servers[if i % 3 == 2 { follower } else { leader }]
            .url
            .clone();
        reads.spawn(async move {
            let url = if i % 2 == 0 {
                format!("{base}{NODES}?limit=1")
            } else {
                format!("{base}{NODES}/r{}", i % 10)
            };
            let r = c
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            match r.status().as_u16() {
                200 => Ok(()),
                s => Err(format!("{url}: {s} {}", r.text().await.unwrap_or_default())),
            }
        });
    }
    let mut failed = Vec::new();
    while let Some(r) = reads.join_next().await {
        if let Err(e) = r.unwrap() {
            failed.push(e);
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 300 reads failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
}

/// A leader killed under a stream of `kubectl create`s through a surviving member: the member
/// holds the writes it could not forward (the leader refused the connection, so they were
/// never sent) until the new leader is elected, so the client sees no error, only a slower
/// answer, as with kube-apiserver over an etcd election.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_through_a_survivor_see_no_error_when_the_leader_is_killed() {
    let _serial = SERIAL.lock().await;
    let c = http();
    let (mut servers, addrs) = group_of_three(&c, 10, &[]).await;
    let leader = wait_leader(&c, &addrs, 3, Duration::from_secs(30)).await;
    let survivor = (leader + 1) % 3;
    let kubeconfig = servers[survivor].kubeconfig.clone();
    let dir = servers[survivor].dir.path().to_path_buf();

    // One client creating Nodes back to back through the survivor, until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut results = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("kc-{i}");
                let f = support::write(
                    &dir,
                    "kc.yaml",
                    &format!(
                        "apiVersion: groundwork.dev/v1alpha1\nkind: Node\nmetadata: {{name: {name}}}\n"
                    ),
                );
                let t0 = Instant::now();
                let o = Command::new("timeout")
                    .args(["60", "kubectl", "create", "-f"])
                    .arg(&f)
                    .env("KUBECONFIG", &kubeconfig)
                    .env("HOME", &dir)
                    .output()
                    .expect("run kubectl");
                results.push((name, o.status.success(), support::text(&o), t0.elapsed()));
                i += 1;
            }
            results
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    servers[leader].kill();
    let killed = Instant::now();
    // A new leader, then a few more creates through it.
    let others: Vec<String> = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, a)| a.clone())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut found = false;
        for a in &others {
            if let Some(s) = status(&c, a).await
                && let Some(l) = s["leader"].as_u64()
                && s["members"].as_array().into_iter().flatten().any(|m| {
                    m["id"].as_u64() == Some(l) && m["addr"].as_str() != Some(&addrs[leader])
                })
            {
                found = true;
            }
        }
        if found {
            break;
        }
        assert!(Instant::now() < deadline, "no new leader in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elected = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let results = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    let failed: Vec<_> = results.iter().filter(|r| !r.1).collect();
    let slowest = results.iter().map(|r| r.3).max().unwrap_or_default();
    eprintln!(
        "{} kubectl creates, {} failed; new leader {elected:?} after the kill; slowest create {slowest:?}",
        results.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "creates failed across the election: {failed:?}"
    );
    assert!(results.len() > 10, "too few creates to mean anything");
    // Every create that was acknowledged is there, once.
    let survivor_url = servers[survivor].url.clone();
    let stored = local_nodes_linearized(&c, &survivor_url).await;
    for (name, ..) in &results {
        assert!(
            stored.contains(name),
            "acknowledged create {name} is missing"
        );
    }
    servers[leader].restart();
}

/// Node names through a linearizable list on `url`.
async fn local_nodes_linearized(c: &reqwest::Client, url: &str) -> BTreeSet<String> {
    let v = get_json(c, format!("{url}{NODES}")).await;
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}
