//! The ServiceStack controller: places each layer's services on machines as
//! ServiceInstances (owned by the stack), gates layers on their dependencies, rolls changes
//! out one member at a time, replaces members whose machine is lost or in maintenance, and
//! reports per layer. The decision is [`decide::decide`]; this module reads the caches and
//! applies the plan in one step.

mod catalog;
pub mod decide;
pub mod drivers;
pub mod gitea;
pub mod nomad;
pub mod vault;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use groundwork_types::{
    Credential, LAYER_LABEL, LayerPhase, NODE_LABEL, Node, NodePhase, Rack, SERVICE_LABEL,
    STACK_LABEL, ServiceInstance, ServiceInstanceSpec, ServiceStack, condition_is_true,
    set_condition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::caches::{Caches, Change, Kinds};
use crate::events::EventType;
use crate::runtime::{
    Action, Ctx, Error, Finalizing, Owns, Reconciler, condition_with_event, finalizer_step,
    patch_status, remove_finalizer,
};
use decide::{Machine, ORDINAL_LABEL, Observed};

/// Deleting a stack stops its services first (their instances go, their agents stop them).
pub const FINALIZER: &str = "groundwork.dev/service-instances";

#[derive(Default)]
pub struct StackController {
    /// Groundwork's own metrics endpoint for the stacks' Prometheus (`host:port`).
    pub groundwork_metrics: Option<String>,
    /// What each Node looked like to placement, to map only changes that matter.
    seen: Mutex<HashMap<String, u64>>,
    /// Per stack, the catalog plan last applied to Consul.
    catalog: Mutex<HashMap<String, u64>>,
}

impl StackController {
    /// Applies the catalog plan unless it is the one last applied; false when Consul could
    /// not be brought there (retried).
    async fn sync_catalog(&self, stack: &str, plan: &decide::CatalogPlan, ctx: &Ctx) -> bool {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        plan.hash(&mut h);
        let digest = h.finish();
        let lock = |m: &Mutex<HashMap<String, u64>>| {
            m.lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(stack)
                .copied()
        };
        if lock(&self.catalog) == Some(digest) {
            return true;
        }
        let r = match credential_value(ctx, &plan.token) {
            Some(t) => catalog::sync(&http_client(ctx), plan, &t).await,
            None => Err(format!(
                "Credential {} is not there yet (or cannot be opened)",
                plan.token
            )),
        };
        match r {
            Ok(removed) => {
                tracing::info!(
                    registered = plan.entries.len(),
                    removed,
                    consul = %plan.consul,
                    "Consul's catalog holds the stack's instances"
                );
                self.catalog
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(stack.to_string(), digest);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, consul = %plan.consul, "Consul's catalog not updated; retrying");
                false
            }
        }
    }

