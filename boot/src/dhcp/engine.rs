//! The DHCPv4 decision logic (RFC 2131/2132, PXE per RFC 4578, relay agent information per
//! RFC 3046): a packet in, at most one reply out, and the lease record to make durable
//! before that reply is sent. No I/O, so every case is unit-tested with packets.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{
    self, DhcpOption, DhcpOptions, Message, MessageType, Opcode, OptionCode, UnknownOption,
};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use ipnet::Ipv4Net;

use super::leases::{LeaseTable, Mac, Record, mac_text};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The DHCP server of the boot network: addresses and boot options.
    Authoritative,
    /// Beside another DHCP server: boot options only, to PXE clients (ports 67 and 4011).
    Proxy,
}

/// Where first-stage boot files come from.
#[derive(Clone, Debug, PartialEq)]
pub struct BootFiles {
    pub tftp_server: Ipv4Addr,
    /// Legacy BIOS PXE (client architecture 0): e.g. `undionly.kpxe`.
    pub bios: String,
    /// UEFI PXE (architectures 6, 7, 9): e.g. `ipxe.efi`.
    pub efi: String,
    /// iPXE (user class "iPXE") is sent here instead: e.g. `http://10.0.0.1:8080/boot.ipxe`.
    pub ipxe_url: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub mode: Mode,
    pub server_ip: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub pool_start: Ipv4Addr,
    pub pool_end: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub ntp: Vec<Ipv4Addr>,
    pub lease_secs: u32,
    /// How long an offered address is held for the client's REQUEST.
    pub offer_secs: u64,
    pub boot: Option<BootFiles>,
    /// Fixed addresses for known MACs (outside or inside the pool).
    pub reservations: HashMap<Mac, Ipv4Addr>,
}

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        if !self.subnet.contains(&self.pool_start) || !self.subnet.contains(&self.pool_end) {
            return Err(format!(
                "pool {}-{} is not inside {}",
                self.pool_start, self.pool_end, self.subnet
            ));
        }
        if u32::from(self.pool_start) > u32::from(self.pool_end) {
            return Err(format!(
                "pool start {} is after its end {}",
                self.pool_start, self.pool_end
            ));
        }
        if self.lease_secs < 60 {
            return Err("lease time must be at least 60 s".into());
        }
        Ok(())
    }
}

/// Where a reply goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// 255.255.255.255:68 on the server's interface.
    Broadcast,
    Unicast(SocketAddrV4),
}

#[derive(Debug)]
pub struct Reply {
    pub kind: MessageType,
    pub bytes: Vec<u8>,
    pub dest: Dest,
    /// Make this durable before sending (ACKs of leases).
    pub persist: Option<Record>,
    pub mac: Mac,
    pub xid: u32,
}

/// Why a packet got no answer (counted, logged at debug).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    Malformed,
    NotARequest,
    NoMessageType,
    /// A REQUEST for another server's offer, or a proxy-mode packet that is not PXE.
    NotForUs,
    PoolExhausted,
    Unsupported,
}

