//! The DHCP server: UDP sockets (port 67, plus 4011 in proxy mode) bound to one interface, the
//! engine, and a writer thread that makes ACKed leases durable before their replies leave.
//!
//! Group commit: the writer takes every ACK waiting, appends their records, calls fdatasync
//! once, then sends those ACKs; so persistence costs one fsync per batch, not per lease.
//! Overload: packets are read in batches; REQUESTs (clients about to be configured) are
//! handled first, and when a batch is full (the socket is backed up) the excess DISCOVERs
//! are shed, so the server does not collapse into offering addresses nobody gets to request.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::engine::{Config, Dest, Drop, Engine, Mode, Reply, ids};
use super::leases::{LeaseLog, Record};

#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Bind to this interface (SO_BINDTODEVICE); broadcasts go out of it.
    pub interface: Option<String>,
    pub port: u16,
    /// Where the lease log lives; `None` or `persist: false` keeps leases in memory only.
    pub lease_dir: Option<PathBuf>,
    pub persist: bool,
    /// Packets read per batch; a full batch means overload (DISCOVERs beyond a quarter of it
    /// are shed).
    pub max_batch: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            interface: None,
            port: 67,
            lease_dir: None,
            persist: true,
            max_batch: 256,
        }
    }
}

/// Counters, read by `/metrics` and the periodic log line.
#[derive(Default, Debug)]
pub struct Stats {
    pub received: AtomicU64,
    pub offers: AtomicU64,
    pub acks: AtomicU64,
    pub naks: AtomicU64,
    pub dropped: AtomicU64,
    pub shed: AtomicU64,
    pub malformed: AtomicU64,
    pub pool_exhausted: AtomicU64,
    pub fsyncs: AtomicU64,
}

fn udp_socket(interface: Option<&str>, port: u16) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    if let Some(i) = interface {
        s.bind_device(Some(i.as_bytes()))
            .map_err(|e| io::Error::new(e.kind(), format!("binding to interface {i:?}: {e}")))?;
    }
    let _ = s.set_recv_buffer_size(8 << 20);
    let _ = s.set_send_buffer_size(8 << 20);
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
        .map_err(|e| io::Error::new(e.kind(), format!("binding UDP port {port}: {e}")))?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

fn target(dest: Dest) -> SocketAddr {
    match dest {
        Dest::Broadcast => SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)),
        Dest::Unicast(a) => SocketAddr::V4(a),
    }
}

/// The DHCP message type of a raw packet, without decoding the rest (for ordering batches).
fn peek_type(p: &[u8]) -> Option<u8> {
    if p.len() < 240 || p[236..240] != [99, 130, 83, 99] {
        return None;
    }
    let mut i = 240;
    while i + 1 < p.len() {
        match p[i] {
            0 => i += 1,
            255 => return None,
            53 if i + 2 < p.len() => return Some(p[i + 2]),
            _ => i += 2 + p[i + 1] as usize,
        }
    }
    None
}

struct Job {
    rec: Record,
    bytes: Vec<u8>,
    dest: SocketAddr,
}

