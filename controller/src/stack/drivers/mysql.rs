//! The database layer: MariaDB with Galera 4 as a multi-primary cluster, and HAProxy in
//! front of it, from Debian's packages (`../shared/research/rig-services.md` has the run
//! this follows and its traps).
//!
//! - `my.cnf` is passed with `--defaults-file` every time (Galera's SST scripts read
//!   `/etc/mysql` otherwise); mariadbd runs as `mysql` (rsync SST fails as root).
//! - `start.sh` starts mariadbd. After a crash (`seqno: -1` in `grastate.dat`) it first
//!   recovers the last committed position from InnoDB (as Debian's `galera_recovery` does)
//!   into `{dir}/recovered`, a fact file, so the controller can compare members. Started with
//!   `--wsrep-new-cluster` (the controller chose this member: see [`choose_bootstrap`]) it
//!   marks its state safe to bootstrap, which Galera's documentation has operators do by hand.
//! - After start: accounts and databases (`accounts.sql`, idempotent), HAProxy's check user.
//! - Health: `wsrep_local_state_comment` is `Synced`.

use std::collections::BTreeMap;

use groundwork_types::{
    Artifact, CheckField, HealthCheck, InstanceFile, RunSpec, ServiceInstanceSpec, ServiceType,
    SetupStep,
};

use super::{RenderCtx, argv};

/// What the controller knows of a Galera member, to choose the one that starts the cluster.
#[derive(Clone, Debug, Default)]
pub struct BootstrapView {
    pub ordinal: u32,
    /// Running the current config and healthy (Synced).
    pub ready: bool,
    /// The agent reports the process running.
    pub running: bool,
    /// The agent has reported on this member's current spec (a member placed a moment ago,
    /// or whose spec just changed, has not: what it holds is unknown, not empty).
    pub reported: bool,
    /// The instance's facts: `grastate.dat.uuid`, `.seqno`, `.safe_to_bootstrap`.
    pub facts: BTreeMap<String, String>,
}

/// Which member (index into `views`) starts a new cluster, or why none does:
/// - none while any member runs (it is the cluster; the others join it);
/// - a new cluster (no member has saved state): the lowest ordinal;
/// - the member Galera marked `safe_to_bootstrap: 1` (the last to stop cleanly);
/// - else, once every member reported its state, the highest committed `seqno` (ties: the
///   lowest ordinal); with none known, nobody: that needs an operator.
pub fn choose_bootstrap(views: &[BootstrapView]) -> Result<usize, String> {
    if views.is_empty() {
        return Err("no members".into());
    }
    if views.iter().any(|v| v.ready || v.running) {
        return Err("a member runs: the others join it".into());
    }
    if let Some(v) = views.iter().find(|v| !v.reported) {
        return Err(format!(
            "waiting for member {} to report what it holds",
            v.ordinal
        ));
    }
    let state = |v: &BootstrapView, k: &str| v.facts.get(&format!("grastate.dat.{k}")).cloned();
    let lowest = |it: &mut dyn Iterator<Item = usize>| it.min_by_key(|i| views[*i].ordinal);
    let no_uuid = |v: &BootstrapView| {
        state(v, "uuid").is_none_or(|u| u.is_empty() || u.chars().all(|c| c == '0' || c == '-'))
    };
    if views.iter().all(no_uuid) {
        return lowest(&mut (0..views.len())).ok_or_else(|| "no members".into());
    }
    if let Some(i) = lowest(
        &mut (0..views.len())
            .filter(|i| state(&views[*i], "safe_to_bootstrap").as_deref() == Some("1")),
    ) {
        return Ok(i);
    }
    if let Some(v) = views.iter().find(|v| state(v, "seqno").is_none()) {
        return Err(format!(
            "waiting for member {} to report its saved state (grastate.dat)",
            v.ordinal
        ));
    }
    // The saved seqno, or (after a crash, when that is -1) the one recovered from InnoDB.
    let seqno = |i: usize| {
        let n = |k: &str| views[i].facts.get(k).and_then(|s| s.parse::<i64>().ok());
        n("grastate.dat.seqno")
            .unwrap_or(-1)
            .max(n("recovered.seqno").unwrap_or(-1))
    };
    let best = (0..views.len())
        .max_by_key(|i| (seqno(*i), std::cmp::Reverse(views[*i].ordinal)))
        .unwrap_or(0);
    if seqno(best) < 0 {
        return Err(
            "no member knows its last committed position (seqno -1 everywhere): see \
             docs/services.md, \"Galera: no member safe to bootstrap\""
                .into(),
        );
    }
    Ok(best)
}

