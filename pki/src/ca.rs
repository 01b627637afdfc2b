//! The cluster's certificate authority and the certificates it issues (rcgen, ECDSA P-256).
//!
//! `DIR/ca.crt` + `DIR/ca.key` are created on first start or by `groundwork pki init` (or
//! given: put your own there). The server's certificate is issued again at every start for the
//! names and addresses it serves under, and kept in memory; client certificates (the
//! operator's `admin`, the in-process controllers) are issued once and kept. Keys are written
//! with mode 0600. A client certificate names its user in CN and its group in O, as Kubernetes
//! reads them (one group per certificate).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertKey { key: <redacted> }")
    }
}

pub struct Pki {
    dir: PathBuf,
    ca_cert_pem: String,
    ca_key_pem: String,
}

/// What a certificate is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    /// Both: a raft member serves and calls.
    Member,
}

/// Writes a file readable by its owner only: a fresh temporary (never an existing file with
/// looser permissions, never a symlink), synced, renamed over `path`, and its directory synced.
pub fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
    // The rename is durable only once the directory is: a power cut could otherwise leave
    // the old file (or none), e.g. a machine with a retired certificate and not its new one.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(())
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

impl Pki {
    /// Loads the CA from `dir`, or creates it (10 years) when `dir` has none.
    pub fn load_or_create(dir: &Path) -> Result<Pki, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        if crt.exists() != key.exists() {
            return Err(format!(
                "{} has only one of ca.crt and ca.key: restore the other (a new CA would lock out every client)",
                dir.display()
            ));
        }
        if crt.exists() && key.exists() {
            let ca_cert_pem =
                std::fs::read_to_string(&crt).map_err(|e| format!("{}: {e}", crt.display()))?;
            let ca_key_pem =
                std::fs::read_to_string(&key).map_err(|e| format!("{}: {e}", key.display()))?;
            // Both must parse, and belong together: the key is the first certificate's (the
            // others in ca.crt are only trusted: a CA being rotated in or out).
            let kp =
                KeyPair::from_pem(&ca_key_pem).map_err(|e| format!("{}: {e}", key.display()))?;
            if !key_matches(&ca_cert_pem, &kp) {
                return Err(format!(
                    "{} is not the key of the first certificate in {}",
                    key.display(),
                    crt.display()
                ));
            }
            Issuer::from_ca_cert_pem(&ca_cert_pem, kp)
                .map_err(|e| format!("{}: {e}", crt.display()))?;
            return Ok(Pki {
                dir: dir.to_path_buf(),
                ca_cert_pem,
                ca_key_pem,
            });
        }
        let (ca_cert_pem, ca_key_pem) = new_ca()?;
        let pki = Pki {
            dir: dir.to_path_buf(),
            ca_cert_pem,
            ca_key_pem,
        };
        write_private(&key, &pki.ca_key_pem)?;
        std::fs::write(&crt, &pki.ca_cert_pem).map_err(|e| format!("{}: {e}", crt.display()))?;
        tracing::info!(dir = %dir.display(), "created the cluster CA");
        Ok(pki)
    }

    pub fn ca_key_pem(&self) -> &str {
        &self.ca_key_pem
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Issues a certificate: `cn` (the user, or the server's name), `group` (O), the names
    /// and addresses it is valid for, what for, and for how long.
    pub fn issue(
        &self,
        cn: &str,
        group: Option<&str>,
        sans: &[String],
        usage: Usage,
        days: i64,
    ) -> Result<CertKey, String> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem).map_err(|e| e.to_string())?;
        let issuer =
            Issuer::from_ca_cert_pem(&self.ca_cert_pem, ca_key).map_err(|e| e.to_string())?;
        let kp = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut p = CertificateParams::new(sans.to_vec()).map_err(|e| format!("{sans:?}: {e}"))?;
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        if let Some(g) = group {
            p.distinguished_name.push(DnType::OrganizationName, g);
        }
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = match usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Member => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        p.use_authority_key_identifier_extension = true;
        validity(&mut p, days);
        let cert = p.signed_by(&kp, &issuer).map_err(|e| e.to_string())?;
        Ok(CertKey {
            cert_pem: cert.pem(),
            key_pem: kp.serialize_pem(),
        })
    }

    /// Signs a machine's certificate request: whatever the request asks, the certificate says
    /// `system:node:NODE` in group `system:nodes`, for client authentication only, valid
    /// `hours`. Only the request's public key is taken from it.
    pub fn sign_machine(&self, csr_pem: &str, node: &str, hours: i64) -> Result<String, String> {
        let mut req = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| format!("csr: not a certificate request: {e}"))?;
        let ca_key = KeyPair::from_pem(&self.ca_key_pem).map_err(|e| e.to_string())?;
        let issuer =
            Issuer::from_ca_cert_pem(&self.ca_cert_pem, ca_key).map_err(|e| e.to_string())?;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, format!("system:node:{node}"));
        p.distinguished_name
            .push(DnType::OrganizationName, crate::NODES_GROUP);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now + time::Duration::hours(hours);
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&random_serial()));
        req.params = p;
        let cert = req.signed_by(&issuer).map_err(|e| e.to_string())?;
        Ok(cert.pem())
    }

    /// Signs a service instance's certificate request: CN `cn`, valid for exactly `sans`
    /// (names and addresses chosen by the caller, never taken from the request), for server
    /// and client authentication (cluster members are both), valid `hours`. Only the
    /// request's public key is taken from it.
    pub fn sign_service(
        &self,
        csr_pem: &str,
        cn: &str,
        sans: &[String],
        hours: i64,
    ) -> Result<String, String> {
        let mut req = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| format!("csr: not a certificate request: {e}"))?;
        let ca_key = KeyPair::from_pem(&self.ca_key_pem).map_err(|e| e.to_string())?;
        let issuer =
            Issuer::from_ca_cert_pem(&self.ca_cert_pem, ca_key).map_err(|e| e.to_string())?;
        let mut p = CertificateParams::new(sans.to_vec()).map_err(|e| format!("{sans:?}: {e}"))?;
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now + time::Duration::hours(hours);
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&random_serial()));
        req.params = p;
        let cert = req.signed_by(&issuer).map_err(|e| e.to_string())?;
        Ok(cert.pem())
    }

    /// The server's certificate for these names and addresses: issued at every start, kept in
    /// memory only (several members may share one directory), valid one year.
    pub fn server(&self, sans: &[String]) -> Result<CertKey, String> {
        self.issue("groundwork-apiserver", None, sans, Usage::Server, 365)
    }

    /// A client certificate kept in `DIR/NAME.crt` + `NAME.key`: issued once (valid one
    /// year), then reused; issued again once it is within 30 days of expiry.
    pub fn client(&self, name: &str, cn: &str, group: Option<&str>) -> Result<CertKey, String> {
        let (crt, key) = (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        );
        if let (Ok(cert_pem), Ok(key_pem)) =
            (std::fs::read_to_string(&crt), std::fs::read_to_string(&key))
            && not_after(&cert_pem).is_some_and(|t| t > now_unix() + 30 * 86400)
        {
            return Ok(CertKey { cert_pem, key_pem });
        }
        let ck = self.issue(cn, group, &[], Usage::Client, 365)?;
        write_private(&key, &ck.key_pem)?;
        std::fs::write(&crt, &ck.cert_pem).map_err(|e| format!("{}: {e}", crt.display()))?;
        Ok(ck)
    }
}

