//! The metrics layer: Prometheus, Alertmanager and node-exporter from Debian's packages.
//! Prometheus' targets are the stack's own instances (every exporter, Alertmanager, HAProxy,
//! Prometheus itself) and Groundwork's `/metrics`; alerts go to the layer's Alertmanagers.

use groundwork_types::{
    Artifact, CheckField, HealthCheck, InstanceFile, RunSpec, ServiceInstanceSpec, ServiceType,
};
use serde_json::{Value, json};

use super::{RenderCtx, argv, yaml};

pub(super) fn prometheus(ctx: &RenderCtx) -> ServiceInstanceSpec {
    let cfg = ctx.layer.config.prometheus.clone().unwrap_or_default();
    let addr = &ctx.me.address;
    let mut jobs: std::collections::BTreeMap<(String, String), Vec<Value>> = Default::default();
    for t in ctx.scrape {
        jobs.entry((t.job.clone(), t.path.clone()))
            .or_default()
            .push(json!({"targets": [t.target], "labels": {"node": t.node}}));
    }
    let mut scrape_configs: Vec<Value> = jobs
        .into_iter()
        .map(|((job, path), groups)| {
            json!({"job_name": job, "metrics_path": path, "static_configs": groups})
        })
        .collect();
    if cfg.scrape_groundwork
        && let Some(gw) = ctx.groundwork_metrics
    {
        scrape_configs
            .push(json!({"job_name": "groundwork", "static_configs": [{"targets": [gw]}]}));
    }
    if !cfg.extra_targets.is_empty() {
        scrape_configs
            .push(json!({"job_name": "extra", "static_configs": [{"targets": cfg.extra_targets}]}));
    }
    let alertmanagers: Vec<String> = ctx
        .peers
        .get(&ServiceType::Alertmanager)
        .into_iter()
        .flatten()
        .map(|m| {
            let port = ctx
                .layer
                .config
                .alertmanager
                .clone()
                .unwrap_or_default()
                .port;
            format!("{}:{port}", m.address)
        })
        .collect();
    let mut main = json!({
        "global": {"scrape_interval": cfg.scrape_interval, "evaluation_interval": cfg.scrape_interval,
                   "external_labels": {"stack": ctx.stack, "layer": ctx.layer.name}},
        "scrape_configs": scrape_configs,
    });
    if !alertmanagers.is_empty() {
        main["alerting"] =
            json!({"alertmanagers": [{"static_configs": [{"targets": alertmanagers}]}]});
    }
    let mut files = Vec::new();
    let mut check = argv(&["promtool", "check", "config", "{conf}/prometheus.yml"]);
    let mut check_fields = Vec::new();
    if !cfg.rule_groups.is_empty() {
        main["rule_files"] = json!(["rules.yml"]);
        let groups: Vec<Value> = cfg
            .rule_groups
            .iter()
            .map(|g| serde_json::to_value(g).unwrap_or_default())
            .collect();
        files.push(InstanceFile {
            path: "rules.yml".into(),
            content: yaml(&json!({ "groups": groups })),
            mode: None,
        });
        // promtool names the group and the rule's index; each maps to its field.
        let i = ctx.field();
        for (gi, g) in cfg.rule_groups.iter().enumerate() {
            for (ri, r) in g.rules.iter().enumerate() {
                let name = r.alert.clone().or(r.record.clone()).unwrap_or_default();
                check_fields.push(CheckField {
                    contains: format!("group \"{}\", rule {}", g.name, ri + 1),
                    field: format!("{i}.config.prometheus.ruleGroups[{gi}].rules[{ri}].expr"),
                });
                if !name.is_empty() {
                    check_fields.push(CheckField {
                        contains: format!("\"{name}\""),
                        field: format!("{i}.config.prometheus.ruleGroups[{gi}].rules[{ri}]"),
                    });
                }
            }
        }
        check_fields.push(CheckField {
            contains: "rules.yml".into(),
            field: format!("{i}.config.prometheus.ruleGroups"),
        });
        check = argv(&["promtool", "check", "config", "{conf}/prometheus.yml"]);
    }
    files.insert(
        0,
        InstanceFile {
            path: "prometheus.yml".into(),
            content: yaml(&main),
            mode: None,
        },
    );
    ServiceInstanceSpec {
        artifact: Artifact {
            packages: vec!["prometheus".into()],
            fetch: None,
        },
        files,
        check,
        check_fields,
        run: RunSpec {
            command: vec![
                "prometheus".into(),
                "--config.file={conf}/prometheus.yml".into(),
                "--storage.tsdb.path={data}".into(),
                format!("--storage.tsdb.retention.time={}", cfg.retention),
                format!("--web.listen-address={addr}:{}", cfg.port),
                "--web.enable-lifecycle".into(),
            ],
            user: Some("prometheus".into()),
            stop_grace_seconds: 30,
            ..Default::default()
        },
        health: HealthCheck {
            http: Some(format!("http://{addr}:{}/-/ready", cfg.port)),
            ..Default::default()
        },
        ..Default::default()
    }
}