    /// Each Consul server's agent token exists in Consul with its caller-chosen AccessorID
    /// and policy `agent-NODE` (created when missing; nothing is sent while the set is the
    /// one last made sure of). False when Consul could not be brought there (retried).
    async fn sync_agent_tokens(
        &self,
        stack: &ServiceStack,
        plan: &decide::CatalogPlan,
        owned: &[Arc<ServiceInstance>],
        ctx: &Ctx,
    ) -> bool {
        use std::hash::{Hash, Hasher};
        let name = stack.name_any();
        let open = |c: &str| credential_value(ctx, c);
        let mut agents = Vec::new();
        for i in owned.iter().filter(|i| {
            matches!(
                i.spec.service,
                groundwork_types::ServiceType::Consul | groundwork_types::ServiceType::ConsulClient
            )
        }) {
            let layer = stack.spec.layers.iter().find(|l| l.name == i.spec.layer);
            if !layer.is_some_and(|l| drivers::consul::config_of(l).acl_bootstrap) {
                continue;
            }
            let cred = drivers::consul::agent_token_credential(&name, &i.spec.layer, &i.spec.node);
            let Some(secret) = open(&cred) else { continue };
            let (policy, rules) = drivers::consul::agent_policy(&i.spec.node);
            agents.push(catalog::ConsulToken {
                accessor: drivers::consul::agent_token_accessor(&name, &i.spec.layer, &i.spec.node),
                secret,
                policy,
                rules,
                purpose: format!("the agent on {}", i.spec.node),
            });
        }
        // Each Nomad layer's own Consul token (not the management token).
        for l in &stack.spec.layers {
            if !l.services.contains(&groundwork_types::ServiceType::Nomad) {
                continue;
            }
            let cred = drivers::nomad::consul_token_credential(&name, &l.name);
            let Some(secret) = open(&cred) else { continue };
            agents.push(catalog::ConsulToken {
                accessor: drivers::consul::agent_token_accessor(&name, &l.name, "nomad"),
                secret,
                policy: format!("nomad-{}", l.name),
                rules: drivers::nomad::CONSUL_RULES.into(),
                purpose: format!("Nomad, layer {}", l.name),
            });
        }
        agents.sort_by(|a, b| a.accessor.cmp(&b.accessor));
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for a in &agents {
            (&a.policy, &a.accessor).hash(&mut h);
        }
        plan.consul.hash(&mut h);
        let digest = h.finish();
        let key = format!("agents/{name}");
        if self
            .catalog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            == Some(&digest)
        {
            return true;
        }
        let Some(mgmt) = open(&plan.token) else {
            return false;
        };
        match catalog::ensure_tokens(&http_client(ctx), &plan.consul, &mgmt, &agents).await {
            Ok(created) => {
                tracing::info!(
                    tokens = agents.len(),
                    created,
                    "Consul agents and Nomad have their own tokens"
                );
                self.catalog
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, digest);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "Consul agent tokens not made sure of; retrying");
                false
            }
        }
    }

    async fn generate_secrets(
        &self,
        stack: &ServiceStack,
        consul_nodes: &[(String, String)],
        ctx: &Ctx,
    ) -> Result<(), Error> {
        let name = stack.name_any();
        let api: Api<Credential> = Api::all(ctx.client.clone());
        for layer in &stack.spec.layers {
            let mut wanted: Vec<(String, String, drivers::consul::Generate)> = Vec::new();
            if layer
                .services
                .contains(&groundwork_types::ServiceType::Consul)
            {
                wanted.extend(
                    drivers::consul::generated(&name, &layer.name)
                        .into_iter()
                        .map(|(c, u, g)| (c, u.to_string(), g)),
                );
            }
            if layer.services.iter().any(|s| {
                matches!(
                    s,
                    groundwork_types::ServiceType::Consul
                        | groundwork_types::ServiceType::ConsulClient
                )
            }) {
                // Each agent's own token, before its member is placed.
                if drivers::consul::config_of(layer).acl_bootstrap {
                    for (l, node) in consul_nodes.iter().filter(|(l, _)| *l == layer.name) {
                        wanted.push((
                            drivers::consul::agent_token_credential(&name, l, node),
                            "consul-agent".into(),
                            drivers::consul::Generate::Uuid,
                        ));
                    }
                }
            }
            if layer
                .services
                .contains(&groundwork_types::ServiceType::Vault)
            {
                wanted.extend(
                    drivers::vault::generated(&name, layer)
                        .into_iter()
                        .map(|(c, u, g)| (c, u.to_string(), g)),
                );
            }
            if layer
                .services
                .contains(&groundwork_types::ServiceType::Nomad)
            {
                if drivers::nomad::config(layer).acl_bootstrap {
                    wanted.extend(
                        drivers::nomad::generated(&name, &layer.name)
                            .into_iter()
                            .map(|(c, u, g)| (c, u.to_string(), g)),
                    );
                }
                let consul_acl = stack.spec.layers.iter().any(|l| {
                    l.services.contains(&groundwork_types::ServiceType::Consul)
                        && drivers::consul::config_of(l).acl_bootstrap
                });
                if consul_acl {
                    wanted.push((
                        drivers::nomad::consul_token_credential(&name, &layer.name),
                        "nomad-consul".into(),
                        drivers::consul::Generate::Uuid,
                    ));
                }
            }
            if layer
                .services
                .contains(&groundwork_types::ServiceType::Gitea)
            {
                wanted.extend(drivers::gitea::generated(&name, layer));
            }
            for (cname, user, what) in wanted {
                if ctx
                    .caches
                    .store::<Credential>()
                    .get(&ObjectRef::new(&cname))
                    .is_some()
                {
                    continue;
                }
                let (username, password) = match what {
                    drivers::consul::Generate::AppRole => (
                        generate(drivers::consul::Generate::Uuid),
                        generate(drivers::consul::Generate::Uuid),
                    ),
                    w => (user.clone(), generate(w)),
                };
                let mut c = Credential::new(
                    &cname,
                    groundwork_types::CredentialSpec {
                        username,
                        password: Some(password),
                        encrypted_password: None,
                    },
                );
                c.metadata.labels = Some([(STACK_LABEL.to_string(), name.clone())].into());
                c.metadata.owner_references = Some(vec![OwnerReference {
                    api_version: ServiceStack::api_version(&()).to_string(),
                    kind: ServiceStack::kind(&()).to_string(),
                    name: name.clone(),
                    uid: stack.uid().unwrap_or_default(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]);
                match api.create(&PostParams::default(), &c).await {
                    Ok(_) => {
                        tracing::info!(credential = %cname, layer = %layer.name, "generated a secret")
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// The one-shot and level-triggered bootstrap of each layer that has one (Vault: init,
    /// unseal, configure; Nomad: ACL bootstrap, namespaces), with placed members: its steps
    /// and, while it is not done, the layer is not Ready (it says what it waits for). True
    /// while a layer still bootstraps.
    async fn bootstrap_layers(
        &self,
        stack: &ServiceStack,
        owned: &[Arc<ServiceInstance>],
        layers: &mut [groundwork_types::LayerStatus],
        ctx: &Ctx,
    ) -> bool {
        use groundwork_types::ServiceType;
        let name = stack.name_any();
        let mut busy = false;
        for l in layers.iter_mut() {
            let Some(layer) = stack.spec.layers.iter().find(|x| x.name == l.name) else {
                continue;
            };
            let service = if layer.services.contains(&ServiceType::Vault) {
                ServiceType::Vault
            } else if layer.services.contains(&ServiceType::Nomad) {
                ServiceType::Nomad
            } else if layer.services.contains(&ServiceType::Gitea) {
                ServiceType::Gitea
            } else {
                continue;
            };
            // Each member's address, and whether its agent runs its current spec.
            let members: Vec<(String, bool)> = l
                .members
                .iter()
                .filter(|m| m.service == service.as_str())
                .filter_map(|m| {
                    let settled = owned.iter().any(|i| {
                        i.name_any() == m.instance
                            && i.status.as_ref().and_then(|s| s.running_digest.as_deref())
                                == Some(i.spec.config_digest.as_str())
                    });
                    Some((m.address.clone()?, settled))
                })
                .collect();
            if members.is_empty() || l.phase == Some(LayerPhase::Pending) {
                continue;
            }
            let (out, kind) = if service == ServiceType::Gitea {
                // The repository, webhook and GitSource once Gitea answers.
                if l.phase != Some(LayerPhase::Ready) {
                    continue;
                }
                (
                    gitea::converge(stack, layer, &members[0].0, ctx).await,
                    "GiteaBootstrapped",
                )
            } else if service == ServiceType::Nomad {
                // Nomad bootstraps once its servers are healthy (a leader is known).
                if l.phase != Some(LayerPhase::Ready) {
                    continue;
                }
                let addrs: Vec<String> = members.iter().map(|(a, _)| a.clone()).collect();
                let cfg = drivers::nomad::config(layer);
                (
                    nomad::converge(&name, &l.name, &cfg, &addrs, ctx).await,
                    "NomadBootstrapped",
                )
            } else {
                let cfg = drivers::vault::config(layer);
                let gossip = stack
                    .spec
                    .layers
                    .iter()
                    .find(|x| x.services.contains(&ServiceType::Consul))
                    .map(|x| drivers::consul::generated(&name, &x.name)[0].0.clone())
                    .and_then(|g| credential_value(ctx, &g));
                (
                    vault::converge(stack, &l.name, &cfg, &members, gossip, ctx).await,
                    "VaultBootstrapped",
                )
            };
            busy |= merge(l, out, kind);
        }
        busy
    }

    pub fn new(groundwork_metrics: Option<String>) -> Self {
        StackController {
            groundwork_metrics,
            seen: Mutex::default(),
            catalog: Mutex::default(),
        }
    }
}

/// A bootstrap outcome into the layer's status: its steps and a condition `kind`; while it is
/// not done, the layer is not Ready (Failed when it needs the operator). True while not done.
fn merge(l: &mut groundwork_types::LayerStatus, out: vault::Outcome, kind: &str) -> bool {
    l.bootstrap_steps_done = out.done;
    let (ok, reason, msg) = match (&out.stop, &out.waiting) {
        (Some((reason, msg)), _) => (false, *reason, msg.clone()),
        (None, Some(w)) => (false, "Bootstrapping", format!("waiting for {w}")),
        (None, None) => (
            true,
            "Bootstrapped",
            "every bootstrap step is done".to_string(),
        ),
    };
    l.conditions.push(decide::cond(kind, ok, reason, msg));
    let Some(w) = out.waiting else {
        return false;
    };
    if out.stop.is_some() {
        l.phase = Some(LayerPhase::Failed);
        l.waiting_for = Some(w);
    } else if l.phase == Some(LayerPhase::Ready) {
        l.phase = Some(LayerPhase::Progressing);
        l.waiting_for = Some(w);
    }
    let phase = format!("{:?}", l.phase.unwrap_or(LayerPhase::Progressing));
    if let Some(c) = l.conditions.iter_mut().find(|c| c.type_ == "Ready") {
        c.status = "False".into();
        c.reason = phase;
        c.message = l.waiting_for.clone().unwrap_or_default();
    }
    true
}

/// An HTTP client for the layers' services: bounded calls, the cluster CA trusted (their
/// certificates chain to it).
pub(crate) fn http_client(ctx: &Ctx) -> reqwest::Client {
    let mut b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(5));
    let bundle = ctx
        .cluster_ca
        .as_deref()
        .and_then(|pem| reqwest::Certificate::from_pem_bundle(pem.as_bytes()).ok());
    for c in bundle.unwrap_or_default() {
        b = b.add_root_certificate(c);
    }
    b.build().expect("a TLS backend")
}

/// A Credential's value, from the cache, opened with this controller's secret key; None
/// while it is not there (or cannot be opened).
pub(crate) fn credential_value(ctx: &Ctx, name: &str) -> Option<String> {
    let c = ctx
        .caches
        .store::<Credential>()
        .get(&ObjectRef::new(name))?;
    ctx.secret_key
        .as_ref()?
        .open(
            &format!("credentials/{name}"),
            c.spec.encrypted_password.as_deref()?,
        )
        .ok()
}

/// A Node as placement sees it, or None when it cannot take members.
fn machine(n: &Node, racks: &BTreeMap<String, Arc<Rack>>, dc: Option<&str>) -> Option<Machine> {
    let st = n.status.as_ref()?;
    if n.spec.maintenance
        || st.phase != Some(NodePhase::Ready)
        || !condition_is_true(&st.conditions, "NodeAgentReady")
        || n.metadata.deletion_timestamp.is_some()
    {
        return None;
    }
    let address = st.addresses.first()?.clone();
    let rack_name = n.spec.rack.as_ref().map(|r| r.name.clone());
    let rack = rack_name.as_ref().and_then(|r| racks.get(r));
    if let Some(dc) = dc
        && rack.map(|r| r.spec.datacenter.as_str()) != Some(dc)
    {
        return None;
    }
    Some(Machine {
        name: n.name_any(),
        address,
        rack: rack_name,
        zone: rack
            .map(|r| r.spec.availability_zone.clone())
            .filter(|z| !z.is_empty()),
        labels: n.labels().clone(),
    })
}

fn fingerprint(n: &Node) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let st = n.status.as_ref();
    st.and_then(|s| s.phase)
        .map(|p| format!("{p:?}"))
        .hash(&mut h);
    st.map(|s| condition_is_true(&s.conditions, "NodeAgentReady"))
        .hash(&mut h);
    st.and_then(|s| s.addresses.first().cloned()).hash(&mut h);
    n.spec.maintenance.hash(&mut h);
    n.spec.rack.as_ref().map(|r| r.name.clone()).hash(&mut h);
    n.labels().hash(&mut h);
    n.metadata.deletion_timestamp.is_some().hash(&mut h);
    h.finish()
}

impl Reconciler for StackController {
    type K = ServiceStack;
    const NAME: &'static str = "servicestack";
    // Each pass reads every Node and instance of the stack: a burst of reports is one pass.
    const COALESCE: Duration = Duration::from_millis(100);

    fn watches(kinds: Kinds) -> Kinds {
        kinds
            .watch::<Node>()
            .watch::<Rack>()
            .watch::<ServiceInstance>()
            .watch::<Credential>()
    }

    fn map(&self, change: &Change, c: &Caches) -> Vec<String> {
        let all = || {
            c.store::<ServiceStack>()
                .state()
                .iter()
                .map(|s| s.name_any())
                .collect()
        };
        if let Some(i) = change.get::<ServiceInstance>() {
            return i.labels().get(STACK_LABEL).cloned().into_iter().collect();
        }
        // A stack's own Credentials (generated secrets, Vault's journal): a deleted journal
        // is seen at once.
        if let Some(c) = change.get::<Credential>() {
            return c.labels().get(STACK_LABEL).cloned().into_iter().collect();
        }
        if let Some(n) = change.get::<Node>() {
            let now = fingerprint(&n);
            let before = self
                .seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(n.name_any(), now);
            return if before != Some(now) { all() } else { vec![] };
        }
        if change.is::<Rack>() && change.spec_changed {
            return all();
        }
        if change.is::<ServiceStack>() {
            return vec![change.name().to_string()];
        }
        vec![]
    }

    async fn reconcile(&self, stack: Arc<ServiceStack>, ctx: &Ctx) -> Result<Action, Error> {
        let name = stack.name_any();
        let owned: Vec<Arc<ServiceInstance>> = ctx
            .caches
            .store::<ServiceInstance>()
            .state()
            .into_iter()
            .filter(|i| i.labels().get(STACK_LABEL) == Some(&name))
            .collect();
        let api: Api<ServiceInstance> = Api::all(ctx.client.clone());
        match finalizer_step(&ctx.client, &*stack, FINALIZER).await? {
            Finalizing::Apply => {}
            Finalizing::Cleanup => {
                for i in &owned {
                    delete(&api, &i.name_any()).await?;
                }
                if owned.is_empty() {
                    remove_finalizer(&ctx.client, &*stack, FINALIZER).await?;
                    return Ok(Action::AwaitChange);
                }
                return Ok(Action::Requeue(Duration::from_secs(1)));
            }
            Finalizing::Gone => return Ok(Action::AwaitChange),
        }
        let racks: BTreeMap<String, Arc<Rack>> = ctx
            .caches
            .store::<Rack>()
            .state()
            .into_iter()
            .map(|r| (r.name_any(), r))
            .collect();
        let mut machines: Vec<Machine> = ctx
            .caches
            .store::<Node>()
            .state()
            .iter()
            .filter_map(|n| machine(n, &racks, stack.spec.datacenter.as_deref()))
            .collect();
        machines.sort_by(|a, b| a.name.cmp(&b.name));
        let refs: Vec<&ServiceInstance> = owned.iter().map(|i| &**i).collect();
        let data_epochs: BTreeMap<String, u32> = stack
            .spec
            .layers
            .iter()
            .filter(|l| l.services.contains(&groundwork_types::ServiceType::Vault))
            .filter_map(|l| {
                let j = ctx
                    .caches
                    .store::<Credential>()
                    .get(&ObjectRef::new(&vault::journal_name(&name, &l.name)))?;
                Some((l.name.clone(), vault::data_epoch(&j)))
            })
            .collect();
        let plan = decide::decide(&Observed {
            stack: &stack,
            machines: &machines,
            instances: &refs,
            groundwork_metrics: self.groundwork_metrics.as_deref(),
            data_epochs: &data_epochs,
        });
        // Secrets the layers need generated exist before any member that uses them is
        // placed: each is created once, in one write (the value is committed before any
        // service sees it; a create that finds one keeps it, so a retry after a crash never
        // makes a second).
        let consul_nodes: Vec<(String, String)> = plan
            .create
            .iter()
            .map(|(_, s, _)| s)
            .chain(plan.update.iter().map(|(_, s)| s))
            .chain(owned.iter().map(|i| &i.spec))
            .filter(|s| {
                matches!(
                    s.service,
                    groundwork_types::ServiceType::Consul
                        | groundwork_types::ServiceType::ConsulClient
                )
            })
            .map(|s| (s.layer.clone(), s.node.clone()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        self.generate_secrets(&stack, &consul_nodes, ctx).await?;
        // Apply: deletions first (a replaced member frees its machine), then changes, then
        // new members.
        for d in &plan.delete {
            tracing::info!(instance = %d, "removing a member");
            delete(&api, d).await?;
        }
        for (iname, spec) in &plan.update {
            let Some(cur) = ctx
                .caches
                .store::<ServiceInstance>()
                .get(&ObjectRef::new(iname))
            else {
                continue;
            };
            let mut next = (*cur).clone();
            let restart = next.spec.config_digest != spec.config_digest;
            next.spec = spec.clone();
            next.status = None;
            api.replace(iname, &PostParams::default(), &next).await?;
            if restart {
                tracing::info!(instance = %iname, node = %spec.node, digest = %spec.config_digest, "rolling a member to a new config");
            } else if spec.bootstrap {
                tracing::info!(instance = %iname, node = %spec.node, "member chosen to bootstrap the cluster");
            }
        }
        for (iname, spec, ordinal) in &plan.create {
            let obj = new_instance(&stack, iname, spec, *ordinal);
            tracing::info!(instance = %iname, node = %spec.node, layer = %spec.layer, service = %spec.service, "placing a member");
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        let synced = match &plan.catalog {
            Some(c) => {
                self.sync_catalog(&name, c, ctx).await
                    && self.sync_agent_tokens(&stack, c, &owned, ctx).await
            }
            None => true,
        };
        let mut layers = plan.layers;
        let bootstrapping = self
            .bootstrap_layers(&stack, &owned, &mut layers, ctx)
            .await;
        let then = self.report(&stack, layers, ctx).await?;
        Ok(if !synced {
            Action::Requeue(Duration::from_secs(5))
        } else if bootstrapping {
            Action::Requeue(Duration::from_secs(2))
        } else {
            then
        })
    }
}

async fn delete(api: &Api<ServiceInstance>, name: &str) -> Result<(), Error> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn new_instance(
    stack: &ServiceStack,
    name: &str,
    spec: &ServiceInstanceSpec,
    ordinal: u32,
) -> ServiceInstance {
    let mut obj = ServiceInstance::new(name, spec.clone());
    obj.metadata.labels = Some(
        [
            (STACK_LABEL.to_string(), spec.stack.clone()),
            (LAYER_LABEL.to_string(), spec.layer.clone()),
            (SERVICE_LABEL.to_string(), spec.service.as_str().to_string()),
            (NODE_LABEL.to_string(), spec.node.clone()),
            (ORDINAL_LABEL.to_string(), ordinal.to_string()),
        ]
        .into(),
    );
    obj.metadata.owner_references = Some(vec![OwnerReference {
        api_version: ServiceStack::api_version(&()).to_string(),
        kind: ServiceStack::kind(&()).to_string(),
        name: stack.name_any(),
        uid: stack.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    obj
}

impl StackController {
    async fn report(
        &self,
        stack: &ServiceStack,
        mut layers: Vec<groundwork_types::LayerStatus>,
        ctx: &Ctx,
    ) -> Result<Action, Error> {
        let now = jiff::Timestamp::now();
        let generation = stack.metadata.generation;
        let before = stack.status.clone().unwrap_or_default();
        for l in &mut layers {
            let prev = before.layers.iter().find(|p| p.name == l.name);
            let mut conds = prev.map(|p| p.conditions.clone()).unwrap_or_default();
            for c in &l.conditions {
                set_condition(
                    &mut conds,
                    &c.type_,
                    c.status == "True",
                    &c.reason,
                    &c.message,
                    generation,
                    now,
                );
            }
            l.conditions = conds;
            let was = prev.and_then(|p| p.phase);
            if was != l.phase {
                let phase = l.phase.map(|p| format!("{p:?}")).unwrap_or_default();
                let why = l
                    .waiting_for
                    .as_ref()
                    .map(|w| format!(": waiting for {w}"))
                    .unwrap_or_default();
                let msg = format!("layer {} is {phase}{why}", l.name);
                let ok = matches!(
                    l.phase,
                    Some(LayerPhase::Ready | LayerPhase::Progressing | LayerPhase::Pending)
                );
                tracing::info!(layer = %l.name, phase = %phase, "{msg}");
                ctx.recorder
                    .publish(
                        &stack.object_ref(&()),
                        if ok {
                            EventType::Normal
                        } else {
                            EventType::Warning
                        },
                        &format!("Layer{phase}"),
                        &msg,
                    )
                    .await;
            }
        }
        let ready = layers
            .iter()
            .filter(|l| l.phase == Some(LayerPhase::Ready))
            .count();
        let rank = |p: Option<LayerPhase>| match p {
            Some(LayerPhase::Failed) => 0,
            Some(LayerPhase::Degraded) => 1,
            Some(LayerPhase::Pending) => 2,
            Some(LayerPhase::Progressing) => 3,
            Some(LayerPhase::Ready) => 4,
            None => 2,
        };
        let phase = layers
            .iter()
            .map(|l| l.phase)
            .min_by_key(|p| rank(*p))
            .flatten();
        let all_ready = ready == layers.len() && !layers.is_empty();
        let mut conds = before.conditions.clone();
        let blocking = layers
            .iter()
            .find(|l| l.phase != Some(LayerPhase::Ready))
            .map(|l| {
                format!(
                    "layer {} is {:?}{}",
                    l.name,
                    l.phase.unwrap_or(LayerPhase::Pending),
                    l.waiting_for
                        .as_ref()
                        .map(|w| format!(": waiting for {w}"))
                        .unwrap_or_default()
                )
            })
            .unwrap_or_else(|| "every layer is Ready".into());
        condition_with_event(
            ctx,
            stack,
            &mut conds,
            "Ready",
            all_ready,
            if all_ready {
                "AllLayersReady"
            } else {
                "LayersNotReady"
            },
            &blocking,
        )
        .await;
        let status = json!({
            "observedGeneration": generation,
            "phase": phase,
            "layersReady": format!("{ready}/{}", layers.len()),
            "layers": layers,
            "conditions": conds,
        });
        patch_status(&ctx.client, stack, status, Owns::AllConditions).await?;
        Ok(if all_ready {
            Action::Requeue(Duration::from_secs(60))
        } else {
            Action::Requeue(Duration::from_secs(10))
        })
    }
}

/// A new random secret.
fn generate(what: drivers::consul::Generate) -> String {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system's random source");
    match what {
        drivers::consul::Generate::GossipKey => base64::engine::general_purpose::STANDARD.encode(b),
        drivers::consul::Generate::Uuid | drivers::consul::Generate::AppRole => {
            uuid::Builder::from_random_bytes(b[..16].try_into().expect("16 bytes"))
                .into_uuid()
                .to_string()
        }
    }
}
