//! An async IPMI 2.0 LAN (RMCP+) client: session setup (Get Channel Authentication
//! Capabilities, Open Session, RAKP 1-4, Set Session Privilege Level), encrypted and
//! authenticated commands with retries, and Close Session.
//!
//! Why not ipmi-rs: it is synchronous, implements only cipher suite 3 and panics
//! (`todo!()`) on the SHA-256 algorithms of suite 17, which this client must speak
//! (docs/decisions.md).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::wire::{self, CipherSuite, Handshake, Keys, Packet};
use crate::BmcError;

/// How to reach and log in to one BMC.
#[derive(Clone)]
pub struct IpmiConfig {
    pub addr: SocketAddr,
    pub username: String,
    pub password: String,
    pub suite: CipherSuite,
    /// Wait for one answer before sending again.
    pub attempt_timeout: Duration,
    /// Sends per request (1 + retries).
    pub attempts: u32,
}

impl std::fmt::Debug for IpmiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpmiConfig")
            .field("addr", &self.addr)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("suite", &self.suite)
            .finish()
    }
}

impl IpmiConfig {
    pub fn new(addr: SocketAddr, username: &str, password: &str) -> Self {
        IpmiConfig {
            addr,
            username: username.into(),
            password: password.into(),
            suite: CipherSuite::Suite3,
            attempt_timeout: Duration::from_millis(1000),
            attempts: 3,
        }
    }
}

const ADMIN: u8 = 0x04;
/// Requested role in RAKP 1: administrator, name-only lookup (what ipmitool sends).
const ROLE: u8 = 0x10 | ADMIN;

/// An open RMCP+ session.
pub struct Session {
    sock: UdpSocket,
    cfg: IpmiConfig,
    bmc_sid: u32,
    seq: u32,
    rq_seq: u8,
    keys: Keys,
    closed: bool,
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b
}

/// Sends `packet` up to `attempts` times and returns the first received datagram that
/// `accept` takes (others, such as late answers to earlier requests, are dropped).
async fn exchange<T>(
    sock: &UdpSocket,
    cfg: &IpmiConfig,
    what: &'static str,
    mut packet: impl FnMut() -> Vec<u8>,
    mut accept: impl FnMut(&[u8]) -> Option<Result<T, BmcError>>,
) -> Result<T, BmcError> {
    let mut buf = vec![0u8; 1024];
    for _ in 0..cfg.attempts.max(1) {
        sock.send(&packet())
            .await
            .map_err(|e| BmcError::Io(format!("{}: sending {what}: {e}", cfg.addr)))?;
        let deadline = Instant::now() + cfg.attempt_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, sock.recv(&mut buf)).await {
                Err(_) => break,
                // ICMP port unreachable surfaces here on a connected socket: nothing listens.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tokio::time::sleep(left).await;
                    break;
                }
                Ok(Err(e)) => return Err(BmcError::Io(format!("{}: {what}: {e}", cfg.addr))),
                Ok(Ok(n)) => {
                    if let Some(r) = accept(&buf[..n]) {
                        return r;
                    }
                }
            }
        }
    }
    Err(BmcError::Timeout(format!(
        "{}: no answer to {what} after {} attempts of {:?}",
        cfg.addr, cfg.attempts, cfg.attempt_timeout
    )))
}

