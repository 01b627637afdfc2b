//! One ServiceInstance on this machine: an actor that converges it to its latest spec and
//! supervises the process.
//!
//! A new spec is installed (artifact, secrets), written as a new config version, checked by
//! the service's own checker and only then switched to: the running process is stopped and
//! the new one started. A refused config never replaces a running one. The process is
//! restarted with backoff when it exits; its output is kept in `{dir}/log/service.log`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use groundwork_types::agent::{InstanceReport, SecretValue};
use groundwork_types::{InstancePhase, ServiceInstanceSpec, ServiceInstanceStatus, SetupStep};
use tokio::sync::{mpsc, watch};

use super::Env;
use super::expand::{Vars, fill_secrets};

/// Restart delays after exits: 1 s doubling to 30 s, back to 1 s after a minute up.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

struct Proc {
    child: tokio::process::Child,
    pid: i32,
    /// Started with the bootstrap arguments.
    bootstrapped: bool,
    started: Instant,
}

/// The config version being run.
struct Version {
    digest: String,
    vars: Vars,
    spec: ServiceInstanceSpec,
    /// Secret values, to redact them from anything reported.
    secrets: Vec<String>,
}

struct Actor {
    name: String,
    env: Arc<Env>,
    dir: PathBuf,
    status: ServiceInstanceStatus,
    reported: Option<ServiceInstanceStatus>,
    proc: Option<Proc>,
    good: Option<Version>,
    /// A digest tried and not taken, and when to try it again (None: only when it changes).
    tried: Option<(String, Option<Instant>)>,
    healthy: bool,
    /// Since when a process that was healthy is not.
    unhealthy_since: Option<Instant>,
    backoff: Duration,
    restart_at: Option<Instant>,
    latest_bootstrap: bool,
    /// When the instance's certificate is to be renewed (when its spec asks for one).
    tls_renew_at: Option<std::time::SystemTime>,
    reports: mpsc::UnboundedSender<InstanceReport>,
}

/// Runs until the spec channel says `None` (the instance was removed) or closes.
pub async fn run(
    name: String,
    mut specs: watch::Receiver<Option<ServiceInstanceSpec>>,
    env: Arc<Env>,
    reports: mpsc::UnboundedSender<InstanceReport>,
) {
    let dir = env.services.join(&name);
    let mut a = Actor {
        name,
        env,
        dir,
        status: ServiceInstanceStatus {
            phase: Some(InstancePhase::Pending),
            ..Default::default()
        },
        reported: None,
        proc: None,
        good: None,
        tried: None,
        healthy: false,
        unhealthy_since: None,
        backoff: Duration::from_secs(1),
        restart_at: None,
        latest_bootstrap: false,
        tls_renew_at: None,
        reports,
    };
    a.reap_previous().await;
    loop {
        let spec = specs.borrow_and_update().clone();
        let Some(spec) = spec else {
            a.stop().await;
            eprintln!("groundwork node-agent: {}: removed: stopped", a.name);
            return;
        };
        a.latest_bootstrap = spec.bootstrap;
        let current = a.good.as_ref().map(|g| g.digest.clone());
        let retry_due = match &a.tried {
            Some((d, at)) if *d == spec.config_digest => at.is_some_and(|t| Instant::now() >= t),
            _ => true,
        };
        if current.as_deref() != Some(spec.config_digest.as_str()) && retry_due {
            a.converge(&spec).await;
        }
        // A member told to bootstrap that runs without it and is not healthy: restart it.
        if spec.bootstrap
            && a.proc.as_ref().is_some_and(|p| !p.bootstrapped)
            && !a.healthy
            && a.good.is_some()
        {
            eprintln!(
                "groundwork node-agent: {}: restarting as the cluster's first member",
                a.name
            );
            a.kill().await;
            a.start().await;
        }
        a.report(&spec);
        // Healthy: every 5 s. Just started: every 100 ms for 3 s (most services are ready
        // in well under a second, and every tick of delay is the layer's), then 500 ms.
        let just_started = a
            .proc
            .as_ref()
            .is_some_and(|p| p.started.elapsed() < Duration::from_secs(3));
        let tick = if a.healthy {
            Duration::from_secs(5)
        } else if just_started {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(500)
        };
        let exited = async {
            match a.proc.as_mut() {
                Some(p) => p.child.wait().await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = specs.changed() => {
                if r.is_err() {
                    a.stop().await;
                    return;
                }
            }
            st = exited => a.exited(st).await,
            _ = tokio::time::sleep(tick) => a.tick(&spec).await,
        }
    }
}

fn user_ids(user: Option<&str>) -> Result<Option<(u32, u32)>, String> {
    match user {
        None => Ok(None),
        Some(u) => match nix::unistd::User::from_name(u) {
            Ok(Some(u)) => Ok(Some((u.uid.as_raw(), u.gid.as_raw()))),
            Ok(None) => Err(format!("user {u:?} does not exist on this machine")),
            Err(e) => Err(format!("user {u:?}: {e}")),
        },
    }
}

/// When to renew a certificate: with a third of its life left, less a per-instance share of
/// another sixth, so the members of a layer (issued together) restart at different times.
fn renew_at(pem: &str, instance: &str) -> Option<std::time::SystemTime> {
    let (from, to) = groundwork_pki::validity_of(pem)?;
    let life = (to - from).max(0) as u64;
    let spread = ring::digest::digest(&ring::digest::SHA256, instance.as_bytes()).as_ref()[0]
        as u64
        * (life / 6)
        / 255;
    let at = (from as u64) + life - life / 3 - spread;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(at))
}