/// A new CA (10 years): certificate and key, PEM.
fn new_ca() -> Result<(String, String), String> {
    let kp = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "groundwork-ca");
    p.distinguished_name
        .push(DnType::OrganizationName, "groundwork");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // Two CAs of one cluster (during a rotation) must differ in name for path building.
    p.distinguished_name.push(
        DnType::OrganizationalUnitName,
        format!("{:x}", u128::from_be_bytes(random_serial())),
    );
    validity(&mut p, 3650);
    let cert = p.self_signed(&kp).map_err(|e| e.to_string())?;
    Ok((cert.pem(), kp.serialize_pem()))
}

/// Whether `kp` is the key of the first certificate in `pem`.
fn key_matches(pem: &str, kp: &KeyPair) -> bool {
    use rcgen::PublicKeyData;
    pem_der(pem)
        .and_then(|der| {
            let (_, c) = x509_parser::parse_x509_certificate(&der).ok()?;
            Some(c.public_key().subject_public_key.data.to_vec())
        })
        .is_some_and(|k| k == kp.der_bytes())
}

/// Whether the certificate `der` was issued by the first CA of `bundle` (the one that issues
/// now): false during a CA rotation for certificates from the CA being replaced.
pub fn issued_by_first(der: &[u8], bundle: &str) -> bool {
    let Some(ca) = pem_der(bundle) else {
        return false;
    };
    match (
        x509_parser::parse_x509_certificate(der),
        x509_parser::parse_x509_certificate(&ca),
    ) {
        (Ok((_, c)), Ok((_, a))) => c.issuer().as_raw() == a.subject().as_raw(),
        _ => false,
    }
}

