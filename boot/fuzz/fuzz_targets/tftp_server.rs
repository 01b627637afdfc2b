//! Fuzzes the TFTP server (its request parser, option negotiation and root handler)
//! through its socket: every input is sent to a running server as a datagram, and every 64
//! inputs the server must still answer a valid read request. A server that stops answering
//! (a panicked or wedged task) is a crash.
#![no_main]

use std::net::UdpSocket;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;

struct Target {
    addr: std::net::SocketAddr,
    sock: UdpSocket,
    n: std::sync::atomic::AtomicU64,
}

fn target() -> &'static Target {
    static T: OnceLock<Target> = OnceLock::new();
    T.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("gw-tftp-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("f"), vec![7u8; 3000]).unwrap();
        let (addr, _t) = groundwork_boot::tftp::spawn(
            "127.0.0.1:0".parse().unwrap(),
            &root,
            Arc::default(),
        )
        .unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        Target { addr, sock, n: Default::default() }
    })
}

fuzz_target!(|data: &[u8]| {
    let t = target();
    let _ = t.sock.send_to(data, t.addr);
    if t.n.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 64 == 0 {
        // A fresh client socket: the server tracks transfers per peer.
        // Up to 3 tries of 3 s: a busy server is slow, a wedged one never answers.
        let mut answered = None;
        for _ in 0..3 {
            let c = UdpSocket::bind("127.0.0.1:0").unwrap();
            c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            c.send_to(b"\x00\x01f\x00octet\x00", t.addr).unwrap();
            let mut buf = [0u8; 600];
            if let Ok((n, _)) = c.recv_from(&mut buf) {
                answered = Some((n, buf));
                break;
            }
        }
        let (n, buf) = answered.expect("the TFTP server stopped answering (3 tries of 3 s)");
        // The inputs start transfers that are never acknowledged, so at 10,000 inputs/s they
        // reach the server's cap (`MAX_TRANSFERS`) and the probe is refused with the cap's
        // error: that is an answer, the server is alive. Anything else must be DATA block 1.
        let busy = n >= 4 && buf[1] == 5 && buf[4..n].starts_with(b"server busy");
        assert!(
            busy || (n >= 4 && buf[1] == 3 && buf[2..4] == [0, 1]),
            "expected DATA block 1 or the busy error, got {:?}",
            &buf[..n.min(24)]
        );
    }
});
