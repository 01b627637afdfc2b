//! The power controller against a BMC speaking real IPMI 2.0 (the simulated BMC of
//! groundwork-bmc, on 127.0.0.1): Credentials sealed at rest, power converging off → on → off
//! with the boot device set first, a BMC that stops answering and comes back, a wrong
//! password; conditions, Events, and no password anywhere in the API or the logs.

mod support;

use std::time::Duration;

use groundwork_bmc::ipmi::sim::SimBmc;
use groundwork_types::{Credential, Event, Node};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use support::{Controllers, Server, eventually, ok, write};

const WAIT: Duration = Duration::from_secs(30);
const PASSWORD: &str = "Sup3r-s3cret-Pw";

async fn node(c: &Client) -> Node {
    Api::<Node>::all(c.clone()).get("n1").await.unwrap()
}

fn cond(n: &Node, t: &str) -> Option<(String, String)> {
    n.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

async fn events(c: &Client) -> Vec<(String, String)> {
    Api::<Event>::namespaced(c.clone(), "default")
        .list(&ListParams::default().fields("involvedObject.name=n1"))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_converges_survives_a_hung_bmc_and_keeps_the_password_secret() {
    let sim = SimBmc::start("127.0.0.1:0".parse().unwrap(), "admin", PASSWORD)
        .await
        .unwrap();
    let s = Server::start_with(&[
        "--controllers",
        "all",
        "--power-poll-seconds",
        "1",
        "--bmc-timeout-seconds",
        "2",
    ]);
    let c = s.client().await;
    let yaml = format!(
        "apiVersion: groundwork.dev/v1alpha1\nkind: Credential\nmetadata: {{name: bmc1}}\nspec: {{username: admin, password: {PASSWORD}}}\n---\n\
         apiVersion: groundwork.dev/v1alpha1\nkind: Node\nmetadata: {{name: n1}}\nspec:\n  online: false\n  bmc: {{address: 127.0.0.1, port: {}, protocol: ipmi, credentialsRef: bmc1}}\n",
        sim.addr.port()
    );
    let f = write(s.dir.path(), "n1.yaml", &yaml);
    // kubectl apply: its last-applied annotation would carry the password; the server drops it.
    ok(s.kubectl(&["apply", "-f", f.to_str().unwrap()]));
    let cred = Api::<Credential>::all(c.clone()).get("bmc1").await.unwrap();
    assert!(cred.spec.password.is_none());
    assert!(
        cred.spec
            .encrypted_password
            .as_deref()
            .unwrap()
            .starts_with("v1:")
    );
    let raw = ok(s.kubectl(&["get", "credentials", "bmc1", "-o", "json"]));
    assert!(!raw.contains(PASSWORD), "{raw}");
    assert!(raw.contains("last-applied-configuration"), "{raw}");

    // Off, as desired.
    let n = eventually(WAIT, "power Off observed", || async {
        let n = node(&c).await;
        (cond(&n, "PowerSynced").map(|x| x.0) == Some("True".into())).then_some(n)
    })
    .await;
    assert_eq!(
        n.status.as_ref().unwrap().power,
        Some(groundwork_types::PowerState::Off)
    );
    assert_eq!(cond(&n, "BmcReachable").unwrap().0, "True");
    // The BMC's FRU fills the machine's identity while no agent has reported.
    let sys = eventually(WAIT, "inventory from the FRU", || async {
        node(&c)
            .await
            .status?
            .inventory?
            .system
            .filter(|s| s.serial.is_some())
    })
    .await;
    assert_eq!(sys.serial, Some(format!("SIM-{}", sim.addr.port())));
    assert_eq!(sys.vendor.as_deref(), Some("Groundwork"));
    assert_eq!(sys.model.as_deref(), Some("SimServer 1U"));

    // On, booting from the network once.
    Api::<Node>::all(c.clone())
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"online": true, "nextBoot": "Pxe"}})),
        )
        .await
        .unwrap();
    eventually(WAIT, "power On observed", || async {
        let n = node(&c).await;
        (n.status.as_ref()?.power == Some(groundwork_types::PowerState::On)
            && cond(&n, "PowerSynced")?.0 == "True")
            .then_some(())
    })
    .await;
    assert!(sim.state().power_on);
    assert_eq!(
        sim.state().boot_flags,
        (0x80, 0x04),
        "PXE, next boot only, set before power on"
    );
    assert!(events(&c).await.iter().any(|(r, _)| r == "PowerOn"));

    // The BMC hangs: a Timeout condition, an Event, the error in status; then it recovers.
    sim.set_unresponsive(true);
    let n = eventually(WAIT, "BMC unreachable", || async {
        let n = node(&c).await;
        (cond(&n, "BmcReachable")?.0 == "False").then_some(n)
    })
    .await;
    assert_eq!(cond(&n, "BmcReachable").unwrap().1, "Timeout");
    assert!(
        n.status
            .as_ref()
            .unwrap()
            .last_bmc_error
            .as_deref()
            .unwrap()
            .contains("timed out")
    );
    assert!(events(&c).await.iter().any(|(r, _)| r == "Timeout"));
    sim.set_unresponsive(false);
    eventually(WAIT, "BMC reachable again", || async {
        let n = node(&c).await;
        (cond(&n, "BmcReachable")?.0 == "True" && n.status.as_ref()?.last_bmc_error.is_none())
            .then_some(())
    })
    .await;

    // Someone powers the machine off behind our back: the poll notices and corrects it.
    sim.set_power(false);
    eventually(WAIT, "power restored", || async {
        sim.state().power_on.then_some(())
    })
    .await;

    // Off again.
    Api::<Node>::all(c.clone())
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"online": false}})),
        )
        .await
        .unwrap();
    eventually(WAIT, "power Off again", || async {
        let n = node(&c).await;
        (n.status.as_ref()?.power == Some(groundwork_types::PowerState::Off)).then_some(())
    })
    .await;
    assert!(!sim.state().power_on);
    assert!(events(&c).await.iter().any(|(r, _)| r == "PowerOff"));

    // A wrong password is an authentication failure, named as such.
    let bad = "apiVersion: groundwork.dev/v1alpha1\nkind: Credential\nmetadata: {name: bmc1}\nspec: {username: admin, password: wrong-one}\n";
    let f = write(s.dir.path(), "bad.yaml", bad);
    ok(s.kubectl(&["apply", "-f", f.to_str().unwrap()]));
    let (_, reason) = eventually(WAIT, "authentication failure", || async {
        let n = node(&c).await;
        cond(&n, "BmcReachable").filter(|x| x.0 == "False")
    })
    .await;
    assert_eq!(reason, "AuthenticationFailed");

    // The password is nowhere: not in any object, event or log line.
    let all = ok(s.kubectl(&[
        "get",
        "credentials,nodes.groundwork.dev,events",
        "-A",
        "-o",
        "json",
    ]));
    assert!(!all.contains(PASSWORD) && !all.contains("wrong-one"));
    let log = s.log();
    assert!(
        !log.contains(PASSWORD) && !log.contains("wrong-one"),
        "password in the server log"
    );
}

