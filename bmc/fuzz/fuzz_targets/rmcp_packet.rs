//! Fuzzes everything that parses bytes from the network in the IPMI client: RMCP / RMCP+
//! packets (with and without session keys, so the integrity and decryption paths run), IPMI
//! messages, and the session-setup payloads.
#![no_main]

use groundwork_bmc::ipmi::wire::{self, CipherSuite, Keys};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let k3 = Keys::derive(CipherSuite::Suite3, b"fuzz-sik-fuzz-sik-xx");
    let k17 = Keys::derive(CipherSuite::Suite17, b"fuzz-sik-fuzz-sik-xx");
    let _ = wire::parse_packet(data, None);
    let _ = wire::parse_packet(data, Some(&k3));
    let _ = wire::parse_packet(data, Some(&k17));
    let _ = wire::parse_message(data);
    let _ = wire::parse_open_session_response(data);
    let _ = wire::parse_rakp2(data);
    let _ = wire::parse_rakp4(data);
    let _ = wire::decrypt(&k3, data);
    // Whatever decrypts must re-encrypt and decrypt to itself.
    if let Ok(plain) = wire::decrypt(&k17, data) {
        let again = wire::encrypt(&k17, &plain);
        assert_eq!(wire::decrypt(&k17, &again).unwrap(), plain);
    }
});