impl Session {
    /// Opens an authenticated, encrypted session at administrator privilege.
    pub async fn open(cfg: &IpmiConfig) -> Result<Session, BmcError> {
        if cfg.username.len() > 16 {
            return Err(BmcError::Config(
                "IPMI user names are at most 16 bytes".into(),
            ));
        }
        if cfg.password.len() > 20 {
            return Err(BmcError::Config(
                "IPMI 2.0 passwords are at most 20 bytes".into(),
            ));
        }
        let bind: SocketAddr = if cfg.addr.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let sock = UdpSocket::bind(bind)
            .await
            .map_err(|e| BmcError::Io(format!("binding a UDP socket: {e}")))?;
        sock.connect(cfg.addr)
            .await
            .map_err(|e| BmcError::Io(format!("{}: {e}", cfg.addr)))?;

        // 1. Get Channel Authentication Capabilities (pre-session, IPMI v1.5 framing).
        let caps = exchange(
            &sock,
            cfg,
            "Get Channel Authentication Capabilities",
            || wire::encode_v15(&wire::encode_request(0x06, 0x38, 0, &[0x8e, ADMIN])),
            |b| match wire::parse_packet(b, None) {
                Ok(Packet::V15 { payload, .. }) => match wire::parse_message(&payload) {
                    Ok(m) if m.cmd == 0x38 => Some(Ok(m.body)),
                    _ => None,
                },
                _ => None,
            },
        )
        .await?;
        match caps.first() {
            Some(0) => {}
            Some(cc) => {
                return Err(BmcError::Protocol(format!(
                    "{}: Get Channel Authentication Capabilities: {}",
                    cfg.addr,
                    wire::completion_text(*cc)
                )));
            }
            None => {
                return Err(BmcError::Protocol(format!(
                    "{}: empty capabilities",
                    cfg.addr
                )));
            }
        }
        if caps.len() < 5 || caps[4] & 0x02 == 0 {
            return Err(BmcError::Unsupported(format!(
                "{}: the BMC does not offer IPMI v2.0 (RMCP+) on this channel",
                cfg.addr
            )));
        }

        // 2. Open Session.
        let console_sid = u32::from_le_bytes(random::<4>()) | 1;
        let tag = random::<1>()[0] & 0x3f;
        let open = exchange(
            &sock,
            cfg,
            "Open Session Request",
            || {
                wire::encode_v2(
                    wire::PAYLOAD_OPEN_REQUEST,
                    0,
                    0,
                    &wire::open_session_request(tag, ADMIN, console_sid, cfg.suite),
                    None,
                )
            },
            |b| match wire::parse_packet(b, None) {
                Ok(Packet::V2 {
                    payload_type: wire::PAYLOAD_OPEN_RESPONSE,
                    payload,
                    ..
                }) => match wire::parse_open_session_response(&payload) {
                    Ok(r) if r.tag == tag && (r.console_sid == console_sid || r.status != 0) => {
                        Some(Ok(r))
                    }
                    Ok(_) => None,
                    Err(e) => Some(Err(BmcError::Protocol(format!("{}: {e}", cfg.addr)))),
                },
                _ => None,
            },
        )
        .await?;
        if open.status != 0 {
            let text = wire::rakp_status(open.status);
            return Err(if matches!(open.status, 0x04 | 0x05 | 0x10 | 0x11) {
                BmcError::Unsupported(format!(
                    "{}: the BMC refuses cipher suite {}: {text}",
                    cfg.addr,
                    cfg.suite.id()
                ))
            } else {
                BmcError::Protocol(format!("{}: Open Session: {text}", cfg.addr))
            });
        }
        if open.suite != Some(cfg.suite) {
            return Err(BmcError::Protocol(format!(
                "{}: the BMC answered with other algorithms than cipher suite {}",
                cfg.addr,
                cfg.suite.id()
            )));
        }
        let bmc_sid = open.bmc_sid;

        // 3. RAKP 1 / 2: mutual proof of the password, without sending it.
        let console_rand = random::<16>();
        let user = cfg.username.as_bytes();
        let r2 = exchange(
            &sock,
            cfg,
            "RAKP Message 1",
            || {
                wire::encode_v2(
                    wire::PAYLOAD_RAKP1,
                    0,
                    0,
                    &wire::rakp1(tag, bmc_sid, &console_rand, ROLE, user),
                    None,
                )
            },
            |b| match wire::parse_packet(b, None) {
                Ok(Packet::V2 {
                    payload_type: wire::PAYLOAD_RAKP2,
                    payload,
                    ..
                }) => match wire::parse_rakp2(&payload) {
                    Ok(r) if r.tag == tag => Some(Ok(r)),
                    Ok(_) => None,
                    Err(e) => Some(Err(BmcError::Protocol(format!("{}: {e}", cfg.addr)))),
                },
                _ => None,
            },
        )
        .await?;
        if r2.status != 0 {
            return Err(BmcError::Auth(format!(
                "{}: user {:?}: {}",
                cfg.addr,
                cfg.username,
                wire::rakp_status(r2.status)
            )));
        }
        let hs = Handshake {
            suite: cfg.suite,
            console_sid,
            bmc_sid,
            console_rand,
            bmc_rand: r2.bmc_rand,
            bmc_guid: r2.bmc_guid,
            role: ROLE,
            user,
            password: cfg.password.as_bytes(),
        };
        let expected = hs.rakp2_code();
        if !wire::ct_eq(&expected, &r2.auth_code) {
            // Tell the BMC (RAKP 3 with status 0x0F) so it drops the half-open session.
            let _ = sock
                .send(&wire::encode_v2(
                    wire::PAYLOAD_RAKP3,
                    0,
                    0,
                    &wire::rakp3(tag, 0x0f, bmc_sid, &[]),
                    None,
                ))
                .await;
            return Err(BmcError::Auth(format!(
                "{}: authentication failed for user {:?}: wrong password \
                 (the BMC's RAKP 2 proof does not match)",
                cfg.addr, cfg.username
            )));
        }

        // 4. RAKP 3 / 4.
        let sik = hs.sik();
        let code3 = hs.rakp3_code();
        let r4 = exchange(
            &sock,
            cfg,
            "RAKP Message 3",
            || {
                wire::encode_v2(
                    wire::PAYLOAD_RAKP3,
                    0,
                    0,
                    &wire::rakp3(tag, 0, bmc_sid, &code3),
                    None,
                )
            },
            |b| match wire::parse_packet(b, None) {
                Ok(Packet::V2 {
                    payload_type: wire::PAYLOAD_RAKP4,
                    payload,
                    ..
                }) => match wire::parse_rakp4(&payload) {
                    Ok(r) if r.tag == tag => Some(Ok(r)),
                    Ok(_) => None,
                    Err(e) => Some(Err(BmcError::Protocol(format!("{}: {e}", cfg.addr)))),
                },
                _ => None,
            },
        )
        .await?;
        if r4.status != 0 {
            return Err(BmcError::Auth(format!(
                "{}: user {:?}: {}",
                cfg.addr,
                cfg.username,
                wire::rakp_status(r4.status)
            )));
        }
        if !wire::ct_eq(&hs.rakp4_icv(&sik), &r4.icv) {
            return Err(BmcError::Protocol(format!(
                "{}: RAKP 4 integrity check value does not match",
                cfg.addr
            )));
        }
        let keys = Keys::derive(cfg.suite, &sik);
        let mut s = Session {
            sock,
            cfg: cfg.clone(),
            bmc_sid,
            seq: 0,
            rq_seq: 0,
            keys,
            closed: false,
        };
        // 5. Set Session Privilege Level: administrator.
        s.command(0x06, 0x3b, &[ADMIN]).await?;
        Ok(s)
    }

