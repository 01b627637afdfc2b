//! Encryption of secrets at rest: AES-256-GCM (ring) with a 32-byte key that lives beside the
//! store (`DATA_DIR/secret.key`), with the object's name as associated data, so a sealed value
//! copied into another object does not open. Format: `v1:` + base64(nonce ‖ ciphertext ‖ tag).

use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// A 256-bit key. `Debug` never shows it.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("not a sealed value (expected v1:...)")]
    Format,
    #[error("cannot decrypt: wrong key, or the value was not sealed for this object")]
    Open,
    #[error("key: {0}")]
    Key(String),
}

impl SecretKey {
    pub fn generate() -> SecretKey {
        let mut k = [0u8; 32];
        SystemRandom::new()
            .fill(&mut k)
            .expect("the system random generator works");
        SecretKey(k)
    }

    /// The key as stored in its file (base64, one line).
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    pub fn decode(text: &str) -> Result<SecretKey, SecretError> {
        let b = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| SecretError::Key("not base64".into()))?;
        let k: [u8; 32] = b
            .try_into()
            .map_err(|_| SecretError::Key("must be 32 bytes".into()))?;
        Ok(SecretKey(k))
    }

    fn key(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.0).expect("32-byte key"))
    }

    /// The boot token of a MAC: what the iPXE script hands the ramdisk agent, so that only a
    /// machine that booted through us can report inventory for that MAC (HMAC-SHA256 under
    /// this key, 128 bits, hex).
    pub fn boot_token(&self, mac: &str) -> String {
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        let tag = ring::hmac::sign(
            &k,
            format!("groundwork boot token:{}", mac.to_ascii_lowercase()).as_bytes(),
        );
        tag.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Checks a boot token in constant time.
    pub fn verify_boot_token(&self, mac: &str, token: &str) -> bool {
        let want = self.boot_token(mac);
        want.len() == token.len()
            && want
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |a, (x, y)| a | (x ^ y))
                == 0
    }

    /// Encrypts `plaintext` for the object named `context`.
    pub fn seal(&self, context: &str, plaintext: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system random generator works");
        let mut buf = plaintext.as_bytes().to_vec();
        self.key()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .expect("AES-GCM sealing of a short value");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        format!(
            "v1:{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        )
    }

    /// Decrypts what [`SecretKey::seal`] produced for the same `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<String, SecretError> {
        let b64 = sealed.strip_prefix("v1:").ok_or(SecretError::Format)?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| SecretError::Format)?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(SecretError::Format);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Format)?;
        let mut buf = ct.to_vec();
        let plain = self
            .key()
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| SecretError::Open)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open_bound_to_the_object() {
        let k = SecretKey::generate();
        let s = k.seal("credentials/bmc", "hunter2");
        assert!(s.starts_with("v1:") && !s.contains("hunter2"));
        assert_ne!(
            s,
            k.seal("credentials/bmc", "hunter2"),
            "fresh nonce each time"
        );
        assert_eq!(k.open("credentials/bmc", &s).unwrap(), "hunter2");
        assert_eq!(k.open("credentials/other", &s), Err(SecretError::Open));
        assert_eq!(
            SecretKey::generate().open("credentials/bmc", &s),
            Err(SecretError::Open)
        );
        assert_eq!(
            k.open("credentials/bmc", "hunter2"),
            Err(SecretError::Format)
        );
        let k2 = SecretKey::decode(&k.encode()).unwrap();
        assert_eq!(k2.open("credentials/bmc", &s).unwrap(), "hunter2");
        assert!(!format!("{k:?}").contains(&k.encode()));
        let t = k.boot_token("52:54:00:AA:00:01");
        assert_eq!(t.len(), 32);
        assert!(k.verify_boot_token("52:54:00:aa:00:01", &t));
        assert!(!k.verify_boot_token("52:54:00:aa:00:02", &t));
        assert!(!k2.verify_boot_token("52:54:00:aa:00:01", "00"));
    }
}
