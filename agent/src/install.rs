//! What the ramdisk agent does to disks: write an OS image while verifying its checksum,
//! write the machine config into the image's first partition, and wipe disks.
//!
//! The machine config goes to `/groundwork/machine.json` on partition 1 of an MBR disk, which
//! must be FAT (the EFI system partition or a `/boot` of a BIOS image both are). It is written
//! with the `fatfs` crate rather than by mounting, so the ramdisk needs no file-system modules
//! and the code is tested on plain files.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use groundwork_types::agent::MachineFile;
use groundwork_types::{Disk, Inventory};

/// A failed step: the reason the server records (`ImageChecksumMismatch`, ...) and a message.
#[derive(Debug)]
pub(crate) struct Failure {
    pub reason: &'static str,
    pub message: String,
}

fn fail(reason: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        reason,
        message: message.into(),
    }
}

/// Chooses the disk to install to: `/dev/NAME` or `NAME`, `largest`, `smallest`, or (none)
/// the first disk by name.
pub(crate) fn target_disk(want: Option<&str>, inv: &Inventory) -> Result<String, Failure> {
    let disks: Vec<&Disk> = inv
        .disks
        .iter()
        .filter(|d| d.size_bytes.unwrap_or(0) > 0)
        .collect();
    let names = || {
        disks
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let pick = match want.map(|w| w.trim_start_matches("/dev/")) {
        None | Some("") => disks.first().copied(),
        Some("largest") => disks.iter().copied().max_by_key(|d| d.size_bytes),
        Some("smallest") => disks.iter().copied().min_by_key(|d| d.size_bytes),
        Some(name) => disks.iter().copied().find(|d| d.name == name),
    };
    pick.map(|d| d.name.clone()).ok_or_else(|| {
        fail(
            "DiskNotFound",
            format!(
                "target disk {:?} not found; disks: [{}]",
                want.unwrap_or("(first)"),
                names()
            ),
        )
    })
}

/// Streams the image at `url` onto `dev`, hashing as it goes; on a checksum mismatch the
/// first MiB is zeroed so a half-trusted image never boots. Returns the bytes written.
pub(crate) async fn write_image(
    client: &reqwest::Client,
    url: &str,
    checksum: &str,
    dev: &Path,
) -> Result<u64, Failure> {
    let shown = groundwork_types::agent::redact_url(url);
    let want = checksum
        .strip_prefix("sha256:")
        .ok_or_else(|| {
            fail(
                "BadChecksum",
                format!("{checksum:?}: expected sha256:<hex>"),
            )
        })?
        .to_ascii_lowercase();
    let mut resp = client.get(url).send().await.map_err(|e| {
        fail(
            "DownloadFailed",
            format!("GET {shown}: {}", e.without_url()),
        )
    })?;
    if !resp.status().is_success() {
        return Err(fail(
            "DownloadFailed",
            format!("GET {shown}: {}", resp.status()),
        ));
    }
    let mut out = OpenOptions::new()
        .write(true)
        .open(dev)
        .map_err(|e| fail("DiskNotFound", format!("{}: {e}", dev.display())))?;
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut written = 0u64;
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    loop {
        let chunk = resp.chunk().await.map_err(|e| {
            fail(
                "DownloadFailed",
                format!("GET {shown}: {}", e.without_url()),
            )
        })?;
        let last = chunk.is_none();
        if let Some(c) = &chunk {
            hash.update(c);
            buf.extend_from_slice(c);
        }
        if buf.len() >= 1 << 20 || (last && !buf.is_empty()) {
            out.write_all(&buf)
                .map_err(|e| fail("WriteFailed", format!("{}: {e}", dev.display())))?;
            written += buf.len() as u64;
            buf.clear();
        }
        if last {
            break;
        }
    }
    out.sync_all()
        .map_err(|e| fail("WriteFailed", format!("{}: {e}", dev.display())))?;
    let got = hex(hash.finish().as_ref());
    if got != want {
        let _ = zero(&mut out, 0, 1 << 20);
        let _ = out.sync_all();
        return Err(fail(
            "ImageChecksumMismatch",
            format!(
                "{url} has sha256:{got}, the Profile expects sha256:{want}; the disk's first MiB was zeroed"
            ),
        ));
    }
    Ok(written)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn zero(f: &mut std::fs::File, at: u64, len: u64) -> std::io::Result<()> {
    f.seek(SeekFrom::Start(at))?;
    let z = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        let n = left.min(z.len() as u64) as usize;
        f.write_all(&z[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Size of a file or block device.
fn size_of(f: &mut std::fs::File) -> std::io::Result<u64> {
    f.seek(SeekFrom::End(0))
}

/// Destroys partition tables and file system signatures: the first MiB of every MBR
/// partition (superblocks, FAT tables, and the machine config's directory), then the first and
/// the last MiB of the disk (MBR, GPT and its backup).
pub(crate) fn wipe(dev: &Path) -> Result<u64, Failure> {
    let mut f = OpenOptions::new()
        .write(true)
        .read(true)
        .open(dev)
        .map_err(|e| fail("DiskNotFound", format!("{}: {e}", dev.display())))?;
    let io = |e: std::io::Error| fail("WipeFailed", format!("{}: {e}", dev.display()));
    let size = size_of(&mut f).map_err(io)?;
    let span = (1u64 << 20).min(size);
    let mut mbr = [0u8; 512];
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    if f.read_exact(&mut mbr).is_ok() && mbr[510..512] == [0x55, 0xaa] {
        for i in 0..4 {
            let e = &mbr[446 + 16 * i..462 + 16 * i];
            let start = u32::from_le_bytes([e[8], e[9], e[10], e[11]]) as u64 * 512;
            if e[4] != 0 && start > 0 && start < size {
                zero(&mut f, start, span.min(size - start)).map_err(io)?;
            }
        }
    }
    zero(&mut f, 0, span).map_err(io)?;
    if size > span {
        zero(&mut f, size - span, span).map_err(io)?;
    }
    f.sync_all().map_err(io)?;
    Ok(size)
}

/// One partition of a disk, as a stream of its own.
struct Partition {
    f: std::fs::File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for Partition {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        self.f.seek(SeekFrom::Start(self.start + self.pos))?;
        let r = self.f.read(&mut buf[..n])?;
        self.pos += r as u64;
        Ok(r)
    }
}

impl Write for Partition {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(std::io::Error::other("write past the end of the partition"));
        }
        self.f.seek(SeekFrom::Start(self.start + self.pos))?;
        let w = self.f.write(&buf[..n])?;
        self.pos += w as u64;
        Ok(w)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.f.flush()
    }
}

impl Seek for Partition {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let p = match to {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
        };
        if p < 0 || p > self.len as i128 {
            return Err(std::io::Error::other("seek outside the partition"));
        }
        self.pos = p as u64;
        Ok(self.pos)
    }
}

/// Partition 1 of an MBR disk, if it is a FAT type.
fn first_fat_partition(dev: &Path, write: bool) -> Result<Partition, String> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(write)
        .open(dev)
        .map_err(|e| format!("{}: {e}", dev.display()))?;
    let mut mbr = [0u8; 512];
    f.read_exact(&mut mbr)
        .map_err(|e| format!("{}: reading the MBR: {e}", dev.display()))?;
    if mbr[510..512] != [0x55, 0xaa] {
        return Err(format!("{}: no MBR partition table", dev.display()));
    }
    let e = &mbr[446..462];
    let kind = e[4];
    if !matches!(kind, 0x01 | 0x04 | 0x06 | 0x0b | 0x0c | 0x0e | 0xef) {
        return Err(format!(
            "{}: partition 1 has type {kind:#04x}, not FAT",
            dev.display()
        ));
    }
    let lba = u32::from_le_bytes([e[8], e[9], e[10], e[11]]) as u64;
    let sectors = u32::from_le_bytes([e[12], e[13], e[14], e[15]]) as u64;
    Ok(Partition {
        f,
        start: lba * 512,
        len: sectors * 512,
        pos: 0,
    })
}

const MACHINE_FILE: &str = "groundwork/machine.json";

/// Writes the machine config into partition 1 of `dev`.
pub(crate) fn write_machine_file(dev: &Path, m: &MachineFile) -> Result<(), Failure> {
    let err = |e: String| fail("MachineConfigFailed", e);
    let part = first_fat_partition(dev, true).map_err(err)?;
    let fs = fatfs::FileSystem::new(part, fatfs::FsOptions::new())
        .map_err(|e| err(format!("{}: partition 1: {e}", dev.display())))?;
    {
        let root = fs.root_dir();
        if root.open_dir("groundwork").is_err() {
            root.create_dir("groundwork")
                .map_err(|e| err(format!("creating /groundwork: {e}")))?;
        }
        let mut file = root
            .create_file(MACHINE_FILE)
            .map_err(|e| err(format!("creating /{MACHINE_FILE}: {e}")))?;
        file.truncate()
            .map_err(|e| err(format!("/{MACHINE_FILE}: {e}")))?;
        let text = serde_json::to_vec_pretty(m).map_err(|e| err(e.to_string()))?;
        file.write_all(&text)
            .map_err(|e| err(format!("writing /{MACHINE_FILE}: {e}")))?;
        file.flush()
            .map_err(|e| err(format!("writing /{MACHINE_FILE}: {e}")))?;
    }
    fs.unmount()
        .map_err(|e| err(format!("{}: partition 1: {e}", dev.display())))?;
    let f = OpenOptions::new()
        .write(true)
        .open(dev)
        .map_err(|e| err(format!("{}: {e}", dev.display())))?;
    f.sync_all()
        .map_err(|e| err(format!("{}: {e}", dev.display())))?;
    Ok(())
}

/// Reads the machine config from partition 1 of `dev`.
pub(crate) fn read_machine_file(dev: &Path) -> Result<MachineFile, String> {
    let part = first_fat_partition(dev, false)?;
    // fatfs wants a writable stream type; nothing is written when only reading.
    let fs = fatfs::FileSystem::new(
        ReadOnly(part),
        fatfs::FsOptions::new().update_accessed_date(false),
    )
    .map_err(|e| format!("{}: partition 1: {e}", dev.display()))?;
    let mut text = String::new();
    fs.root_dir()
        .open_file(MACHINE_FILE)
        .map_err(|e| format!("{}: /{MACHINE_FILE}: {e}", dev.display()))?
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: /{MACHINE_FILE}: {e}", dev.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: /{MACHINE_FILE}: {e}", dev.display()))
}

