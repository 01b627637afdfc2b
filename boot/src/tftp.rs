//! TFTP (RFC 1350) with the option extension (RFC 2347), blksize (2348), tsize and timeout
//! (2349) and windowsize (7440), read-only, for the first iPXE stage. The protocol engine is
//! async-tftp (maintained, implements all five RFCs); what is ours is the file handler: only
//! regular files under the root, after resolving symlinks, so no request can read outside it.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_tftp::packet;
use async_tftp::server::{Handler, TftpServerBuilder};

/// Transfers started and refused, for `/metrics` and tests.
#[derive(Default, Debug)]
pub struct TftpStats {
    pub served: AtomicU64,
    pub refused: AtomicU64,
}

/// Files up to this size are served from memory (first-stage loaders are ~100 KiB-1 MiB):
/// no thread-pool round trip per block.
const CACHE_FILE_MAX: u64 = 16 << 20;
/// Memory the cache may hold in total.
const CACHE_TOTAL_MAX: u64 = 128 << 20;

/// A file body: from memory (cached) or streamed from disk.
pub enum Body {
    Memory(futures_lite::io::Cursor<bytes::Bytes>),
    Disk(blocking::Unblock<File>),
}

impl futures_lite::AsyncRead for Body {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Body::Memory(c) => std::pin::Pin::new(c).poll_read(cx, buf),
            Body::Disk(f) => std::pin::Pin::new(f).poll_read(cx, buf),
        }
    }
}

/// Serves regular files below `root`, read-only.
pub struct RootHandler {
    root: PathBuf,
    stats: Arc<TftpStats>,
    /// path → (modified, length, contents); re-read when the file changes.
    cache: std::collections::HashMap<PathBuf, (std::time::SystemTime, u64, bytes::Bytes)>,
    cached_bytes: u64,
}

impl RootHandler {
    pub fn new(root: &Path, stats: Arc<TftpStats>) -> std::io::Result<Self> {
        let root = std::fs::canonicalize(root)?;
        if !root.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("TFTP root {} is not a directory", root.display()),
            ));
        }
        Ok(RootHandler {
            root,
            stats,
            cache: Default::default(),
            cached_bytes: 0,
        })
    }

    /// The file a request names, if it is a regular file inside the root.
    pub fn resolve(&self, requested: &Path) -> Result<PathBuf, packet::Error> {
        let rel = requested
            .strip_prefix("/")
            .or_else(|_| requested.strip_prefix("./"))
            .unwrap_or(requested);
        if rel.as_os_str().is_empty()
            || rel.components().any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(packet::Error::PermissionDenied);
        }
        // Symlinks are resolved before the check, so a link cannot lead outside the root.
        let full =
            std::fs::canonicalize(self.root.join(rel)).map_err(|_| packet::Error::FileNotFound)?;
        if !full.starts_with(&self.root) {
            return Err(packet::Error::PermissionDenied);
        }
        if !full.is_file() {
            return Err(packet::Error::FileNotFound);
        }
        Ok(full)
    }
}

impl Handler for RootHandler {
    type Reader = Body;
    type Writer = blocking::Unblock<File>;

    async fn read_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
    ) -> Result<(Self::Reader, Option<u64>), packet::Error> {
        let full = match self.resolve(path) {
            Ok(p) => p,
            Err(e) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%client, path = %path.display(), error = ?e, "TFTP request refused");
                return Err(e);
            }
        };
        let meta = std::fs::metadata(&full).map_err(|_| packet::Error::FileNotFound)?;
        let (len, modified) = (meta.len(), meta.modified().unwrap_or(std::time::UNIX_EPOCH));
        self.stats.served.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%client, path = %path.display(), bytes = len, "TFTP read");
        if len <= CACHE_FILE_MAX {
            if let Some((m, l, data)) = self.cache.get(&full)
                && *m == modified
                && *l == len
            {
                return Ok((
                    Body::Memory(futures_lite::io::Cursor::new(data.clone())),
                    Some(len),
                ));
            }
            if let Ok(data) = std::fs::read(&full) {
                let data = bytes::Bytes::from(data);
                if self.cached_bytes + len > CACHE_TOTAL_MAX {
                    self.cache.clear();
                    self.cached_bytes = 0;
                }
                if let Some((_, old, _)) = self.cache.insert(full, (modified, len, data.clone())) {
                    self.cached_bytes -= old;
                }
                self.cached_bytes += len;
                let n = data.len() as u64;
                return Ok((Body::Memory(futures_lite::io::Cursor::new(data)), Some(n)));
            }
        }
        let file = File::open(&full).map_err(|_| packet::Error::FileNotFound)?;
        Ok((Body::Disk(blocking::Unblock::new(file)), Some(len)))
    }

    async fn write_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
        _size: Option<u64>,
    ) -> Result<Self::Writer, packet::Error> {
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%client, path = %path.display(), "TFTP write refused (read-only server)");
        Err(packet::Error::IllegalOperation)
    }
}

/// Serves `root` on `addr` until the task is dropped. async-tftp runs its own executor; it is
/// run on a dedicated thread so it never blocks the tokio runtime.
pub fn spawn(
    addr: SocketAddr,
    root: &Path,
    stats: Arc<TftpStats>,
) -> std::io::Result<(SocketAddr, std::thread::JoinHandle<()>)> {
    let handler = RootHandler::new(root, stats)?;
    let sock = std::net::UdpSocket::bind(addr)?;
    let local = sock.local_addr()?;
    let t = std::thread::Builder::new()
        .name("tftp".into())
        .spawn(move || {
            let r = futures_lite::future::block_on(async move {
                let server = TftpServerBuilder::with_handler(handler)
                    .std_socket(sock)?
                    .window_size_limit(64)
                    .block_size_limit(65464)
                    .build()
                    .await?;
                server.serve().await
            });
            if let Err(e) = r {
                tracing::error!(error = %e, "TFTP server stopped");
            }
        })?;
    Ok((local, t))
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
        let h = RootHandler::new(&root, Arc::default()).unwrap();
        assert!(h.resolve(Path::new("a.bin")).is_ok());
        assert!(h.resolve(Path::new("/sub/b.bin")).is_ok());
        assert!(matches!(
            h.resolve(Path::new("../secret")),
            Err(packet::Error::PermissionDenied)
        ));
        assert!(matches!(
            h.resolve(Path::new("sub/../../secret")),
            Err(packet::Error::PermissionDenied)
        ));
        assert!(matches!(
            h.resolve(Path::new("link")),
            Err(packet::Error::PermissionDenied)
        ));
        assert!(matches!(
            h.resolve(Path::new("sub")),
            Err(packet::Error::FileNotFound)
        ));
        assert!(matches!(
            h.resolve(Path::new("missing")),
            Err(packet::Error::FileNotFound)
        ));
        assert!(matches!(
            h.resolve(Path::new("")),
            Err(packet::Error::PermissionDenied)
        ));
    }
}
