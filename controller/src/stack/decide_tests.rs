//! The ServiceStack decision, table by table: gating, placement with spread and spares,
//! replacement, rolling with quorum, bootstrap choice, phases.

use std::collections::BTreeMap;

use groundwork_types::{
    InstancePhase, LayerPhase, ServiceInstance, ServiceInstanceStatus, ServiceStack,
};
use kube::ResourceExt;
use serde_json::json;

use super::*;

fn stack(layers: serde_json::Value) -> ServiceStack {
    serde_json::from_value(json!({
        "apiVersion": "groundwork.dev/v1alpha1",
        "kind": "ServiceStack",
        "metadata": {"name": "p"},
        "spec": {"layers": layers},
    }))
    .expect("a stack")
}

fn metrics_and_db() -> ServiceStack {
    stack(json!([
        {"name": "metrics", "services": ["prometheus", "node-exporter"],
         "placement": {"count": 1, "spread": "rack"}},
        {"name": "database", "services": ["mysql", "haproxy"], "dependsOn": ["metrics"],
         "placement": {"count": 3, "spread": "rack"},
         "config": {"mysql": {"rootPassword": {"credential": "db-root"}}}},
    ]))
}

/// `n` machines over two racks.
fn machines(n: usize) -> Vec<Machine> {
    (1..=n)
        .map(|i| Machine {
            name: format!("n{i}"),
            address: format!("10.0.0.{i}"),
            rack: Some(format!("r{}", (i + 1) % 2 + 1)),
            zone: None,
            labels: BTreeMap::new(),
        })
        .collect()
}

/// The instances a plan creates, as the API would store them, with the given readiness.
fn stored(plan: &Plan, ready: bool) -> Vec<ServiceInstance> {
    plan.create
        .iter()
        .map(|(name, spec, ordinal)| {
            let mut i = ServiceInstance::new(name, spec.clone());
            i.metadata.labels = Some([(ORDINAL_LABEL.to_string(), ordinal.to_string())].into());
            if ready {
                i.status = Some(running(spec));
            }
            i
        })
        .collect()
}

fn running(spec: &ServiceInstanceSpec) -> ServiceInstanceStatus {
    ServiceInstanceStatus {
        phase: Some(InstancePhase::Running),
        ready: true,
        running_digest: Some(spec.config_digest.clone()),
        ..Default::default()
    }
}

fn run(stack: &ServiceStack, ms: &[Machine], have: &[ServiceInstance]) -> Plan {
    let refs: Vec<&ServiceInstance> = have.iter().collect();
    decide(&Observed {
        stack,
        machines: ms,
        instances: &refs,
        groundwork_metrics: Some("10.0.0.254:9464"),
        data_epochs: &BTreeMap::new(),
    })
}

/// `metrics_and_db` (or any two-layer stack) brought to Ready on `ms`: both layers placed,
/// every member running, bootstrap flags and scrape targets settled.
fn settled(s: &ServiceStack, ms: &[Machine]) -> Vec<ServiceInstance> {
    let mut have = stored(&run(s, ms, &[]), true);
    let p = run(s, ms, &have);
    have.extend(stored(&p, true));
    let p = run(s, ms, &have);
    for (name, spec) in &p.update {
        let i = have.iter_mut().find(|i| &i.name_any() == name).unwrap();
        i.spec = spec.clone();
        i.status = Some(running(spec));
    }
    have
}

fn layer<'a>(plan: &'a Plan, name: &str) -> &'a LayerStatus {
    plan.layers.iter().find(|l| l.name == name).expect("layer")
}

#[test]
fn a_layer_waits_for_its_dependencies_and_says_which() {
    let s = metrics_and_db();
    let ms = machines(4);
    let plan = run(&s, &ms, &[]);
    // metrics: prometheus on one machine, node-exporter on all four.
    let services: Vec<_> = plan.create.iter().map(|(_, s, _)| s.service).collect();
    assert_eq!(
        services
            .iter()
            .filter(|s| **s == ServiceType::Prometheus)
            .count(),
        1
    );
    assert_eq!(
        services
            .iter()
            .filter(|s| **s == ServiceType::NodeExporter)
            .count(),
        4
    );
    assert!(!services.contains(&ServiceType::Mysql), "database is gated");
    let db = layer(&plan, "database");
    assert_eq!(db.phase, Some(LayerPhase::Pending));
    let w = db.waiting_for.as_deref().unwrap_or_default();
    assert!(w.contains("metrics"), "{w}");
    assert_eq!(layer(&plan, "metrics").phase, Some(LayerPhase::Progressing));
}