pub struct Engine {
    pub cfg: Config,
    pub table: LeaseTable,
    declined: HashMap<Ipv4Addr, u64>,
    cursor: u32,
    reserved: HashMap<Ipv4Addr, Mac>,
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Engine {
    pub fn new(cfg: Config, records: &[Record]) -> Engine {
        let mut table = LeaseTable::default();
        for r in records {
            table.apply(r);
        }
        let reserved = cfg.reservations.iter().map(|(m, ip)| (*ip, *m)).collect();
        let cursor = u32::from(cfg.pool_start);
        Engine {
            cfg,
            table,
            declined: HashMap::new(),
            cursor,
            reserved,
        }
    }

    /// Replaces the configuration (a changed boot network), keeping every lease.
    pub fn reconfigure(&mut self, cfg: Config) {
        self.reserved = cfg.reservations.iter().map(|(m, ip)| (*ip, *m)).collect();
        if !(u32::from(cfg.pool_start)..=u32::from(cfg.pool_end)).contains(&self.cursor) {
            self.cursor = u32::from(cfg.pool_start);
        }
        self.cfg = cfg;
    }

    fn usable_by(&self, ip: Ipv4Addr, mac: &Mac, now: u64) -> bool {
        if !self.cfg.subnet.contains(&ip) || ip == self.cfg.server_ip {
            return false;
        }
        if self.declined.get(&ip).is_some_and(|until| *until > now) {
            return false;
        }
        if let Some(owner) = self.reserved.get(&ip)
            && owner != mac
        {
            return false;
        }
        let in_pool = (u32::from(self.cfg.pool_start)..=u32::from(self.cfg.pool_end))
            .contains(&u32::from(ip));
        if !in_pool && self.cfg.reservations.get(mac) != Some(&ip) {
            return false;
        }
        self.table.holder(ip, now).is_none_or(|h| h == *mac)
    }

    fn allocate(&mut self, mac: &Mac, requested: Option<Ipv4Addr>, now: u64) -> Option<Ipv4Addr> {
        if let Some(ip) = self.cfg.reservations.get(mac).copied() {
            return self.usable_by(ip, mac, now).then_some(ip);
        }
        let previous = self
            .table
            .offers
            .get(mac)
            .map(|o| o.0)
            .or_else(|| self.table.by_mac.get(mac).map(|l| l.ip));
        for ip in previous.into_iter().chain(requested) {
            if self.usable_by(ip, mac, now) {
                return Some(ip);
            }
        }
        let (start, end) = (u32::from(self.cfg.pool_start), u32::from(self.cfg.pool_end));
        let size = end - start + 1;
        for i in 0..size {
            let n = start + (self.cursor.wrapping_sub(start).wrapping_add(i)) % size;
            let ip = Ipv4Addr::from(n);
            if self.usable_by(ip, mac, now) {
                self.cursor = n.wrapping_add(1);
                return Some(ip);
            }
        }
        None
    }

    /// Handles one packet that arrived on `port` (67, or 4011 in proxy mode).
    pub fn handle(&mut self, pkt: &[u8], port: u16) -> Result<Reply, Drop> {
        self.handle_at(pkt, port, now_secs())
    }

    pub fn handle_at(&mut self, pkt: &[u8], port: u16, now: u64) -> Result<Reply, Drop> {
        let req = decode(pkt).ok_or(Drop::Malformed)?;
        if req.opcode() != Opcode::BootRequest {
            return Err(Drop::NotARequest);
        }
        if req.hlen() != 6 || req.chaddr().len() < 6 {
            return Err(Drop::Unsupported);
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&req.chaddr()[..6]);
        let mtype = req.opts().msg_type().ok_or(Drop::NoMessageType)?;
        let requested = match req.opts().get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
            _ => None,
        };
        let server_id = match req.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        };
        let pxe = is_pxe(&req);
        if self.cfg.mode == Mode::Proxy {
            if !pxe {
                return Err(Drop::NotForUs);
            }
            return match (mtype, port) {
                (MessageType::Discover, 67) => {
                    Ok(self.reply(&req, mac, MessageType::Offer, None, None, now))
                }
                (MessageType::Request, 4011) | (MessageType::Inform, _) => {
                    Ok(self.reply(&req, mac, MessageType::Ack, None, None, now))
                }
                _ => Err(Drop::NotForUs),
            };
        }
        match mtype {
            MessageType::Discover => {
                let ip = self
                    .allocate(&mac, requested, now)
                    .ok_or(Drop::PoolExhausted)?;
                self.table.offer(mac, ip, now + self.cfg.offer_secs);
                Ok(self.reply(&req, mac, MessageType::Offer, Some(ip), None, now))
            }
            MessageType::Request => {
                if let Some(sid) = server_id
                    && sid != self.cfg.server_ip
                {
                    // The client took another server's offer.
                    self.table.clear_offer(&mac);
                    return Err(Drop::NotForUs);
                }
                let ip = requested
                    .or_else(|| (!req.ciaddr().is_unspecified()).then(|| req.ciaddr()))
                    .ok_or(Drop::Malformed)?;
                let wanted = match self.cfg.reservations.get(&mac) {
                    Some(r) => *r == ip,
                    None => true,
                };
                if wanted && self.usable_by(ip, &mac, now) {
                    let rec = Record {
                        mac,
                        ip,
                        expires: now + u64::from(self.cfg.lease_secs),
                    };
                    self.table.apply(&rec);
                    self.table.clear_offer(&mac);
                    Ok(self.reply(&req, mac, MessageType::Ack, Some(ip), Some(rec), now))
                } else {
                    self.table.clear_offer(&mac);
                    Ok(self.reply(&req, mac, MessageType::Nak, None, None, now))
                }
            }
            MessageType::Release => {
                let ip = req.ciaddr();
                if self.table.by_mac.get(&mac).is_some_and(|l| l.ip == ip) {
                    let rec = Record {
                        mac,
                        ip,
                        expires: 0,
                    };
                    self.table.apply(&rec);
                    // No reply to a RELEASE; the record still has to reach the log.
                    let mut r = self.reply(&req, mac, MessageType::Release, None, Some(rec), now);
                    r.bytes.clear();
                    return Ok(r);
                }
                Err(Drop::NotForUs)
            }
            MessageType::Decline => {
                if let Some(ip) = requested {
                    self.declined
                        .insert(ip, now + u64::from(self.cfg.lease_secs));
                    if self.table.by_mac.get(&mac).is_some_and(|l| l.ip == ip) {
                        let rec = Record {
                            mac,
                            ip,
                            expires: 0,
                        };
                        self.table.apply(&rec);
                    }
                    self.table.clear_offer(&mac);
                }
                Err(Drop::NotForUs)
            }
            MessageType::Inform => Ok(self.reply(&req, mac, MessageType::Ack, None, None, now)),
            _ => Err(Drop::Unsupported),
        }
    }

    fn reply(
        &self,
        req: &Message,
        mac: Mac,
        kind: MessageType,
        yiaddr: Option<Ipv4Addr>,
        persist: Option<Record>,
        _now: u64,
    ) -> Reply {
        let c = &self.cfg;
        let mut m = Message::new_with_id(
            req.xid(),
            Ipv4Addr::UNSPECIFIED,
            yiaddr.unwrap_or(Ipv4Addr::UNSPECIFIED),
            Ipv4Addr::UNSPECIFIED,
            req.giaddr(),
            req.chaddr(),
        );
        m.set_opcode(Opcode::BootReply)
            .set_htype(req.htype())
            .set_flags(req.flags());
        if kind == MessageType::Ack && req.opts().msg_type() == Some(MessageType::Inform) {
            m.set_ciaddr(req.ciaddr());
        }
        let mut o = DhcpOptions::new();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(c.server_ip));
        if kind != MessageType::Nak {
            if yiaddr.is_some() {
                o.insert(DhcpOption::AddressLeaseTime(c.lease_secs));
                o.insert(DhcpOption::Renewal(c.lease_secs / 2));
                o.insert(DhcpOption::Rebinding(c.lease_secs / 8 * 7));
            }
            if c.mode == Mode::Authoritative {
                o.insert(DhcpOption::SubnetMask(c.subnet.netmask()));
                if let Some(r) = c.router {
                    o.insert(DhcpOption::Router(vec![r]));
                }
                if !c.dns.is_empty() {
                    o.insert(DhcpOption::DomainNameServer(c.dns.clone()));
                }
                if !c.ntp.is_empty() {
                    o.insert(DhcpOption::NtpServers(c.ntp.clone()));
                }
            }
            if let Some(boot) = &c.boot
                && is_pxe(req)
            {
                boot_options(req, &mut m, &mut o, boot);
            }
        }
        if let Some(ri) = req.opts().get(OptionCode::RelayAgentInformation) {
            o.insert(ri.clone());
        }
        m.set_opts(o);
        let mut bytes = Vec::with_capacity(512);
        // Encoding a message we built cannot fail; an empty reply would only be dropped.
        let _ = m.encode(&mut Encoder::new(&mut bytes));
        let giaddr = req.giaddr();
        let dest = if !giaddr.is_unspecified() {
            Dest::Unicast(SocketAddrV4::new(giaddr, 67))
        } else if !req.ciaddr().is_unspecified() && kind != MessageType::Nak {
            Dest::Unicast(SocketAddrV4::new(req.ciaddr(), 68))
        } else {
            Dest::Broadcast
        };
        Reply {
            kind,
            bytes,
            dest,
            persist,
            mac,
            xid: req.xid(),
        }
    }
}

