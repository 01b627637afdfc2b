//! TFTP (RFC 1350) with the option extension (RFC 2347), blksize (2348), tsize and timeout
//! (2349) and windowsize (7440), read-only, for the first iPXE stage.
//!
//! Our own engine, not async-tftp: that crate runs every transfer on one executor thread and
//! served 0.59-0.72x tftpd-hpa's throughput on 50 concurrent transfers (`docs/decisions.md`).
//! Here, as in tftpd-hpa (which forks), each transfer runs on its own thread with its own
//! socket (its transfer ID), so a transfer costs two syscalls per window and nothing else,
//! and transfers use every core. Threads are capped (`MAX_TRANSFERS`); past the cap a request
//! gets an error packet, which PXE firmware retries.
//!
//! Only regular files under the root, after resolving symlinks, can be read.

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Transfers started, refused, finished, and bytes sent, for `/metrics` and tests.
#[derive(Default, Debug)]
pub struct TftpStats {
    pub served: AtomicU64,
    pub refused: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub malformed: AtomicU64,
    pub bytes: AtomicU64,
}

/// Files up to this size are served from memory (first-stage loaders are ~100 KiB-1 MiB).
const CACHE_FILE_MAX: u64 = 16 << 20;
/// Memory the cache may hold in total.
const CACHE_TOTAL_MAX: u64 = 128 << 20;
/// Largest block size granted (RFC 2348 allows 65464; iPXE asks for 1432).
pub const MAX_BLKSIZE: usize = 65464;
/// Largest window granted (RFC 7440 allows 65535; more than this only overflows socket buffers).
pub const MAX_WINDOW: usize = 64;
/// Concurrent transfers; more are refused with an error packet.
pub const MAX_TRANSFERS: usize = 1024;
/// Retransmissions of one window before a transfer is abandoned.
const RETRIES: u32 = 5;

/// TFTP error codes (RFC 1350 section 5, RFC 2347).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    IllegalOperation = 4,
    UnknownTid = 5,
    OptionRefused = 8,
}

/// A parsed request (RRQ or WRQ).
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub write: bool,
    pub filename: String,
    pub netascii: bool,
    /// Options in the order sent, names lower-cased.
    pub options: Vec<(String, String)>,
}

/// Why a datagram on the server port is not a request we can serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("TFTP packet of {0} bytes is too short")]
    TooShort(usize),
    #[error("TFTP opcode {0} is not a request (expected RRQ 1 or WRQ 2)")]
    NotARequest(u16),
    #[error("TFTP request: {0} is missing its terminating NUL")]
    Unterminated(&'static str),
    #[error("TFTP request: {0} is not UTF-8")]
    NotText(&'static str),
    #[error("TFTP request: empty filename")]
    EmptyFilename,
    #[error("TFTP request: transfer mode {0:?} is not octet or netascii")]
    Mode(String),
    #[error("TFTP request: option {0:?} has no value")]
    OptionWithoutValue(String),
}

/// Parses an RRQ/WRQ datagram.
pub fn parse_request(p: &[u8]) -> Result<Request, PacketError> {
    if p.len() < 4 {
        return Err(PacketError::TooShort(p.len()));
    }
    let op = u16::from_be_bytes([p[0], p[1]]);
    if op != 1 && op != 2 {
        return Err(PacketError::NotARequest(op));
    }
    let rest = &p[2..];
    if rest.last() != Some(&0) {
        return Err(PacketError::Unterminated(if rest.contains(&0) {
            "the last option"
        } else {
            "the filename"
        }));
    }
    let mut fields = rest[..rest.len() - 1].split(|b| *b == 0);
    let name = fields.next().unwrap_or_default();
    let filename = std::str::from_utf8(name)
        .map_err(|_| PacketError::NotText("the filename"))?
        .to_string();
    if filename.is_empty() {
        return Err(PacketError::EmptyFilename);
    }
    let mode = fields.next().ok_or(PacketError::Unterminated("the mode"))?;
    let mode = std::str::from_utf8(mode)
        .map_err(|_| PacketError::NotText("the mode"))?
        .to_ascii_lowercase();
    let netascii = match mode.as_str() {
        "octet" => false,
        "netascii" => true,
        _ => return Err(PacketError::Mode(mode)),
    };
    let mut options = Vec::new();
    while let Some(k) = fields.next() {
        let k = std::str::from_utf8(k)
            .map_err(|_| PacketError::NotText("an option name"))?
            .to_ascii_lowercase();
        let v = fields
            .next()
            .ok_or(PacketError::OptionWithoutValue(k.clone()))?;
        let v = std::str::from_utf8(v)
            .map_err(|_| PacketError::NotText("an option value"))?
            .to_string();
        options.push((k, v));
    }
    Ok(Request {
        write: op == 2,
        filename,
        netascii,
        options,
    })
}

/// What was agreed for one transfer.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Negotiated {
    pub blksize: usize,
    pub window: usize,
    pub timeout: Duration,
    /// The options to acknowledge in an OACK, in request order; empty means no OACK.
    pub oack: Vec<(String, String)>,
}