#[test]
fn once_ready_the_next_layer_is_placed_spread_with_a_spare() {
    let s = metrics_and_db();
    let ms = machines(4);
    let first = run(&s, &ms, &[]);
    let have = stored(&first, true);
    let plan = run(&s, &ms, &have);
    // (metrics now rolls Prometheus to scrape the database layer's exporters too.)
    let mysql: Vec<&(String, ServiceInstanceSpec, u32)> = plan
        .create
        .iter()
        .filter(|(_, s, _)| s.service == ServiceType::Mysql)
        .collect();
    assert_eq!(mysql.len(), 3);
    // Both racks are used, and one machine is left as the spare.
    let racks: std::collections::BTreeSet<_> = mysql
        .iter()
        .map(|(_, s, _)| ms.iter().find(|m| m.name == s.node).unwrap().rack.clone())
        .collect();
    assert_eq!(racks.len(), 2);
    let ordinals: Vec<u32> = mysql.iter().map(|(_, _, o)| *o).collect();
    assert_eq!(ordinals, vec![0, 1, 2]);
    // Exactly one member starts the Galera cluster: the lowest ordinal.
    let boots: Vec<_> = mysql.iter().filter(|(_, s, _)| s.bootstrap).collect();
    assert_eq!(boots.len(), 1);
    assert_eq!(boots[0].2, 0);
    // Secrets are named, never inlined.
    assert_eq!(mysql[0].1.secrets, vec!["db-root".to_string()]);
    let cnf = &mysql[0].1.files[0].content;
    assert!(cnf.contains("wsrep_cluster_address = gcomm://"), "{cnf}");
    let db = layer(&plan, "database");
    let spare = db
        .conditions
        .iter()
        .find(|c| c.type_ == "SpareAvailable")
        .unwrap();
    assert_eq!(spare.status, "True", "{}", spare.message);
}

#[test]
fn prometheus_scrapes_every_exporter_and_groundwork() {
    let s = metrics_and_db();
    let ms = machines(4);
    let first = run(&s, &ms, &[]);
    let have = stored(&first, true);
    let plan = run(&s, &ms, &have);
    // The Prometheus the next pass renders knows the database layer's HAProxy exporters.
    let mut have2 = have.clone();
    have2.extend(stored(&plan, true));
    let plan2 = run(&s, &ms, &have2);
    let prom2 = plan2
        .update
        .iter()
        .find(|(_, s)| s.service == ServiceType::Prometheus)
        .map(|(_, s)| s.clone())
        .or_else(|| {
            have2
                .iter()
                .find(|i| i.spec.service == ServiceType::Prometheus)
                .map(|i| i.spec.clone())
        })
        .unwrap();
    let yml = &prom2.files[0].content;
    for i in 1..=4 {
        assert!(yml.contains(&format!("10.0.0.{i}:9100")), "{yml}");
    }
    assert!(yml.contains("10.0.0.254:9464"), "{yml}");
    assert!(yml.contains(":8404"), "haproxy's exporter: {yml}");
}

