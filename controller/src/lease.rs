//! Leader election over a `coordination.k8s.io/v1` Lease, so that exactly one instance of a
//! controller acts at a time however many processes run it.
//!
//! The algorithm is client-go's `leaderelection` with a `LeaseLock`: read the Lease; take it
//! if it is free or its holder has not renewed it for `lease_duration` *as observed locally*
//! (no clock agreement between members is assumed); write with the read `resourceVersion`, so
//! of two contenders exactly one wins (the other gets 409 Conflict). The holder renews every
//! `retry_period` and steps down if it could not renew for `renew_deadline`, which is shorter
//! than `lease_duration`, so it has stopped acting before anyone else may take over.
//!
//! Why not kube-lease-manager: it detects contention through server-side apply field-manager
//! conflicts, which this API server does not implement yet (docs/decisions.md).

use std::time::Duration;

use groundwork_types::Lease;
use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;

/// The namespace controller Leases live in.
pub const LEASE_NAMESPACE: &str = "groundwork-system";

#[derive(Clone, Debug)]
pub struct LeaseTiming {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl LeaseTiming {
    /// Derived from the lease duration, in client-go's default proportions (15/10/2).
    pub fn from_lease_duration(d: Duration) -> Self {
        LeaseTiming {
            lease_duration: d,
            renew_deadline: d.mul_f64(2.0 / 3.0),
            retry_period: d.mul_f64(2.0 / 15.0).max(Duration::from_millis(100)),
        }
    }
}

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: LeaseTiming,
    /// The holder and renew time last seen, and when they were first seen (local clock).
    observed: Option<(String, Option<String>, Instant)>,
}

impl Elector {
    pub fn new(client: Client, name: &str, identity: &str, timing: LeaseTiming) -> Self {
        Elector {
            api: Api::namespaced(client, LEASE_NAMESPACE),
            name: name.to_string(),
            identity: identity.to_string(),
            timing,
            observed: None,
        }
    }

    fn spec(&self, acquire: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timing.lease_duration.as_secs().max(1) as i32),
            acquire_time: Some(acquire),
            renew_time: Some(MicroTime(jiff::Timestamp::now())),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One attempt to take or renew the Lease. `Ok(true)` when we hold it afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(jiff::Timestamp::now());
        let current = match self.api.get_opt(&self.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(LEASE_NAMESPACE.into()),
                        ..Default::default()
                    },
                    spec: Some(self.spec(now, 0)),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
            Some(l) => l,
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let renew = spec.renew_time.as_ref().map(|t| t.0.to_string());
        let seen = (holder.clone(), renew.clone());
        match &self.observed {
            Some((h, r, _)) if (h, r) == (&seen.0, &seen.1) => {}
            _ => self.observed = Some((seen.0, seen.1, Instant::now())),
        }
        let observed_at = self.observed.as_ref().map_or_else(Instant::now, |o| o.2);
        let theirs = !holder.is_empty() && holder != self.identity;
        let duration = spec
            .lease_duration_seconds
            .map_or(self.timing.lease_duration, |s| {
                Duration::from_secs(s.max(1) as u64)
            });
        if theirs && observed_at.elapsed() < duration {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        let new_spec = if holder == self.identity {
            self.spec(spec.acquire_time.clone().unwrap_or(now), transitions)
        } else {
            self.spec(now, transitions + 1)
        };
        let mut updated = current;
        updated.spec = Some(new_spec);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (on shutdown) so another instance takes over at once.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut l) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let ours = l.spec.as_ref().and_then(|s| s.holder_identity.as_deref())
            == Some(self.identity.as_str());
        if !ours {
            return Ok(());
        }
        if let Some(s) = l.spec.as_mut() {
            s.holder_identity = None;
            s.lease_duration_seconds = Some(1);
            s.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        }
        self.api
            .replace(&self.name, &PostParams::default(), &l)
            .await?;
        Ok(())
    }

    /// Campaigns and holds the Lease until `stop` turns true, publishing whether we lead on
    /// `leading`. Releases the Lease on the way out if we hold it.
    pub async fn run(mut self, leading: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
        let mut last_renew: Option<Instant> = None;
        loop {
            let is_leader = *leading.borrow();
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    last_renew = Some(Instant::now());
                    if !is_leader {
                        tracing::info!(lease = %self.name, identity = %self.identity, "acquired the lease; starting");
                        let _ = leading.send(true);
                    }
                }
                Ok(false) => {
                    if is_leader {
                        tracing::warn!(lease = %self.name, "another instance holds the lease; stopping");
                        let _ = leading.send(false);
                    }
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "could not read or renew the lease");
                }
            }
            if *leading.borrow()
                && last_renew.is_none_or(|t| t.elapsed() > self.timing.renew_deadline)
            {
                tracing::warn!(lease = %self.name, "could not renew the lease in time; stopping");
                let _ = leading.send(false);
            }
            tokio::select! {
                _ = tokio::time::sleep(self.timing.retry_period) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                break;
            }
        }
        if *leading.borrow() {
            let _ = leading.send(false);
            match self.release().await {
                Ok(()) => tracing::info!(lease = %self.name, "released the lease"),
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "could not release the lease")
                }
            }
        }
    }
}