/// A partition opened read-only: writes fail.
struct ReadOnly(Partition);

impl Read for ReadOnly {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}
impl Write for ReadOnly {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("read-only"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl Seek for ReadOnly {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.0.seek(to)
    }
}

/// The devices of `disks` under `dev_root`.
pub(crate) fn device(dev_root: &Path, name: &str) -> PathBuf {
    dev_root.join(name)
}

/// Runs an install: image, then machine config. Returns a summary for the report.
pub(crate) async fn install(
    client: &reqwest::Client,
    dev: &Path,
    url: &str,
    checksum: &str,
    config: &MachineFile,
) -> Result<String, Failure> {
    let t0 = Instant::now();
    let n = write_image(client, url, checksum, dev).await?;
    let secs = t0.elapsed().as_secs_f64();
    write_machine_file(dev, config)?;
    Ok(format!(
        "wrote {n} bytes to {} in {secs:.1}s ({:.1} MB/s), {checksum} verified, machine config written",
        dev.display(),
        n as f64 / secs.max(1e-3) / 1e6
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk image like bootimages' os.img: MBR, partition 1 FAT from 1 MiB.
    fn disk(path: &Path) {
        let size = 8u64 << 20;
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        f.set_len(size).unwrap();
        let mut mbr = [0u8; 512];
        mbr[446 + 4] = 0x0c;
        mbr[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        mbr[446 + 12..446 + 16].copy_from_slice(&(((size >> 9) - 2048) as u32).to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        f.write_all(&mbr).unwrap();
        let part = Partition {
            f,
            start: 1 << 20,
            len: size - (1 << 20),
            pos: 0,
        };
        fatfs::format_volume(part, fatfs::FormatVolumeOptions::new()).unwrap();
    }

    #[test]
    fn machine_file_round_trips_through_the_fat_partition() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("vda");
        disk(&img);
        let m = MachineFile {
            node: "n1".into(),
            url: "http://10.0.0.1:8080".into(),
            mac: "52:54:00:00:00:01".into(),
            credentials: None,
            hostname: Some("n1.lab".into()),
            ..Default::default()
        };
        write_machine_file(&img, &m).unwrap();
        assert_eq!(read_machine_file(&img).unwrap(), m);
        // Written again (a second install): replaced, not appended.
        let m2 = MachineFile {
            hostname: Some("x".into()),
            ..m.clone()
        };
        write_machine_file(&img, &m2).unwrap();
        assert_eq!(read_machine_file(&img).unwrap(), m2);
        // A wiped disk has no partition table (a clear error), and its partition's start, which
        // held the file system and the machine config, is zero too.
        wipe(&img).unwrap();
        let b = std::fs::read(&img).unwrap();
        assert!(
            b[1 << 20..2 << 20].iter().all(|&x| x == 0),
            "partition 1 wiped"
        );
        let e = read_machine_file(&img).unwrap_err();
        assert!(e.contains("no MBR partition table"), "{e}");
        let e = write_machine_file(&img, &m).unwrap_err();
        assert_eq!(e.reason, "MachineConfigFailed");
    }

    #[test]
    fn wipe_zeroes_both_ends_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("sda");
        std::fs::write(&img, vec![0xabu8; 3 << 20]).unwrap();
        assert_eq!(wipe(&img).unwrap(), 3 << 20);
        let b = std::fs::read(&img).unwrap();
        assert!(b[..1 << 20].iter().all(|&x| x == 0));
        assert!(b[2 << 20..].iter().all(|&x| x == 0));
        assert!(b[1 << 20..2 << 20].iter().all(|&x| x == 0xab));
        assert_eq!(
            wipe(&d.path().join("nope")).unwrap_err().reason,
            "DiskNotFound"
        );
    }

    #[test]
    fn target_disk_choices() {
        let inv = Inventory {
            disks: vec![
                Disk {
                    name: "sda".into(),
                    size_bytes: Some(100),
                    ..Default::default()
                },
                Disk {
                    name: "sdb".into(),
                    size_bytes: Some(300),
                    ..Default::default()
                },
                Disk {
                    name: "sr0".into(),
                    size_bytes: Some(0),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(target_disk(None, &inv).unwrap(), "sda");
        assert_eq!(target_disk(Some("largest"), &inv).unwrap(), "sdb");
        assert_eq!(target_disk(Some("smallest"), &inv).unwrap(), "sda");
        assert_eq!(target_disk(Some("/dev/sdb"), &inv).unwrap(), "sdb");
        let e = target_disk(Some("/dev/nvme0n1"), &inv).unwrap_err();
        assert_eq!(e.reason, "DiskNotFound");
        assert!(e.message.contains("sda, sdb"), "{}", e.message);
    }
}
