//! A simulated BMC speaking real IPMI 2.0 over LAN (RMCP+, cipher suites 3 and 17) on a UDP
//! socket: session setup, chassis status and control, boot options, device ID. For tests and
//! benchmarks that need many BMCs (one task each, not one process each), and to check the
//! client against ipmitool with suite 17, which OpenIPMI's ipmi_sim does not offer.
//!
//! It keeps a power state and a boot device, and calls an optional hook on power changes
//! (tests use it to start and stop a QEMU machine). `set_unresponsive` makes it drop
//! everything, like a hung BMC.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::wire::{self, CipherSuite, Handshake, Keys, Packet};

type PowerHook = Box<dyn Fn(bool) + Send + Sync>;

/// What the simulated machine looks like from outside.
#[derive(Clone, Debug, Default)]
pub struct SimState {
    pub power_on: bool,
    /// Boot flags parameter (5) as last set: flags byte, device byte.
    pub boot_flags: (u8, u8),
    /// Commands handled (after session setup), by name.
    pub commands: HashMap<&'static str, u64>,
    pub sessions_opened: u64,
    /// The most sessions open at once (in setup or established, until closed): above 1,
    /// two clients talked to this BMC at the same time.
    pub most_sessions_at_once: usize,
    pub unresponsive: bool,
    /// Added before every command's answer (a slow BMC).
    pub latency: std::time::Duration,
}

struct Pending {
    console_sid: u32,
    suite: CipherSuite,
    console_rand: [u8; 16],
    bmc_rand: [u8; 16],
    role: u8,
    user: Vec<u8>,
    keys: Option<Keys>,
}

impl Pending {
    fn handshake<'a>(&'a self, inner: &'a Inner, bmc_sid: u32) -> Handshake<'a> {
        Handshake {
            suite: self.suite,
            console_sid: self.console_sid,
            bmc_sid,
            console_rand: self.console_rand,
            bmc_rand: self.bmc_rand,
            bmc_guid: inner.guid,
            role: self.role,
            user: &self.user,
            password: inner.password.as_bytes(),
        }
    }
}

struct Inner {
    fru: Vec<u8>,
    sel: Vec<[u8; 16]>,
    state: Mutex<SimState>,
    user: String,
    password: String,
    guid: [u8; 16],
    hook: Option<PowerHook>,
}

/// A running simulated BMC; stops when dropped.
pub struct SimBmc {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

impl Drop for SimBmc {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn rand16() -> [u8; 16] {
    let mut b = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b
}

impl SimBmc {
    /// Listens on `bind` (e.g. `127.0.0.1:0`) with one administrator account.
    pub async fn start(bind: SocketAddr, user: &str, password: &str) -> std::io::Result<SimBmc> {
        Self::start_with_hook(bind, user, password, None).await
    }

    pub async fn start_with_hook(
        bind: SocketAddr,
        user: &str,
        password: &str,
        hook: Option<PowerHook>,
    ) -> std::io::Result<SimBmc> {
        let sock = UdpSocket::bind(bind).await?;
        let addr = sock.local_addr()?;
        let fru = wire::build_fru(
            [
                "Groundwork",
                "SimBoard",
                &format!("BRD-{}", addr.port()),
                "GW-1",
            ],
            [
                "Groundwork",
                "SimServer 1U",
                "GW-SIM-1",
                "1.0",
                &format!("SIM-{}", addr.port()),
                "lab",
            ],
        );
        // Two SEL records: a power unit (0x09) "power off" assertion, then a deassertion.
        let rec = |id: u16, ts: u32, dir: u8| {
            let mut r = [0u8; 16];
            r[..2].copy_from_slice(&id.to_le_bytes());
            r[2] = 0x02;
            r[3..7].copy_from_slice(&ts.to_le_bytes());
            r[7] = 0x20;
            r[9] = 0x04;
            r[10] = 0x09;
            r[11] = 0x01;
            r[12] = dir | 0x6f;
            r
        };
        let sel = vec![rec(1, 1_700_000_000, 0x00), rec(2, 1_700_000_060, 0x80)];
        let inner = Arc::new(Inner {
            fru,
            sel,
            state: Mutex::new(SimState::default()),
            user: user.into(),
            password: password.into(),
            guid: rand16(),
            hook,
        });
        let task = tokio::spawn(serve(sock, inner.clone()));
        Ok(SimBmc { addr, inner, task })
    }