/// The writer thread: group-commits records, then sends their replies.
fn writer(
    mut log: LeaseLog,
    initial: Vec<Record>,
    sock: std::net::UdpSocket,
    rx: mpsc::Receiver<Job>,
    stats: Arc<Stats>,
) {
    let mut live: std::collections::HashMap<[u8; 6], Record> =
        initial.into_iter().map(|r| (r.mac, r)).collect();
    // `sock` shares its file description (and O_NONBLOCK) with the receiving socket: it stays
    // non-blocking, and a full send buffer is waited out here.
    let send = |bytes: &[u8], dest: SocketAddr| {
        for _ in 0..100 {
            match sock.send_to(bytes, dest) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                _ => return,
            }
        }
    };
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < 4096 {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let recs: Vec<Record> = jobs.iter().map(|j| j.rec).collect();
        if let Err(e) = log.append(&recs) {
            // Not durable: do not acknowledge. Clients retry; the operator sees this.
            tracing::error!(error = %e, dropped = jobs.len(), "cannot write the lease log; ACKs withheld");
            stats
                .dropped
                .fetch_add(jobs.len() as u64, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        for r in &recs {
            if r.expires == 0 {
                live.remove(&r.mac);
            } else {
                live.insert(r.mac, *r);
            }
        }
        for j in &jobs {
            if !j.bytes.is_empty() {
                send(&j.bytes, j.dest);
            }
        }
        if log.lines() > 4 * live.len() + 4096 {
            let now = super::engine::now_secs();
            let keep: Vec<Record> = live.values().filter(|r| r.expires > now).copied().collect();
            match log.compact(&keep) {
                Ok(()) => tracing::info!(leases = keep.len(), "compacted the lease log"),
                Err(e) => {
                    tracing::warn!(error = %e, "lease log compaction failed; continuing to append")
                }
            }
        }
    }
}

/// Runs the DHCP server until `stop` turns true.
pub async fn serve(
    cfg: Config,
    opts: ServeOptions,
    stats: Arc<Stats>,
    stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let (_keep, updates) = watch::channel(cfg.clone());
    serve_with_updates(cfg, updates, opts, stats, stop).await
}

/// Like [`serve`], and applies every configuration sent on `updates` (a boot network changed
/// in the API), keeping the leases. An invalid one is logged and ignored.
pub async fn serve_with_updates(
    cfg: Config,
    mut updates: watch::Receiver<Config>,
    opts: ServeOptions,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    cfg.validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let persist_dir = opts.lease_dir.clone().filter(|_| opts.persist);
    let (log, records, bad) = match &persist_dir {
        Some(d) => {
            let (log, recs, bad) = LeaseLog::open(d)?;
            (Some(log), recs, bad)
        }
        None => (None, Vec::new(), 0),
    };
    if bad > 0 {
        tracing::warn!(
            bad,
            "skipped unreadable lines in the lease log (a torn write?)"
        );
    }
    let mode = cfg.mode;
    tracing::info!(
        mode = ?mode, server = %cfg.server_ip, pool = %format!("{}-{}", cfg.pool_start, cfg.pool_end),
        leases = records.len(), persist = persist_dir.is_some(), "DHCP server starting"
    );
    let engine = Arc::new(Mutex::new(Engine::new(cfg, &records)));
    let std_sock = udp_socket(opts.interface.as_deref(), opts.port)?;
    let jobs = match log {
        Some(log) => {
            let (tx, rx) = mpsc::channel::<Job>();
            let wsock = std_sock.try_clone()?;
            let st = stats.clone();
            std::thread::Builder::new()
                .name("dhcp-lease-writer".into())
                .spawn(move || writer(log, records, wsock, rx, st))?;
            Some(tx)
        }
        None => None,
    };
    let sock = Arc::new(UdpSocket::from_std(std_sock)?);
    let mut loops = vec![tokio::spawn(run_socket(
        sock,
        opts.port,
        engine.clone(),
        jobs.clone(),
        opts.max_batch,
        stats.clone(),
    ))];
    if mode == Mode::Proxy {
        let s4011 = Arc::new(UdpSocket::from_std(udp_socket(
            opts.interface.as_deref(),
            4011,
        )?)?);
        loops.push(tokio::spawn(run_socket(
            s4011,
            4011,
            engine.clone(),
            jobs,
            opts.max_batch,
            stats.clone(),
        )));
    }
    let mut ticker = tokio::time::interval(Duration::from_secs(10));
    let mut last = 0;
    loop {
        tokio::select! {
            _ = stop.changed() => if *stop.borrow() { break },
            r = updates.changed() => {
                if r.is_err() {
                    // The sender is gone: no more updates, keep serving.
                    updates = watch::channel(engine.lock().unwrap_or_else(|p| p.into_inner()).cfg.clone()).1;
                    continue;
                }
                let new = updates.borrow_and_update().clone();
                match new.validate() {
                    Ok(()) => {
                        tracing::info!(server = %new.server_ip, pool = %format!("{}-{}", new.pool_start, new.pool_end), "DHCP configuration changed");
                        engine.lock().unwrap_or_else(|p| p.into_inner()).reconfigure(new);
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring an invalid DHCP configuration"),
                }
            }
            _ = ticker.tick() => {
                let r = stats.received.load(Ordering::Relaxed);
                if r != last {
                    last = r;
                    tracing::info!(
                        received = r,
                        offers = stats.offers.load(Ordering::Relaxed),
                        acks = stats.acks.load(Ordering::Relaxed),
                        naks = stats.naks.load(Ordering::Relaxed),
                        dropped = stats.dropped.load(Ordering::Relaxed),
                        shed = stats.shed.load(Ordering::Relaxed),
                        "DHCP"
                    );
                }
            }
        }
    }
    for l in loops {
        l.abort();
    }
    Ok(())
}

async fn run_socket(
    sock: Arc<UdpSocket>,
    port: u16,
    engine: Arc<Mutex<Engine>>,
    jobs: Option<mpsc::Sender<Job>>,
    max_batch: usize,
    stats: Arc<Stats>,
) {
    let max_batch = max_batch.max(4);
    let mut bufs: Vec<Vec<u8>> = (0..max_batch).map(|_| vec![0u8; 1500]).collect();
    let mut lens = vec![0usize; max_batch];
    loop {
        if sock.readable().await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let mut n = 0;
        while n < max_batch {
            match sock.try_recv_from(&mut bufs[n]) {
                Ok((len, _)) => {
                    lens[n] = len;
                    n += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => break,
            }
        }
        if n == 0 {
            continue;
        }
        stats.received.fetch_add(n as u64, Ordering::Relaxed);
        // REQUESTs (3) first; DISCOVERs (1) last, and shed when the batch was full.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|i| match peek_type(&bufs[*i][..lens[*i]]) {
            Some(3) => 0,
            Some(1) => 2,
            _ => 1,
        });
        let full = n == max_batch;
        let mut discovers = 0usize;
        let mut replies: Vec<Reply> = Vec::with_capacity(n);
        {
            let mut eng = engine.lock().unwrap_or_else(|p| p.into_inner());
            for i in order {
                let pkt = &bufs[i][..lens[i]];
                if peek_type(pkt) == Some(1) {
                    discovers += 1;
                    if full && discovers > max_batch / 4 {
                        stats.shed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
                match eng.handle(pkt, port) {
                    Ok(r) => replies.push(r),
                    Err(d) => {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                        match d {
                            Drop::Malformed => {
                                stats.malformed.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(len = pkt.len(), "dropped a malformed DHCP packet");
                            }
                            Drop::PoolExhausted => {
                                stats.pool_exhausted.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!("DHCP pool exhausted: no address to offer");
                            }
                            other => tracing::debug!(reason = ?other, "DHCP packet not answered"),
                        }
                    }
                }
            }
        }
        for r in replies {
            let dest = target(r.dest);
            match r.kind {
                dhcproto::v4::MessageType::Offer => stats.offers.fetch_add(1, Ordering::Relaxed),
                dhcproto::v4::MessageType::Ack => stats.acks.fetch_add(1, Ordering::Relaxed),
                dhcproto::v4::MessageType::Nak => stats.naks.fetch_add(1, Ordering::Relaxed),
                _ => 0,
            };
            tracing::debug!(kind = ?r.kind, to = %dest, "{}", ids(&r.mac, r.xid));
            match (r.persist, &jobs) {
                (Some(rec), Some(tx)) => {
                    let _ = tx.send(Job {
                        rec,
                        bytes: r.bytes,
                        dest,
                    });
                }
                _ if r.bytes.is_empty() => {}
                _ => {
                    if sock.try_send_to(&r.bytes, dest).is_err() {
                        let _ = sock.send_to(&r.bytes, dest).await;
                    }
                }
            }
        }
    }
}