const START_SH: &str = r#"#!/bin/sh
# Starts mariadbd for the Groundwork node agent (as user mysql).
set -u
CNF='{conf}/my.cnf'
STATE='{data}/grastate.dat'
extra=''
if [ -f "$STATE" ] && grep -q '^seqno: *-1' "$STATE"; then
  pos=$(mariadbd --defaults-file="$CNF" --wsrep-recover --log-error=/dev/stderr 2>&1 |
    sed -n 's/.*WSREP: Recovered position: *//p' | tail -n 1)
  seqno=${pos##*:}
  case "$seqno" in
    ''|-1|*[!0-9]*) ;;
    *)
      printf 'uuid: %s\nseqno: %s\n' "${pos%:*}" "$seqno" > '{dir}/recovered'
      extra="--wsrep_start_position=$pos"
      echo "groundwork: recovered position $pos" >&2
      ;;
  esac
fi
if [ "${1:-}" = "--wsrep-new-cluster" ] && [ -f "$STATE" ]; then
  sed -i 's/^safe_to_bootstrap: *0/safe_to_bootstrap: 1/' "$STATE"
fi
exec mariadbd --defaults-file="$CNF" $extra "$@"
"#;

/// HAProxy's external check (arguments: proxy address and port, server address and port).
const SYNCED_SH: &str = r#"#!/bin/sh
mariadb -h "$3" -P "$4" -u haproxy_check --connect-timeout=2 -N -B \
  -e "SHOW GLOBAL STATUS LIKE 'wsrep_local_state_comment'" 2>/dev/null | grep -q Synced
"#;

fn members(ctx: &RenderCtx, s: ServiceType) -> Vec<String> {
    ctx.peers
        .get(&s)
        .into_iter()
        .flatten()
        .map(|m| m.address.clone())
        .collect()
}