/// Applies RFC 2347-2349/7440 to the requested options for a file of `size` bytes. Unknown or
/// out-of-range options are left out of the OACK, which the RFCs allow.
pub fn negotiate(options: &[(String, String)], size: u64) -> Negotiated {
    let mut n = Negotiated {
        blksize: 512,
        window: 1,
        timeout: Duration::from_secs(1),
        oack: Vec::new(),
    };
    for (k, v) in options {
        let num = v.parse::<u64>().ok();
        match (k.as_str(), num) {
            ("blksize", Some(b)) if b >= 8 => {
                n.blksize = (b as usize).min(MAX_BLKSIZE);
                n.oack.push((k.clone(), n.blksize.to_string()));
            }
            ("windowsize", Some(w)) if (1..=65535).contains(&w) => {
                n.window = (w as usize).min(MAX_WINDOW);
                n.oack.push((k.clone(), n.window.to_string()));
            }
            ("timeout", Some(t)) if (1..=255).contains(&t) => {
                n.timeout = Duration::from_secs(t);
                n.oack.push((k.clone(), t.to_string()));
            }
            ("tsize", Some(_)) => n.oack.push((k.clone(), size.to_string())),
            _ => {}
        }
    }
    n
}

fn error_packet(code: ErrorCode, msg: &str) -> Vec<u8> {
    let mut p = vec![0, 5];
    p.extend_from_slice(&(code as u16).to_be_bytes());
    p.extend_from_slice(msg.as_bytes());
    p.push(0);
    p
}

fn oack_packet(opts: &[(String, String)]) -> Vec<u8> {
    let mut p = vec![0, 6];
    for (k, v) in opts {
        p.extend_from_slice(k.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    p
}

/// RFC 1350's netascii: CR LF for each LF, CR NUL for each bare CR.
pub fn to_netascii(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 32);
    for &b in data {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            _ => out.push(b),
        }
    }
    out
}

/// A file body: from memory, or read from disk a chunk at a time.
enum Body {
    Memory(bytes::Bytes),
    Disk {
        file: File,
        len: u64,
        buf: Vec<u8>,
        /// File offset of `buf[0]`.
        at: u64,
    },
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Memory(b) => b.len() as u64,
            Body::Disk { len, .. } => *len,
        }
    }

    /// Bytes `[off, off + n)` clipped to the end of the file.
    fn slice(&mut self, off: u64, n: usize) -> std::io::Result<&[u8]> {
        let end = (off + n as u64).min(self.len());
        match self {
            Body::Memory(b) => Ok(&b[off as usize..end as usize]),
            Body::Disk { file, buf, at, .. } => {
                if off < *at || end > *at + buf.len() as u64 {
                    // Refill with a large read from `off`: one syscall per ~256 KiB.
                    let want = (end - off).max(256 << 10) as usize;
                    buf.resize(want, 0);
                    let mut got = 0;
                    while got < want {
                        let r = file.read_at(&mut buf[got..], off + got as u64)?;
                        if r == 0 {
                            break;
                        }
                        got += r;
                    }
                    buf.truncate(got);
                    *at = off;
                    if (got as u64) < end - off {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "file shrank during the transfer",
                        ));
                    }
                }
                let s = (off - *at) as usize;
                Ok(&buf[s..s + (end - off) as usize])
            }
        }
    }
}