/// A PXE ROM (vendor class "PXEClient") or iPXE (user class "iPXE").
fn is_pxe(req: &Message) -> bool {
    let class = matches!(req.opts().get(OptionCode::ClassIdentifier),
        Some(DhcpOption::ClassIdentifier(c)) if c.starts_with(b"PXEClient"));
    class || is_ipxe(req)
}

fn is_ipxe(req: &Message) -> bool {
    match req.opts().get(OptionCode::UserClass) {
        // RFC 3004 framing (length-prefixed) or iPXE's plain "iPXE".
        Some(DhcpOption::UserClass(u)) => u.windows(4).any(|w| w == b"iPXE"),
        _ => false,
    }
}

fn boot_options(req: &Message, m: &mut Message, o: &mut DhcpOptions, b: &BootFiles) {
    let file = if is_ipxe(req) && b.ipxe_url.is_some() {
        b.ipxe_url.clone().unwrap_or_default()
    } else {
        let arch = match req.opts().get(OptionCode::ClientSystemArchitecture) {
            Some(DhcpOption::ClientSystemArchitecture(a)) => u16::from(*a),
            _ => 0,
        };
        match arch {
            6 | 7 | 9 => b.efi.clone(),
            _ => b.bios.clone(),
        }
    };
    m.set_siaddr(b.tftp_server);
    m.set_fname_str(&file);
    o.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
    o.insert(DhcpOption::TFTPServerName(
        b.tftp_server.to_string().into_bytes(),
    ));
    o.insert(DhcpOption::BootfileName(file.into_bytes()));
    if is_ipxe(req) {
        // iPXE encapsulated option 175.176 (no-pxedhcp = 1): do not wait for proxy offers.
        o.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::from(175),
            vec![176, 1, 1],
        )));
    }
}