#[test]
fn a_lost_machine_is_replaced_on_the_spare() {
    let s = metrics_and_db();
    let ms = machines(4);
    let have = settled(&s, &ms);
    let p = run(&s, &ms, &have);
    assert!(p.create.is_empty() && p.delete.is_empty(), "{p:?}");
    assert_eq!(layer(&p, "database").phase, Some(LayerPhase::Ready));
    // Lose a machine that runs a mysql member.
    let victim = have
        .iter()
        .find(|i| i.spec.service == ServiceType::Mysql)
        .unwrap()
        .spec
        .node
        .clone();
    let fewer: Vec<Machine> = ms.iter().filter(|m| m.name != victim).cloned().collect();
    let mut st = s.clone();
    st.status = Some(groundwork_types::ServiceStackStatus {
        layers: p.layers.clone(),
        ..Default::default()
    });
    let p2 = run(&st, &fewer, &have);
    assert!(
        p2.delete.iter().any(|d| d.ends_with(&victim)),
        "{:?}",
        p2.delete
    );
    let new: Vec<_> = p2
        .create
        .iter()
        .filter(|(_, s, _)| s.service == ServiceType::Mysql)
        .collect();
    assert_eq!(new.len(), 1);
    assert_ne!(new[0].1.node, victim);
    assert!(!new[0].1.bootstrap, "the running members are the cluster");
    assert_eq!(layer(&p2, "database").phase, Some(LayerPhase::Degraded));
    let spare = layer(&p2, "database")
        .conditions
        .iter()
        .find(|c| c.type_ == "SpareAvailable")
        .unwrap()
        .clone();
    assert_eq!(spare.status, "False");
}

#[test]
fn a_change_rolls_one_member_at_a_time_keeping_quorum() {
    let s = stack(json!([
        {"name": "database", "services": ["mysql"], "placement": {"count": 3},
         "config": {"mysql": {"rootPassword": {"credential": "db-root"}}}},
    ]));
    let ms = machines(4);
    let first = run(&s, &ms, &[]);
    let mut have = stored(&first, true);
    for i in &mut have {
        i.spec.bootstrap = false;
    }
    // A new database in the config changes every member's files.
    let mut s2 = s.clone();
    s2.spec.layers[0]
        .config
        .mysql
        .as_mut()
        .unwrap()
        .databases
        .push("app".into());
    let p = run(&s2, &ms, &have);
    assert_eq!(p.update.len(), 1, "one at a time: {:?}", p.update.len());
    // That member is now changing (not ready): nobody else goes.
    let (name, spec) = p.update[0].clone();
    let i = have.iter_mut().find(|i| i.name_any() == name).unwrap();
    let old_digest = i.spec.config_digest.clone();
    i.spec = spec.clone();
    i.status = Some(ServiceInstanceStatus {
        phase: Some(InstancePhase::Running),
        ready: false,
        running_digest: Some(old_digest),
        ..Default::default()
    });
    let mut st = s2.clone();
    st.status = Some(groundwork_types::ServiceStackStatus {
        layers: vec![LayerStatus {
            name: "database".into(),
            phase: Some(LayerPhase::Ready),
            ..Default::default()
        }],
        ..Default::default()
    });
    let p = run(&st, &ms, &have);
    assert!(
        p.update.iter().all(|(n, _)| *n == name),
        "no second member while one is down"
    );
    assert_eq!(
        layer(&p, "database").phase,
        Some(LayerPhase::Progressing),
        "a planned change is progress, not degradation"
    );
    // It comes back: the next one goes.
    let i = have.iter_mut().find(|i| i.name_any() == name).unwrap();
    i.status = Some(running(&spec));
    let p = run(&s2, &ms, &have);
    assert_eq!(p.update.len(), 1);
    assert_ne!(p.update[0].0, name);
}

#[test]
fn an_unready_member_is_changed_at_once_and_a_refusal_fails_the_layer() {
    let s = stack(json!([
        {"name": "metrics", "services": ["prometheus"], "placement": {"count": 1}},
    ]));
    let ms = machines(2);
    let first = run(&s, &ms, &[]);
    let mut have = stored(&first, false);
    let spec = have[0].spec.clone();
    have[0].status = Some(ServiceInstanceStatus {
        phase: Some(InstancePhase::Failed),
        refused_digest: Some(spec.config_digest.clone()),
        message: Some("promtool refused the new config: bad expr".into()),
        field: Some("spec.layers[0].config.prometheus.ruleGroups[0].rules[0].expr".into()),
        ..Default::default()
    });
    let p = run(&s, &ms, &have);
    let l = layer(&p, "metrics");
    assert_eq!(l.phase, Some(LayerPhase::Failed));
    assert!(
        l.waiting_for
            .as_deref()
            .unwrap_or_default()
            .contains("rules[0].expr"),
        "{:?}",
        l.waiting_for
    );
}

