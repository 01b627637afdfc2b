//! The directory part of the identity layer: OpenLDAP slapd from Debian, one independent
//! directory per member (replication between them is not configured yet).
//!
//! - `slapd.conf` (the static config format: `slaptest` checks it, and it is one file to
//!   diff) with an `mdb` database in `{data}`, the admin DN's password as a salted hash;
//! - one-time setup: `slapadd` of the base entries (the suffix, `ou=people`, `ou=groups`);
//! - after every start of a new config: `reconcile.sh` adds missing users and groups,
//!   replaces their attributes with the stack's and deletes those no longer listed, over
//!   LDAP as the admin DN. Users are `inetOrgPerson`; groups `groupOfNames` (which needs a
//!   `member`: an empty group lists the admin DN).

use groundwork_types::{
    Artifact, CheckField, HealthCheck, InstanceFile, RunSpec, ServiceInstanceSpec, SetupStep,
};

use super::{RenderCtx, argv};

pub(super) fn render(ctx: &RenderCtx) -> Result<ServiceInstanceSpec, String> {
    let field = format!("{}.config.openldap", ctx.field());
    let Some(cfg) = ctx.layer.config.openldap.as_ref() else {
        return Err(format!("{field}: required when the layer runs openldap"));
    };
    let suffix = cfg.suffix.trim();
    let base = base_entry(suffix).map_err(|e| format!("{field}.suffix: {e}"))?;
    let admin = format!("cn=admin,{suffix}");
    let url = format!("ldap://{}:{}/", ctx.me.address, cfg.port);
    let admin_cred = &cfg.admin_password.credential;
    let slapd_conf = format!(
        "# Rendered by Groundwork from ServiceStack {stack}, layer {layer}.
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {{dir}}/slapd.pid
argsfile {{dir}}/slapd.args

database mdb
maxsize 1073741824
suffix \"{suffix}\"
rootdn \"{admin}\"
rootpw {{secret-ssha:{admin_cred}}}
directory {{data}}
index objectClass eq
index uid,cn,mail eq,sub
access to dn.base=\"\" by * read
access to dn.base=\"cn=Subschema\" by * read
access to attrs=userPassword by self write by anonymous auth by * none
access to * by self read by users read by * none
",
        stack = ctx.stack,
        layer = ctx.layer.name,
    );
    let people = format!("ou=people,{suffix}");
    let groups_dn = format!("ou=groups,{suffix}");
    let base_ldif = format!(
        "{base}\ndn: {people}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: {groups_dn}\nobjectClass: organizationalUnit\nou: groups\n"
    );
    // Entries: added when missing (`ldapadd -c`), then their attributes replaced.
    let mut adds = String::new();
    let mut mods = String::new();
    for u in &cfg.users {
        let dn = format!("uid={},{people}", u.uid);
        let sn = u.name.split_whitespace().last().unwrap_or(&u.uid);
        adds.push_str(&format!(
            "dn: {dn}\nobjectClass: inetOrgPerson\nuid: {}\ncn: {}\nsn: {sn}\n\n",
            u.uid, u.name
        ));
        mods.push_str(&format!(
            "dn: {dn}\nchangetype: modify\nreplace: cn\ncn: {}\n-\nreplace: sn\nsn: {sn}\n-\n",
            u.name
        ));
        mods.push_str("replace: mail\n");
        if let Some(m) = &u.mail {
            mods.push_str(&format!("mail: {m}\n"));
        }
        mods.push_str("-\nreplace: userPassword\n");
        if let Some(p) = &u.password {
            mods.push_str(&format!("userPassword: {{secret-ssha:{}}}\n", p.credential));
        }
        mods.push_str("-\n\n");
    }
    for g in &cfg.groups {
        let dn = format!("cn={},{groups_dn}", g.name);
        let mut members: Vec<String> = cfg
            .users
            .iter()
            .filter(|u| u.groups.contains(&g.name))
            .map(|u| format!("member: uid={},{people}\n", u.uid))
            .collect();
        if members.is_empty() {
            members.push(format!("member: {admin}\n"));
        }
        let members = members.concat();
        adds.push_str(&format!(
            "dn: {dn}\nobjectClass: groupOfNames\ncn: {}\n{members}\n",
            g.name
        ));
        mods.push_str(&format!(
            "dn: {dn}\nchangetype: modify\nreplace: member\n{members}-\nreplace: description\n"
        ));
        if let Some(d) = &g.description {
            mods.push_str(&format!("description: {d}\n"));
        }
        mods.push_str("-\n\n");
    }
    let keep_users: Vec<String> = cfg
        .users
        .iter()
        .map(|u| format!("uid={},{people}", u.uid))
        .collect();
    let keep_groups: Vec<String> = cfg
        .groups
        .iter()
        .map(|g| format!("cn={},{groups_dn}", g.name))
        .collect();
    let reconcile = format!(
        r#"#!/bin/sh
# Makes the directory's users and groups the stack's: adds, replaces, deletes.
set -eu
H='{url}'
D='{admin}'
Y='{{conf}}/admin.pw'
if [ -s '{{conf}}/entries.ldif' ]; then
  # Existing entries answer "already exists" (68): the replace below updates them.
  ldapadd -c -x -H "$H" -D "$D" -y "$Y" -f '{{conf}}/entries.ldif' >/dev/null 2>&1 || true
  ldapmodify -x -H "$H" -D "$D" -y "$Y" -f '{{conf}}/attrs.ldif' >/dev/null
fi
prune() {{
  ldapsearch -x -LLL -o ldif-wrap=no -H "$H" -D "$D" -y "$Y" -b "$1" -s one dn |
    sed -n 's/^dn: //p' | while read -r dn; do
      case "$2" in *"|$dn|"*) ;; *) ldapdelete -x -H "$H" -D "$D" -y "$Y" "$dn" ;; esac
    done
}}
prune '{people}' '|{keep_users}|'
prune '{groups_dn}' '|{keep_groups}|'
"#,
        keep_users = keep_users.join("|"),
        keep_groups = keep_groups.join("|"),
    );
    Ok(ServiceInstanceSpec {
        artifact: Artifact {
            packages: vec!["slapd".into(), "ldap-utils".into()],
            fetch: None,
        },
        files: vec![
            InstanceFile {
                path: "slapd.conf".into(),
                content: slapd_conf,
                mode: Some("0600".into()),
            },
            InstanceFile {
                path: "base.ldif".into(),
                content: base_ldif,
                mode: None,
            },
            InstanceFile {
                path: "entries.ldif".into(),
                content: adds,
                mode: None,
            },
            InstanceFile {
                path: "attrs.ldif".into(),
                content: mods,
                mode: Some("0600".into()),
            },
            InstanceFile {
                path: "admin.pw".into(),
                content: format!("{{secret:{admin_cred}}}"),
                mode: Some("0600".into()),
            },
            InstanceFile {
                path: "reconcile.sh".into(),
                content: reconcile,
                mode: Some("0700".into()),
            },
        ],
        check: argv(&["slaptest", "-u", "-f", "{conf}/slapd.conf"]),
        check_fields: vec![
            CheckField {
                contains: "suffix".into(),
                field: format!("{field}.suffix"),
            },
            CheckField {
                contains: "rootpw".into(),
                field: format!("{field}.adminPassword"),
            },
        ],
        setup: vec![SetupStep {
            name: "load the base entries".into(),
            command: argv(&[
                "slapadd",
                "-f",
                "{conf}/slapd.conf",
                "-l",
                "{conf}/base.ldif",
            ]),
            creates: "{data}/data.mdb".into(),
            user: None,
        }],
        after_start: vec![SetupStep {
            name: "users and groups".into(),
            command: argv(&["sh", "{conf}/reconcile.sh"]),
            creates: String::new(),
            user: Some("root".into()),
        }],
        run: RunSpec {
            command: vec![
                "slapd".into(),
                "-d".into(),
                "0".into(),
                "-f".into(),
                "{conf}/slapd.conf".into(),
                "-h".into(),
                url.clone(),
                "-u".into(),
                "openldap".into(),
                "-g".into(),
                "openldap".into(),
            ],
            user: Some("openldap".into()),
            drops_privileges: true,
            stop_grace_seconds: 30,
            ..Default::default()
        },
        health: HealthCheck {
            command: vec![
                "ldapsearch".into(),
                "-x".into(),
                "-H".into(),
                url,
                "-b".into(),
                String::new(),
                "-s".into(),
                "base".into(),
                "namingContexts".into(),
            ],
            ..Default::default()
        },
        ..Default::default()
    })
}

/// The suffix's own entry, from its first RDN.
fn base_entry(suffix: &str) -> Result<String, String> {
    let first = suffix.split(',').next().unwrap_or_default();
    let Some((attr, value)) = first.split_once('=') else {
        return Err(format!("{suffix:?} is not a DN such as dc=example,dc=org"));
    };
    let (attr, value) = (attr.trim().to_ascii_lowercase(), value.trim());
    Ok(match attr.as_str() {
        "dc" => format!(
            "dn: {suffix}\nobjectClass: dcObject\nobjectClass: organization\ndc: {value}\no: {value}\n"
        ),
        "o" => format!("dn: {suffix}\nobjectClass: organization\no: {value}\n"),
        "ou" => format!("dn: {suffix}\nobjectClass: organizationalUnit\nou: {value}\n"),
        _ => {
            return Err(format!(
                "{suffix:?}: the first part must be dc=, o= or ou= (Groundwork creates that entry)"
            ));
        }
    })
}