    /// Sends one command and returns the response data (after a successful completion code).
    pub async fn command(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, BmcError> {
        self.rq_seq = (self.rq_seq + 1) & 0x3f;
        let rq_seq = self.rq_seq;
        let msg = wire::encode_request(netfn, cmd, rq_seq, data);
        let (keys, bmc_sid, addr) = (self.keys.clone(), self.bmc_sid, self.cfg.addr);
        let seq = &mut self.seq;
        let body = exchange(
            &self.sock,
            &self.cfg,
            command_name(netfn, cmd),
            || {
                // A fresh session sequence number per send: BMCs drop replays.
                *seq = seq.wrapping_add(1).max(1);
                wire::encode_v2(wire::PAYLOAD_IPMI, bmc_sid, *seq, &msg, Some(&keys))
            },
            |b| match wire::parse_packet(b, Some(&keys)) {
                Ok(Packet::V2 {
                    payload_type: wire::PAYLOAD_IPMI,
                    payload,
                    authenticated: true,
                    ..
                }) => match wire::parse_message(&payload) {
                    Ok(m) if m.seq == rq_seq && m.cmd == cmd && m.netfn == netfn + 1 => {
                        Some(Ok(m.body))
                    }
                    Ok(_) => None,
                    Err(e) => Some(Err(BmcError::Protocol(format!("{addr}: {e}")))),
                },
                // Unauthenticated or corrupted datagrams are not ours to act on.
                _ => None,
            },
        )
        .await?;
        match body.first() {
            Some(0) => Ok(body[1..].to_vec()),
            Some(cc) => Err(BmcError::Completion {
                command: command_name(netfn, cmd),
                code: *cc,
                text: wire::completion_text(*cc),
            }),
            None => Err(BmcError::Protocol(format!(
                "{addr}: response without completion code"
            ))),
        }
    }

    /// Closes the session (best effort: the BMC times idle sessions out anyway).
    pub async fn close(mut self) {
        let sid = self.bmc_sid.to_le_bytes();
        let mut cfg = self.cfg.clone();
        cfg.attempts = 1;
        cfg.attempt_timeout = Duration::from_millis(300);
        self.cfg = cfg;
        let _ = self.command(0x06, 0x3c, &sid).await;
        self.closed = true;
    }
}

fn command_name(netfn: u8, cmd: u8) -> &'static str {
    match (netfn, cmd) {
        (0x00, 0x01) => "Get Chassis Status",
        (0x00, 0x02) => "Chassis Control",
        (0x00, 0x08) => "Set System Boot Options",
        (0x00, 0x09) => "Get System Boot Options",
        (0x06, 0x01) => "Get Device ID",
        (0x06, 0x3b) => "Set Session Privilege Level",
        (0x06, 0x3c) => "Close Session",
        (0x0a, 0x10) => "Get FRU Inventory Area Info",
        (0x0a, 0x11) => "Read FRU Data",
        (0x0a, 0x40) => "Get SEL Info",
        (0x0a, 0x43) => "Get SEL Entry",
        _ => "IPMI command",
    }
}