#[test]
fn services_without_a_driver_keep_the_layer_pending_and_name_it() {
    let s = stack(json!([{"name": "logging", "services": ["elastic"]}]));
    let p = run(&s, &machines(3), &[]);
    assert!(p.create.is_empty());
    let l = layer(&p, "logging");
    assert_eq!(l.phase, Some(LayerPhase::Pending));
    assert!(
        l.waiting_for
            .as_deref()
            .unwrap_or_default()
            .contains("elastic")
    );
}

#[test]
fn no_machines_is_pending_with_the_reason() {
    let s = metrics_and_db();
    let p = run(&s, &[], &[]);
    let l = layer(&p, "metrics");
    assert_eq!(l.phase, Some(LayerPhase::Pending));
    assert!(
        l.waiting_for
            .as_deref()
            .unwrap_or_default()
            .contains("machines")
    );
}

#[test]
fn node_selector_limits_placement() {
    let s = stack(json!([
        {"name": "metrics", "services": ["prometheus"],
         "placement": {"count": 1, "nodeSelector": {"matchLabels": {"role": "cluster"}}}},
    ]));
    let mut ms = machines(3);
    ms[2].labels.insert("role".into(), "cluster".into());
    let p = run(&s, &ms, &[]);
    assert_eq!(p.create.len(), 1);
    assert_eq!(p.create[0].1.node, "n3");
}

#[test]
fn without_a_majority_galera_members_are_held_not_replaced() {
    let s = metrics_and_db();
    let ms = machines(4);
    let have = settled(&s, &ms);
    let db: Vec<String> = have
        .iter()
        .filter(|i| i.spec.service == ServiceType::Mysql)
        .map(|i| i.spec.node.clone())
        .collect();
    assert_eq!(db.len(), 3);
    // Two of the three database machines are lost: no majority.
    let left: Vec<Machine> = ms
        .iter()
        .filter(|m| !db[..2].contains(&m.name))
        .cloned()
        .collect();
    let p2 = run(&s, &left, &have);
    let touched: Vec<&String> = p2
        .delete
        .iter()
        .chain(p2.create.iter().map(|(n, _, _)| n))
        .filter(|n| n.contains("-mysql-"))
        .collect();
    assert!(
        touched.is_empty(),
        "members replaced without a majority: {touched:?}"
    );
    let l = layer(&p2, "database");
    assert_ne!(l.phase, Some(LayerPhase::Ready));
    assert!(
        l.members
            .iter()
            .filter(|m| db[..2].contains(&m.node))
            .all(|m| !m.ready),
        "members on lost machines are not ready: {:?}",
        l.members
    );
    let why = l.waiting_for.clone().unwrap_or_default();
    assert!(
        why.contains("majority") && why.contains(&db[0]) && why.contains(&db[1]),
        "{why}"
    );
    // One lost: a majority runs, so the lost member is replaced on the spare.
    let left: Vec<Machine> = ms.iter().filter(|m| m.name != db[0]).cloned().collect();
    let p3 = run(&s, &left, &have);
    assert!(
        p3.create
            .iter()
            .any(|(_, s, _)| s.service == ServiceType::Mysql && !db.contains(&s.node)),
        "{p3:?}"
    );
}

