//! Kubeconfig files: the admin's (written once the server answers) and the in-process
//! controllers' (over loopback).

/// A kubeconfig for `server`; over TLS with the CA and a client certificate.
pub fn kubeconfig(server: &str, tls: Option<(&str, &groundwork_pki::CertKey)>) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let (ca, user) = match tls {
        Some((ca, id)) => (
            format!("\n    certificate-authority-data: {}", b64(ca)),
            format!(
                "\n    client-certificate-data: {}\n    client-key-data: {}",
                b64(&id.cert_pem),
                b64(&id.key_pem)
            ),
        ),
        None => (String::new(), " {}".to_string()),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: groundwork\n  cluster:\n    server: {server}{ca}\nusers:\n- name: admin\n  user:{user}\ncontexts:\n- name: groundwork\n  context:\n    cluster: groundwork\n    user: admin\n    namespace: default\ncurrent-context: groundwork\n"
    )
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    groundwork_pki::write_private(path, text).map_err(std::io::Error::other)
}
