//! get, describe, delete, watch, events.

use std::path::PathBuf;

use anyhow::bail;
use futures::StreamExt;
use groundwork_types::{KindInfo, kind_by_kind};
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher;
use serde_json::{Value, json};

use crate::client::{self, collection_path, item_path};
use crate::output::{print_aligned, print_table, to_yaml};

const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

pub(crate) fn resolve_kind(name: &str) -> anyhow::Result<&'static KindInfo> {
    kind_by_kind(name).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown kind {name:?}; known kinds: {}",
            groundwork_types::all_kinds()
                .iter()
                .map(|k| k.kind)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

fn default_ns(k: &KindInfo) -> Option<&'static str> {
    k.namespaced.then_some("default")
}

fn query(selector: Option<&str>) -> String {
    match selector {
        Some(s) => format!("?labelSelector={}", encode(s)),
        None => String::new(),
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(crate) async fn get(
    kc: Option<PathBuf>,
    kind: &str,
    names: &[String],
    output: &str,
    selector: Option<&str>,
) -> anyhow::Result<()> {
    let k = resolve_kind(kind)?;
    let api = client::connect(kc).await?;
    let ns = default_ns(k);
    match output {
        "table" | "wide" => {
            let wide = output == "wide";
            if names.is_empty() {
                let uri = format!("{}{}", collection_path(k, ns), query(selector));
                let t = api
                    .json(http::Method::GET, &uri, None, Some(TABLE_ACCEPT), None)
                    .await
                    .map_err(client::explain)?;
                print_table(&t, wide);
            } else {
                let mut merged: Option<Value> = None;
                for n in names {
                    let t = api
                        .json(
                            http::Method::GET,
                            &item_path(k, ns, n),
                            None,
                            Some(TABLE_ACCEPT),
                            None,
                        )
                        .await
                        .map_err(client::explain)?;
                    match &mut merged {
                        None => merged = Some(t),
                        Some(m) => {
                            if let (Some(rows), Some(more)) =
                                (m["rows"].as_array_mut(), t["rows"].as_array())
                            {
                                rows.extend(more.iter().cloned());
                            }
                        }
                    }
                }
                print_table(&merged.unwrap_or(json!({})), wide);
            }
        }
        "yaml" | "json" | "name" => {
            let objs: Vec<Value> = if names.is_empty() {
                let uri = format!("{}{}", collection_path(k, ns), query(selector));
                let list = api
                    .json(
                        http::Method::GET,
                        &uri,
                        None,
                        Some("application/json"),
                        None,
                    )
                    .await
                    .map_err(client::explain)?;
                list["items"].as_array().cloned().unwrap_or_default()
            } else {
                let mut v = Vec::new();
                for n in names {
                    v.push(
                        api.json(
                            http::Method::GET,
                            &item_path(k, ns, n),
                            None,
                            Some("application/json"),
                            None,
                        )
                        .await
                        .map_err(client::explain)?,
                    );
                }
                v
            };
            let single = names.len() == 1;
            let doc = if single {
                objs[0].clone()
            } else {
                json!({"apiVersion": "v1", "kind": "List", "items": objs})
            };
            match output {
                "yaml" => print!("{}", to_yaml(&doc)),
                "json" => println!("{}", serde_json::to_string_pretty(&doc)?),
                _ => {
                    for o in if single { vec![doc] } else { objs } {
                        println!(
                            "{}/{}",
                            k.singular,
                            o["metadata"]["name"].as_str().unwrap_or("")
                        );
                    }
                }
            }
        }
        other => bail!("unknown output format {other:?}: use table, wide, yaml, json or name"),
    }
    Ok(())
}

pub(crate) async fn describe(kc: Option<PathBuf>, kind: &str, name: &str) -> anyhow::Result<()> {
    let k = resolve_kind(kind)?;
    let api = client::connect(kc).await?;
    let obj = api
        .json(
            http::Method::GET,
            &item_path(k, default_ns(k), name),
            None,
            None,
            None,
        )
        .await
        .map_err(client::explain)?;
    let mut shown = obj.clone();
    if let Some(a) = shown
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.remove(crate::apply::LAST_APPLIED);
        if a.is_empty() {
            shown["metadata"]
                .as_object_mut()
                .map(|m| m.remove("annotations"));
        }
    }
    print!("{}", to_yaml(&shown));
    let uid = obj["metadata"]["uid"].as_str().unwrap_or("");
    let sel = format!(
        "involvedObject.kind={},involvedObject.name={name},involvedObject.uid={uid}",
        k.kind
    );
    print_events(&api, &sel).await
}

async fn print_events(api: &client::Api, field_selector: &str) -> anyhow::Result<()> {
    let uri = format!("/api/v1/events?fieldSelector={}", encode(field_selector));
    let list = api
        .json(
            http::Method::GET,
            &uri,
            None,
            Some("application/json"),
            None,
        )
        .await
        .map_err(client::explain)?;
    let mut items = list["items"].as_array().cloned().unwrap_or_default();
    println!("Events:");
    if items.is_empty() {
        println!("  <none>");
        return Ok(());
    }
    let when = |e: &Value| {
        e["lastTimestamp"]
            .as_str()
            .or(e["eventTime"].as_str())
            .or(e["metadata"]["creationTimestamp"].as_str())
            .unwrap_or("")
            .to_string()
    };
    items.sort_by_key(when);
    let now = jiff::Timestamp::now();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|e| {
            let age = when(e)
                .parse::<jiff::Timestamp>()
                .map(|t| groundwork_api::human_duration(now.duration_since(t).as_secs()))
                .unwrap_or_default();
            let count = e["count"]
                .as_i64()
                .filter(|c| *c > 1)
                .map(|c| format!(" (x{c})"))
                .unwrap_or_default();
            vec![
                format!("  {}", e["type"].as_str().unwrap_or("")),
                e["reason"].as_str().unwrap_or("").to_string(),
                format!("{age}{count}"),
                format!(
                    "{}/{}",
                    e["involvedObject"]["kind"]
                        .as_str()
                        .unwrap_or("")
                        .to_ascii_lowercase(),
                    e["involvedObject"]["name"].as_str().unwrap_or("")
                ),
                e["message"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    print_aligned(
        &[
            "  TYPE".into(),
            "REASON".into(),
            "AGE".into(),
            "OBJECT".into(),
            "MESSAGE".into(),
        ],
        &rows,
    );
    Ok(())
}

/// `groundwork ui`: the console's URL on the kubeconfig's server.
pub(crate) async fn ui(kc: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = client::config(kc).await?;
    let base = cfg.cluster_url.to_string();
    println!("{}/ui/", base.trim_end_matches('/'));
    eprintln!(
        "sign in with a bearer token from the server's --token-file (RBAC applies: the view role \
         is enough to look); the browser must trust the cluster CA (the server's PKI dir, ca.crt)"
    );
    Ok(())
}

pub(crate) async fn events(kc: Option<PathBuf>, object: Option<&str>) -> anyhow::Result<()> {
    let api = client::connect(kc).await?;
    let sel = match object {
        None => String::new(),
        Some(o) => {
            let Some((kind, name)) = o.split_once('/') else {
                bail!("{o:?}: use KIND/NAME, e.g. node/n1")
            };
            format!(
                "involvedObject.kind={},involvedObject.name={name}",
                resolve_kind(kind)?.kind
            )
        }
    };
    print_events(&api, &sel).await
}

pub(crate) async fn delete(
    kc: Option<PathBuf>,
    kind: &str,
    names: &[String],
) -> anyhow::Result<()> {
    let k = resolve_kind(kind)?;
    let api = client::connect(kc).await?;
    let mut failed = 0;
    for n in names {
        let body =
            json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"});
        match api
            .json(
                http::Method::DELETE,
                &item_path(k, default_ns(k), n),
                Some("application/json"),
                None,
                Some(&body),
            )
            .await
        {
            Ok(obj) => {
                let fins: Vec<String> = obj["metadata"]["finalizers"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|f| f.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                if obj["metadata"]["deletionTimestamp"].is_string() && !fins.is_empty() {
                    println!(
                        "{}/{n} deletion requested; waiting on finalizers: {}",
                        k.singular,
                        fins.join(", ")
                    );
                } else {
                    println!("{}/{n} deleted", k.singular);
                }
            }
            Err(e) => {
                eprintln!("error: {:#}", client::explain(e));
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} object(s) not deleted");
    }
    Ok(())
}

pub(crate) async fn watch(
    kc: Option<PathBuf>,
    kind: &str,
    name: Option<&str>,
    full: bool,
) -> anyhow::Result<()> {
    let k = resolve_kind(kind)?;
    let api = client::connect(kc).await?;
    let ar = ApiResource {
        group: k.group.into(),
        version: k.version.into(),
        api_version: k.api_version(),
        kind: k.kind.into(),
        plural: k.plural.into(),
    };
    let dynamic: kube::Api<DynamicObject> = if k.namespaced {
        kube::Api::namespaced_with(api.client.clone(), "default", &ar)
    } else {
        kube::Api::all_with(api.client.clone(), &ar)
    };
    let mut cfg = watcher::Config::default();
    if let Some(n) = name {
        cfg = cfg.fields(&format!("metadata.name={n}"));
    }
    // The watcher relists on 410 and re-watches on timeouts, so this follows forever.
    let mut stream = watcher(dynamic, cfg).boxed();
    while let Some(ev) = stream.next().await {
        let print = |type_: &str, o: &DynamicObject| {
            let name = o.metadata.name.as_deref().unwrap_or("");
            let rv = o.metadata.resource_version.as_deref().unwrap_or("");
            let time = jiff::Zoned::now().strftime("%H:%M:%S").to_string();
            if full {
                println!(
                    "{time} {type_} {}/{name} rv={rv} {}",
                    k.singular,
                    serde_json::to_string(o).unwrap_or_default()
                );
            } else {
                let status = o
                    .data
                    .get("status")
                    .map(|s| serde_json::to_string(s).unwrap_or_default())
                    .unwrap_or_else(|| "{}".into());
                println!(
                    "{time} {type_} {}/{name} rv={rv} status={status}",
                    k.singular
                );
            }
        };
        match ev {
            Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => print("APPLIED", &o),
            Ok(watcher::Event::Delete(o)) => print("DELETED", &o),
            Ok(watcher::Event::Init) | Ok(watcher::Event::InitDone) => {}
            Err(e) => eprintln!("watch: {e} (retrying)"),
        }
    }
    Ok(())
}

/// `groundwork logs KIND/NAME [-f] [--tail N]`: the controllers' log lines about one object.
/// `groundwork retry node/NAME`: a new value of the retry annotation makes the provisioning
/// controller retry a Failed Node at once.
/// `node/NAME` (any spelling of the Node kind): the kind and the name.
fn node_arg<'a>(object: &'a str, what: &str) -> anyhow::Result<(&'static KindInfo, &'a str)> {
    let Some((kind, name)) = object.split_once('/') else {
        bail!("{object:?}: use node/NAME")
    };
    let k = resolve_kind(kind)?;
    if k.kind != "Node" {
        bail!("{kind}: only Nodes {what}");
    }
    Ok((k, name))
}

pub(crate) async fn retry(kc: Option<PathBuf>, object: &str) -> anyhow::Result<()> {
    let (k, name) = node_arg(object, "are retried")?;
    let api = client::connect(kc).await?;
    let body = json!({"metadata": {"annotations": {
        groundwork_controller::provision::RETRY_ANNOTATION: jiff::Timestamp::now().to_string()
    }}});
    let obj = api
        .json(
            http::Method::PATCH,
            &item_path(k, None, name),
            Some("application/merge-patch+json"),
            None,
            Some(&body),
        )
        .await?;
    let phase = obj["status"]["phase"].as_str().unwrap_or("-");
    println!("node/{name} retry requested (phase {phase})");
    Ok(())
}

/// Revokes a machine's certificates and every join token issued until now: the Node lists
/// no certificate, and only a token from a later iPXE script can join again.
pub(crate) async fn revoke(kc: Option<PathBuf>, object: &str) -> anyhow::Result<()> {
    let (k, name) = node_arg(object, "have machine credentials to revoke")?;
    let api = client::connect(kc).await?;
    // Tokens issued in this second or before are refused (they carry whole seconds).
    let not_before = jiff::Timestamp::now().as_second() + 1;
    let body = json!({"status": {"provisioning": {"agent": {
        "certificates": [],
        "joinTokenId": format!("revoked-{not_before}"),
        "joinTokenIssued": not_before,
    }}}});
    api.json(
        http::Method::PATCH,
        &format!("{}/status", item_path(k, None, name)),
        Some("application/merge-patch+json"),
        None,
        Some(&body),
    )
    .await?;
    println!("node/{name}: machine certificates and join tokens issued until now revoked");
    Ok(())
}

pub(crate) async fn logs(
    kc: Option<PathBuf>,
    object: &str,
    follow: bool,
    tail: Option<usize>,
) -> anyhow::Result<()> {
    use futures::AsyncBufReadExt;
    let Some((kind, name)) = object.split_once('/') else {
        bail!("{object:?}: use KIND/NAME, e.g. node/server-1")
    };
    let k = resolve_kind(kind)?;
    if k.namespaced {
        bail!(
            "{}: logs are kept for Groundwork objects (nodes, racks, ...)",
            k.plural
        );
    }
    let api = client::connect(kc).await?;
    let mut uri = format!("{}/log?follow={follow}", item_path(k, None, name));
    if let Some(n) = tail {
        uri.push_str(&format!("&tailLines={n}"));
    }
    let req = http::Request::get(&uri)
        .header(http::header::ACCEPT, "text/plain")
        .body(Vec::new())?;
    let reader = api
        .client
        .request_stream(req)
        .await
        .map_err(client::explain)?;
    let mut lines = reader.lines();
    use std::io::Write;
    while let Some(line) = lines.next().await {
        let line = line?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(())
}
