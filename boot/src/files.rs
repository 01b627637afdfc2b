//! Boot files over HTTP/1.1 with sendfile(2).
//!
//! Kernels, ramdisks and images are most of the boot plane's bytes. hyper writes a body from
//! user-space buffers, so every byte is copied twice (file → buffer → socket); nginx copies it
//! once with sendfile, and that copy was the gap: axum + tower-http `ServeDir` reached
//! 0.86-0.89x nginx's GB/s on 64 MiB files (`docs/decisions.md`). hyper has no sendfile hook,
//! so this module reads each request head itself (httparse), answers GET and HEAD for files
//! under the root directly (200, 206 for one byte range, 416, 404), and hands the connection
//! (with any bytes already read) to hyper for everything else: the iPXE script routes, the
//! inventory POST, malformed requests, HTTP/2.
//!
//! What it does not do: multiple ranges (answered with the whole file, which RFC 9110
//! allows), conditional requests (answered in full; `If-Range` drops the range), compression.

use std::fs::File;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Largest request head read before giving the connection to hyper (which answers 431).
const MAX_HEAD: usize = 16 << 10;
/// How long a response may wait for the client to read before the connection is dropped.
const WRITE_STALL: std::time::Duration = std::time::Duration::from_secs(60);
/// Files up to this size are read and written with their head in one write.
const SMALL_FILE: u64 = 64 << 10;

/// What to do with the connection after one request.
enum Next {
    /// Keep reading requests on this connection.
    KeepAlive,
    Close,
    /// Not ours: give the connection to hyper.
    Handover,
}

/// A parsed range request for a file of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Range {
    Full,
    /// Inclusive byte positions.
    Part(u64, u64),
    Unsatisfiable,
}

/// Applies a `Range` header value to a file of `len` bytes (RFC 9110 section 14).
pub fn range(header: Option<&str>, len: u64) -> Range {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Range::Full; // absent, or a unit we do not know: ignored
    };
    if spec.contains(',') {
        return Range::Full; // several ranges: the whole file is a valid answer
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Range::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        (false, _) => match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(s), Ok(e)) if s <= e => Some((s, e.min(len.saturating_sub(1)))),
            (Ok(s), Err(_)) if b.is_empty() => Some((s, len.saturating_sub(1))),
            _ => return Range::Full, // malformed: ignored
        },
        (true, false) => match b.parse::<u64>() {
            Ok(0) => return Range::Unsatisfiable,
            Ok(n) => Some((len.saturating_sub(n), len.saturating_sub(1))),
            Err(_) => return Range::Full,
        },
        (true, true) => return Range::Full,
    };
    match parsed {
        Some((s, e)) if s < len && s <= e => Range::Part(s, e),
        _ => Range::Unsatisfiable,
    }
}

/// The file a request path names, if it is a regular file inside `root` (canonical).
/// `None` for anything else: missing, a directory, `..`, or a symlink leading out.
pub fn resolve(root: &Path, raw_path: &str) -> Option<(PathBuf, std::fs::Metadata)> {
    let decoded = percent_encoding::percent_decode_str(raw_path)
        .decode_utf8()
        .ok()?;
    if decoded.contains('\0') {
        return None;
    }
    let rel = Path::new(decoded.trim_start_matches('/'));
    if rel.as_os_str().is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let full = std::fs::canonicalize(root.join(rel)).ok()?;
    if !full.starts_with(root) {
        return None;
    }
    let meta = std::fs::metadata(&full).ok()?;
    meta.is_file().then_some((full, meta))
}