/// Two controller processes against the same BMCs, one running provisioning and the other
/// power, while Nodes go through discovery attempts (PXE power-ons and resets, recorded by
/// provisioning) and power polls every second. Each simulated BMC, slowed to 30 ms per
/// command, records the most sessions it had open at once: never two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controller_processes_never_talk_to_one_bmc_at_once() {
    let mut sims = Vec::new();
    for _ in 0..4 {
        let sim = SimBmc::start("127.0.0.1:0".parse().unwrap(), "admin", PASSWORD)
            .await
            .unwrap();
        sim.set_latency(Duration::from_millis(30));
        sims.push(sim);
    }
    let s = Server::start();
    let c = s.client().await;
    let mut yaml = format!(
        "apiVersion: groundwork.dev/v1alpha1\nkind: Credential\nmetadata: {{name: bmc1}}\nspec: {{username: admin, password: {PASSWORD}}}\n"
    );
    for (i, sim) in sims.iter().enumerate() {
        yaml.push_str(&format!(
            "---\napiVersion: groundwork.dev/v1alpha1\nkind: Node\nmetadata: {{name: m{i}}}\nspec:\n  online: true\n  provisioning: Provisioned\n  bmc: {{address: 127.0.0.1, port: {}, protocol: ipmi, credentialsRef: bmc1}}\n",
            sim.addr.port()
        ));
    }
    let f = write(s.dir.path(), "nodes.yaml", &yaml);
    ok(s.groundwork(&["apply", "-f", f.to_str().unwrap()]));
    let key = s.dir.path().join("secret.key");
    let key = key.to_str().unwrap();
    let common = ["--secret-key-file", key, "--bmc-timeout-seconds", "5"];
    let _a = Controllers::start(
        &s,
        "a",
        &[
            &["--controllers", "provisioning"][..],
            &common,
            &[
                "--discover-timeout-seconds",
                "2",
                "--provision-attempts",
                "3",
            ],
        ]
        .concat(),
    );
    let _b = Controllers::start(
        &s,
        "b",
        &[
            &["--controllers", "power"][..],
            &common,
            &["--power-poll-seconds", "1"],
        ]
        .concat(),
    );
    // Three discovery attempts each (a PXE power-on, then two resets), then Failed: NoPxeBoot.
    eventually(
        Duration::from_secs(90),
        "every Node Failed after three PXE attempts",
        || async {
            let nodes = Api::<Node>::all(c.clone())
                .list(&Default::default())
                .await
                .ok()?;
            nodes
                .items
                .iter()
                .all(|n| {
                    n.status.as_ref().and_then(|s| s.phase)
                        == Some(groundwork_types::NodePhase::Failed)
                })
                .then_some(())
        },
    )
    .await;
    // A few more polls while Failed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (i, sim) in sims.iter().enumerate() {
        let st = sim.state();
        assert!(
            st.sessions_opened >= 8,
            "m{i}: too few sessions to mean anything ({})",
            st.sessions_opened
        );
        assert_eq!(st.boot_flags.1 & 0x3c, 0x04, "m{i}: PXE was never set");
        assert!(
            st.commands.get("chassis-control").copied().unwrap_or(0) >= 3,
            "m{i}: fewer than three power actions: {:?}",
            st.commands
        );
        assert_eq!(
            st.most_sessions_at_once, 1,
            "m{i}: two clients talked to one BMC at once"
        );
    }
}
