//! Encryption of secrets at rest: AES-256-GCM (ring) with a 32-byte key that lives beside the
//! store (`DATA_DIR/secret.key`), with the object's name as associated data, so a sealed value
//! copied into another object does not open. Format: `v1:` + base64(nonce ‖ ciphertext ‖ tag).
//!
//! The same key file signs short-lived tokens (HMAC-SHA256 under a derived key): machines'
//! one-time join tokens, members' join tokens and operators' API tokens, each bound to an
//! audience so one kind is never accepted where another is expected.

use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// The keys that seal secrets and sign tokens: the first is the active one (it seals and
/// signs); the others, retired by a rotation, still open and verify until every sealed value
/// has been sealed again (`groundwork secrets reseal`) and they are dropped. `Debug` never
/// shows them.
#[derive(Clone)]
pub struct SecretKey(Vec<[u8; 32]>);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({} keys, <redacted>)", self.0.len())
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

/// Why a token was refused. The messages never contain the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not a Groundwork token (expected gw1.<claims>.<signature>)")]
    Format,
    #[error("the token's signature does not verify (not issued by this cluster, or altered)")]
    Signature,
    #[error("the token is for {got:?}, not {want:?}")]
    Audience { want: String, got: String },
    #[error("the token expired at {0}")]
    Expired(String),
}

/// What a signed token says: for whom (`aud`: which service accepts it), about whom (`sub`:
/// a user, a MAC, a member), when it was issued and until when it is good (Unix seconds), and
/// a random ID.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    pub aud: String,
    pub sub: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

fn b64url() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .expect("the system random generator works");
    b
}

impl SecretKey {
    pub fn generate() -> SecretKey {
        SecretKey(vec![random()])
    }