fn content_type(p: &Path) -> &'static str {
    match p.extension().and_then(|e| e.to_str()) {
        Some("ipxe" | "txt" | "cfg" | "sh" | "conf") => "text/plain; charset=utf-8",
        Some("json") => "application/json",
        Some("html") => "text/html; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Serves one connection: static GET/HEAD here, the rest through `hyper_app`.
pub async fn connection<F, Fut>(
    mut tcp: TcpStream,
    root: &Path,
    is_route: fn(&str) -> bool,
    hyper_app: F,
) where
    F: FnOnce(Prefixed) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        // Read until a whole request head is buffered.
        let next = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(head_len)) => {
                    break match answer(&mut tcp, root, is_route, &req).await {
                        Ok(Next::Handover) => Next::Handover,
                        Ok(next) => {
                            buf.advance(head_len);
                            next
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "boot HTTP connection ended");
                            return;
                        }
                    };
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
                // Malformed or too large: hyper gives the right error response.
                _ => break Next::Handover,
            }
            match tcp.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        match next {
            Next::KeepAlive => continue,
            Next::Close => {
                let _ = tcp.shutdown().await;
                return;
            }
            Next::Handover => {
                return hyper_app(Prefixed {
                    prefix: buf.freeze(),
                    inner: tcp,
                })
                .await;
            }
        }
    }
}

fn header<'a>(req: &'a httparse::Request<'_, '_>, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
}

async fn answer(
    tcp: &mut TcpStream,
    root: &Path,
    is_route: fn(&str) -> bool,
    req: &httparse::Request<'_, '_>,
) -> io::Result<Next> {
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Ok(Next::Handover);
    };
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Ok(Next::Handover),
    };
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let has_body = header(req, "transfer-encoding").is_some()
        || header(req, "content-length").is_some_and(|v| v.trim() != "0");
    if !path.starts_with('/') || is_route(path) || has_body {
        return Ok(Next::Handover);
    }
    // HTTP/1.0 closes after each response (its keep-alive extension is not offered).
    let close = version == 0
        || header(req, "connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let conn = if close { "Connection: close\r\n" } else { "" };
    let next = if close { Next::Close } else { Next::KeepAlive };
    let Some((full, meta)) = resolve(root, path) else {
        let body = "not found\n";
        let head = format!(
            "HTTP/1.1 404 Not Found\r\nDate: {date}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{conn}\r\n{}",
            body.len(),
            if head_only { "" } else { body }
        );
        tcp.write_all(head.as_bytes()).await?;
        return Ok(next);
    };
    let len = meta.len();
    let rng = if header(req, "if-range").is_some() {
        Range::Full
    } else {
        range(header(req, "range"), len)
    };
    let modified = meta
        .modified()
        .map(httpdate::fmt_http_date)
        .unwrap_or_else(|_| date.clone());
    let (status, start, end, extra) = match rng {
        Range::Full => ("200 OK", 0, len, String::new()),
        Range::Part(s, e) => (
            "206 Partial Content",
            s,
            e + 1,
            format!("Content-Range: bytes {s}-{e}/{len}\r\n"),
        ),
        Range::Unsatisfiable => {
            let head = format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nDate: {date}\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\n{conn}\r\n"
            );
            tcp.write_all(head.as_bytes()).await?;
            return Ok(next);
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nDate: {date}\r\nLast-Modified: {modified}\r\nContent-Type: {}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\n{extra}{conn}\r\n",
        content_type(&full),
        end - start
    );
    if head_only {
        tcp.write_all(head.as_bytes()).await?;
        return Ok(next);
    }
    let file = File::open(&full)?;
    if end - start <= SMALL_FILE {
        use std::os::unix::fs::FileExt;
        let mut out = head.into_bytes();
        let h = out.len();
        out.resize(h + (end - start) as usize, 0);
        file.read_exact_at(&mut out[h..], start)?;
        tcp.write_all(&out).await?;
        return Ok(next);
    }
    // Corked, as nginx's tcp_nopush: the head and the file leave in full-sized segments; the
    // tail is pushed when the cork comes off.
    let _ = socket2::SockRef::from(&*tcp).set_tcp_cork(true);
    tcp.write_all(head.as_bytes()).await?;
    let mut off = start as i64;
    // A client that reads nothing for a minute is dropped. One timer for the whole response,
    // moved forward at most once a second: re-arming it at every socket wake-up (thousands
    // per file) cost more than the check is worth.
    let mut stall = std::pin::pin!(tokio::time::sleep(WRITE_STALL));
    let mut armed_at = tokio::time::Instant::now();
    let mut progressed_at = armed_at;
    while (off as u64) < end {
        if progressed_at.duration_since(armed_at) >= std::time::Duration::from_secs(1) {
            stall.as_mut().reset(progressed_at + WRITE_STALL);
            armed_at = progressed_at;
        }
        tokio::select! {
            biased;
            r = tcp.writable() => r?,
            _ = stall.as_mut() => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "client stopped reading"));
            }
        }
        let want = (end - off as u64).min(1 << 30) as usize;
        let mut sent = 0;
        let r = tcp.try_io(Interest::WRITABLE, || {
            sent = nix::sys::sendfile::sendfile64(&*tcp, &file, Some(&mut off), want)
                .map_err(io::Error::from)?;
            if sent > 0 && sent < want {
                // A short write means the socket buffer is full: report WouldBlock so tokio
                // waits for space instead of us paying a sendfile that returns EAGAIN (what
                // nginx does by clearing `wev->ready`). The stall timeout covers the one case
                // where this is wrong, a file truncated under us.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        match r {
            Ok(()) if sent == 0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} shrank while being sent", full.display()),
                ));
            }
            Ok(()) => progressed_at = tokio::time::Instant::now(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if sent > 0 {
                    progressed_at = tokio::time::Instant::now();
                }
            }
            Err(e) => return Err(e),
        }
    }
    let _ = socket2::SockRef::from(&*tcp).set_tcp_cork(false);
    Ok(next)
}

