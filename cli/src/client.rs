//! A thin client over kube's `Client` (kubeconfig, TLS and auth as kubectl): raw requests with
//! exactly the query parameters and media types we want.

use std::path::PathBuf;

use anyhow::Context;
use groundwork_types::KindInfo;
use http::Request;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::Value;

pub(crate) struct Api {
    pub client: kube::Client,
}

pub(crate) async fn connect(kubeconfig: Option<PathBuf>) -> anyhow::Result<Api> {
    let config = config(kubeconfig).await?;
    Ok(Api {
        client: kube::Client::try_from(config)?,
    })
}

/// The kubeconfig's settings (the file given, else $KUBECONFIG, else ~/.kube/config).
pub(crate) async fn config(kubeconfig: Option<PathBuf>) -> anyhow::Result<kube::Config> {
    Ok(match kubeconfig {
        Some(p) => {
            let kc = Kubeconfig::read_from(&p)
                .with_context(|| format!("reading kubeconfig {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", p.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            tracing::debug!(error = %e, "kubeconfig inference failed");
            anyhow::anyhow!(
                "no kubeconfig found: pass --kubeconfig FILE or set KUBECONFIG \
                 (`groundwork server` writes DATA_DIR/kubeconfig)"
            )
        })?,
    })
}

/// `/apis/<g>/<v>/<plural>` (or the core/namespaced form).
pub(crate) fn collection_path(k: &KindInfo, namespace: Option<&str>) -> String {
    let base = if k.group.is_empty() {
        format!("/api/{}", k.version)
    } else {
        format!("/apis/{}/{}", k.group, k.version)
    };
    match (k.namespaced, namespace) {
        (true, Some(ns)) => format!("{base}/namespaces/{ns}/{}", k.plural),
        _ => format!("{base}/{}", k.plural),
    }
}

pub(crate) fn item_path(k: &KindInfo, namespace: Option<&str>, name: &str) -> String {
    format!("{}/{name}", collection_path(k, namespace))
}

/// Makes kube's API errors read like kubectl's: `Error from server (Reason): message`.
pub(crate) fn explain(e: kube::Error) -> anyhow::Error {
    match e {
        kube::Error::Api(s) => anyhow::anyhow!("Error from server ({}): {}", s.reason, s.message),
        other => anyhow::Error::new(other),
    }
}

impl Api {
    pub async fn json(
        &self,
        method: http::Method,
        uri: &str,
        content_type: Option<&str>,
        accept: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value, kube::Error> {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(ct) = content_type {
            req = req.header(http::header::CONTENT_TYPE, ct);
        }
        if let Some(a) = accept {
            req = req.header(http::header::ACCEPT, a);
        }
        let body = body
            .map(|b| serde_json::to_vec(b).unwrap_or_default())
            .unwrap_or_default();
        let req = req.body(body).map_err(kube::Error::HttpError)?;
        self.client.request::<Value>(req).await
    }

    pub async fn get(&self, uri: &str) -> Result<Option<Value>, kube::Error> {
        match self
            .json(http::Method::GET, uri, None, Some("application/json"), None)
            .await
        {
            Ok(v) => Ok(Some(v)),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }
}