#[test]
fn a_donor_is_not_restarted_while_another_member_joins() {
    let s = metrics_and_db();
    let ms = machines(4);
    let mut have = settled(&s, &ms);
    // A change to the database layer: the first member takes it and restarts (joining).
    let mut s2 = s.clone();
    s2.spec.layers[1].config.mysql.as_mut().unwrap().databases = vec!["app2".into()];
    let p = run(&s2, &ms, &have);
    let changed: Vec<&String> = p
        .update
        .iter()
        .filter(|(n, _)| n.contains("-mysql-"))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(changed.len(), 1, "one member at a time: {changed:?}");
    let joiner = changed[0].clone();
    let (_, spec) = p.update.iter().find(|(n, _)| *n == joiner).unwrap().clone();
    let i = have.iter_mut().find(|i| i.name_any() == joiner).unwrap();
    let old_digest = i.spec.config_digest.clone();
    i.spec = spec;
    i.status = Some(ServiceInstanceStatus {
        phase: Some(InstancePhase::Starting),
        running_digest: Some(i.spec.config_digest.clone()),
        ..Default::default()
    });
    // Another member donates to it: its process runs, its health (Synced) fails.
    let donor = have
        .iter_mut()
        .find(|i| i.spec.service == ServiceType::Mysql && i.name_any() != joiner)
        .unwrap();
    donor.status = Some(ServiceInstanceStatus {
        phase: Some(InstancePhase::Unhealthy),
        running_digest: Some(old_digest.clone()),
        message: Some("health: not Synced (Donor/Desynced)".into()),
        ..Default::default()
    });
    let donor_name = donor.name_any();
    let p = run(&s2, &ms, &have);
    assert!(
        !p.update.iter().any(|(n, _)| *n == donor_name),
        "the donor was restarted while the joiner needs it"
    );
    // A member broken on its own (everyone else Ready) is still changed at once.
    let j = have.iter_mut().find(|i| i.name_any() == joiner).unwrap();
    j.status = Some(running(&j.spec.clone()));
    let d = have
        .iter_mut()
        .find(|i| i.name_any() == donor_name)
        .unwrap();
    d.status = Some(ServiceInstanceStatus {
        phase: Some(InstancePhase::Unhealthy),
        running_digest: Some(old_digest),
        ..Default::default()
    });
    let p = run(&s2, &ms, &have);
    assert!(p.update.iter().any(|(n, _)| *n == donor_name), "{p:?}");
}

#[test]
fn a_lost_member_without_a_replacement_stays() {
    let s = stack(json!([
        {"name": "metrics", "services": ["prometheus"], "placement": {"count": 1}},
    ]));
    let ms = machines(2);
    let have = stored(&run(&s, &ms, &[]), true);
    let node = have[0].spec.node.clone();
    // Every machine lost: nothing to move to, so nothing is deleted.
    let p = run(&s, &[], &have);
    assert!(p.delete.is_empty() && p.create.is_empty(), "{p:?}");
    // One machine left that is not the member's: it moves there.
    let other: Vec<Machine> = ms.iter().filter(|m| m.name != node).cloned().collect();
    let p = run(&s, &other, &have);
    assert_eq!(p.delete.len(), 1, "{p:?}");
    assert_eq!(p.create.len(), 1);
}

#[test]
fn a_ready_consul_layer_gets_every_instance_in_its_catalog() {
    let s = stack(json!([
        {"name": "connectivity", "services": ["consul"], "placement": {"count": 3},
         "config": {"consul": {"artifact": {"url": "http://b/consul", "sha256": "00"}}}},
        {"name": "metrics", "services": ["node-exporter"], "dependsOn": ["connectivity"]},
    ]));
    let ms = machines(4);
    let p = run(&s, &ms, &[]);
    assert!(p.catalog.is_none(), "no catalog before consul is Ready");
    let mut have = stored(&p, true);
    let p = run(&s, &ms, &have);
    have.extend(stored(&p, false));
    let p = run(&s, &ms, &have);
    let c = p.catalog.expect("consul is Ready");
    assert_eq!(c.token, "p-connectivity-consul-management");
    assert!(c.consul.starts_with("https://10.0.0.") && c.consul.ends_with(":8501"));
    let exporters: Vec<_> = c
        .entries
        .iter()
        .filter(|e| e.service == "node-exporter")
        .collect();
    assert_eq!(exporters.len(), 4);
    assert!(
        exporters.iter().all(|e| !e.passing && e.port == 9100),
        "not ready yet"
    );
    assert_eq!(
        c.entries
            .iter()
            .filter(|e| e.service == "consul" && e.passing)
            .count(),
        3
    );
    // A lost machine's members are not passing, whatever they last reported.
    let fewer: Vec<Machine> = ms[1..].to_vec();
    let servers: Vec<&ServiceInstance> = have
        .iter()
        .filter(|i| i.spec.service == ServiceType::Consul)
        .collect();
    assert!(!servers.is_empty());
    let p = run(&s, &fewer, &have);
    if let Some(c) = p.catalog {
        assert!(
            c.entries
                .iter()
                .filter(|e| e.node == ms[0].name)
                .all(|e| !e.passing)
        );
    }
}