/// A connection handed to hyper, with the bytes already read from it in front.
pub struct Prefixed {
    prefix: bytes::Bytes,
    inner: TcpStream,
}

impl Prefixed {
    /// Moves the connection to another runtime: the unread prefix and the socket, taken off
    /// this runtime's reactor (`TcpStream::from_std` registers it on the new one).
    pub fn into_std(self) -> io::Result<(bytes::Bytes, std::net::TcpStream)> {
        Ok((self.prefix, self.inner.into_std()?))
    }

    /// The other half of [`Prefixed::into_std`], on the runtime that serves it now.
    pub fn from_std(prefix: bytes::Bytes, tcp: std::net::TcpStream) -> io::Result<Prefixed> {
        Ok(Prefixed {
            prefix,
            inner: TcpStream::from_std(tcp)?,
        })
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = |h: &str| range(Some(h), 1000);
        assert_eq!(range(None, 1000), Range::Full);
        assert_eq!(r("bytes=0-99"), Range::Part(0, 99));
        assert_eq!(r("bytes=900-"), Range::Part(900, 999));
        assert_eq!(r("bytes=-100"), Range::Part(900, 999));
        assert_eq!(r("bytes=-5000"), Range::Part(0, 999));
        assert_eq!(r("bytes=990-2000"), Range::Part(990, 999));
        assert_eq!(r("bytes=1000-"), Range::Unsatisfiable);
        assert_eq!(r("bytes=-0"), Range::Unsatisfiable);
        assert_eq!(r("bytes=5-1"), Range::Full);
        assert_eq!(r("bytes=0-1,5-6"), Range::Full);
        assert_eq!(r("items=0-1"), Range::Full);
        assert_eq!(r("bytes=x-"), Range::Full);
        assert_eq!(range(Some("bytes=0-"), 0), Range::Unsatisfiable);
    }

    #[test]
    fn only_regular_files_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a b.bin"), b"x").unwrap();
        std::fs::write(dir.path().join("secret"), b"no").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("link")).unwrap();
        let root = std::fs::canonicalize(root).unwrap();
        assert!(resolve(&root, "/sub/a%20b.bin").is_some());
        for p in [
            "/sub",
            "/missing",
            "/",
            "/../secret",
            "/sub/%2e%2e/%2e%2e/secret",
            "/link",
            "/a%00b",
        ] {
            assert!(resolve(&root, p).is_none(), "{p}");
        }
    }
}
