//! The machine config as a cloud-init NoCloud seed: a small FAT partition labelled `CIDATA`
//! added at the end of the disk after the image is written, holding `meta-data`, `user-data`
//! (cloud-config) and `groundwork/machine.json` (the node agent's join material).
//!
//! This is what cloud-init's NoCloud data source documents for a local seed, so a standard
//! cloud image needs nothing of Groundwork's: cloud-init sets the host name, users, keys,
//! files and units, and writes `/var/lib/groundwork/machine.json` (mode 0600) for the node
//! agent. An image without cloud-init (bootimages' small one) has the node agent read the same
//! partition and apply the config itself.
//!
//! The partition goes into the image's own table: a free GPT entry (the table is first grown
//! to the disk, moving the backup header to the disk's end, as `sgdisk -e` does), or a free MBR
//! slot. GPT is read and written with `gptman`; MBR is four 16-byte entries, done here.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use groundwork_types::agent::MachineFile;

use crate::install::{Failure, fail};

/// The seed partition's size: FAT12, room for a few hundred KiB of files.
pub(crate) const SEED_BYTES: u64 = 4 << 20;
/// The volume label cloud-init looks for.
const LABEL: &[u8; 11] = b"CIDATA     ";
/// Where, in the seed and on the installed system, the node agent's config is.
pub(crate) const SEED_MACHINE_FILE: &str = "groundwork/machine.json";
pub(crate) const INSTALLED_MACHINE_FILE: &str = "/var/lib/groundwork/machine.json";
/// Microsoft basic data, as GPT stores the GUID EBD0A0A2-B9E5-4433-87C0-68B6B72699C7.
const BASIC_DATA: [u8; 16] = [
    0xa2, 0xa0, 0xd0, 0xeb, 0xe5, 0xb9, 0x33, 0x44, 0x87, 0xc0, 0x68, 0xb6, 0xb7, 0x26, 0x99, 0xc7,
];

/// The three files of a NoCloud seed.
#[derive(Debug, PartialEq)]
pub(crate) struct Seed {
    pub meta_data: String,
    pub user_data: String,
    pub machine: String,
}

/// One partition: byte offset and length.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Span {
    pub start: u64,
    pub len: u64,
}