    /// The key file's text: one base64 key per line, the active one first.
    pub fn encode(&self) -> String {
        self.0
            .iter()
            .map(|k| base64::engine::general_purpose::STANDARD.encode(k))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn decode(text: &str) -> Result<SecretKey, SecretError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().map(str::trim).enumerate() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let b = base64::engine::general_purpose::STANDARD
                .decode(line)
                .map_err(|_| SecretError::Key(format!("line {}: not base64", i + 1)))?;
            let k: [u8; 32] = b
                .try_into()
                .map_err(|_| SecretError::Key(format!("line {}: must be 32 bytes", i + 1)))?;
            keys.push(k);
        }
        if keys.is_empty() {
            return Err(SecretError::Key("no key in the file".into()));
        }
        Ok(SecretKey(keys))
    }

    /// A new active key in front of the current ones (which stay, retired, to open what they
    /// sealed).
    pub fn rotated(&self) -> SecretKey {
        let mut keys = vec![random()];
        keys.extend(self.0.iter().copied());
        SecretKey(keys)
    }

    /// Only the active key: what remains once every value is sealed with it.
    pub fn active_only(&self) -> SecretKey {
        SecretKey(vec![self.0[0]])
    }

    /// How many keys (the active one and the retired ones).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn aead(k: &[u8; 32]) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k).expect("32-byte key"))
    }

    /// The token-signing key derived from `k` (never the sealing key itself).
    fn hmac(k: &[u8; 32]) -> ring::hmac::Key {
        let base = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k);
        let derived = ring::hmac::sign(&base, b"groundwork token signing key v1");
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref())
    }

    /// A signed token for `aud` about `sub`, good for `ttl_secs`: `gw1.` + base64url(JSON
    /// claims) + `.` + base64url(HMAC-SHA256 under a key derived from the active key).
    pub fn issue_token(&self, aud: &str, sub: &str, groups: &[String], ttl_secs: i64) -> String {
        let now = jiff::Timestamp::now().as_second();
        let jti: String = random::<8>().iter().map(|b| format!("{b:02x}")).collect();
        let claims = Claims {
            aud: aud.into(),
            sub: sub.into(),
            groups: groups.to_vec(),
            iat: now,
            exp: now + ttl_secs,
            jti,
        };
        let body = b64url().encode(serde_json::to_vec(&claims).expect("claims serialize"));
        let tag = ring::hmac::sign(&Self::hmac(&self.0[0]), format!("gw1.{body}").as_bytes());
        format!("gw1.{body}.{}", b64url().encode(tag.as_ref()))
    }

    /// Checks a token's signature (under any of the keys), audience and expiry.
    pub fn verify_token(&self, token: &str, aud: &str) -> Result<Claims, TokenError> {
        let mut parts = token.trim().split('.');
        let (Some("gw1"), Some(body), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Format);
        };
        let tag = b64url().decode(tag).map_err(|_| TokenError::Format)?;
        let signed = format!("gw1.{body}");
        if !self
            .0
            .iter()
            .any(|k| ring::hmac::verify(&Self::hmac(k), signed.as_bytes(), &tag).is_ok())
        {
            return Err(TokenError::Signature);
        }
        let claims: Claims = b64url()
            .decode(body)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Format)?;
        if claims.aud != aud {
            return Err(TokenError::Audience {
                want: aud.into(),
                got: claims.aud,
            });
        }
        if claims.exp <= jiff::Timestamp::now().as_second() {
            let at = jiff::Timestamp::from_second(claims.exp)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| claims.exp.to_string());
            return Err(TokenError::Expired(at));
        }
        Ok(claims)
    }

    /// Encrypts `plaintext` for the object named `context` with the active key.
    pub fn seal(&self, context: &str, plaintext: &str) -> String {
        let nonce = random::<NONCE_LEN>();
        let mut buf = plaintext.as_bytes().to_vec();
        Self::aead(&self.0[0])
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

    /// Decrypts what [`SecretKey::seal`] produced for the same `context`, with whichever key
    /// sealed it; also says whether that was the active key.
    pub fn open_with(&self, context: &str, sealed: &str) -> Result<(String, bool), SecretError> {
        let b64 = sealed.strip_prefix("v1:").ok_or(SecretError::Format)?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| SecretError::Format)?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(SecretError::Format);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        for (i, k) in self.0.iter().enumerate() {
            let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Format)?;
            let mut buf = ct.to_vec();
            if let Ok(plain) =
                Self::aead(k).open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            {
                let text = String::from_utf8(plain.to_vec()).map_err(|_| SecretError::Open)?;
                return Ok((text, i == 0));
            }
        }
        Err(SecretError::Open)
    }

    /// Decrypts what [`SecretKey::seal`] produced for the same `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<String, SecretError> {
        self.open_with(context, sealed).map(|(t, _)| t)
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
    }

    #[test]
    fn rotation_keeps_old_values_open_and_seals_with_the_new_key() {
        let old = SecretKey::generate();
        let s = old.seal("credentials/bmc", "hunter2");
        let new = old.rotated();
        assert_eq!(new.len(), 2);
        assert_eq!(
            new.open_with("credentials/bmc", &s).unwrap(),
            ("hunter2".to_string(), false)
        );
        let s2 = new.seal("credentials/bmc", "hunter2");
        assert_eq!(
            new.open_with("credentials/bmc", &s2).unwrap(),
            ("hunter2".to_string(), true)
        );
        assert_eq!(old.open("credentials/bmc", &s2), Err(SecretError::Open));
        let dropped = new.active_only();
        assert_eq!(dropped.open("credentials/bmc", &s), Err(SecretError::Open));
        let reread = SecretKey::decode(&new.encode()).unwrap();
        assert_eq!(reread.open("credentials/bmc", &s).unwrap(), "hunter2");
        assert!(SecretKey::decode("# nothing\n").is_err());
        assert_eq!(
            SecretKey::decode("AAAA\n").unwrap_err(),
            SecretError::Key("line 1: must be 32 bytes".into())
        );
    }

    #[test]
    fn tokens_are_bound_to_their_audience_key_and_lifetime() {
        let k = SecretKey::generate();
        let t = k.issue_token("agent-join", "52:54:00:aa:00:01", &[], 60);
        let c = k.verify_token(&t, "agent-join").unwrap();
        assert_eq!(c.sub, "52:54:00:aa:00:01");
        assert_eq!(c.exp - c.iat, 60);
        assert_ne!(
            c.jti,
            k.verify_token(&k.issue_token("agent-join", "x", &[], 60), "agent-join")
                .unwrap()
                .jti
        );
        assert_eq!(
            k.verify_token(&t, "api"),
            Err(TokenError::Audience {
                want: "api".into(),
                got: "agent-join".into()
            })
        );
        assert_eq!(
            SecretKey::generate().verify_token(&t, "agent-join"),
            Err(TokenError::Signature)
        );
        // Altering the claims (a longer life, another MAC) breaks the signature.
        let parts: Vec<&str> = t.split('.').collect();
        let mut claims: Claims =
            serde_json::from_slice(&b64url().decode(parts[1]).unwrap()).unwrap();
        claims.sub = "52:54:00:aa:00:02".into();
        let forged = format!(
            "gw1.{}.{}",
            b64url().encode(serde_json::to_vec(&claims).unwrap()),
            parts[2]
        );
        assert_eq!(
            k.verify_token(&forged, "agent-join"),
            Err(TokenError::Signature)
        );
        let expired = k.issue_token("api", "alice", &[], -1);
        assert!(matches!(
            k.verify_token(&expired, "api"),
            Err(TokenError::Expired(_))
        ));
        assert_eq!(k.verify_token("abc", "api"), Err(TokenError::Format));
        // A token signed before a rotation still verifies after it.
        assert!(k.rotated().verify_token(&t, "agent-join").is_ok());
        assert!(!format!("{:?}", TokenError::Signature).contains(&t));
    }
}