pub(super) fn render_mysql(ctx: &RenderCtx) -> Result<ServiceInstanceSpec, String> {
    let field = format!("{}.config.mysql", ctx.field());
    let Some(cfg) = ctx.layer.config.mysql.as_ref() else {
        return Err(format!("{field}: required when the layer runs mysql"));
    };
    let addr = &ctx.me.address;
    let cluster = cfg
        .cluster_name
        .clone()
        .unwrap_or_else(|| format!("{}-{}", ctx.stack, ctx.layer.name));
    let peers = members(ctx, ServiceType::Mysql).join(",");
    let my_cnf = format!(
        "# Rendered by Groundwork from ServiceStack {stack}, layer {layer}.
[client]
socket = {{dir}}/mysqld.sock

[mysqld]
user = mysql
datadir = {{data}}
socket = {{dir}}/mysqld.sock
pid-file = {{dir}}/mysqld.pid
tmpdir = {{dir}}/tmp
bind-address = {addr}
port = {port}
skip-name-resolve
binlog_format = ROW
default_storage_engine = InnoDB
innodb_autoinc_lock_mode = 2
innodb_buffer_pool_size = 128M
wsrep_on = ON
wsrep_provider = /usr/lib/galera/libgalera_smm.so
wsrep_cluster_name = {cluster}
wsrep_cluster_address = gcomm://{peers}
wsrep_node_address = {addr}
wsrep_node_name = {node}
wsrep_sst_method = rsync
",
        stack = ctx.stack,
        layer = ctx.layer.name,
        port = cfg.port,
        node = ctx.me.node,
    );
    let root = &cfg.root_password.credential;
    let mut sql = format!(
        "ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password \
         USING PASSWORD('{{secret-sql:{root}}}');\n"
    );
    for d in &cfg.databases {
        sql.push_str(&format!("CREATE DATABASE IF NOT EXISTS `{d}`;\n"));
    }
    for u in &cfg.users {
        let c = &u.password.credential;
        sql.push_str(&format!(
            "CREATE USER IF NOT EXISTS '{n}'@'%' IDENTIFIED BY '{{secret-sql:{c}}}';\n\
             ALTER USER '{n}'@'%' IDENTIFIED BY '{{secret-sql:{c}}}';\n",
            n = u.name
        ));
        for d in &u.databases {
            sql.push_str(&format!(
                "GRANT ALL PRIVILEGES ON `{d}`.* TO '{}'@'%';\n",
                u.name
            ));
        }
    }
    // The routers' check: no password, no privilege beyond connecting and reading status.
    // From any host: tied to the routers' addresses, every move of a router would change
    // every member's config and restart the whole cluster.
    if !members(ctx, ServiceType::Haproxy).is_empty() {
        sql.push_str("CREATE USER IF NOT EXISTS 'haproxy_check'@'%';\n");
    }
    let client = |q: &str| format!("mariadb --defaults-file={{conf}}/my.cnf -N -B -e \"{q}\"");
    Ok(ServiceInstanceSpec {
        artifact: Artifact {
            packages: [
                "mariadb-server",
                "mariadb-client",
                "galera-4",
                "rsync",
                "socat",
            ]
            .map(String::from)
            .to_vec(),
            fetch: None,
        },
        files: vec![
            InstanceFile {
                path: "my.cnf".into(),
                content: my_cnf,
                mode: Some("0644".into()),
            },
            InstanceFile {
                path: "start.sh".into(),
                content: START_SH.into(),
                mode: Some("0755".into()),
            },
            InstanceFile {
                path: "accounts.sql".into(),
                content: sql,
                mode: Some("0600".into()),
            },
        ],
        check: argv(&[
            "mariadbd",
            "--defaults-file={conf}/my.cnf",
            "--help",
            "--verbose",
        ]),
        check_fields: vec![CheckField {
            contains: "unknown variable".into(),
            field: field.clone(),
        }],
        setup: vec![
            // Members on one host must not share /tmp (their temporary tables collide).
            SetupStep {
                name: "a private temporary directory".into(),
                command: argv(&["mkdir", "-p", "{dir}/tmp"]),
                creates: "{dir}/tmp".into(),
                user: None,
            },
            SetupStep {
                name: "create the system tables".into(),
                command: argv(&[
                    "mariadb-install-db",
                    "--defaults-file={conf}/my.cnf",
                    "--user=mysql",
                    "--skip-test-db",
                ]),
                creates: "{data}/mysql".into(),
                user: None,
            },
        ],
        after_start: vec![SetupStep {
            name: "accounts and databases".into(),
            command: vec![
                "sh".into(),
                "-c".into(),
                client("source {conf}/accounts.sql"),
            ],
            creates: String::new(),
            user: Some("root".into()),
        }],
        run: RunSpec {
            command: argv(&["sh", "{conf}/start.sh"]),
            bootstrap_args: argv(&["--wsrep-new-cluster"]),
            user: Some("mysql".into()),
            stop_grace_seconds: 60,
            // Out of HAProxy first: a desynced member fails `synced.sh`, and after
            // `fall 2` checks 1 s apart no new connection goes to it.
            pre_stop: vec![SetupStep {
                name: "leave the routers".into(),
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    client("SET GLOBAL wsrep_desync=ON"),
                ],
                creates: String::new(),
                user: Some("root".into()),
            }],
            drain_seconds: 5,
            ..Default::default()
        },
        health: HealthCheck {
            command: vec![
                "sh".into(),
                "-c".into(),
                client("SHOW GLOBAL STATUS LIKE 'wsrep_local_state_comment'") + " | grep -q Synced",
            ],
            // A donor or a desynced member is in the primary component: alive, let it be.
            // One left in a non-primary view (its peers restarted around it) never comes
            // back by itself: restarted, it rejoins by IST.
            liveness: vec![
                "sh".into(),
                "-c".into(),
                client("SHOW GLOBAL STATUS LIKE 'wsrep_cluster_status'") + " | grep -q Primary",
            ],
            restart_after_seconds: Some(20),
            ..Default::default()
        },
        fact_files: vec!["{data}/grastate.dat".into(), "{dir}/recovered".into()],
        ..Default::default()
    })
}

