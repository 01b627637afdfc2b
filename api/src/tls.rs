//! Serving the API over TLS (rustls): HTTP/1.1 and HTTP/2 by ALPN, client certificates from
//! the cluster CA accepted (and passed to the handlers as [`PeerCert`]) but not required, so
//! bearer tokens work too. A plain-HTTP request on the TLS port gets a clear 400 instead of a
//! failed handshake.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// The leaf certificate the client presented (DER), verified against the cluster CA.
#[derive(Clone, Debug)]
pub struct PeerCert(pub Arc<Vec<u8>>);

pub use groundwork_pki::tls::{server_config, server_config_with};

const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 49\r\n\r\nClient sent an HTTP request to an HTTPS server.\n\n";

/// At most this many connections at once; further ones wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 8192;
/// A request head must arrive within this (slowloris), as must the TLS handshake.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` over TLS on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut shutdown = std::pin::pin!(shutdown);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
            _ = &mut shutdown => return Ok(()),
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tcp.set_nodelay(true);
            let mut first = [0u8; 1];
            match tokio::time::timeout(Duration::from_secs(10), tcp.peek(&mut first)).await {
                Ok(Ok(1)) if first[0] != 0x16 => {
                    // Not a TLS handshake record: most likely plain HTTP.
                    let mut tcp = tcp;
                    let _ = tcp.write_all(PLAIN_HTTP_ANSWER).await;
                    let _ = tcp.shutdown().await;
                    tracing::debug!(%peer, "plain HTTP on the TLS port refused");
                    return;
                }
                Ok(Ok(1)) => {}
                _ => return,
            }
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| PeerCert(Arc::new(c.to_vec())));
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    if let Some(c) = &cert {
                        req.extensions_mut().insert(c.clone());
                    }
                    let app = app.clone();
                    async move {
                        use tower::ServiceExt;
                        app.oneshot(req.map(axum::body::Body::new)).await
                    }
                },
            );
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT);
            // HTTP/2: a peer that stops answering pings is dropped.
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .keep_alive_timeout(Duration::from_secs(20));
            if let Err(e) = builder
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "API connection ended");
            }
        });
    }
}
