//! The runtime against a real API server (in process, on 127.0.0.1): failing reconciles are
//! retried with growing per-object backoff, the shared token bucket caps retries across
//! objects, and a fixed cause ends the retries.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use groundwork_controller::caches::{Caches, Change, Kinds};
use groundwork_controller::events::Recorder;
use groundwork_controller::retry::Backoff;
use groundwork_controller::runtime::{
    self, Action, Ctx, Error, Reconciler, Settings, patch_status,
};
use groundwork_store::{Store, StoreConfig};
use groundwork_types::{Rack, RackSpec};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::time::Instant;

struct Flaky {
    attempts: Mutex<Vec<(String, Instant)>>,
}

impl Reconciler for Flaky {
    type K = Rack;
    const NAME: &'static str = "flaky";
    fn map(&self, change: &Change, _: &Caches) -> Vec<String> {
        change
            .get::<Rack>()
            .map(|r| vec![r.name_any()])
            .unwrap_or_default()
    }
    async fn reconcile(&self, rack: Arc<Rack>, ctx: &Ctx) -> Result<Action, Error> {
        self.attempts
            .lock()
            .unwrap()
            .push((rack.name_any(), Instant::now()));
        if rack.labels().get("fail").is_some_and(|v| v == "true") {
            return Err(Error::Bmc(groundwork_controller::bmcpool::BmcFailure::new(
                "Timeout",
                "told to fail",
            )));
        }
        patch_status(
            &ctx.client,
            rack.as_ref(),
            json!({"unitsUsed": 7}),
            groundwork_controller::runtime::Owns::AllConditions,
        )
        .await?;
        Ok(Action::AwaitChange)
    }
}

async fn api_server() -> (Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path().join("db.redb"))).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(groundwork_api::serve(
        listener,
        store,
        Default::default(),
        std::future::pending(),
    ));
    let client = Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    (client, dir)
}

async fn rack(client: &Client, name: &str, fail: bool) {
    let mut r = Rack::new(
        name,
        RackSpec {
            datacenter: "dc1".into(),
            availability_zone: "az1".into(),
            height_u: 42,
            power_budget_kw: None,
            cooling_kw: None,
            pdus: vec![],
            location: None,
        },
    );
    if fail {
        r.metadata.labels = Some([("fail".to_string(), "true".to_string())].into());
    }
    Api::<Rack>::all(client.clone())
        .create(&PostParams::default(), &r)
        .await
        .unwrap();
}