pub(super) fn alertmanager(ctx: &RenderCtx) -> ServiceInstanceSpec {
    let cfg = ctx.layer.config.alertmanager.clone().unwrap_or_default();
    let addr = &ctx.me.address;
    let receivers: Vec<Value> = if cfg.receivers.is_empty() {
        vec![json!({"name": "default"})]
    } else {
        cfg.receivers
            .iter()
            .map(|r| {
                let hooks: Vec<Value> = r.webhook_urls.iter().map(|u| json!({"url": u})).collect();
                if hooks.is_empty() {
                    json!({"name": r.name})
                } else {
                    json!({"name": r.name, "webhook_configs": hooks})
                }
            })
            .collect()
    };
    let first = receivers[0]["name"].clone();
    let main = json!({"route": {"receiver": first}, "receivers": receivers});
    let peers: Vec<String> = ctx
        .peers
        .get(&ServiceType::Alertmanager)
        .into_iter()
        .flatten()
        .filter(|m| m.node != ctx.me.node)
        .map(|m| format!("--cluster.peer={}:9094", m.address))
        .collect();
    let mut command = vec![
        "prometheus-alertmanager".into(),
        "--config.file={conf}/alertmanager.yml".into(),
        "--storage.path={data}".into(),
        format!("--web.listen-address={addr}:{}", cfg.port),
        format!("--cluster.listen-address={addr}:9094"),
    ];
    command.extend(peers);
    ServiceInstanceSpec {
        artifact: Artifact {
            packages: vec!["prometheus-alertmanager".into()],
            fetch: None,
        },
        files: vec![InstanceFile {
            path: "alertmanager.yml".into(),
            content: yaml(&main),
            mode: None,
        }],
        check: argv(&["amtool", "check-config", "{conf}/alertmanager.yml"]),
        run: RunSpec {
            command,
            user: Some("prometheus".into()),
            stop_grace_seconds: 30,
            ..Default::default()
        },
        health: HealthCheck {
            http: Some(format!("http://{addr}:{}/-/ready", cfg.port)),
            ..Default::default()
        },
        ..Default::default()
    }
}

pub(super) fn node_exporter(ctx: &RenderCtx) -> ServiceInstanceSpec {
    let cfg = ctx.layer.config.node_exporter.clone().unwrap_or_default();
    let addr = &ctx.me.address;
    let (artifact, program) = match &cfg.artifact {
        Some(a) => (
            Artifact {
                packages: vec![],
                fetch: Some(a.clone()),
            },
            "{artifact}".to_string(),
        ),
        None => (
            Artifact {
                packages: vec!["prometheus-node-exporter".into()],
                fetch: None,
            },
            "prometheus-node-exporter".to_string(),
        ),
    };
    let check_fields = cfg
        .artifact
        .iter()
        .map(|_| CheckField {
            contains: "sha256 is".into(),
            field: format!("{}.config.nodeExporter.artifact.sha256", ctx.field()),
        })
        .collect();
    ServiceInstanceSpec {
        artifact,
        check_fields,
        run: RunSpec {
            command: vec![program, format!("--web.listen-address={addr}:{}", cfg.port)],
            user: Some("prometheus".into()),
            stop_grace_seconds: 10,
            ..Default::default()
        },
        health: HealthCheck {
            http: Some(format!("http://{addr}:{}/metrics", cfg.port)),
            ..Default::default()
        },
        ..Default::default()
    }
}
