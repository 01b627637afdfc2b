//! Placeholders in a ServiceInstance: `{dir}`, `{conf}`, `{data}`, `{artifact}`,
//! `{agent_api}`, `{agent_addr}`, `{cluster_ca}`, `{tls_cert}`, `{tls_key}` in paths, arguments
//! and file contents; `{secret:C}`, `{secret-user:C}`, `{secret-ssha:C}`, `{secret-sql:C}` in file
//! contents.

use std::collections::BTreeMap;

use groundwork_types::agent::SecretValue;

/// The directories of one config version of an instance.
#[derive(Clone, Debug, Default)]
pub struct Vars {
    pub dir: String,
    pub conf: String,
    pub data: String,
    pub artifact: String,
    /// `{agent_api}`: Groundwork's agent API as this machine's agent calls it (https://...,
    /// the server name `groundwork-boot`, which the agent resolves itself).
    pub agent_api: String,
    /// `{agent_addr}`: the agent API's address (`IP:PORT`), for services that connect by
    /// address and check the server name `groundwork-boot` separately.
    pub agent_addr: String,
    /// `{cluster_ca}`: the cluster CA's PEM file on this machine.
    pub cluster_ca: String,
    /// `{tls_cert}`, `{tls_key}`: the instance's certificate and key (PEM), when its spec
    /// asks for one (`tls`).
    pub tls_cert: String,
    pub tls_key: String,
}

impl Vars {
    pub fn expand(&self, s: &str) -> String {
        s.replace("{dir}", &self.dir)
            .replace("{conf}", &self.conf)
            .replace("{data}", &self.data)
            .replace("{artifact}", &self.artifact)
            .replace("{agent_api}", &self.agent_api)
            .replace("{agent_addr}", &self.agent_addr)
            .replace("{cluster_ca}", &self.cluster_ca)
            .replace("{tls_cert}", &self.tls_cert)
            .replace("{tls_key}", &self.tls_key)
    }

    pub fn expand_all(&self, args: &[String]) -> Vec<String> {
        args.iter().map(|a| self.expand(a)).collect()
    }
}

/// `{SSHA}` of a password (salted SHA-1, as slapd's `slappasswd` makes it).
pub fn ssha(password: &str, salt: [u8; 8]) -> String {
    use base64::Engine;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(password.as_bytes());
    ctx.update(&salt);
    let mut out = ctx.finish().as_ref().to_vec();
    out.extend_from_slice(&salt);
    format!(
        "{{SSHA}}{}",
        base64::engine::general_purpose::STANDARD.encode(out)
    )
}

/// The inside of a single-quoted SQL string literal (MariaDB's escapes).
pub fn sql_string(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\0' => out.push_str("\\0"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// Replaces the secret placeholders of `text` with the values fetched. A salt per file
/// version keeps the hashed value stable while the password is (so the digest of what is
/// written does not churn).
pub fn fill_secrets(text: &str, secrets: &BTreeMap<String, SecretValue>, salt: [u8; 8]) -> String {
    let mut out = text.to_string();
    for (name, v) in secrets {
        out = out
            .replace(&format!("{{secret:{name}}}"), &v.password)
            .replace(&format!("{{secret-user:{name}}}"), &v.username)
            .replace(&format!("{{secret-ssha:{name}}}"), &ssha(&v.password, salt))
            .replace(&format!("{{secret-sql:{name}}}"), &sql_string(&v.password));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssha_matches_slappasswd() {
        // slappasswd -s secret with salt "saltsalt" (checked with `slappasswd -h {SSHA}`'s
        // format: base64(sha1(pw + salt) + salt)).
        let h = ssha("secret", *b"saltsalt");
        assert!(h.starts_with("{SSHA}"));
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&h[6..])
            .unwrap();
        assert_eq!(raw.len(), 28);
        assert_eq!(&raw[20..], b"saltsalt");
    }

    #[test]
    fn sql_strings_are_escaped() {
        assert_eq!(sql_string("a'b\\c\n"), "a\\'b\\\\c\\n");
        assert_eq!(sql_string("plain"), "plain");
    }

    #[test]
    fn placeholders() {
        let v = Vars {
            dir: "/d".into(),
            conf: "/d/conf/1".into(),
            data: "/d/data".into(),
            artifact: "/a/x".into(),
            agent_api: "https://g:8443".into(),
            agent_addr: "10.0.0.1:8443".into(),
            cluster_ca: "/v/ca.pem".into(),
            tls_cert: "/d/tls/cert.pem".into(),
            tls_key: "/d/tls/key.pem".into(),
        };
        assert_eq!(
            v.expand("--config={conf}/p.yml --db={data} {artifact} {dir}"),
            "--config=/d/conf/1/p.yml --db=/d/data /a/x /d"
        );
        assert_eq!(
            v.expand("cert={tls_cert} key={tls_key} ca={cluster_ca}"),
            "cert=/d/tls/cert.pem key=/d/tls/key.pem ca=/v/ca.pem"
        );
        let mut s = BTreeMap::new();
        s.insert(
            "db".to_string(),
            SecretValue {
                username: "root".into(),
                password: "pw".into(),
            },
        );
        assert_eq!(
            fill_secrets(
                "u={secret-user:db} p={secret:db} q={secret:other}",
                &s,
                [0; 8]
            ),
            "u=root p=pw q={secret:other}"
        );
    }
}