fn start(client: &Client, settings: Settings) -> (Arc<Flaky>, tokio::sync::watch::Sender<bool>) {
    let (caches, _tasks) = Caches::start(client, Kinds::new().watch::<Rack>());
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        caches,
        recorder: Recorder::new(client.clone(), "flaky", "test"),
        secret_key: None,
        bmc: Arc::new(groundwork_controller::bmcpool::BmcPool::new(
            Arc::new(groundwork_bmc::NetConnector),
            4,
            Duration::from_secs(1),
        )),
        cluster_ca: None,
    });
    let flaky = Arc::new(Flaky {
        attempts: Mutex::new(Vec::new()),
    });
    let (tx, rx) = tokio::sync::watch::channel(true);
    tokio::spawn(runtime::run(flaky.clone(), ctx, settings, rx));
    (flaky, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_back_off_per_object_and_stop_once_the_cause_is_fixed() {
    let (client, _dir) = api_server().await;
    rack(&client, "r1", true).await;
    let settings = Settings {
        workers: 2,
        backoff: Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
        },
        retry_rate: 1000.0,
        retry_burst: 1000,
    };
    let (flaky, _leading) = start(&client, settings);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let times: Vec<Instant> = flaky.attempts.lock().unwrap().iter().map(|a| a.1).collect();
    // 0, +0.1, +0.2, +0.4, +0.8 s: five attempts in 1.7 s, each gap about double the last.
    assert!((4..=6).contains(&times.len()), "{} attempts", times.len());
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, g) in gaps.iter().enumerate() {
        let expected = Duration::from_millis(100 << i);
        assert!(
            *g >= expected.mul_f64(0.9) && *g < expected * 3,
            "gap {i} was {g:?}, expected about {expected:?} (all: {gaps:?})"
        );
    }
    // Fix the cause: the change itself triggers a reconcile, which succeeds.
    let racks: Api<Rack> = Api::all(client.clone());
    racks
        .patch(
            "r1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"fail": null}}})),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = racks.get("r1").await.unwrap();
        if r.status.and_then(|s| s.units_used) == Some(7) {
            break;
        }
        assert!(Instant::now() < deadline, "never succeeded after the fix");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Success ends the retries: no more attempts than the status write's own echo.
    let n = flaky.attempts.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = flaky.attempts.lock().unwrap().len();
    assert!(
        later - n <= 1,
        "kept reconciling after success: {n} → {later}"
    );
    let text = groundwork_observe::metrics().encode();
    assert!(
        text.lines().any(|l| l
            .starts_with(r#"groundwork_controller_reconcile_errors_total{controller="flaky"}"#)),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_bucket_caps_retries_across_objects() {
    let (client, _dir) = api_server().await;
    for i in 0..6 {
        rack(&client, &format!("r{i}"), true).await;
    }
    let settings = Settings {
        workers: 2,
        backoff: Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(10),
        },
        retry_rate: 5.0,
        retry_burst: 1,
    };
    let (flaky, _leading) = start(&client, settings);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = flaky.attempts.lock().unwrap().len();
    // Unlimited, 6 objects retrying every 10 ms would make hundreds of attempts in 2 s. Capped
    // at 5 retries/s (burst 1): 6 first attempts, then about 10 retries.
    assert!((6..=6 + 13).contains(&n), "{n} attempts");
    let per_object: Vec<usize> = (0..6)
        .map(|i| {
            flaky
                .attempts
                .lock()
                .unwrap()
                .iter()
                .filter(|a| a.0 == format!("r{i}"))
                .count()
        })
        .collect();
    assert!(per_object.iter().all(|c| *c >= 1), "{per_object:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizer_helpers_hold_deletion_until_cleanup() {
    use groundwork_controller::runtime::{Finalizing, finalizer_step, remove_finalizer};
    let (client, _dir) = api_server().await;
    rack(&client, "r1", false).await;
    let racks: Api<Rack> = Api::all(client.clone());
    const F: &str = "groundwork.dev/test-cleanup";
    let r = racks.get("r1").await.unwrap();
    assert_eq!(
        finalizer_step(&client, &r, F).await.unwrap(),
        Finalizing::Apply
    );
    let r = racks.get("r1").await.unwrap();
    assert_eq!(r.finalizers(), &[F.to_string()]);
    // Idempotent: a second step adds nothing.
    assert_eq!(
        finalizer_step(&client, &r, F).await.unwrap(),
        Finalizing::Apply
    );
    assert_eq!(racks.get("r1").await.unwrap().finalizers().len(), 1);
    // A stale view (the list changed meanwhile) is refused rather than clobbering.
    let mut stale = r.clone();
    stale.metadata.finalizers = Some(vec!["example.com/other".into(), F.into()]);
    assert!(
        remove_finalizer(&client, &stale, F).await.is_err(),
        "JSON patch test must fail"
    );
    assert_eq!(
        racks.get("r1").await.unwrap().finalizers(),
        &[F.to_string()]
    );
    racks.delete("r1", &Default::default()).await.unwrap();
    let r = racks.get("r1").await.expect("held by the finalizer");
    assert!(r.metadata.deletion_timestamp.is_some());
    assert_eq!(
        finalizer_step(&client, &r, F).await.unwrap(),
        Finalizing::Cleanup
    );
    remove_finalizer(&client, &r, F).await.unwrap();
    assert!(
        racks.get_opt("r1").await.unwrap().is_none(),
        "deleted once cleaned up"
    );
}