/// A human name of a MAC and xid for log lines.
pub fn ids(mac: &Mac, xid: u32) -> String {
    format!("mac={} xid={xid:#010x}", mac_text(mac))
}

/// Builds a client packet (for tests and the fuzz corpus).
pub fn client_packet(
    mac: Mac,
    xid: u32,
    kind: MessageType,
    extra: Vec<DhcpOption>,
    giaddr: Ipv4Addr,
) -> Vec<u8> {
    let mut m = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        giaddr,
        &mac,
    );
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    for e in extra {
        m.opts_mut().insert(e);
    }
    let mut b = Vec::new();
    let _ = m.encode(&mut Encoder::new(&mut b));
    b
}

/// Decodes a DHCP message. dhcproto 0.15 has `debug_assert!`s on some option lengths that a
/// malformed packet trips in debug builds; a packet must never take the server down, so the
/// decode is also guarded against panics (docs/decisions.md).
pub fn decode(bytes: &[u8]) -> Option<v4::Message> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Message::decode(&mut Decoder::new(bytes)).ok()
    }))
    .ok()
    .flatten()
}

impl Engine {
    /// Live records at `now` (tests).
    pub fn live_records_at(&self, now: u64) -> Vec<Record> {
        self.table
            .by_mac
            .iter()
            .filter(|(_, l)| l.expires > now)
            .map(|(m, l)| Record {
                mac: *m,
                ip: l.ip,
                expires: l.expires,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config {
            mode: Mode::Authoritative,
            server_ip: "10.0.0.1".parse().unwrap(),
            subnet: "10.0.0.0/24".parse().unwrap(),
            pool_start: "10.0.0.100".parse().unwrap(),
            pool_end: "10.0.0.102".parse().unwrap(),
            router: Some("10.0.0.1".parse().unwrap()),
            dns: vec!["10.0.0.53".parse().unwrap()],
            ntp: vec![],
            lease_secs: 3600,
            offer_secs: 30,
            boot: Some(BootFiles {
                tftp_server: "10.0.0.1".parse().unwrap(),
                bios: "undionly.kpxe".into(),
                efi: "ipxe.efi".into(),
                ipxe_url: Some("http://10.0.0.1:8080/boot.ipxe".into()),
            }),
            reservations: HashMap::new(),
        }
    }

    fn mac(n: u8) -> Mac {
        [0x52, 0x54, 0, 0, 0, n]
    }

    fn dora(e: &mut Engine, m: Mac, now: u64) -> Ipv4Addr {
        let offer = e
            .handle_at(
                &client_packet(m, 1, MessageType::Discover, vec![], Ipv4Addr::UNSPECIFIED),
                67,
                now,
            )
            .unwrap();
        assert_eq!(offer.kind, MessageType::Offer);
        let ip = decode(&offer.bytes).unwrap().yiaddr();
        let ack = e
            .handle_at(
                &client_packet(
                    m,
                    2,
                    MessageType::Request,
                    vec![
                        DhcpOption::RequestedIpAddress(ip),
                        DhcpOption::ServerIdentifier("10.0.0.1".parse().unwrap()),
                    ],
                    Ipv4Addr::UNSPECIFIED,
                ),
                67,
                now,
            )
            .unwrap();
        assert_eq!(ack.kind, MessageType::Ack);
        assert!(ack.persist.is_some(), "ACKs are persisted first");
        ip
    }

    #[test]
    fn dora_gives_distinct_addresses_and_the_same_one_again() {
        let mut e = Engine::new(cfg(), &[]);
        let a = dora(&mut e, mac(1), 1000);
        let b = dora(&mut e, mac(2), 1000);
        assert_ne!(a, b);
        assert_eq!(dora(&mut e, mac(1), 1100), a, "renewal keeps the address");
        let c = dora(&mut e, mac(3), 1000);
        assert!(![a, b].contains(&c));
        // Pool of three is full.
        let r = e.handle_at(
            &client_packet(
                mac(4),
                9,
                MessageType::Discover,
                vec![],
                Ipv4Addr::UNSPECIFIED,
            ),
            67,
            1000,
        );
        assert_eq!(r.unwrap_err(), Drop::PoolExhausted);
        // After expiry, the address can go to someone else.
        let d = dora(&mut e, mac(4), 1000 + 3601);
        assert!([a, b, c].contains(&d));
    }

    #[test]
    fn restart_from_records_never_reassigns_a_bound_address() {
        let mut e = Engine::new(cfg(), &[]);
        let a = dora(&mut e, mac(1), 1000);
        let recs = e.live_records_at(1000);
        let mut e2 = Engine::new(cfg(), &recs);
        let b = dora(&mut e2, mac(2), 1001);
        assert_ne!(a, b);
        // Someone else asking for a's address gets a NAK.
        let nak = e2
            .handle_at(
                &client_packet(
                    mac(9),
                    5,
                    MessageType::Request,
                    vec![DhcpOption::RequestedIpAddress(a)],
                    Ipv4Addr::UNSPECIFIED,
                ),
                67,
                1001,
            )
            .unwrap();
        assert_eq!(nak.kind, MessageType::Nak);
        assert_eq!(nak.dest, Dest::Broadcast);
    }

    #[test]
    fn requests_for_other_servers_and_bad_packets_are_dropped() {
        let mut e = Engine::new(cfg(), &[]);
        let other = client_packet(
            mac(1),
            1,
            MessageType::Request,
            vec![
                DhcpOption::RequestedIpAddress("10.0.0.100".parse().unwrap()),
                DhcpOption::ServerIdentifier("10.0.0.2".parse().unwrap()),
            ],
            Ipv4Addr::UNSPECIFIED,
        );
        assert_eq!(e.handle_at(&other, 67, 0).unwrap_err(), Drop::NotForUs);
        assert_eq!(e.handle_at(&[1, 2, 3], 67, 0).unwrap_err(), Drop::Malformed);
        let good = client_packet(
            mac(1),
            1,
            MessageType::Discover,
            vec![],
            Ipv4Addr::UNSPECIFIED,
        );
        for n in 0..good.len() {
            let _ = e.handle_at(&good[..n], 67, 0);
        }
        let mut noise: u64 = 7;
        for _ in 0..5000 {
            let mut p = good.clone();
            for _ in 0..4 {
                noise ^= noise << 13;
                noise ^= noise >> 7;
                noise ^= noise << 17;
                let i = (noise as usize) % p.len();
                p[i] = (noise >> 32) as u8;
            }
            let _ = e.handle_at(&p, 67, 0);
        }
    }

    #[test]
    fn pxe_bios_uefi_and_ipxe_get_their_boot_file_and_relays_get_unicast() {
        let mut c = cfg();
        c.pool_end = "10.0.0.120".parse().unwrap();
        let mut e = Engine::new(c, &[]);
        let giaddr: Ipv4Addr = "10.0.1.1".parse().unwrap();
        let pxe = |arch: u16| {
            vec![
                DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()),
                DhcpOption::ClientSystemArchitecture(arch.into()),
            ]
        };
        let r = e
            .handle_at(
                &client_packet(mac(1), 1, MessageType::Discover, pxe(0), giaddr),
                67,
                0,
            )
            .unwrap();
        let m = decode(&r.bytes).unwrap();
        assert_eq!(
            m.fname_str().unwrap().unwrap().trim_end_matches('\0'),
            "undionly.kpxe"
        );
        assert_eq!(m.siaddr(), "10.0.0.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(r.dest, Dest::Unicast(SocketAddrV4::new(giaddr, 67)));
        let r = e
            .handle_at(
                &client_packet(
                    mac(2),
                    1,
                    MessageType::Discover,
                    pxe(7),
                    Ipv4Addr::UNSPECIFIED,
                ),
                67,
                0,
            )
            .unwrap();
        assert_eq!(
            decode(&r.bytes)
                .unwrap()
                .fname_str()
                .unwrap()
                .unwrap()
                .trim_end_matches('\0'),
            "ipxe.efi"
        );
        let mut ipxe = pxe(0);
        ipxe.push(DhcpOption::UserClass(b"iPXE".to_vec()));
        let r = e
            .handle_at(
                &client_packet(
                    mac(3),
                    1,
                    MessageType::Discover,
                    ipxe,
                    Ipv4Addr::UNSPECIFIED,
                ),
                67,
                0,
            )
            .unwrap();
        let m = decode(&r.bytes).unwrap();
        assert_eq!(
            m.fname_str().unwrap().unwrap().trim_end_matches('\0'),
            "http://10.0.0.1:8080/boot.ipxe"
        );
        assert!(
            m.opts().get(OptionCode::from(175)).is_some(),
            "175.176 for iPXE"
        );
        // A plain client gets no boot options.
        let r = e
            .handle_at(
                &client_packet(
                    mac(4),
                    1,
                    MessageType::Discover,
                    vec![],
                    Ipv4Addr::UNSPECIFIED,
                ),
                67,
                0,
            )
            .unwrap();
        assert!(
            decode(&r.bytes)
                .unwrap()
                .opts()
                .get(OptionCode::BootfileName)
                .is_none()
        );
    }

    #[test]
    fn proxy_mode_answers_only_pxe_and_gives_no_address() {
        let mut c = cfg();
        c.mode = Mode::Proxy;
        let mut e = Engine::new(c, &[]);
        let plain = client_packet(
            mac(1),
            1,
            MessageType::Discover,
            vec![],
            Ipv4Addr::UNSPECIFIED,
        );
        assert_eq!(e.handle_at(&plain, 67, 0).unwrap_err(), Drop::NotForUs);
        let pxe = client_packet(
            mac(1),
            1,
            MessageType::Discover,
            vec![DhcpOption::ClassIdentifier(b"PXEClient".to_vec())],
            Ipv4Addr::UNSPECIFIED,
        );
        let r = e.handle_at(&pxe, 67, 0).unwrap();
        let m = decode(&r.bytes).unwrap();
        assert!(m.yiaddr().is_unspecified());
        assert!(m.opts().get(OptionCode::AddressLeaseTime).is_none());
        assert_eq!(
            m.fname_str().unwrap().unwrap().trim_end_matches('\0'),
            "undionly.kpxe"
        );
        let req = client_packet(
            mac(1),
            2,
            MessageType::Request,
            vec![DhcpOption::ClassIdentifier(b"PXEClient".to_vec())],
            Ipv4Addr::UNSPECIFIED,
        );
        assert_eq!(e.handle_at(&req, 4011, 0).unwrap().kind, MessageType::Ack);
        assert_eq!(e.handle_at(&req, 67, 0).unwrap_err(), Drop::NotForUs);
    }

    #[test]
    fn reservations_release_and_decline() {
        let mut c = cfg();
        let fixed: Ipv4Addr = "10.0.0.20".parse().unwrap();
        c.reservations.insert(mac(7), fixed);
        let mut e = Engine::new(c, &[]);
        assert_eq!(
            dora(&mut e, mac(7), 0),
            fixed,
            "known MAC, fixed address outside the pool"
        );
        let a = dora(&mut e, mac(1), 0);
        let mut rel = decode(&client_packet(
            mac(1),
            3,
            MessageType::Release,
            vec![],
            Ipv4Addr::UNSPECIFIED,
        ))
        .unwrap();
        rel.set_ciaddr(a);
        let mut b = Vec::new();
        rel.encode(&mut Encoder::new(&mut b)).unwrap();
        let r = e.handle_at(&b, 67, 10).unwrap();
        assert_eq!(r.persist.unwrap().expires, 0);
        assert!(r.bytes.is_empty(), "no reply to RELEASE");
        // A declined address is not offered again.
        let d = client_packet(
            mac(2),
            4,
            MessageType::Decline,
            vec![DhcpOption::RequestedIpAddress(a)],
            Ipv4Addr::UNSPECIFIED,
        );
        assert!(e.handle_at(&d, 67, 10).is_err());
        for n in 3..6 {
            let got = e.handle_at(
                &client_packet(
                    mac(n),
                    1,
                    MessageType::Discover,
                    vec![],
                    Ipv4Addr::UNSPECIFIED,
                ),
                67,
                10,
            );
            if let Ok(r) = got {
                assert_ne!(decode(&r.bytes).unwrap().yiaddr(), a);
            }
        }
    }
}
