//! The raft port over mutual TLS: the caller's certificate must chain to the cluster CA and
//! pass the member check. A caller without a certificate reaches only the `public` routes
//! (a new member joining with a join token), when there are any; anything else is dropped
//! after the handshake.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    cfg: Arc<rustls::ServerConfig>,
    allow: fn(&[u8]) -> bool,
    public: Option<Router>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "raft accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, app, public) = (acceptor.clone(), app.clone(), public.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::warn!(%peer, error = %e, "raft connection refused: TLS");
                        return;
                    }
                    Err(_) => return,
                };
            let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
            let app = match (cert, public) {
                (Some(c), _) if allow(c.as_ref()) => app,
                (None, Some(public)) => public,
                (None, None) => {
                    tracing::warn!(%peer, "raft connection refused: no certificate");
                    return;
                }
                (Some(_), _) => {
                    tracing::warn!(%peer, "raft connection refused: the certificate is not a member's");
                    return;
                }
            };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            // A caller without a certificate (the join routes) must not hold a connection
            // open by sending nothing.
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30));
            if let Err(e) = builder
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "raft connection ended");
            }
        });
    }
}