    pub fn state(&self) -> SimState {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_power(&self, on: bool) {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .power_on = on;
    }

    /// Makes every command take `d` longer.
    pub fn set_latency(&self, d: std::time::Duration) {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .latency = d;
    }

    /// A hung BMC: every packet is dropped while set.
    pub fn set_unresponsive(&self, v: bool) {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unresponsive = v;
    }
}

async fn serve(sock: UdpSocket, inner: Arc<Inner>) {
    let mut sessions: HashMap<u32, Pending> = HashMap::new();
    let mut next_sid: u32 = 0x0200_0000 | (u32::from_le_bytes([rand16()[0], 0, 0, 0]) << 8);
    let mut out_seq: u32 = 0;
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        if inner
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unresponsive
        {
            continue;
        }
        let pkt = &buf[..n];
        // Which keys apply: the session id of an RMCP+ packet names the session.
        let sid = if n >= 10 && pkt[4] == 0x06 {
            u32::from_le_bytes([pkt[6], pkt[7], pkt[8], pkt[9]])
        } else {
            0
        };
        let keys = sessions.get(&sid).and_then(|s| s.keys.clone());
        let Ok(parsed) = wire::parse_packet(pkt, keys.as_ref()) else {
            continue;
        };
        let reply = match parsed {
            Packet::V15 { payload, .. } => v15(&payload),
            Packet::V2 {
                payload_type,
                payload,
                authenticated,
                ..
            } => match payload_type {
                wire::PAYLOAD_OPEN_REQUEST => {
                    next_sid = next_sid.wrapping_add(1);
                    let r = open_session(&payload, next_sid, &mut sessions);
                    let mut st = inner.state.lock().unwrap_or_else(|p| p.into_inner());
                    st.most_sessions_at_once = st.most_sessions_at_once.max(sessions.len());
                    r
                }
                wire::PAYLOAD_RAKP1 => rakp1(&inner, &payload, &mut sessions),
                wire::PAYLOAD_RAKP3 => rakp3(&inner, &payload, &mut sessions),
                wire::PAYLOAD_IPMI if authenticated => match sessions.get(&sid) {
                    Some(s) if s.keys.is_some() => {
                        let Ok(m) = wire::parse_message(&payload) else {
                            continue;
                        };
                        let latency = inner
                            .state
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .latency;
                        if !latency.is_zero() {
                            tokio::time::sleep(latency).await;
                        }
                        let (close, rsp) = command(&inner, &m);
                        out_seq = out_seq.wrapping_add(1).max(1);
                        let pkt = wire::encode_v2(
                            wire::PAYLOAD_IPMI,
                            s.console_sid,
                            out_seq,
                            &rsp,
                            s.keys.as_ref(),
                        );
                        if close {
                            sessions.remove(&sid);
                        }
                        Some(pkt)
                    }
                    _ => None,
                },
                _ => None,
            },
        };
        if let Some(r) = reply {
            let _ = sock.send_to(&r, peer).await;
        }
    }
}

fn v15(payload: &[u8]) -> Option<Vec<u8>> {
    let m = wire::parse_message(payload).ok()?;
    let data = match (m.netfn, m.cmd) {
        // Get Channel Authentication Capabilities: RMCP+ supported, user-level auth.
        (0x06, 0x38) => vec![0x01, 0x80 | 0x04, 0x04, 0x03, 0, 0, 0, 0],
        // Get Channel Cipher Suites: records for suites 3 and 17, 16 bytes per index.
        (0x06, 0x54) => {
            let records = [0xc0, 0x03, 0x01, 0x41, 0x81, 0xc0, 0x11, 0x03, 0x44, 0x81];
            let index = (m.body.get(2).copied().unwrap_or(0) & 0x3f) as usize;
            let mut d = vec![0x01];
            d.extend(records.iter().skip(index * 16).take(16));
            d
        }
        _ => {
            return Some(wire::encode_v15(&wire::encode_response(
                m.netfn + 1,
                m.cmd,
                m.seq,
                0xc1,
                &[],
            )));
        }
    };
    Some(wire::encode_v15(&wire::encode_response(
        m.netfn + 1,
        m.cmd,
        m.seq,
        0,
        &data,
    )))
}

fn open_session(p: &[u8], bmc_sid: u32, sessions: &mut HashMap<u32, Pending>) -> Option<Vec<u8>> {
    if p.len() < 32 {
        return None;
    }
    let tag = p[0];
    let console_sid = u32::from_le_bytes([p[4], p[5], p[6], p[7]]);
    let suite = CipherSuite::from_algorithms(p[12], p[20], p[28]);
    let mut r = vec![tag, 0, 0x04, 0];
    r.extend_from_slice(&console_sid.to_le_bytes());
    match suite {
        None => {
            r[1] = 0x11;
        }
        Some(s) => {
            r.extend_from_slice(&bmc_sid.to_le_bytes());
            r.extend_from_slice(&p[8..32]);
            sessions.insert(
                bmc_sid,
                Pending {
                    console_sid,
                    suite: s,
                    console_rand: [0; 16],
                    bmc_rand: rand16(),
                    role: 0,
                    user: Vec::new(),
                    keys: None,
                },
            );
        }
    }
    Some(wire::encode_v2(wire::PAYLOAD_OPEN_RESPONSE, 0, 0, &r, None))
}

fn rakp1(inner: &Inner, p: &[u8], sessions: &mut HashMap<u32, Pending>) -> Option<Vec<u8>> {
    if p.len() < 28 {
        return None;
    }
    let tag = p[0];
    let bmc_sid = u32::from_le_bytes([p[4], p[5], p[6], p[7]]);
    let s = sessions.get_mut(&bmc_sid)?;
    s.console_rand.copy_from_slice(&p[8..24]);
    s.role = p[24];
    let ulen = p[27] as usize;
    s.user = p.get(28..28 + ulen)?.to_vec();
    let mut r = vec![tag, 0, 0, 0];
    r.extend_from_slice(&s.console_sid.to_le_bytes());
    if s.user != inner.user.as_bytes() {
        r[1] = 0x0d;
        let pkt = wire::encode_v2(wire::PAYLOAD_RAKP2, 0, 0, &r, None);
        sessions.remove(&bmc_sid);
        return Some(pkt);
    }
    let hs = s.handshake(inner, bmc_sid);
    r.extend_from_slice(&s.bmc_rand);
    r.extend_from_slice(&inner.guid);
    r.extend_from_slice(&hs.rakp2_code());
    Some(wire::encode_v2(wire::PAYLOAD_RAKP2, 0, 0, &r, None))
}

fn rakp3(inner: &Inner, p: &[u8], sessions: &mut HashMap<u32, Pending>) -> Option<Vec<u8>> {
    if p.len() < 8 {
        return None;
    }
    let tag = p[0];
    let bmc_sid = u32::from_le_bytes([p[4], p[5], p[6], p[7]]);
    let s = sessions.get_mut(&bmc_sid)?;
    let hs = s.handshake(inner, bmc_sid);
    let mut r = vec![tag, 0, 0, 0];
    r.extend_from_slice(&s.console_sid.to_le_bytes());
    if p[1] != 0 || !wire::ct_eq(&p[8..], &hs.rakp3_code()) {
        r[1] = 0x0f;
        let pkt = wire::encode_v2(wire::PAYLOAD_RAKP4, 0, 0, &r, None);
        sessions.remove(&bmc_sid);
        return Some(pkt);
    }
    let sik = hs.sik();
    r.extend_from_slice(&hs.rakp4_icv(&sik));
    s.keys = Some(Keys::derive(s.suite, &sik));
    inner
        .state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .sessions_opened += 1;
    Some(wire::encode_v2(wire::PAYLOAD_RAKP4, 0, 0, &r, None))
}

/// Handles one IPMI command; returns (close the session, response message).
fn command(inner: &Inner, m: &wire::Message) -> (bool, Vec<u8>) {
    let mut st = inner.state.lock().unwrap_or_else(|p| p.into_inner());
    let name = match (m.netfn, m.cmd) {
        (0x00, 0x01) => "chassis-status",
        (0x00, 0x02) => "chassis-control",
        (0x00, 0x08) => "set-boot-options",
        (0x00, 0x09) => "get-boot-options",
        (0x06, 0x01) => "device-id",
        (0x06, 0x3b) => "set-privilege",
        (0x06, 0x3c) => "close-session",
        (0x0a, 0x10) | (0x0a, 0x11) => "fru",
        (0x0a, 0x40) | (0x0a, 0x42) | (0x0a, 0x43) => "sel",
        _ => "other",
    };
    *st.commands.entry(name).or_default() += 1;
    let rsp = |cc: u8, data: &[u8]| wire::encode_response(m.netfn + 1, m.cmd, m.seq, cc, data);
    match (m.netfn, m.cmd) {
        (0x00, 0x01) => (false, rsp(0, &[u8::from(st.power_on), 0, 0, 0])),
        (0x00, 0x02) => {
            let on = match m.body.first() {
                Some(0x00) | Some(0x05) => false,
                Some(0x01) => true,
                Some(0x02) | Some(0x03) => true,
                _ => return (false, rsp(0xcc, &[])),
            };
            let changed = st.power_on != on;
            st.power_on = on;
            drop(st);
            if let Some(h) = &inner.hook
                && (changed || m.body.first() == Some(&0x02) || m.body.first() == Some(&0x03))
            {
                h(on);
            }
            (false, rsp(0, &[]))
        }
        (0x00, 0x08) => {
            if m.body.first().map(|p| p & 0x7f) == Some(5) && m.body.len() >= 3 {
                st.boot_flags = (m.body[1], m.body[2]);
            }
            (false, rsp(0, &[]))
        }
        (0x00, 0x09) => {
            let (f, d) = st.boot_flags;
            (false, rsp(0, &[0x01, 0x05, f, d, 0, 0, 0]))
        }
        (0x06, 0x01) => (
            false,
            rsp(
                0,
                &[
                    0x20, 0x81, 0x02, 0x17, 0x02, 0xbf, 0x57, 0xc0, 0x00, 0x01, 0x47,
                ],
            ),
        ),
        (0x06, 0x3b) => (
            false,
            rsp(0, &[m.body.first().copied().unwrap_or(4) & 0x0f]),
        ),
        (0x06, 0x3c) => (true, rsp(0, &[])),
        // Get FRU Inventory Area Info / Read FRU Data (device 0, byte access).
        (0x0a, 0x10) => {
            let n = inner.fru.len() as u16;
            (false, rsp(0, &[n as u8, (n >> 8) as u8, 0]))
        }
        (0x0a, 0x11) if m.body.len() >= 4 => {
            let off = u16::from_le_bytes([m.body[1], m.body[2]]) as usize;
            let end = (off + m.body[3] as usize).min(inner.fru.len());
            let chunk = inner.fru.get(off..end).unwrap_or(&[]);
            let mut d = vec![chunk.len() as u8];
            d.extend_from_slice(chunk);
            (false, rsp(0, &d))
        }
        // Get SEL Info / Reserve SEL / Get SEL Entry.
        (0x0a, 0x40) => {
            let n = inner.sel.len() as u16;
            (
                false,
                rsp(
                    0,
                    &[
                        0x51,
                        n as u8,
                        (n >> 8) as u8,
                        0x00,
                        0x10,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0x02,
                    ],
                ),
            )
        }
        (0x0a, 0x42) => (false, rsp(0, &[0x01, 0x00])),
        (0x0a, 0x43) if m.body.len() >= 6 => {
            let id = u16::from_le_bytes([m.body[2], m.body[3]]);
            let idx = match id {
                0x0000 => Some(0),
                0xffff => inner.sel.len().checked_sub(1),
                n => inner
                    .sel
                    .iter()
                    .position(|r| u16::from_le_bytes([r[0], r[1]]) == n),
            };
            match idx {
                Some(i) => {
                    let next = inner
                        .sel
                        .get(i + 1)
                        .map_or(0xffff, |r| u16::from_le_bytes([r[0], r[1]]));
                    let mut d = next.to_le_bytes().to_vec();
                    d.extend_from_slice(&inner.sel[i]);
                    (false, rsp(0, &d))
                }
                None => (false, rsp(0xcb, &[])),
            }
        }
        _ => (false, rsp(0xc1, &[])),
    }
}
