//! The two endpoints of Vault's transit secrets engine that Vault's `seal "transit"` calls
//! (hashicorp/go-kms-wrapping, wrappers/transit): `encrypt/KEY` and `decrypt/KEY`, served by
//! Groundwork so Vault members unseal themselves. Pure: the server looks up the key and the
//! token (sealed Credentials) and hands them here with the request.
//!
//! Ciphertexts are `vault:v1:` + base64(nonce ‖ AES-256-GCM(plaintext) ‖ tag), the key name
//! as associated data (a ciphertext of one key never decrypts under another name).

use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Value, json};

const PREFIX: &str = "vault:v1:";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The Credential names of a transit key: (key, token).
pub fn transit_credentials(key_name: &str) -> (String, String) {
    (
        format!("{key_name}-vault-transit-key"),
        format!("{key_name}-vault-transit-token"),
    )
}

/// What the server found for the key name: the key (base64 of 32 bytes) and its token.
pub struct TransitKey {
    pub key_b64: String,
    pub token: String,
}

/// An answer: HTTP status and Vault-shaped JSON (`{"data": ...}` or `{"errors": [...]}`).
pub type Answer = (u16, Value);

fn err(code: u16, msg: &str) -> Answer {
    (code, json!({ "errors": [msg] }))
}

/// Handles `op` (`encrypt` or `decrypt`) on key `key_name` for a caller presenting `token`.
/// The same refusal (403) whether the key does not exist or the token is wrong, so a caller
/// learns nothing about key names.
pub fn handle(
    op: &str,
    key_name: &str,
    token: Option<&str>,
    body: &[u8],
    key: Option<TransitKey>,
) -> Answer {
    let Some(k) = key else {
        return err(403, "permission denied");
    };
    let given = token.unwrap_or("").as_bytes();
    if given.is_empty() || !constant_eq(given, k.token.as_bytes()) {
        return err(403, "permission denied");
    }
    let Ok(raw) = B64.decode(k.key_b64.trim()) else {
        return err(500, "the transit key is not base64");
    };
    let Ok(raw) = <[u8; 32]>::try_from(raw.as_slice()) else {
        return err(500, "the transit key is not 32 bytes");
    };
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return err(400, "the body is not JSON");
    };
    match op {
        "encrypt" => {
            let Some(p) = req["plaintext"].as_str() else {
                return err(400, "plaintext: required (base64)");
            };
            let Ok(plain) = B64.decode(p) else {
                return err(400, "plaintext: not base64");
            };
            (
                200,
                json!({"data": {"ciphertext": encrypt(&raw, key_name, &plain), "key_version": 1}}),
            )
        }
        "decrypt" => {
            let Some(c) = req["ciphertext"].as_str() else {
                return err(400, "ciphertext: required");
            };
            match decrypt(&raw, key_name, c) {
                Some(plain) => (200, json!({"data": {"plaintext": B64.encode(plain)}})),
                None => err(400, "ciphertext: invalid (not one of this key's)"),
            }
        }
        _ => err(404, "only encrypt and decrypt are served"),
    }
}

fn aead(k: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k).expect("a 32-byte key"))
}

pub fn encrypt(key: &[u8; 32], key_name: &str, plain: &[u8]) -> String {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .expect("the system's random source");
    let mut buf = plain.to_vec();
    aead(key)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(key_name.as_bytes()),
            &mut buf,
        )
        .expect("AES-GCM sealing");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    format!("{PREFIX}{}", B64.encode(out))
}

pub fn decrypt(key: &[u8; 32], key_name: &str, ciphertext: &str) -> Option<Vec<u8>> {
    let raw = B64.decode(ciphertext.strip_prefix(PREFIX)?).ok()?;
    if raw.len() < NONCE_LEN + 16 {
        return None;
    }
    let (nonce, rest) = raw.split_at(NONCE_LEN);
    let mut buf = rest.to_vec();
    let plain = aead(key)
        .open_in_place(
            Nonce::try_assume_unique_for_key(nonce).ok()?,
            Aad::from(key_name.as_bytes()),
            &mut buf,
        )
        .ok()?;
    Some(plain.to_vec())
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TransitKey {
        TransitKey {
            key_b64: B64.encode([7u8; 32]),
            token: "t0ken".into(),
        }
    }

    #[test]
    fn round_trip_tokens_names_and_tampering() {
        let body = json!({"plaintext": B64.encode(b"vault's root key")}).to_string();
        let (code, v) = handle(
            "encrypt",
            "p-secrets",
            Some("t0ken"),
            body.as_bytes(),
            Some(key()),
        );
        assert_eq!(code, 200, "{v}");
        let ct = v["data"]["ciphertext"].as_str().unwrap().to_string();
        assert!(ct.starts_with("vault:v1:"), "{ct}");
        let dec = json!({ "ciphertext": ct }).to_string();
        let (code, v) = handle(
            "decrypt",
            "p-secrets",
            Some("t0ken"),
            dec.as_bytes(),
            Some(key()),
        );
        assert_eq!(code, 200, "{v}");
        assert_eq!(
            B64.decode(v["data"]["plaintext"].as_str().unwrap())
                .unwrap(),
            b"vault's root key"
        );
        // Wrong, missing token; no such key: the same refusal.
        for (t, k) in [
            (Some("nope"), Some(key())),
            (None, Some(key())),
            (Some("t0ken"), None),
        ] {
            let (code, _) = handle("decrypt", "p-secrets", t, dec.as_bytes(), k);
            assert_eq!(code, 403);
        }
        // Another key name (associated data) or a flipped byte: refused.
        let (code, _) = handle(
            "decrypt",
            "p-other",
            Some("t0ken"),
            dec.as_bytes(),
            Some(key()),
        );
        assert_eq!(code, 400);
        let mut raw = B64.decode(ct.strip_prefix(PREFIX).unwrap()).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let bad = json!({ "ciphertext": format!("{PREFIX}{}", B64.encode(raw)) }).to_string();
        let (code, _) = handle(
            "decrypt",
            "p-secrets",
            Some("t0ken"),
            bad.as_bytes(),
            Some(key()),
        );
        assert_eq!(code, 400);
        // Garbage bodies are 400s that name the field.
        let (code, v) = handle("encrypt", "p-secrets", Some("t0ken"), b"{}", Some(key()));
        assert_eq!(code, 400);
        assert!(v.to_string().contains("plaintext"));
        let (code, _) = handle("encrypt", "p-secrets", Some("t0ken"), b"\xff", Some(key()));
        assert_eq!(code, 400);
        let (code, _) = handle("rewrap", "p-secrets", Some("t0ken"), b"{}", Some(key()));
        assert_eq!(code, 404);
    }
}