/// The PEM certificates of a bundle, in order.
pub fn pem_certs(pem: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in pem.lines() {
        if line.starts_with("-----BEGIN CERTIFICATE") {
            cur.clear();
        }
        cur.push_str(line);
        cur.push('\n');
        if line.starts_with("-----END CERTIFICATE") {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

/// A step of a CA rotation (`groundwork pki rotate-ca`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// A new CA is trusted beside the current one, which still issues (`ca.next.key`).
    Begin,
    /// The new CA issues; the old one stays trusted. The admin and controllers
    /// certificates are issued again (by the new CA) at the next start.
    Promote,
    /// Only the new CA is trusted: certificates from the old one stop working.
    Finish,
}

/// Runs one step of a CA rotation on the files in `dir`; returns what was done. Copy the
/// directory to every member and restart them one at a time after each step.
pub fn rotate(dir: &Path, step: Rotation) -> Result<String, String> {
    let (crt, key, next) = (
        dir.join("ca.crt"),
        dir.join("ca.key"),
        dir.join("ca.next.key"),
    );
    let bundle = std::fs::read_to_string(&crt).map_err(|e| format!("{}: {e}", crt.display()))?;
    let certs = pem_certs(&bundle);
    // Replaced atomically: members read it at start.
    let write_bundle = |certs: &[String]| write_private(&crt, &certs.concat());
    match step {
        Rotation::Begin => {
            if certs.len() != 1 || next.exists() {
                return Err(format!(
                    "a rotation is already under way in {} (finish it first)",
                    dir.display()
                ));
            }
            let (cert, k) = new_ca()?;
            write_private(&next, &k)?;
            write_bundle(&[certs[0].clone(), cert])?;
            Ok("a new CA is trusted beside the current one; the current one still issues. Copy the directory to every member, restart them one at a time, then run --step promote.".into())
        }
        Rotation::Promote => {
            let k = std::fs::read_to_string(&next)
                .map_err(|e| format!("{}: {e} (run --step begin first)", next.display()))?;
            let kp = KeyPair::from_pem(&k).map_err(|e| format!("{}: {e}", next.display()))?;
            let Some(new) = certs.iter().find(|c| key_matches(c, &kp)).cloned() else {
                return Err(format!(
                    "{} has no certificate for {}",
                    crt.display(),
                    next.display()
                ));
            };
            let mut order = vec![new.clone()];
            order.extend(certs.into_iter().filter(|c| *c != new));
            write_private(&key, &k)?;
            write_bundle(&order)?;
            std::fs::remove_file(&next).map_err(|e| format!("{}: {e}", next.display()))?;
            for f in ["admin", "controllers"] {
                let _ = std::fs::remove_file(dir.join(format!("{f}.crt")));
                let _ = std::fs::remove_file(dir.join(format!("{f}.key")));
            }
            Ok("the new CA issues now; the old one is still trusted. Copy the directory to every member, restart them one at a time (kubeconfigs and member certificates are issued again), renew client certificates you issued, then run --step finish.".into())
        }
        Rotation::Finish => {
            if next.exists() {
                return Err("promote the new CA first (--step promote)".into());
            }
            if certs.len() < 2 {
                return Err("no rotation under way: ca.crt holds one CA".into());
            }
            write_bundle(&certs[..1])?;
            Ok("only the new CA is trusted. Copy the directory to every member and restart them one at a time.".into())
        }
    }
}

fn random_serial() -> [u8; 16] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system random generator works");
    b[0] &= 0x7f; // a positive integer
    b
}

/// A new private key (PEM) and a certificate request for it (PEM) naming `cn`: what a
/// machine sends to be issued its certificate (the key never leaves it).
pub fn key_and_request(cn: &str) -> Result<(String, String), String> {
    let kp = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    let csr = p.serialize_request(&kp).map_err(|e| e.to_string())?;
    Ok((kp.serialize_pem(), csr.pem().map_err(|e| e.to_string())?))
}

/// `sha256:HEX` of the first certificate's DER: how a joining member or a booting machine
/// pins the cluster CA it fetched over an untrusted network.
pub fn ca_hash(pem: &str) -> Option<String> {
    Some(groundwork_types::agent::sha256_tag(&pem_der(pem)?))
}

/// The serial number of a certificate (DER): lowercase hex without leading zeros (as the
/// integer it is, whatever padding its encoding has).
pub fn serial(der: &[u8]) -> Option<String> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    let hex = c
        .raw_serial_as_string()
        .replace(':', "")
        .to_ascii_lowercase();
    let trimmed = hex.trim_start_matches('0');
    Some(if trimmed.is_empty() { "0" } else { trimmed }.to_string())
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The first certificate's expiry (Unix seconds).
pub fn not_after(pem: &str) -> Option<i64> {
    let der = pem_der(pem)?;
    let (_, c) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some(c.validity().not_after.timestamp())
}

/// The first certificate's validity (not before, not after; Unix seconds).
pub fn validity_of(pem: &str) -> Option<(i64, i64)> {
    let der = pem_der(pem)?;
    let (_, c) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some((
        c.validity().not_before.timestamp(),
        c.validity().not_after.timestamp(),
    ))
}

/// The DER of the first PEM block.
pub fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()
        .map(|c| c.to_vec())
}

