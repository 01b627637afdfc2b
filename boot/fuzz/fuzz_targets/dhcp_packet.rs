//! Fuzzes the DHCP engine with arbitrary packets (decode, every message type, allocation,
//! reply encoding) in both modes and on both ports, against one lease table that persists
//! across inputs, so inputs also build up state for later ones.
#![no_main]

use std::collections::HashMap;
use std::sync::Mutex;

use groundwork_boot::dhcp::{BootFiles, Config, Engine, Mode};
use libfuzzer_sys::fuzz_target;

fn engine(mode: Mode) -> Engine {
    Engine::new(
        Config {
            mode,
            server_ip: "10.0.0.1".parse().unwrap(),
            subnet: "10.0.0.0/24".parse().unwrap(),
            pool_start: "10.0.0.100".parse().unwrap(),
            pool_end: "10.0.0.110".parse().unwrap(),
            router: Some("10.0.0.1".parse().unwrap()),
            dns: vec!["10.0.0.53".parse().unwrap()],
            ntp: vec![],
            lease_secs: 600,
            offer_secs: 30,
            boot: Some(BootFiles {
                tftp_server: "10.0.0.1".parse().unwrap(),
                bios: "undionly.kpxe".into(),
                efi: "ipxe.efi".into(),
                ipxe_url: Some("http://10.0.0.1:8080/boot.ipxe".into()),
            }),
            reservations: HashMap::new(),
        },
        &[],
    )
}

static ENGINES: Mutex<Option<(Engine, Engine)>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut g = ENGINES.lock().unwrap();
    let (auth, proxy) = g.get_or_insert_with(|| (engine(Mode::Authoritative), engine(Mode::Proxy)));
    let now = data.first().copied().unwrap_or(0) as u64 * 97;
    for port in [67, 4011] {
        if let Ok(r) = auth.handle_at(data, port, now) {
            assert!(r.bytes.is_empty() || groundwork_boot::dhcp::engine::decode(&r.bytes).is_some());
        }
        let _ = proxy.handle_at(data, port, now);
    }
});