/// Resolves request paths under the root and keeps small files in memory.
pub struct RootHandler {
    root: PathBuf,
    /// path → (modified, length, contents); re-read when the file changes.
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    files: std::collections::HashMap<PathBuf, (std::time::SystemTime, u64, bytes::Bytes)>,
    bytes: u64,
}

impl RootHandler {
    pub fn new(root: &Path) -> std::io::Result<Self> {
        let root = std::fs::canonicalize(root)?;
        if !root.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("TFTP root {} is not a directory", root.display()),
            ));
        }
        Ok(RootHandler {
            root,
            cache: Default::default(),
        })
    }

    /// The file a request names, if it is a regular file inside the root.
    pub fn resolve(&self, requested: &Path) -> Result<PathBuf, ErrorCode> {
        let rel = requested
            .strip_prefix("/")
            .or_else(|_| requested.strip_prefix("./"))
            .unwrap_or(requested);
        if rel.as_os_str().is_empty()
            || rel.components().any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(ErrorCode::AccessViolation);
        }
        // Symlinks are resolved before the check, so a link cannot lead outside the root.
        let full =
            std::fs::canonicalize(self.root.join(rel)).map_err(|_| ErrorCode::FileNotFound)?;
        if !full.starts_with(&self.root) {
            return Err(ErrorCode::AccessViolation);
        }
        if !full.is_file() {
            return Err(ErrorCode::FileNotFound);
        }
        Ok(full)
    }

    fn open(&self, full: &Path, netascii: bool) -> std::io::Result<Body> {
        let meta = std::fs::metadata(full)?;
        let (len, modified) = (meta.len(), meta.modified().unwrap_or(std::time::UNIX_EPOCH));
        if len > CACHE_FILE_MAX {
            if netascii {
                return Err(std::io::Error::other(
                    "netascii mode is offered for files up to 16 MiB only",
                ));
            }
            return Ok(Body::Disk {
                file: File::open(full)?,
                len,
                buf: Vec::new(),
                at: 0,
            });
        }
        let cached = {
            let c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            c.files
                .get(full)
                .filter(|(m, l, _)| *m == modified && *l == len)
                .map(|(_, _, d)| d.clone())
        };
        let data = match cached {
            Some(d) => d,
            None => {
                let d = bytes::Bytes::from(std::fs::read(full)?);
                let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if c.bytes + len > CACHE_TOTAL_MAX {
                    c.files.clear();
                    c.bytes = 0;
                }
                if let Some((_, old, _)) = c
                    .files
                    .insert(full.to_path_buf(), (modified, len, d.clone()))
                {
                    c.bytes -= old;
                }
                c.bytes += len;
                d
            }
        };
        Ok(Body::Memory(if netascii {
            to_netascii(&data).into()
        } else {
            data
        }))
    }
}

/// Serves `root` on `addr` on a dedicated thread for the life of the process.
pub fn spawn(
    addr: SocketAddr,
    root: &Path,
    stats: Arc<TftpStats>,
) -> std::io::Result<(SocketAddr, std::thread::JoinHandle<()>)> {
    let handler = Arc::new(RootHandler::new(root)?);
    let sock = UdpSocket::bind(addr)?;
    let local = sock.local_addr()?;
    let t = std::thread::Builder::new()
        .name("tftp".into())
        .spawn(move || serve(sock, handler, stats))?;
    Ok((local, t))
}