#[test]
fn a_single_vault_member_holds_the_only_data_and_is_not_replaced() {
    let s = stack(json!([
        {"name": "secrets", "services": ["vault"], "placement": {"count": 1},
         "config": {"vault": {"implementation": "rustyVault", "kv": {"version": 1},
                              "artifact": {"url": "http://10.0.0.254:8080/artifacts/rvault",
                                           "sha256": "0000000000000000000000000000000000000000000000000000000000000000"}}}},
    ]));
    let ms = machines(2);
    let have = settled(&s, &ms);
    assert_eq!(have.len(), 1);
    let on = have[0].spec.node.clone();
    let left: Vec<Machine> = ms.iter().filter(|m| m.name != on).cloned().collect();
    let p = run(&s, &left, &have);
    assert!(
        p.delete.is_empty() && p.create.is_empty(),
        "{:?} {:?}",
        p.delete,
        p.create
    );
    let l = layer(&p, "secrets");
    assert_ne!(l.phase, Some(LayerPhase::Ready));
    let why = l.waiting_for.clone().unwrap_or_default();
    assert!(why.contains("only copy") && why.contains(&on), "{why}");
    // The machine returns: the member is where it was.
    let p = run(&s, &ms, &have);
    assert!(p.delete.is_empty() && p.create.is_empty());
}

#[test]
fn a_lost_galera_member_is_replaced_only_from_a_working_cluster() {
    // After a power cut, two database machines are back but their members have not rejoined
    // (not healthy) and the third is still off: replacing it on the spare now would start a
    // cluster from a member with nothing. Held until a majority is healthy.
    let s = metrics_and_db();
    let ms = machines(4);
    let mut have = settled(&s, &ms);
    let db: Vec<String> = have
        .iter()
        .filter(|i| i.spec.service == ServiceType::Mysql)
        .map(|i| i.spec.node.clone())
        .collect();
    for i in have
        .iter_mut()
        .filter(|i| i.spec.service == ServiceType::Mysql)
    {
        let st = i.status.as_mut().unwrap();
        st.ready = false;
        st.phase = Some(InstancePhase::Starting);
    }
    let left: Vec<Machine> = ms.iter().filter(|m| m.name != db[2]).cloned().collect();
    let p = run(&s, &left, &have);
    let touched: Vec<&String> = p
        .delete
        .iter()
        .chain(p.create.iter().map(|(n, _, _)| n))
        .filter(|n| n.contains("-mysql-"))
        .collect();
    assert!(
        touched.is_empty(),
        "replaced from a cluster that is not working: {touched:?}"
    );
    let why = layer(&p, "database")
        .waiting_for
        .clone()
        .unwrap_or_default();
    assert!(why.contains("healthy"), "{why}");
    // The two rejoin: now the lost member is replaced on the spare.
    for i in have
        .iter_mut()
        .filter(|i| i.spec.service == ServiceType::Mysql && i.spec.node != db[2])
    {
        let st = i.status.as_mut().unwrap();
        st.ready = true;
        st.phase = Some(InstancePhase::Running);
    }
    let p = run(&s, &left, &have);
    assert!(
        p.create.iter().any(|(n, _, _)| n.contains("-mysql-")),
        "{:?}",
        p.create
    );
    // The new member is never chosen to start the cluster.
    assert!(p.create.iter().all(|(_, s, _)| !s.bootstrap));
}

#[test]
fn once_the_cluster_runs_no_member_keeps_the_bootstrap_flag() {
    // The first member starts the cluster; once members run, its flag is cleared, or a
    // later restart (a roll) would start a second cluster beside the first.
    let s = metrics_and_db();
    let ms = machines(4);
    let have = settled(&s, &ms);
    let flagged: Vec<&String> = have
        .iter()
        .filter(|i| i.spec.service == ServiceType::Mysql && i.spec.bootstrap)
        .map(|i| &i.spec.node)
        .collect();
    assert!(flagged.is_empty(), "still flagged: {flagged:?}");
}