/// The seed for a machine config. `instance_id` must change at every install: cloud-init runs
/// its once-per-instance modules (users, files) again only for a new one. `extra` is the
/// Profile's `userData`: it becomes a second MIME part, merged under Groundwork's (its keys
/// win, lists are joined).
pub(crate) fn render(m: &MachineFile, instance_id: &str, extra: Option<&str>) -> Seed {
    use serde_json::{Value, json};
    let machine = serde_json::to_string_pretty(m).unwrap_or_default();
    let hostname = m.hostname.clone().unwrap_or_else(|| m.node.clone());
    let short = hostname.split('.').next().unwrap_or(&hostname).to_string();
    let mut cfg = serde_json::Map::new();
    cfg.insert("hostname".into(), json!(short));
    if hostname.contains('.') {
        cfg.insert("fqdn".into(), json!(hostname));
    }
    cfg.insert("preserve_hostname".into(), json!(false));
    cfg.insert("ssh_pwauth".into(), json!(false));
    let users: Vec<Value> = m
        .users
        .iter()
        .map(|u| {
            let mut x = json!({
                "name": u.name,
                "lock_passwd": true,
                "shell": "/bin/bash",
                "ssh_authorized_keys": u.ssh_authorized_keys,
            });
            if !u.groups.is_empty() {
                x["groups"] = json!(u.groups.join(","));
            }
            if u.sudo {
                x["sudo"] = json!("ALL=(ALL) NOPASSWD:ALL");
            }
            x
        })
        .collect();
    if !users.is_empty() {
        cfg.insert("users".into(), Value::Array(users));
    }
    let mut files: Vec<Value> = m
        .files
        .iter()
        .map(|f| json!({"path": f.path, "content": f.content, "permissions": f.mode.clone().unwrap_or_else(|| "0644".into())}))
        .collect();
    let mut runcmd = Vec::new();
    for u in &m.units {
        if let Some(c) = &u.content {
            files.push(json!({"path": format!("/etc/systemd/system/{}", u.name), "content": c, "permissions": "0644"}));
        }
        if u.enabled {
            runcmd.push(json!(["systemctl", "enable", "--now", u.name]));
        }
    }
    if !runcmd.is_empty() {
        runcmd.insert(0, json!(["systemctl", "daemon-reload"]));
        cfg.insert("runcmd".into(), Value::Array(runcmd));
    }
    files.push(json!({"path": INSTALLED_MACHINE_FILE, "content": machine, "permissions": "0600"}));
    cfg.insert("write_files".into(), Value::Array(files));
    let meta_data = format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        json!(instance_id),
        json!(short)
    );
    let ours = |merge: bool| {
        let mut c = cfg.clone();
        if merge {
            c.insert(
                "merge_how".into(),
                json!([
                    {"name": "list", "settings": ["append"]},
                    {"name": "dict", "settings": ["no_replace", "recurse_list"]}
                ]),
            );
        }
        // JSON is YAML: no YAML writer, and no quoting surprises in keys or file contents.
        format!(
            "#cloud-config\n{}\n",
            serde_json::to_string_pretty(&Value::Object(c)).unwrap_or_default()
        )
    };
    let user_data = match extra.map(str::trim_start).filter(|x| !x.is_empty()) {
        None => ours(false),
        Some(extra) => {
            let boundary = format!("==groundwork-{}==", &hex_digest(extra.as_bytes())[..24]);
            format!(
                "Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n\
                 --{boundary}\nContent-Type: {}; charset=\"utf-8\"\nMIME-Version: 1.0\n\
                 Content-Disposition: attachment; filename=\"profile\"\n\n{extra}\n\
                 --{boundary}\nContent-Type: text/cloud-config; charset=\"utf-8\"\nMIME-Version: 1.0\n\
                 Content-Disposition: attachment; filename=\"groundwork.cfg\"\n\n{}\
                 --{boundary}--\n",
                user_data_type(extra).unwrap_or("text/cloud-config"),
                ours(true)
            )
        }
    };
    Seed {
        meta_data,
        user_data,
        machine,
    }
}

/// The MIME type of a user-data document, from its first line (cloud-init's own rule).
pub fn user_data_type(text: &str) -> Option<&'static str> {
    let first = text.trim_start().lines().next().unwrap_or("");
    [
        ("#cloud-config", "text/cloud-config"),
        ("#!", "text/x-shellscript"),
        ("#cloud-boothook", "text/cloud-boothook"),
        ("#include", "text/x-include-url"),
        ("#part-handler", "text/part-handler"),
    ]
    .into_iter()
    .find(|(p, _)| first.starts_with(p))
    .map(|(_, t)| t)
}