fn serve(sock: UdpSocket, handler: Arc<RootHandler>, stats: Arc<TftpStats>) {
    let active = Arc::new(AtomicUsize::new(0));
    let local_ip = sock.local_addr().map(|a| a.ip()).ok();
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, client) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "TFTP receive failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let reply = |code, msg: &str| {
            let _ = sock.send_to(&error_packet(code, msg), client);
        };
        let req = match parse_request(&buf[..n]) {
            Ok(r) => r,
            Err(PacketError::NotARequest(op)) if (3..=6).contains(&op) => {
                // A stray DATA/ACK/ERROR/OACK for a finished transfer: ignore, as tftpd-hpa does.
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%client, opcode = op, "TFTP packet for no transfer dropped");
                continue;
            }
            Err(e) => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%client, error = %e, "TFTP packet dropped");
                reply(ErrorCode::IllegalOperation, &e.to_string());
                continue;
            }
        };
        if req.write {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%client, path = %req.filename, "TFTP write refused (read-only server)");
            reply(ErrorCode::AccessViolation, "read-only server");
            continue;
        }
        let full = match handler.resolve(Path::new(&req.filename)) {
            Ok(p) => p,
            Err(code) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%client, path = %req.filename, error = ?code, "TFTP request refused");
                let msg = match code {
                    ErrorCode::FileNotFound => "file not found",
                    _ => "access violation",
                };
                reply(code, msg);
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_TRANSFERS {
            active.fetch_sub(1, Ordering::AcqRel);
            stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%client, path = %req.filename, "TFTP server busy: transfer refused");
            reply(ErrorCode::NotDefined, "server busy, retry");
            continue;
        }
        stats.served.fetch_add(1, Ordering::Relaxed);
        let (handler, stats, active) = (handler.clone(), stats.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("tftp-xfer".into())
            .stack_size(256 << 10)
            .spawn(move || {
                let r = transfer(local_ip, client, &handler, &full, &req, &stats);
                active.fetch_sub(1, Ordering::AcqRel);
                match r {
                    Ok(sent) => {
                        stats.completed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%client, path = %req.filename, bytes = sent, "TFTP transfer done");
                    }
                    // PXE firmware often asks for tsize only and then aborts: not a failure.
                    Err(XferError::Client { code, msg }) => {
                        tracing::debug!(%client, path = %req.filename, code, %msg, "TFTP transfer ended by the client");
                    }
                    Err(e) => {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(%client, path = %req.filename, error = %e, "TFTP transfer failed");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(%client, error = %e, "TFTP transfer thread not started");
        }
    }
}

/// Sends `buf` as datagrams of `seg` bytes (the last may be shorter) in one syscall.
fn send_segmented(sock: &UdpSocket, buf: &[u8], seg: u16) -> nix::Result<usize> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use std::os::fd::AsRawFd;
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[std::io::IoSlice::new(buf)],
        &[ControlMessage::UdpGsoSegments(&seg)],
        MsgFlags::empty(),
        None,
    )
}

