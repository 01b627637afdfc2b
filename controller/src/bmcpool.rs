//! The one way to a BMC: a pool holding the per-BMC lock (a BMC is never asked two things at
//! once), the global limit on BMC calls in flight, the deadline of every call, and the mapping
//! of BMC errors to condition reasons. The process builds one and injects it ([`crate::Ctx`]);
//! the power controller is its only user, and only its Lease holder acts, so across processes
//! too a BMC has one client at a time (docs/ARCHITECTURE.md, "Node.status ownership").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use groundwork_bmc::{Bmc, BmcError, Connector, Endpoint, Protocol};
use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};

/// Why a BMC could not be used: a condition reason and a message for people (no secret in
/// either: BMC errors never quote the password).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BmcFailure {
    /// `Timeout`, `AuthenticationFailed`, `Unsupported`, `BadConfiguration`, `BmcError`, or
    /// a credentials reason (`CredentialsNotFound`, ...).
    pub reason: &'static str,
    pub message: String,
}

impl BmcFailure {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        BmcFailure {
            reason,
            message: message.into(),
        }
    }
}

/// The condition reason of a BMC error.
pub fn reason_of(e: &BmcError) -> &'static str {
    match e {
        BmcError::Auth(_) => "AuthenticationFailed",
        BmcError::Timeout(_) => "Timeout",
        BmcError::Unsupported(_) => "Unsupported",
        BmcError::Config(_) => "BadConfiguration",
        _ => "BmcError",
    }
}

pub struct BmcPool {
    connector: Arc<dyn Connector>,
    global: Arc<Semaphore>,
    timeout: Duration,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl BmcPool {
    /// `global_limit` BMC sessions at once across all BMCs, each call bounded by `timeout`.
    pub fn new(connector: Arc<dyn Connector>, global_limit: usize, timeout: Duration) -> Self {
        BmcPool {
            connector,
            global: Arc::new(Semaphore::new(global_limit.max(1))),
            timeout,
            locks: Mutex::default(),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn lock_of(&self, address: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(address.to_string())
            .or_default()
            .clone()
    }

    /// Exclusive use of the BMC at `ep.address` (waiting for its lock, then for a global
    /// slot) until the returned session drops.
    pub async fn session(&self, ep: &Endpoint) -> Result<Session, BmcFailure> {
        let lock = self.lock_of(&ep.address).lock_owned().await;
        let permit = self
            .global
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| BmcFailure::new("BmcError", "the BMC pool is closed"))?;
        let bmc = self
            .connector
            .connect(ep)
            .map_err(|e| BmcFailure::new(reason_of(&e), format!("BMC: {e}")))?;
        Ok(Session {
            bmc,
            timeout: self.timeout,
            proto: match ep.protocol {
                Protocol::Ipmi => "IPMI",
                Protocol::Redfish => "Redfish",
            },
            _lock: lock,
            _permit: permit,
        })
    }
}

/// One BMC, held: every call has the pool's deadline and maps its error.
pub struct Session {
    bmc: Arc<dyn Bmc>,
    timeout: Duration,
    pub proto: &'static str,
    _lock: OwnedMutexGuard<()>,
    _permit: OwnedSemaphorePermit,
}

impl Session {
    pub fn bmc(&self) -> &dyn Bmc {
        self.bmc.as_ref()
    }

    /// Runs one BMC call within the deadline: `what` names it in the message.
    pub async fn call<T>(
        &self,
        what: &str,
        f: BoxFuture<'_, Result<T, BmcError>>,
    ) -> Result<T, BmcFailure> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(BmcFailure::new(reason_of(&e), format!("BMC: {what}: {e}"))),
            Err(_) => Err(BmcFailure::new(
                "Timeout",
                format!("BMC: {what}: timed out (no answer in {:?})", self.timeout),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use groundwork_bmc::{BmcInfo, BmcInventory, BootTarget, Power, PowerAction};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A BMC that counts how many calls are inside it at once.
    struct Counting {
        inside: AtomicUsize,
        most: AtomicUsize,
    }

    impl Bmc for Counting {
        fn power_status(&self) -> BoxFuture<'_, Result<Power, BmcError>> {
            Box::pin(async {
                let n = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
                self.most.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                self.inside.fetch_sub(1, Ordering::SeqCst);
                Ok(Power::On)
            })
        }
        fn set_power(&self, _: PowerAction) -> BoxFuture<'_, Result<(), BmcError>> {
            Box::pin(std::future::pending())
        }
        fn set_boot(&self, _: BootTarget, _: bool, _: bool) -> BoxFuture<'_, Result<(), BmcError>> {
            Box::pin(async { Err(BmcError::Auth("bad password".into())) })
        }
        fn info(&self) -> BoxFuture<'_, Result<BmcInfo, BmcError>> {
            Box::pin(async { Err(BmcError::Unsupported("info".into())) })
        }
        fn inventory(&self) -> BoxFuture<'_, Result<BmcInventory, BmcError>> {
            Box::pin(async { Err(BmcError::Unsupported("inventory".into())) })
        }
    }

    struct One(Arc<Counting>);
    impl Connector for One {
        fn connect(&self, _: &Endpoint) -> Result<Arc<dyn Bmc>, BmcError> {
            Ok(self.0.clone())
        }
    }

    fn ep(address: &str) -> Endpoint {
        Endpoint {
            protocol: Protocol::Ipmi,
            address: address.into(),
            username: "u".into(),
            password: "p".into(),
            cipher_suite: 3,
            insecure_tls: false,
            timeout: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn one_session_per_bmc_at_once_deadlines_and_reasons() {
        let bmc = Arc::new(Counting {
            inside: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
        });
        let pool = Arc::new(BmcPool::new(
            Arc::new(One(bmc.clone())),
            8,
            Duration::from_millis(200),
        ));
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                let s = pool.session(&ep("10.0.0.1:623")).await.unwrap();
                s.call("power status", s.bmc().power_status()).await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(Power::On));
        }
        assert_eq!(
            bmc.most.load(Ordering::SeqCst),
            1,
            "two calls inside one BMC"
        );

        let s = pool.session(&ep("10.0.0.1:623")).await.unwrap();
        let e = s
            .call("power on", s.bmc().set_power(PowerAction::On))
            .await
            .unwrap_err();
        assert_eq!(e.reason, "Timeout");
        assert!(
            e.message.contains("power on: timed out (no answer in"),
            "{e}"
        );
        let e = s
            .call(
                "set boot device",
                s.bmc().set_boot(BootTarget::Pxe, true, false),
            )
            .await
            .unwrap_err();
        assert_eq!(e.reason, "AuthenticationFailed");
    }
}