fn hex_digest(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The partition table of a disk.
enum Table {
    Mbr(Box<[u8; 512]>),
    Gpt(gptman::GPT),
}

fn read_table(f: &mut std::fs::File) -> Result<Table, String> {
    let mut mbr = [0u8; 512];
    f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    f.read_exact(&mut mbr)
        .map_err(|e| format!("reading sector 0: {e}"))?;
    if mbr[510..512] != [0x55, 0xaa] {
        return Err("no partition table (neither MBR nor GPT)".into());
    }
    if (0..4).any(|i| mbr[446 + 16 * i + 4] == 0xee) {
        let gpt = gptman::GPT::find_from(f).map_err(|e| format!("GPT: {e}"))?;
        return Ok(Table::Gpt(gpt));
    }
    Ok(Table::Mbr(Box::new(mbr)))
}

fn mbr_entry(mbr: &[u8; 512], i: usize) -> (u8, u64, u64) {
    let e = &mbr[446 + 16 * i..462 + 16 * i];
    let lba = u32::from_le_bytes([e[8], e[9], e[10], e[11]]) as u64;
    let n = u32::from_le_bytes([e[12], e[13], e[14], e[15]]) as u64;
    (e[4], lba, n)
}

/// Every partition of the disk (MBR primary entries, or GPT entries).
pub(crate) fn partitions(dev: &Path) -> Result<Vec<Span>, String> {
    let mut f = std::fs::File::open(dev).map_err(|e| format!("{}: {e}", dev.display()))?;
    let size = f.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    let spans = match read_table(&mut f).map_err(|e| format!("{}: {e}", dev.display()))? {
        Table::Mbr(mbr) => (0..4)
            .map(|i| mbr_entry(&mbr, i))
            .filter(|(t, lba, n)| *t != 0 && *lba > 0 && *n > 0)
            .map(|(_, lba, n)| Span {
                start: lba * 512,
                len: n * 512,
            })
            .collect(),
        Table::Gpt(gpt) => gpt
            .iter()
            .filter(|(_, p)| p.is_used())
            .map(|(_, p)| Span {
                start: p.starting_lba * gpt.sector_size,
                len: (p.ending_lba + 1 - p.starting_lba) * gpt.sector_size,
            })
            .collect::<Vec<_>>(),
    };
    Ok(spans
        .into_iter()
        .filter(|s| s.start < size)
        .map(|s| Span {
            start: s.start,
            len: s.len.min(size - s.start),
        })
        .collect())
}

/// Adds the seed partition at the end of the disk; returns where it is.
fn add_partition(f: &mut std::fs::File) -> Result<Span, String> {
    let size = f.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    match read_table(f)? {
        Table::Mbr(mut mbr) => {
            let slot = (0..4)
                .find(|&i| mbr_entry(&mbr, i).0 == 0)
                .ok_or("all four MBR partition slots are used")?;
            let used_end = (0..4)
                .map(|i| mbr_entry(&mbr, i))
                .filter(|e| e.0 != 0)
                .map(|(_, lba, n)| lba + n)
                .max()
                .unwrap_or(1);
            // MBR addresses 2 TiB at most.
            let end = (size / 512).min(u32::MAX as u64);
            let n = SEED_BYTES / 512;
            let start = end.saturating_sub(n) / 2048 * 2048;
            if start < used_end.max(2048) {
                return Err(format!(
                    "no room for the {} MiB seed partition after the image's partitions (disk {} MiB)",
                    SEED_BYTES >> 20,
                    size >> 20
                ));
            }
            let e = &mut mbr[446 + 16 * slot..462 + 16 * slot];
            e.fill(0);
            // CHS fields unused (LBA only), as every current tool writes them.
            e[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
            e[4] = 0x0c;
            e[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
            e[8..12].copy_from_slice(&(start as u32).to_le_bytes());
            e[12..16].copy_from_slice(&(n as u32).to_le_bytes());
            f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
            f.write_all(&mbr[..]).map_err(|e| e.to_string())?;
            Ok(Span {
                start: start * 512,
                len: n * 512,
            })
        }
        Table::Gpt(mut gpt) => {
            let ss = gpt.sector_size;
            // The image's table ends where the image did: grow it to the whole disk.
            gpt.header
                .update_from(f, ss)
                .map_err(|e| format!("GPT: {e}"))?;
            let slot = (1..=gpt.header.number_of_partition_entries)
                .find(|&i| gpt[i].is_unused())
                .ok_or("the GPT has no free partition entry")?;
            let n = SEED_BYTES / ss;
            let start = gpt.find_last_place(n).ok_or_else(|| {
                format!(
                    "no room for the {} MiB seed partition after the image's partitions (disk {} MiB)",
                    SEED_BYTES >> 20,
                    size >> 20
                )
            })?;
            let mut guid = [0u8; 16];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut guid)
                .map_err(|_| "no randomness for the partition GUID")?;
            guid[7] = (guid[7] & 0x0f) | 0x40; // version 4, stored little-endian
            guid[8] = (guid[8] & 0x3f) | 0x80;
            gpt[slot] = gptman::GPTPartitionEntry {
                partition_type_guid: BASIC_DATA,
                unique_partition_guid: guid,
                starting_lba: start,
                ending_lba: start + n - 1,
                attribute_bits: 0,
                partition_name: "cidata".into(),
            };
            gpt.write_into(f).map_err(|e| format!("GPT: {e}"))?;
            // The protective MBR's entry covers the whole disk too.
            let mut mbr = [0u8; 512];
            f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
            f.read_exact(&mut mbr).map_err(|e| e.to_string())?;
            if let Some(i) = (0..4).find(|&i| mbr_entry(&mbr, i).0 == 0xee) {
                let sectors = (size / 512 - 1).min(u32::MAX as u64) as u32;
                mbr[446 + 16 * i + 12..446 + 16 * i + 16].copy_from_slice(&sectors.to_le_bytes());
                f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
                f.write_all(&mbr).map_err(|e| e.to_string())?;
            }
            Ok(Span {
                start: start * ss,
                len: n * ss,
            })
        }
    }
}

/// Adds the seed partition to the image just written on `dev` and fills it.
pub(crate) fn write(dev: &Path, seed: &Seed) -> Result<(), Failure> {
    let err = |e: String| fail("MachineConfigFailed", format!("{}: {e}", dev.display()));
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| err(e.to_string()))?;
    // An image may bring its own (empty) seed partition, and a rewritten table may still
    // list the last install's: either is reused.
    let span = match find(dev).map_err(err)? {
        Some(s) if s.len >= SEED_BYTES / 4 => s,
        _ => add_partition(&mut f).map_err(err)?,
    };
    {
        let mut part = crate::install::Partition::new(
            f.try_clone().map_err(|e| err(e.to_string()))?,
            span.start,
            span.len,
        );
        // A previous install's seed may still be there: the format starts it afresh.
        fatfs::format_volume(
            &mut part,
            fatfs::FormatVolumeOptions::new().volume_label(*LABEL),
        )
        .map_err(|e| err(format!("formatting the seed partition: {e}")))?;
        let fs = fatfs::FileSystem::new(part, fatfs::FsOptions::new())
            .map_err(|e| err(format!("the seed partition: {e}")))?;
        {
            let root = fs.root_dir();
            root.create_dir("groundwork")
                .map_err(|e| err(format!("creating /groundwork: {e}")))?;
            for (name, text) in [
                ("meta-data", &seed.meta_data),
                ("user-data", &seed.user_data),
                (SEED_MACHINE_FILE, &seed.machine),
            ] {
                let mut file = root
                    .create_file(name)
                    .map_err(|e| err(format!("creating /{name}: {e}")))?;
                file.truncate().map_err(|e| err(format!("/{name}: {e}")))?;
                file.write_all(text.as_bytes())
                    .and_then(|()| file.flush())
                    .map_err(|e| err(format!("writing /{name}: {e}")))?;
            }
        }
        fs.unmount()
            .map_err(|e| err(format!("the seed partition: {e}")))?;
    }
    f.sync_all().map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// The disk's seed partition: the first FAT partition labelled CIDATA.
fn find(dev: &Path) -> Result<Option<Span>, String> {
    for s in partitions(dev)? {
        let f = std::fs::File::open(dev).map_err(|e| format!("{}: {e}", dev.display()))?;
        let part = crate::install::ReadOnly(crate::install::Partition::new(f, s.start, s.len));
        let opts = fatfs::FsOptions::new().update_accessed_date(false);
        if fatfs::FileSystem::new(part, opts)
            .is_ok_and(|fs| fs.volume_label_as_bytes() == LABEL.trim_ascii_end())
        {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

/// Reads the node agent's config from the disk's seed partition.
pub(crate) fn read(dev: &Path) -> Result<MachineFile, String> {
    let s = find(dev)?.ok_or_else(|| format!("{}: no CIDATA seed partition", dev.display()))?;
    let f = std::fs::File::open(dev).map_err(|e| format!("{}: {e}", dev.display()))?;
    let part = crate::install::ReadOnly(crate::install::Partition::new(f, s.start, s.len));
    let fs = fatfs::FileSystem::new(part, fatfs::FsOptions::new().update_accessed_date(false))
        .map_err(|e| format!("{}: CIDATA: {e}", dev.display()))?;
    let mut text = String::new();
    fs.root_dir()
        .open_file(SEED_MACHINE_FILE)
        .and_then(|mut file| file.read_to_string(&mut text))
        .map_err(|e| format!("{}: CIDATA/{SEED_MACHINE_FILE}: {e}", dev.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{}: CIDATA/{SEED_MACHINE_FILE}: {e}", dev.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use groundwork_types::{File, Unit, User};

    fn machine() -> MachineFile {
        MachineFile {
            node: "n1".into(),
            url: "http://10.0.0.1:8080".into(),
            mac: "52:54:00:00:00:01".into(),
            hostname: Some("n1.lab".into()),
            users: vec![User {
                name: "ops".into(),
                ssh_authorized_keys: vec!["ssh-ed25519 AAAA ops".into()],
                groups: vec!["adm".into()],
                sudo: true,
            }],
            files: vec![File {
                path: "/etc/motd".into(),
                content: "hi: \"there\"\n".into(),
                mode: None,
            }],
            units: vec![Unit {
                name: "x.service".into(),
                content: Some("[Service]\nExecStart=/bin/true\n".into()),
                enabled: true,
            }],
            ..Default::default()
        }
    }

    /// A sparse disk of `mib` MiB with the given partition table made by sfdisk's script
    /// format, as images are made.
    fn disk(dir: &Path, mib: u64, script: &str) -> std::path::PathBuf {
        let p = dir.join("disk.img");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(mib << 20).unwrap();
        let mut c = std::process::Command::new("sfdisk")
            .args(["-q", "--no-reread", "--no-tell-kernel"])
            .arg(&p)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("sfdisk (fdisk)");
        c.stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(c.wait().unwrap().success());
        p
    }

    fn sfdisk_dump(p: &Path) -> String {
        let o = std::process::Command::new("sfdisk")
            .arg("-d")
            .arg(p)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }

    #[test]
    fn cloud_config_is_json_yaml_with_the_machine_file_0600() {
        let s = render(&machine(), "n1-t1", None);
        assert_eq!(
            s.meta_data,
            "instance-id: \"n1-t1\"\nlocal-hostname: \"n1\"\n"
        );
        let body = s.user_data.strip_prefix("#cloud-config\n").unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["hostname"], "n1");
        assert_eq!(v["fqdn"], "n1.lab");
        assert_eq!(v["users"][0]["sudo"], "ALL=(ALL) NOPASSWD:ALL");
        assert_eq!(v["users"][0]["groups"], "adm");
        let files = v["write_files"].as_array().unwrap();
        assert_eq!(files[0]["content"], "hi: \"there\"\n");
        assert_eq!(files[1]["path"], "/etc/systemd/system/x.service");
        let mf = files.last().unwrap();
        assert_eq!(mf["path"], INSTALLED_MACHINE_FILE);
        assert_eq!(mf["permissions"], "0600");
        let back: MachineFile = serde_json::from_str(mf["content"].as_str().unwrap()).unwrap();
        assert_eq!(back, machine());
        assert_eq!(
            v["runcmd"][1],
            serde_json::json!(["systemctl", "enable", "--now", "x.service"])
        );
    }

    #[test]
    fn profile_user_data_is_a_second_mime_part_under_ours() {
        let s = render(&machine(), "i", Some("#!/bin/sh\necho hi\n"));
        assert!(
            s.user_data
                .starts_with("Content-Type: multipart/mixed; boundary=\"==groundwork-")
        );
        let theirs = s.user_data.find("text/x-shellscript").unwrap();
        let ours = s.user_data.find("text/cloud-config").unwrap();
        assert!(theirs < ours, "{}", s.user_data);
        assert!(s.user_data.contains("\"merge_how\""));
        assert!(s.user_data.trim_end().ends_with("==--"));
        assert_eq!(
            user_data_type("#cloud-config\nx: 1"),
            Some("text/cloud-config")
        );
        assert_eq!(user_data_type("hello"), None);
    }

    #[test]
    fn gpt_image_on_a_bigger_disk_gets_the_seed_at_the_disk_end() {
        let d = tempfile::tempdir().unwrap();
        // A 64 MiB "image" (ESP + root) on a 256 MiB disk: the image's backup header sits at
        // 64 MiB, as after `dd` of a smaller image.
        let img = disk(
            d.path(),
            64,
            "label: gpt\nsize=8MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp\ntype=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n",
        );
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        let m = machine();
        let image_start = std::fs::read(&img).unwrap()[..1 << 20].to_vec();
        write(&img, &render(&m, "i1", None)).unwrap();
        let dump = sfdisk_dump(&img);
        assert!(dump.contains("last-lba: 524254"), "{dump}");
        let seed_line = dump
            .lines()
            .find(|l| l.contains("name=\"cidata\""))
            .unwrap();
        assert!(
            seed_line.contains("start=      514048, size=        8192"),
            "{dump}"
        );
        let v = std::process::Command::new("sfdisk")
            .arg("-V")
            .arg(&img)
            .output()
            .unwrap();
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
        assert!(
            seed_line.contains("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"),
            "{dump}"
        );
        // The image's own partitions are untouched.
        assert!(dump.contains("size=       16384, type=C12A7328"), "{dump}");
        assert_eq!(read(&img).unwrap(), m);
        // blkid, as cloud-init's ds-identify does, finds the label.
        let o = std::process::Command::new("blkid")
            .args([
                "-p",
                "-O",
                &(514048u64 * 512).to_string(),
                "-s",
                "LABEL",
                "-o",
                "value",
            ])
            .arg(&img)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "CIDATA");
        // A second install (same image written again) replaces the seed.
        let m2 = MachineFile {
            hostname: Some("other".into()),
            ..m.clone()
        };
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .write_all(&image_start)
            .unwrap();
        write(&img, &render(&m2, "i2", None)).unwrap();
        assert_eq!(read(&img).unwrap(), m2);
        assert_eq!(partitions(&img).unwrap().len(), 3);
        // Written again over a table that lists the seed: reused, not added twice.
        write(&img, &render(&m, "i3", None)).unwrap();
        assert_eq!(partitions(&img).unwrap().len(), 3);
        assert_eq!(read(&img).unwrap().hostname.as_deref(), Some("n1.lab"));
    }

    #[test]
    fn mbr_image_gets_a_free_slot_and_a_full_table_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let img = disk(d.path(), 32, "label: dos\nsize=16MiB, type=c, bootable\n");
        write(&img, &render(&machine(), "i", None)).unwrap();
        let dump = sfdisk_dump(&img);
        assert!(
            dump.contains("start=       57344, size=        8192, type=c"),
            "{dump}"
        );
        assert_eq!(read(&img).unwrap().node, "n1");
        assert_eq!(partitions(&img).unwrap().len(), 2);

        let full = disk(
            d.path(),
            32,
            "label: dos\nsize=4MiB\nsize=4MiB\nsize=4MiB\nsize=4MiB\n",
        );
        let e = write(&full, &render(&machine(), "i", None)).unwrap_err();
        assert_eq!(e.reason, "MachineConfigFailed");
        assert!(
            e.message.contains("all four MBR partition slots"),
            "{}",
            e.message
        );
        let tight = disk(d.path(), 16, "label: dos\ntype=83\n");
        let e = write(&tight, &render(&machine(), "i", None)).unwrap_err();
        assert!(
            e.message.contains("no room for the 4 MiB seed"),
            "{}",
            e.message
        );
        let blank = d.path().join("blank");
        std::fs::write(&blank, vec![0u8; 1 << 20]).unwrap();
        let e = write(&blank, &render(&machine(), "i", None)).unwrap_err();
        assert!(e.message.contains("no partition table"), "{}", e.message);
        assert!(read(&blank).unwrap_err().contains("no partition table"));
    }
}