/// How a transfer ended early.
#[derive(Debug, thiserror::Error)]
enum XferError {
    #[error("no answer after {0} retransmissions")]
    Timeout(u32),
    #[error("client sent error {code}: {msg}")]
    Client { code: u16, msg: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Runs one read transfer from a fresh socket (its TID). Returns bytes sent.
fn transfer(
    local_ip: Option<std::net::IpAddr>,
    client: SocketAddr,
    handler: &RootHandler,
    full: &Path,
    req: &Request,
    stats: &TftpStats,
) -> Result<u64, XferError> {
    let ip = local_ip.unwrap_or(if client.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    });
    let sock = UdpSocket::bind(SocketAddr::new(ip, 0))?;
    // Connected: the kernel drops datagrams from any other port (another TID).
    sock.connect(client)?;
    let mut body = match handler.open(full, req.netascii) {
        Ok(b) => b,
        Err(e) => {
            let _ = sock.send(&error_packet(ErrorCode::FileNotFound, &e.to_string()));
            return Err(e.into());
        }
    };
    let size = body.len();
    let neg = negotiate(&req.options, size);
    let (blksize, window) = (neg.blksize, neg.window as u64);
    let mut rx = vec![0u8; 1024];

    // Waits for an ACK of a block in [lo, upto] (by wire number, which wraps at 65536 and is
    // mapped back relative to `lo`); None on timeout.
    let wait_ack =
        |sock: &UdpSocket, rx: &mut [u8], lo: u64, upto: u64| -> Result<Option<u64>, XferError> {
            let deadline = Instant::now() + neg.timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(None);
                }
                sock.set_read_timeout(Some(left))?;
                let n = match sock.recv(rx) {
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        return Ok(None);
                    }
                    // ICMP port unreachable: the client went away.
                    Err(e) => return Err(e.into()),
                };
                if n >= 4 && rx[1] == 5 && rx[0] == 0 {
                    let code = u16::from_be_bytes([rx[2], rx[3]]);
                    let msg = String::from_utf8_lossy(&rx[4..n])
                        .trim_end_matches('\0')
                        .to_string();
                    return Err(XferError::Client { code, msg });
                }
                if n >= 4 && rx[0] == 0 && rx[1] == 4 {
                    let wire = u16::from_be_bytes([rx[2], rx[3]]);
                    let blk = lo + wire.wrapping_sub(lo as u16) as u64;
                    if blk <= upto {
                        return Ok(Some(blk));
                    }
                    // A duplicate or old ACK: never answered (Sorcerer's Apprentice, RFC 1123).
                }
            }
        };

    if !neg.oack.is_empty() {
        let oack = oack_packet(&neg.oack);
        let mut tries = 0;
        loop {
            sock.send(&oack)?;
            // ACK 0 acknowledges the OACK.
            if wait_ack(&sock, &mut rx, 0, 0)?.is_some() {
                break;
            }
            tries += 1;
            if tries > RETRIES {
                return Err(XferError::Timeout(RETRIES));
            }
        }
    }
    // Blocks are numbered from 1; the last is shorter than blksize (possibly empty).
    let last = size / blksize as u64 + 1;
    let mut acked = 0u64;
    let mut tries = 0;
    let mut pkt = Vec::with_capacity(blksize + 4);
    let mut sent_bytes = 0u64;
    // Packets per segmented send: the kernel caps one send at 64 KiB and 64 segments.
    let gso_batch = (65000 / (blksize + 4)).min(64) as u64;
    let mut gso = gso_batch > 1;
    while acked < last {
        let upto = (acked + window).min(last);
        // The window goes out in as few syscalls as possible: with UDP segmentation offload
        // (Linux 4.18+) one `sendmsg` carries up to 64 packets, each `blksize + 4` bytes but
        // the last, which the kernel splits into datagrams.
        let mut blk = acked + 1;
        while blk <= upto {
            let n = (upto - blk + 1).min(if gso { gso_batch } else { 1 });
            pkt.clear();
            for b in blk..blk + n {
                pkt.extend_from_slice(&[0, 3]);
                pkt.extend_from_slice(&(b as u16).to_be_bytes());
                let data = body.slice((b - 1) * blksize as u64, blksize)?;
                sent_bytes += data.len() as u64;
                pkt.extend_from_slice(data);
            }
            if n > 1 {
                if let Err(e) = send_segmented(&sock, &pkt, (blksize + 4) as u16) {
                    if matches!(
                        e,
                        nix::errno::Errno::EIO
                            | nix::errno::Errno::EINVAL
                            | nix::errno::Errno::ENOPROTOOPT
                            | nix::errno::Errno::EOPNOTSUPP
                    ) {
                        // No UDP GSO here (old kernel, or a device without it): one by one.
                        tracing::debug!(%client, error = %e, "UDP segmentation offload unavailable");
                        gso = false;
                        sent_bytes -= pkt.len() as u64 - 4 * n;
                        continue;
                    }
                    return Err(std::io::Error::from(e).into());
                }
            } else {
                sock.send(&pkt)?;
            }
            blk += n;
        }
        match wait_ack(&sock, &mut rx, acked + 1, upto)? {
            Some(a) => {
                acked = a;
                tries = 0;
            }
            None => {
                tries += 1;
                if tries > RETRIES {
                    return Err(XferError::Timeout(RETRIES));
                }
            }
        }
    }
    stats.bytes.fetch_add(sent_bytes, Ordering::Relaxed);
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("a.bin"), b"x").unwrap();
        std::fs::write(root.join("sub/b.bin"), b"y").unwrap();
        std::fs::write(dir.path().join("secret"), b"no").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("link")).unwrap();
        let h = RootHandler::new(&root).unwrap();
        assert!(h.resolve(Path::new("a.bin")).is_ok());
        assert!(h.resolve(Path::new("/sub/b.bin")).is_ok());
        for (p, want) in [
            ("../secret", ErrorCode::AccessViolation),
            ("sub/../../secret", ErrorCode::AccessViolation),
            ("link", ErrorCode::AccessViolation),
            ("sub", ErrorCode::FileNotFound),
            ("missing", ErrorCode::FileNotFound),
            ("", ErrorCode::AccessViolation),
        ] {
            assert_eq!(h.resolve(Path::new(p)), Err(want), "{p:?}");
        }
    }

    #[test]
    fn requests_parse_and_bad_ones_name_the_field() {
        let r =
            parse_request(b"\x00\x01boot/ipxe.efi\x00OCTET\x00blksize\x001432\x00TSize\x000\x00")
                .unwrap();
        assert_eq!(r.filename, "boot/ipxe.efi");
        assert!(!r.write && !r.netascii);
        assert_eq!(
            r.options,
            vec![
                ("blksize".into(), "1432".into()),
                ("tsize".into(), "0".into())
            ]
        );
        assert!(parse_request(b"\x00\x02f\x00netascii\x00").unwrap().write);
        for (p, want) in [
            (&b"\x00\x01"[..], PacketError::TooShort(2)),
            (b"\x00\x03\x00\x01abc", PacketError::NotARequest(3)),
            (b"\x00\x01file", PacketError::Unterminated("the filename")),
            (
                b"\x00\x01f\x00octet",
                PacketError::Unterminated("the last option"),
            ),
            (b"\x00\x01\x00octet\x00", PacketError::EmptyFilename),
            (b"\x00\x01f\x00mail\x00", PacketError::Mode("mail".into())),
            (b"\x00\x01f\x00\x00", PacketError::Mode("".into())),
            (
                b"\x00\x01f\x00octet\x00blksize\x00",
                PacketError::OptionWithoutValue("blksize".into()),
            ),
            (
                b"\x00\x01\xff\xfe\x00octet\x00",
                PacketError::NotText("the filename"),
            ),
        ] {
            assert_eq!(parse_request(p), Err(want.clone()), "{p:?}");
            assert!(!want.to_string().is_empty());
        }
    }

    #[test]
    fn options_are_clamped_and_unknown_ones_left_out() {
        let o = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        let n = negotiate(
            &o(&[
                ("blksize", "100000"),
                ("tsize", "0"),
                ("windowsize", "500"),
                ("timeout", "3"),
                ("multicast", ""),
            ]),
            4242,
        );
        assert_eq!((n.blksize, n.window), (MAX_BLKSIZE, MAX_WINDOW));
        assert_eq!(n.timeout, Duration::from_secs(3));
        assert_eq!(
            n.oack,
            o(&[
                ("blksize", "65464"),
                ("tsize", "4242"),
                ("windowsize", "64"),
                ("timeout", "3")
            ])
        );
        // Out of range: ignored, defaults kept, no OACK.
        let n = negotiate(
            &o(&[("blksize", "7"), ("timeout", "0"), ("windowsize", "x")]),
            1,
        );
        assert_eq!((n.blksize, n.window, n.oack.len()), (512, 1, 0));
    }

    #[test]
    fn netascii_expands_line_ends() {
        assert_eq!(to_netascii(b"a\nb\rc"), b"a\r\nb\r\0c");
    }

    /// A minimal client: RRQ with options, then ACK every window (or every block); the
    /// `drop_nth` DATA packet (1-based; 0 for none) is ignored as if lost.
    fn fetch(server: SocketAddr, name: &str, opts: &[(&str, &str)], drop_nth: usize) -> Vec<u8> {
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rrq = vec![0, 1];
        rrq.extend_from_slice(name.as_bytes());
        rrq.extend_from_slice(b"\0octet\0");
        for (k, v) in opts {
            rrq.extend_from_slice(format!("{k}\0{v}\0").as_bytes());
        }
        c.send_to(&rrq, server).unwrap();
        let (mut blksize, mut window) = (512usize, 1u16);
        let mut out = Vec::new();
        let mut buf = vec![0u8; 70000];
        let mut expect = 1u16;
        let mut n_data = 0usize;
        loop {
            let (n, from) = c.recv_from(&mut buf).unwrap();
            match buf[1] {
                6 => {
                    let f: Vec<&[u8]> = buf[2..n].split(|b| *b == 0).collect();
                    for kv in f.chunks(2) {
                        if kv.len() == 2 {
                            let v = std::str::from_utf8(kv[1]).unwrap_or("0");
                            match kv[0] {
                                b"blksize" => blksize = v.parse().unwrap(),
                                b"windowsize" => window = v.parse().unwrap(),
                                _ => {}
                            }
                        }
                    }
                    c.send_to(&[0, 4, 0, 0], from).unwrap();
                }
                3 => {
                    n_data += 1;
                    if n_data == drop_nth {
                        continue; // lost: the server must resend
                    }
                    let blk = u16::from_be_bytes([buf[2], buf[3]]);
                    if blk != expect {
                        continue;
                    }
                    out.extend_from_slice(&buf[4..n]);
                    let done = n - 4 < blksize;
                    if done || blk.is_multiple_of(window) {
                        c.send_to(&[0, 4, buf[2], buf[3]], from).unwrap();
                    }
                    expect = expect.wrapping_add(1);
                    if done {
                        return out;
                    }
                }
                5 => panic!("error {:?}", String::from_utf8_lossy(&buf[4..n])),
                x => panic!("opcode {x}"),
            }
        }
    }

    #[test]
    fn transfers_with_windows_losses_and_block_number_wrap() {
        let dir = tempfile::tempdir().unwrap();
        // 70,000 blocks of 8 bytes: the block number wraps past 65535.
        let big: Vec<u8> = (0..560_003u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(dir.path().join("big"), &big).unwrap();
        std::fs::write(dir.path().join("exact"), vec![1u8; 1024]).unwrap();
        let stats = Arc::new(TftpStats::default());
        let (addr, _t) = spawn("127.0.0.1:0".parse().unwrap(), dir.path(), stats.clone()).unwrap();
        assert_eq!(fetch(addr, "big", &[], 0), big);
        assert_eq!(
            fetch(addr, "big", &[("blksize", "1428"), ("windowsize", "16")], 0),
            big
        );
        assert_eq!(
            fetch(addr, "big", &[("blksize", "8"), ("windowsize", "64")], 0),
            big
        );
        // The 3rd DATA lost: the client acknowledges nothing, and after its 1 s timeout the
        // server resends the window from the first unacknowledged block.
        assert_eq!(
            fetch(addr, "big", &[("blksize", "60000"), ("windowsize", "4")], 3),
            big
        );
        // A size that is a multiple of blksize ends with an empty block.
        assert_eq!(fetch(addr, "exact", &[], 0), vec![1u8; 1024]);
        // The server counts a transfer once it has read the final ACK, just after the client
        // returns: wait for it, bounded.
        let t0 = Instant::now();
        while stats.completed.load(Ordering::Relaxed) < 5 && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(stats.completed.load(Ordering::Relaxed), 5);
        assert_eq!(stats.failed.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn errors_are_answered_with_error_packets() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let stats = Arc::new(TftpStats::default());
        let (addr, _t) = spawn("127.0.0.1:0".parse().unwrap(), dir.path(), stats.clone()).unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 600];
        for (pkt, code) in [
            (&b"\x00\x01missing\x00octet\x00"[..], 1u16),
            (b"\x00\x01../etc/passwd\x00octet\x00", 2),
            (b"\x00\x02f\x00octet\x00", 2),
            (b"\x00\x01f\x00mail\x00", 4),
            (b"\x00\x09garbage", 4),
        ] {
            c.send_to(pkt, addr).unwrap();
            let (n, _) = c.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..2], &[0, 5], "{pkt:?}");
            assert_eq!(
                u16::from_be_bytes([buf[2], buf[3]]),
                code,
                "{pkt:?}: {:?}",
                &buf[..n]
            );
        }
        assert_eq!(stats.refused.load(Ordering::Relaxed), 3);
        assert_eq!(stats.malformed.load(Ordering::Relaxed), 2);
        // The client aborting after the OACK (PXE firmware asking only for tsize) ends quietly.
        c.send_to(b"\x00\x01f\x00octet\x00tsize\x000\x00", addr)
            .unwrap();
        let (n, from) = c.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"\x00\x06tsize\x001\x00");
        c.send_to(b"\x00\x05\x00\x08tsize only\x00", from).unwrap();
        // Still serving.
        assert_eq!(fetch(addr, "f", &[], 0), b"x");
    }
}