fn short(digest: &str) -> String {
    digest
        .strip_prefix("sha256:")
        .unwrap_or(digest)
        .chars()
        .take(16)
        .collect()
}

/// The last lines of a command's output, at most 2000 characters.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(6);
    let mut t = lines[start..].join("\n");
    if t.len() > 2000 {
        t = t[t.len() - 2000..].to_string();
    }
    t
}

impl Actor {
    fn redact(&self, text: &str, secrets: &[String]) -> String {
        let mut t = text.to_string();
        for s in secrets
            .iter()
            .chain(self.good.iter().flat_map(|g| &g.secrets))
        {
            if !s.is_empty() {
                t = t.replace(s.as_str(), "<redacted>");
            }
        }
        t
    }

    fn set(&mut self, phase: InstancePhase, message: Option<String>) {
        self.status.phase = Some(phase);
        self.status.message = message;
    }

    /// Sends the status if it changed.
    fn report(&mut self, spec: &ServiceInstanceSpec) {
        self.status.ready = self.healthy
            && self.proc.is_some()
            && self.status.running_digest.as_deref() == Some(spec.config_digest.as_str());
        if self.reported.as_ref() != Some(&self.status) {
            let _ = self.reports.send(InstanceReport {
                name: self.name.clone(),
                config_digest: spec.config_digest.clone(),
                status: self.status.clone(),
            });
            self.reported = Some(self.status.clone());
        }
    }

    /// A process a previous agent started for this instance is stopped (it cannot be
    /// supervised from here).
    async fn reap_previous(&mut self) {
        let pidfile = self.dir.join("run.pid");
        let Ok(text) = tokio::fs::read_to_string(&pidfile).await else {
            return;
        };
        if let Ok(pid) = text.trim().parse::<i32>()
            && pid > 1
            && Path::new(&format!("/proc/{pid}")).exists()
        {
            let pg = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGTERM);
            for _ in 0..100 {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
            eprintln!(
                "groundwork node-agent: {}: stopped the process a previous agent left ({pid})",
                self.name
            );
        }
        let _ = tokio::fs::remove_file(&pidfile).await;
    }