pub(super) fn render_haproxy(ctx: &RenderCtx) -> Result<ServiceInstanceSpec, String> {
    let cfg = ctx.layer.config.haproxy.clone().unwrap_or_default();
    let Some(db) = ctx.layer.config.mysql.as_ref() else {
        return Err(format!(
            "{}.services: haproxy routes to the layer's mysql members: add mysql",
            ctx.field()
        ));
    };
    let addr = &ctx.me.address;
    let mut servers = String::new();
    for m in ctx.peers.get(&ServiceType::Mysql).into_iter().flatten() {
        servers.push_str(&format!(
            // No `on-marked-down shutdown-sessions`: a member marked down because it is
            // draining (desynced) still finishes the queries it has; cutting them would fail
            // exactly the clients a drain protects.
            "    server {node} {a}:{p} check inter 1s fall 2 rise 2\n",
            node = m.node,
            a = m.address,
            p = db.port,
        ));
    }
    let conf = format!(
        "# Rendered by Groundwork from ServiceStack {stack}, layer {layer}.
global
    maxconn 4096
    insecure-fork-wanted
    external-check

defaults
    mode tcp
    timeout connect 3s
    timeout client 1h
    timeout server 1h
    retries 3
    option redispatch

listen mysql
    bind {addr}:{port}
    balance roundrobin
    # A member is in service only when Synced (a joiner accepts logins before it can
    # answer queries): the check asks it.
    option external-check
    external-check path \"/usr/bin:/bin\"
    external-check command {{conf}}/synced.sh
{servers}
frontend stats
    mode http
    bind {addr}:{stats}
    timeout client 10s
    http-request use-service prometheus-exporter if {{ path /metrics }}
    stats enable
    stats uri /stats
",
        stack = ctx.stack,
        layer = ctx.layer.name,
        port = cfg.port,
        stats = cfg.stats_port,
    );
    Ok(ServiceInstanceSpec {
        artifact: Artifact {
            packages: vec!["haproxy".into()],
            fetch: None,
        },
        files: vec![
            InstanceFile {
                path: "haproxy.cfg".into(),
                content: conf,
                mode: Some("0644".into()),
            },
            InstanceFile {
                path: "synced.sh".into(),
                content: SYNCED_SH.into(),
                mode: Some("0755".into()),
            },
        ],
        check: argv(&["haproxy", "-c", "-q", "-f", "{conf}/haproxy.cfg"]),
        check_fields: vec![CheckField {
            contains: "haproxy.cfg".into(),
            field: format!("{}.config.haproxy", ctx.field()),
        }],
        run: RunSpec {
            command: argv(&["haproxy", "-db", "-f", "{conf}/haproxy.cfg"]),
            user: Some("haproxy".into()),
            stop_grace_seconds: 10,
            ..Default::default()
        },
        health: HealthCheck {
            http: Some(format!("http://{addr}:{}/stats", cfg.stats_port)),
            ..Default::default()
        },
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(ordinal: u32, facts: &[(&str, &str)]) -> BootstrapView {
        BootstrapView {
            ordinal,
            facts: facts
                .iter()
                .map(|(k, v)| (format!("grastate.dat.{k}"), v.to_string()))
                .collect(),
            reported: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_member_that_has_not_reported_is_unknown_not_empty() {
        // Two members hold the cluster's data; a third was just placed (or its spec just
        // changed): nobody bootstraps until it has reported, least of all the empty one.
        let mut v = vec![
            view(
                0,
                &[("uuid", U), ("seqno", "3"), ("safe_to_bootstrap", "0")],
            ),
            view(
                1,
                &[("uuid", U), ("seqno", "15"), ("safe_to_bootstrap", "0")],
            ),
            view(
                2,
                &[("uuid", U), ("seqno", "15"), ("safe_to_bootstrap", "0")],
            ),
        ];
        v[0].reported = false;
        assert!(choose_bootstrap(&v).is_err());
        v[0].reported = true;
        assert_eq!(choose_bootstrap(&v), Ok(1));
    }

    const U: &str = "6f3e43d1-94c1-11f0-8c5e-0a0b0c0d0e0f";

    #[test]
    fn a_new_cluster_starts_on_the_lowest_ordinal() {
        assert_eq!(
            choose_bootstrap(&[view(2, &[]), view(0, &[]), view(1, &[])]),
            Ok(1)
        );
    }

    #[test]
    fn nobody_bootstraps_while_a_member_runs() {
        let mut v = vec![view(0, &[]), view(1, &[])];
        v[1].running = true;
        assert!(choose_bootstrap(&v).is_err());
    }

    #[test]
    fn the_safe_member_starts_after_a_clean_stop() {
        let v = [
            view(
                0,
                &[("uuid", U), ("seqno", "7"), ("safe_to_bootstrap", "0")],
            ),
            view(
                1,
                &[("uuid", U), ("seqno", "9"), ("safe_to_bootstrap", "1")],
            ),
            view(
                2,
                &[("uuid", U), ("seqno", "9"), ("safe_to_bootstrap", "0")],
            ),
        ];
        assert_eq!(choose_bootstrap(&v), Ok(1));
    }

    #[test]
    fn after_a_crash_the_most_advanced_member_starts_once_all_reported() {
        let mut v = vec![
            view(
                0,
                &[("uuid", U), ("seqno", "12"), ("safe_to_bootstrap", "0")],
            ),
            view(
                1,
                &[("uuid", U), ("seqno", "15"), ("safe_to_bootstrap", "0")],
            ),
            view(2, &[]),
        ];
        let e = choose_bootstrap(&v).unwrap_err();
        assert!(e.contains("member 2"), "{e}");
        v[2] = view(
            2,
            &[("uuid", U), ("seqno", "15"), ("safe_to_bootstrap", "0")],
        );
        assert_eq!(choose_bootstrap(&v), Ok(1));
    }

    #[test]
    fn unknown_positions_need_an_operator() {
        let v = [
            view(
                0,
                &[("uuid", U), ("seqno", "-1"), ("safe_to_bootstrap", "0")],
            ),
            view(
                1,
                &[("uuid", U), ("seqno", "-1"), ("safe_to_bootstrap", "0")],
            ),
        ];
        assert!(choose_bootstrap(&v).unwrap_err().contains("seqno -1"));
    }
}
