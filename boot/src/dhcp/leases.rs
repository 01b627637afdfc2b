//! The lease table and its log on disk.
//!
//! In memory: leases by MAC and by address, plus short-lived offers. On disk: an append-only
//! text log, one line per bound (or released) lease, `MAC IP EXPIRES`; the newest line for a
//! MAC wins. A lease is on disk (fdatasync'd) before its ACK leaves the server, so a restart
//! never hands a bound address to another client. The log is rewritten (to a temporary file,
//! fsync, rename) when it has grown to several times the live leases.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

pub type Mac = [u8; 6];

pub fn mac_text(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(s: &str) -> Option<Mac> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        m[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(m)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    /// Unix seconds; 0 = released.
    pub expires: u64,
}

/// One line of the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub mac: Mac,
    pub ip: Ipv4Addr,
    pub expires: u64,
}

impl Record {
    pub fn line(&self) -> String {
        format!("{} {} {}\n", mac_text(&self.mac), self.ip, self.expires)
    }
    pub fn parse(line: &str) -> Option<Record> {
        let mut it = line.split_whitespace();
        let mac = parse_mac(it.next()?)?;
        let ip = it.next()?.parse().ok()?;
        let expires = it.next()?.parse().ok()?;
        if it.next().is_some() {
            return None;
        }
        Some(Record { mac, ip, expires })
    }
}

/// Bound leases and pending offers.
#[derive(Default)]
pub struct LeaseTable {
    pub by_mac: HashMap<Mac, Lease>,
    pub by_ip: HashMap<Ipv4Addr, Mac>,
    /// Offers not yet requested: MAC → (address, offer expiry).
    pub offers: HashMap<Mac, (Ipv4Addr, u64)>,
    pub offered_ips: HashMap<Ipv4Addr, Mac>,
}

impl LeaseTable {
    pub fn apply(&mut self, r: &Record) {
        if let Some(old) = self.by_mac.get(&r.mac)
            && self.by_ip.get(&old.ip) == Some(&r.mac)
        {
            self.by_ip.remove(&old.ip);
        }
        if r.expires == 0 {
            self.by_mac.remove(&r.mac);
            return;
        }
        // An address now bound to this MAC is no longer anyone else's.
        if let Some(prev) = self.by_ip.insert(r.ip, r.mac)
            && prev != r.mac
        {
            self.by_mac.remove(&prev);
        }
        self.by_mac.insert(
            r.mac,
            Lease {
                ip: r.ip,
                expires: r.expires,
            },
        );
    }

    /// Who holds `ip` (bound and unexpired, or offered and the offer still open), if anyone.
    pub fn holder(&self, ip: Ipv4Addr, now: u64) -> Option<Mac> {
        if let Some(m) = self.by_ip.get(&ip)
            && self.by_mac.get(m).is_some_and(|l| l.expires > now)
        {
            return Some(*m);
        }
        match self.offered_ips.get(&ip) {
            Some(m) if self.offers.get(m).is_some_and(|o| o.0 == ip && o.1 > now) => Some(*m),
            _ => None,
        }
    }

    pub fn offer(&mut self, mac: Mac, ip: Ipv4Addr, until: u64) {
        if let Some((old, _)) = self.offers.insert(mac, (ip, until)) {
            self.offered_ips.remove(&old);
        }
        self.offered_ips.insert(ip, mac);
    }

    pub fn clear_offer(&mut self, mac: &Mac) {
        if let Some((ip, _)) = self.offers.remove(mac) {
            self.offered_ips.remove(&ip);
        }
    }
}

/// The log file.
pub struct LeaseLog {
    path: PathBuf,
    file: File,
    lines: usize,
}

impl LeaseLog {
    /// Opens (creating) the log and returns the records in it. Lines that do not parse (a torn
    /// last write after a crash) are skipped and counted.
    pub fn open(dir: &Path) -> std::io::Result<(LeaseLog, Vec<Record>, usize)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("dhcp-leases.log");
        let mut records = Vec::new();
        let mut bad = 0;
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else {
                    bad += 1;
                    continue;
                };
                match Record::parse(&line) {
                    Some(r) => records.push(r),
                    None if line.trim().is_empty() => {}
                    None => bad += 1,
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let lines = records.len();
        Ok((LeaseLog { path, file, lines }, records, bad))
    }

    /// Appends and makes durable (one fdatasync for the whole batch).
    pub fn append(&mut self, records: &[Record]) -> std::io::Result<()> {
        let mut buf = String::with_capacity(records.len() * 48);
        for r in records {
            buf.push_str(&r.line());
        }
        self.file.write_all(buf.as_bytes())?;
        self.file.sync_data()?;
        self.lines += records.len();
        Ok(())
    }

    pub fn lines(&self) -> usize {
        self.lines
    }

    /// Rewrites the log with only `live` records (atomically: temp file, fsync, rename).
    pub fn compact(&mut self, live: &[Record]) -> std::io::Result<()> {
        let tmp = self.path.with_extension("log.tmp");
        {
            let mut f = File::create(&tmp)?;
            let mut buf = String::new();
            for r in live {
                buf.push_str(&r.line());
            }
            f.write_all(buf.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.lines = live.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_round_trip_skips_torn_lines_and_compacts() {
        let dir = tempfile::tempdir().unwrap();
        let m1 = [0x52, 0x54, 0, 0, 0, 1];
        let m2 = [0x52, 0x54, 0, 0, 0, 2];
        {
            let (mut log, recs, bad) = LeaseLog::open(dir.path()).unwrap();
            assert!(recs.is_empty() && bad == 0);
            log.append(&[
                Record {
                    mac: m1,
                    ip: "10.0.0.10".parse().unwrap(),
                    expires: 100,
                },
                Record {
                    mac: m2,
                    ip: "10.0.0.11".parse().unwrap(),
                    expires: 100,
                },
                Record {
                    mac: m1,
                    ip: "10.0.0.10".parse().unwrap(),
                    expires: 0,
                },
            ])
            .unwrap();
        }
        // A crash mid-line.
        let p = dir.path().join("dhcp-leases.log");
        let mut text = std::fs::read_to_string(&p).unwrap();
        text.push_str("52:54:00:00:00:03 10.0.");
        std::fs::write(&p, text).unwrap();
        let (mut log, recs, bad) = LeaseLog::open(dir.path()).unwrap();
        assert_eq!((recs.len(), bad), (3, 1));
        let mut t = LeaseTable::default();
        for r in &recs {
            t.apply(r);
        }
        assert!(!t.by_mac.contains_key(&m1), "released");
        assert_eq!(t.holder("10.0.0.11".parse().unwrap(), 50), Some(m2));
        assert_eq!(t.holder("10.0.0.11".parse().unwrap(), 150), None, "expired");
        log.compact(&[recs[1]]).unwrap();
        let (_, recs, bad) = LeaseLog::open(dir.path()).unwrap();
        assert_eq!((recs.len(), bad), (1, 0));
    }

    #[test]
    fn macs_parse_and_print() {
        let m = parse_mac("52:54:00:AB:cd:01").unwrap();
        assert_eq!(mac_text(&m), "52:54:00:ab:cd:01");
        assert!(parse_mac("52:54:00:ab:cd").is_none());
        assert!(parse_mac("zz:54:00:ab:cd:01").is_none());
    }
}