    async fn converge(&mut self, spec: &ServiceInstanceSpec) {
        let digest = spec.config_digest.clone();
        let running = self.proc.is_some();
        let retry = |after: u64| {
            Some((
                digest.clone(),
                Some(Instant::now() + Duration::from_secs(after)),
            ))
        };
        if !running {
            self.set(InstancePhase::Installing, Some("installing".into()));
            self.report(spec);
        }
        // 1. What it runs.
        let mut artifact = String::new();
        let installed = async {
            super::artifact::ensure_packages(&spec.artifact.packages).await?;
            if let Some(f) = &spec.artifact.fetch {
                artifact = super::artifact::fetch(&self.env.artifacts, f)
                    .await?
                    .display()
                    .to_string();
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = installed {
            let msg = format!("artifact: {e:#}");
            // A digest mismatch needs the operator (a wrong sha256 or a wrong file): the
            // layer fails with it. Anything else (the store unreachable) is retried.
            if msg.contains("refused") {
                self.status.refused_digest = Some(digest.clone());
            }
            let field = field_of(spec, &msg);
            return self.not_taken(spec, msg, field, retry(30));
        }
        // 2. Its secrets.
        let mut secrets: BTreeMap<String, SecretValue> = BTreeMap::new();
        for c in &spec.secrets {
            match self.env.secret(&self.name, c).await {
                Ok(v) => {
                    secrets.insert(c.clone(), v);
                }
                Err(e) => {
                    let msg = format!("waiting for Credential {c}: {e}");
                    return self.not_taken(spec, msg, None, retry(5));
                }
            }
        }
        let values: Vec<String> = secrets.values().map(|v| v.password.clone()).collect();
        // 2b. Its certificate.
        let ids = match user_ids(spec.run.user.as_deref()) {
            Ok(ids) => ids,
            Err(e) => return self.not_taken(spec, e, None, retry(30)),
        };
        if spec.tls.is_some()
            && let Err(e) = self.ensure_certificate(spec, ids, false).await
        {
            let msg = format!("waiting for the instance's certificate: {e}");
            return self.not_taken(spec, msg, None, retry(5));
        }
        // 3. The new config version.
        let vars = Vars {
            dir: self.dir.display().to_string(),
            conf: self
                .dir
                .join("conf")
                .join(short(&digest))
                .display()
                .to_string(),
            data: self.dir.join("data").display().to_string(),
            artifact,
            agent_api: self.env.api.base.clone(),
            agent_addr: self.env.api.addr.clone(),
            cluster_ca: self.env.cluster_ca.display().to_string(),
            tls_cert: self.dir.join("tls/cert.pem").display().to_string(),
            tls_key: self.dir.join("tls/key.pem").display().to_string(),
        };
        if let Err(e) = self.write_version(spec, &vars, &secrets, ids).await {
            return self.not_taken(spec, format!("writing the config: {e:#}"), None, retry(10));
        }
        // 4. The service's own checker.
        if let Some((prog, args)) = spec.check.split_first() {
            let out = tokio::time::timeout(
                Duration::from_secs(60),
                tokio::process::Command::new(vars.expand(prog))
                    .args(vars.expand_all(args))
                    .current_dir(&vars.conf)
                    .kill_on_drop(true)
                    .output(),
            )
            .await;
            let refusal = match out {
                Ok(Ok(o)) if o.status.success() => None,
                Ok(Ok(o)) => Some(
                    String::from_utf8_lossy(&o.stderr).to_string()
                        + "\n"
                        + &String::from_utf8_lossy(&o.stdout),
                ),
                Ok(Err(e)) => Some(format!("{prog}: {e}")),
                Err(_) => Some(format!("{prog}: did not finish within 60 s")),
            };
            if let Some(text) = refusal {
                let field = field_of(spec, &text);
                let msg = format!(
                    "{prog} refused the new config{}: {}",
                    if running {
                        " (the running one stays)"
                    } else {
                        ""
                    },
                    self.redact(&tail(&text), &values)
                );
                self.status.refused_digest = Some(digest.clone());
                return self.not_taken(spec, msg, field, Some((digest, None)));
            }
        }
        // 5. One-time setup.
        for step in &spec.setup {
            let user = step.user.as_deref().or(spec.run.user.as_deref());
            if let Err(e) = self.step(step, &vars, user, true).await {
                let msg = self.redact(&format!("setup {}: {e}", step.name), &values);
                return self.not_taken(spec, msg, None, retry(10));
            }
        }
        // 6. Switch.
        self.status.refused_digest = None;
        self.status.field = None;
        self.tried = None;
        self.drain(spec).await;
        self.kill().await;
        if let Err(e) = self.discard_data(spec, &vars).await {
            let msg = format!("moving the data aside: {e:#}");
            return self.not_taken(spec, msg, None, retry(10));
        }
        self.good = Some(Version {
            digest: digest.clone(),
            vars,
            spec: spec.clone(),
            secrets: values,
        });
        self.backoff = Duration::from_secs(1);
        self.start().await;
        self.prune_versions(&digest).await;
    }

    /// A raised `dataEpoch`: the data directory is moved aside (kept, never deleted) and the
    /// service starts on an empty one. The epoch is recorded after the move, so a crash in
    /// between moves an empty directory aside once more, nothing else.
    /// Makes sure the instance has a certificate for its current names that is not due for
    /// renewal (or, with `renew`, a new one): a key made here, the certificate signed
    /// through the agent API. Returns whether a new one was written.
    async fn ensure_certificate(
        &mut self,
        spec: &ServiceInstanceSpec,
        ids: Option<(u32, u32)>,
        renew: bool,
    ) -> Result<bool, String> {
        use std::os::unix::fs::PermissionsExt;
        let Some(tls) = &spec.tls else {
            return Ok(false);
        };
        let mut names: Vec<String> = tls
            .dns_names
            .iter()
            .chain(&tls.ip_addresses)
            .chain(&spec.address)
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        let want = names.join("\n");
        let dir = self.dir.join("tls");
        let (cert_path, key_path, names_path) =
            (dir.join("cert.pem"), dir.join("key.pem"), dir.join("names"));
        let current = std::fs::read_to_string(&cert_path).ok();
        let same = std::fs::read_to_string(&names_path).is_ok_and(|n| n == want);
        if let (Some(pem), true, false) = (&current, same, renew)
            && let Some(at) = renew_at(pem, &self.name)
            && std::time::SystemTime::now() < at
        {
            self.tls_renew_at = Some(at);
            return Ok(false);
        }
        let (key, csr) = groundwork_pki::key_and_request(&self.name)?;
        let cert = self.env.certificate(&self.name, csr).await?;
        let write = |p: &Path, text: &str, mode: u32| -> std::io::Result<()> {
            let tmp = p.with_extension("new");
            std::fs::write(&tmp, text)?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
            if let Some((uid, gid)) = ids {
                nix::unistd::chown(
                    &tmp,
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                )?;
            }
            std::fs::rename(&tmp, p)
        };
        let written = std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)))
            .and_then(|_| write(&key_path, &key, 0o600))
            .and_then(|_| write(&cert_path, &cert, 0o644))
            .and_then(|_| write(&names_path, &want, 0o644));
        written.map_err(|e| format!("{}: {e}", dir.display()))?;
        self.tls_renew_at = renew_at(&cert, &self.name);
        eprintln!(
            "groundwork node-agent: {}: certificate issued for {}",
            self.name,
            names.join(", ")
        );
        Ok(true)
    }

    async fn discard_data(&self, spec: &ServiceInstanceSpec, vars: &Vars) -> anyhow::Result<()> {
        let mark = self.dir.join("data-epoch");
        let have: u32 = tokio::fs::read_to_string(&mark)
            .await
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        if spec.data_epoch <= have {
            return Ok(());
        }
        let data = PathBuf::from(&vars.data);
        let aside = self.dir.join(format!("data.discarded-{have}"));
        let _ = tokio::fs::remove_dir_all(&aside).await;
        if tokio::fs::metadata(&data).await.is_ok() {
            tokio::fs::rename(&data, &aside).await?;
        }
        tokio::fs::create_dir_all(&data).await?;
        if let Some((uid, gid)) = user_ids(spec.run.user.as_deref()).map_err(anyhow::Error::msg)? {
            nix::unistd::chown(
                &data,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )?;
        }
        tokio::fs::write(&mark, spec.data_epoch.to_string()).await?;
        eprintln!(
            "groundwork node-agent: {}: data epoch {}: the data directory was moved to {}",
            self.name,
            spec.data_epoch,
            aside.display()
        );
        Ok(())
    }

    /// The spec's digest is not taken now: the running version (if any) stays.
    fn not_taken(
        &mut self,
        spec: &ServiceInstanceSpec,
        msg: String,
        field: Option<String>,
        tried: Option<(String, Option<Instant>)>,
    ) {
        eprintln!("groundwork node-agent: {}: {msg}", self.name);
        self.tried = tried;
        self.status.field = field;
        let phase = if self.proc.is_some() {
            self.status.phase.unwrap_or(InstancePhase::Running)
        } else if msg.starts_with("waiting for") {
            InstancePhase::Installing
        } else {
            InstancePhase::Failed
        };
        self.set(phase, Some(msg));
        self.report(spec);
    }

    async fn write_version(
        &self,
        spec: &ServiceInstanceSpec,
        vars: &Vars,
        secrets: &BTreeMap<String, SecretValue>,
        ids: Option<(u32, u32)>,
    ) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let conf = PathBuf::from(&vars.conf);
        let tmp = conf.with_extension("new");
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        tokio::fs::create_dir_all(&tmp).await?;
        for d in [&self.dir, &conf.parent().unwrap_or(&self.dir).to_path_buf()] {
            tokio::fs::create_dir_all(d).await?;
            tokio::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).await?;
        }
        let data = PathBuf::from(&vars.data);
        tokio::fs::create_dir_all(&data).await?;
        tokio::fs::create_dir_all(self.dir.join("log")).await?;
        let (uid, gid) = ids.unwrap_or((0, 0));
        if ids.is_some() {
            let chown = |p: &Path| {
                nix::unistd::chown(
                    p,
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                )
            };
            chown(&data)?;
            // The service writes its pid and socket files in its own directory.
            chown(&self.dir)?;
            tokio::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o750)).await?;
        }
        // Each file version gets its own salt for hashed secrets; kept stable per digest.
        let salt: [u8; 8] = {
            let d = ring::digest::digest(&ring::digest::SHA256, spec.config_digest.as_bytes());
            d.as_ref()[..8].try_into().unwrap_or([0; 8])
        };
        for f in &spec.files {
            let path = tmp.join(&f.path);
            if let Some(p) = path.parent() {
                tokio::fs::create_dir_all(p).await?;
            }
            let text = fill_secrets(&vars.expand(&f.content), secrets, salt);
            let mode = f
                .mode
                .as_deref()
                .and_then(|m| u32::from_str_radix(m, 8).ok())
                .unwrap_or(0o640);
            let mut o = tokio::fs::OpenOptions::new();
            o.create(true).write(true).truncate(true).mode(mode);
            let mut file = o.open(&path).await?;
            tokio::io::AsyncWriteExt::write_all(&mut file, text.as_bytes()).await?;
            file.sync_all().await?;
            tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).await?;
            // Readable by the service's group, owned by the service's user when the file is
            // private to it (mode 0600).
            let owner = (mode & 0o077 == 0 && ids.is_some()).then_some(uid);
            nix::unistd::chown(
                &path,
                owner.map(nix::unistd::Uid::from_raw),
                ids.map(|_| nix::unistd::Gid::from_raw(gid)),
            )?;
        }
        let _ = tokio::fs::remove_dir_all(&conf).await;
        tokio::fs::rename(&tmp, &conf).await?;
        tokio::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o755)).await?;
        // `current` points at the newest version written (for people; the process is
        // started with the version's own path).
        let link = self.dir.join("current.new");
        let _ = tokio::fs::remove_file(&link).await;
        tokio::fs::symlink(&conf, &link).await?;
        tokio::fs::rename(&link, self.dir.join("current")).await?;
        Ok(())
    }

    /// Keeps the version just taken and the one before it.
    async fn prune_versions(&self, keep: &str) {
        let dir = self.dir.join("conf");
        let Ok(mut rd) = tokio::fs::read_dir(&dir).await else {
            return;
        };
        let mut all = Vec::new();
        while let Ok(Some(e)) = rd.next_entry().await {
            let modified = e.metadata().await.and_then(|m| m.modified()).ok();
            all.push((modified, e.path()));
        }
        all.sort();
        let keep = short(keep);
        let n = all.len();
        for (i, (_, p)) in all.into_iter().enumerate() {
            if i + 2 < n && p.file_name().is_some_and(|f| f != keep.as_str()) {
                let _ = tokio::fs::remove_dir_all(&p).await;
            }
        }
    }

    /// Runs a setup (`once`: skipped when `creates` exists) or after-start step.
    async fn step(
        &self,
        step: &SetupStep,
        vars: &Vars,
        user: Option<&str>,
        once: bool,
    ) -> Result<(), String> {
        let creates = vars.expand(&step.creates);
        if once && !creates.is_empty() && Path::new(&creates).exists() {
            return Ok(());
        }
        let Some((prog, args)) = step.command.split_first() else {
            return Ok(());
        };
        let mut cmd = tokio::process::Command::new(vars.expand(prog));
        cmd.args(vars.expand_all(args))
            .current_dir(&vars.dir)
            .kill_on_drop(true);
        if let Some((uid, gid)) = user_ids(user)? {
            cmd.uid(uid).gid(gid);
        }
        let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
            .await
            .map_err(|_| "did not finish within 300 s".to_string())?
            .map_err(|e| format!("{prog}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{}: {}",
                out.status,
                tail(
                    &(String::from_utf8_lossy(&out.stderr).to_string()
                        + &String::from_utf8_lossy(&out.stdout))
                )
            ));
        }
        if once && !creates.is_empty() && !Path::new(&creates).exists() {
            let _ = tokio::fs::write(&creates, b"").await;
        }
        Ok(())
    }

    async fn start(&mut self) {
        let Some(v) = &self.good else { return };
        let spec = &v.spec;
        let Some((prog, args)) = spec.run.command.split_first() else {
            return;
        };
        let log_dir = self.dir.join("log");
        let log = log_dir.join("service.log");
        if std::fs::metadata(&log).is_ok_and(|m| m.len() > 10 << 20) {
            let _ = std::fs::rename(&log, log_dir.join("service.log.1"));
        }
        let file = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
        {
            Ok(f) => f,
            Err(e) => {
                self.set(
                    InstancePhase::Failed,
                    Some(format!("{}: {e}", log.display())),
                );
                return;
            }
        };
        let mut args = v.vars.expand_all(args);
        let bootstrap = self.latest_bootstrap && !spec.run.bootstrap_args.is_empty();
        if bootstrap {
            args.extend(v.vars.expand_all(&spec.run.bootstrap_args));
        }
        let mut cmd = tokio::process::Command::new(v.vars.expand(prog));
        // Placeholders in values (`{cluster_ca}`), never secrets: an environment is readable
        // in /proc by the same user.
        let env: Vec<(String, String)> = spec
            .run
            .env
            .iter()
            .map(|(k, x)| (k.clone(), v.vars.expand(x)))
            .collect();
        cmd.args(&args)
            .envs(env)
            .current_dir(&v.vars.dir)
            .stdin(std::process::Stdio::null())
            .stdout(
                file.try_clone()
                    .map(std::process::Stdio::from)
                    .unwrap_or(std::process::Stdio::null()),
            )
            .stderr(std::process::Stdio::from(file))
            .process_group(0)
            .kill_on_drop(false);
        match user_ids(spec.run.user.as_deref()) {
            Ok(Some((uid, gid))) if !spec.run.drops_privileges => {
                cmd.uid(uid).gid(gid);
            }
            Ok(_) => {}
            Err(e) => {
                self.set(InstancePhase::Failed, Some(e));
                return;
            }
        }
        match cmd.spawn() {
            Ok(child) => {
                let pid = child.id().unwrap_or(0) as i32;
                let _ = std::fs::write(self.dir.join("run.pid"), format!("{pid}\n"));
                eprintln!(
                    "groundwork node-agent: {}: started {prog} (pid {pid}, config {}{})",
                    self.name,
                    short(&v.digest),
                    if bootstrap { ", bootstrapping" } else { "" }
                );
                self.proc = Some(Proc {
                    child,
                    pid,
                    bootstrapped: bootstrap,
                    started: Instant::now(),
                });
                self.healthy = false;
                self.status.running_digest = Some(v.digest.clone());
                self.set(InstancePhase::Starting, None);
            }
            Err(e) => {
                self.status.running_digest = None;
                self.set(InstancePhase::Failed, Some(format!("starting {prog}: {e}")));
                self.restart_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    /// Stops the process: SIGTERM to its process group, SIGKILL after the grace period.
    async fn kill(&mut self) {
        let Some(mut p) = self.proc.take() else {
            return;
        };
        let grace = self
            .good
            .as_ref()
            .map(|g| g.spec.run.stop_grace_seconds)
            .unwrap_or(30);
        let pg = nix::unistd::Pid::from_raw(p.pid);
        let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(grace as u64), p.child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "groundwork node-agent: {}: no exit {grace} s after SIGTERM: SIGKILL",
                self.name
            );
            let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
            let _ = p.child.wait().await;
        }
        // Whatever else is left in its process group.
        let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
        let _ = std::fs::remove_file(self.dir.join("run.pid"));
        self.healthy = false;
    }

    async fn stop(&mut self) {
        if let Some(spec) = self.good.as_ref().map(|g| g.spec.clone()) {
            self.drain(&spec).await;
        }
        self.kill().await;
    }

    /// Takes a healthy process out of service before it is stopped: the running version's
    /// `preStop` steps, then `drainSeconds`.
    async fn drain(&mut self, spec: &ServiceInstanceSpec) {
        let Some(v) = &self.good else { return };
        if self.proc.is_none() || !self.healthy {
            return;
        }
        let (steps, wait, vars) = (
            v.spec.run.pre_stop.clone(),
            v.spec.run.drain_seconds,
            v.vars.clone(),
        );
        let values = v.secrets.clone();
        if steps.is_empty() && wait == 0 {
            return;
        }
        self.set(
            InstancePhase::Running,
            Some(format!("draining for {wait} s before the restart")),
        );
        self.report(spec);
        for step in &steps {
            if let Err(e) = self.step(step, &vars, step.user.as_deref(), false).await {
                let msg = self.redact(&format!("before stopping, {}: {e}", step.name), &values);
                eprintln!("groundwork node-agent: {}: {msg}", self.name);
            }
        }
        tokio::time::sleep(Duration::from_secs(wait as u64)).await;
    }

    async fn exited(&mut self, st: Option<std::process::ExitStatus>) {
        let Some(p) = self.proc.take() else { return };
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(p.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = std::fs::remove_file(self.dir.join("run.pid"));
        if p.started.elapsed() > Duration::from_secs(60) {
            self.backoff = Duration::from_secs(1);
        }
        self.healthy = false;
        self.status.restarts += 1;
        let last = std::fs::read_to_string(self.dir.join("log/service.log"))
            .map(|t| tail(&t).lines().last().unwrap_or("").to_string())
            .unwrap_or_default();
        let values: Vec<String> = Vec::new();
        let msg = format!(
            "exited ({}); restarting in {} s{}",
            st.map(|s| s.to_string())
                .unwrap_or_else(|| "unknown status".into()),
            self.backoff.as_secs(),
            if last.is_empty() {
                String::new()
            } else {
                format!(": {}", self.redact(&last, &values))
            }
        );
        eprintln!("groundwork node-agent: {}: {msg}", self.name);
        self.set(InstancePhase::Unhealthy, Some(msg));
        self.restart_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    async fn tick(&mut self, spec: &ServiceInstanceSpec) {
        // A certificate due for renewal: a new one, and the service restarted on it.
        if self.proc.is_some()
            && self.good.is_some()
            && self
                .tls_renew_at
                .is_some_and(|at| std::time::SystemTime::now() >= at)
        {
            let ids = user_ids(spec.run.user.as_deref()).ok().flatten();
            match self.ensure_certificate(spec, ids, true).await {
                Ok(_) => {
                    eprintln!(
                        "groundwork node-agent: {}: restarting on its renewed certificate",
                        self.name
                    );
                    self.kill().await;
                    self.start().await;
                }
                Err(e) => {
                    eprintln!(
                        "groundwork node-agent: {}: renewing its certificate: {e}",
                        self.name
                    );
                    self.tls_renew_at =
                        Some(std::time::SystemTime::now() + Duration::from_secs(60));
                }
            }
            return;
        }
        if self.proc.is_none() {
            if self.restart_at.is_some_and(|t| Instant::now() >= t) && self.good.is_some() {
                self.restart_at = None;
                self.start().await;
            }
            return;
        }
        let Some(v) = &self.good else { return };
        let vars = v.vars.clone();
        let after: Vec<SetupStep> = v.spec.after_start.clone();
        let health = v.spec.health.clone();
        let fact_files = v.spec.fact_files.clone();
        let values = v.secrets.clone();
        let digest = v.digest.clone();
        self.status.facts = read_facts(&fact_files, &vars);
        match super::health::check(&health, &vars).await {
            Ok(()) => {
                if !self.healthy {
                    let marker = Path::new(&vars.conf).join(".after-start-done");
                    if !after.is_empty() && !marker.exists() {
                        for step in &after {
                            if let Err(e) =
                                self.step(step, &vars, step.user.as_deref(), false).await
                            {
                                let msg = self
                                    .redact(&format!("after start, {}: {e}", step.name), &values);
                                self.set(InstancePhase::Starting, Some(msg));
                                return;
                            }
                        }
                        let _ = std::fs::write(&marker, b"");
                    }
                    eprintln!(
                        "groundwork node-agent: {}: healthy (config {})",
                        self.name,
                        short(&digest)
                    );
                }
                self.healthy = true;
                self.unhealthy_since = None;
                // A refusal of a newer config stays visible while the old one serves.
                let keep =
                    self.status.refused_digest.as_deref() == Some(spec.config_digest.as_str());
                let msg = if keep {
                    self.status.message.clone()
                } else {
                    None
                };
                self.set(InstancePhase::Running, msg);
            }
            Err(e) => {
                let was = self.healthy;
                self.healthy = false;
                let phase = if was || self.status.phase == Some(InstancePhase::Unhealthy) {
                    InstancePhase::Unhealthy
                } else {
                    InstancePhase::Starting
                };
                let e = self.redact(&e, &values);
                self.set(phase, Some(format!("health: {e}")));
                // Unhealthy for `restartAfterSeconds`, or never healthy for three times that
                // since the start (a joiner left outside the primary component).
                let due = health.restart_after_seconds.and_then(|after| {
                    let after = Duration::from_secs(after as u64);
                    match phase {
                        InstancePhase::Unhealthy => {
                            let since = *self.unhealthy_since.get_or_insert_with(Instant::now);
                            (since.elapsed() >= after).then_some(since)
                        }
                        _ => {
                            let started = self.proc.as_ref().map(|p| p.started)?;
                            (started.elapsed() >= after * 3).then_some(started)
                        }
                    }
                });
                if let Some(since) = due
                    && !health.liveness.is_empty()
                {
                    let live = super::health::check(
                        &groundwork_types::HealthCheck {
                            command: health.liveness.clone(),
                            ..Default::default()
                        },
                        &vars,
                    )
                    .await;
                    if let Err(why) = live {
                        let why = self.redact(&why, &values);
                        eprintln!(
                            "groundwork node-agent: {}: unhealthy for {} s and not alive ({why}): restarting",
                            self.name,
                            since.elapsed().as_secs()
                        );
                        self.unhealthy_since = None;
                        self.status.restarts += 1;
                        self.kill().await;
                        self.start().await;
                    }
                }
            }
        }
    }
}

/// The config field a checker's (or the fetcher's) message points back to.
fn field_of(spec: &ServiceInstanceSpec, text: &str) -> Option<String> {
    spec.check_fields
        .iter()
        .find(|f| text.contains(&f.contains))
        .map(|f| f.field.clone())
}

/// `key: value` lines of each file, as `FILE_NAME.key`.
fn read_facts(files: &[String], vars: &Vars) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for f in files {
        let path = vars.expand(f);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let base = Path::new(&path)
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        for line in text.lines() {
            if line.trim_start().starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                out.insert(format!("{base}.{}", k.trim()), v.trim().to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_from_grastate() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("grastate.dat"),
            "# GALERA saved state\nversion: 2.1\nuuid:    6f3e\nseqno:   12\nsafe_to_bootstrap: 1\n",
        )
        .unwrap();
        let vars = Vars {
            data: d.path().display().to_string(),
            ..Default::default()
        };
        let f = read_facts(&["{data}/grastate.dat".into()], &vars);
        assert_eq!(f["grastate.dat.seqno"], "12");
        assert_eq!(f["grastate.dat.safe_to_bootstrap"], "1");
        assert_eq!(f["grastate.dat.uuid"], "6f3e");
    }
}