/// User (CN) and groups (O) of a client certificate.
pub fn subject(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    let s = c.subject();
    let cn = s.iter_common_name().next()?.as_str().ok()?.to_string();
    let groups = s
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(String::from))
        .collect();
    Some((cn, groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_gets_its_node_identity_whatever_its_request_asks() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path()).unwrap();
        // The request asks to be an administrator: the certificate says what the server says.
        let kp = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "admin");
        p.distinguished_name
            .push(DnType::OrganizationName, crate::MASTERS);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = p.serialize_request(&kp).unwrap().pem().unwrap();
        let pem = pki.sign_machine(&csr, "n1", 24).unwrap();
        let der = pem_der(&pem).unwrap();
        let (cn, groups) = subject(&der).unwrap();
        assert_eq!(cn, "system:node:n1");
        assert_eq!(groups, vec![crate::NODES_GROUP.to_string()]);
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(!c.is_ca(), "never a CA");
        assert!(c.subject_alternative_name().unwrap().is_none(), "no names");
        let (from, to) = validity_of(&pem).unwrap();
        assert!((to - from - 24 * 3600 - 300).abs() < 5, "{from} {to}");
        // Two certificates never share a serial number.
        let other = pki.sign_machine(&csr, "n1", 24).unwrap();
        assert_ne!(serial(&der), serial(&pem_der(&other).unwrap()));
        // The key stays with the machine: key_and_request makes a request the CA signs.
        let (_key, csr) = key_and_request("system:node:n2").unwrap();
        assert!(pki.sign_machine(&csr, "n2", 1).is_ok());
        assert!(
            pki.sign_machine("not a request", "n2", 1)
                .unwrap_err()
                .contains("csr")
        );
        assert!(ca_hash(pki.ca_pem()).unwrap().starts_with("sha256:"));
    }

    #[test]
    fn the_ca_rotates_in_three_steps_and_refuses_a_key_that_is_not_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let old = Pki::load_or_create(dir.path()).unwrap();
        let old_ca = old.ca_pem().to_string();
        assert!(
            rotate(dir.path(), Rotation::Promote).is_err(),
            "begin first"
        );
        assert!(rotate(dir.path(), Rotation::Finish).is_err());
        rotate(dir.path(), Rotation::Begin).unwrap();
        assert!(
            rotate(dir.path(), Rotation::Begin).is_err(),
            "one at a time"
        );
        // Trusted beside; the old one still issues.
        let p = Pki::load_or_create(dir.path()).unwrap();
        assert_eq!(pem_certs(p.ca_pem()).len(), 2);
        assert_eq!(pem_certs(p.ca_pem())[0], old_ca);
        rotate(dir.path(), Rotation::Promote).unwrap();
        let p = Pki::load_or_create(dir.path()).unwrap();
        let certs = pem_certs(p.ca_pem());
        assert_eq!(certs.len(), 2);
        assert_ne!(certs[0], old_ca, "the new CA issues");
        assert_eq!(certs[1], old_ca, "the old one is still trusted");
        assert!(
            !dir.path().join("admin.crt").exists(),
            "issued again at start"
        );
        // What it issues chains to the new CA (rustls verifies it with the bundle).
        let ck = p.client("admin", "admin", Some("system:masters")).unwrap();
        let issuer_of = |pem: &str| {
            let der = pem_der(pem).unwrap();
            let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
            c.issuer().to_string()
        };
        let subject_of = |pem: &str| {
            let der = pem_der(pem).unwrap();
            let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
            c.subject().to_string()
        };
        assert_eq!(issuer_of(&ck.cert_pem), subject_of(&certs[0]));
        assert_ne!(subject_of(&certs[0]), subject_of(&old_ca));
        rotate(dir.path(), Rotation::Finish).unwrap();
        let p = Pki::load_or_create(dir.path()).unwrap();
        assert_eq!(pem_certs(p.ca_pem()), vec![certs[0].clone()]);
        // A key that is not the first certificate's is refused at load.
        std::fs::write(dir.path().join("ca.crt"), &old_ca).unwrap();
        let e = Pki::load_or_create(dir.path()).err().unwrap();
        assert!(e.contains("is not the key of the first certificate"), "{e}");
    }
}
