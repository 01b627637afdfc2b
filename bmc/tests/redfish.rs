//! The Redfish client against sushy-tools (the OpenStack Redfish emulator, fake driver: the
//! API surface) and against a small Redfish BMC in tests/rig whose power really starts and
//! stops a QEMU machine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use groundwork_bmc::redfish::RedfishBmc;
use groundwork_bmc::{Bmc, BmcError, BootTarget, Endpoint, Power, PowerAction, Protocol};

struct Proc(Child, Option<PathBuf>);

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first so the shim powers its machine off, then make sure.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        if let Some(pidfile) = &self.1
            && let Ok(pid) = std::fs::read_to_string(pidfile)
        {
            let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn endpoint(port: u16, user: &str, password: &str) -> Endpoint {
    Endpoint {
        protocol: Protocol::Redfish,
        address: format!("http://127.0.0.1:{port}"),
        username: user.into(),
        password: password.into(),
        cipher_suite: 3,
        insecure_tls: false,
        timeout: Duration::from_secs(10),
    }
}

fn wait_http(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// sushy-tools lives in a venv that tests/run creates (pip install sushy-tools).
fn sushy_bin() -> PathBuf {
    let v = std::env::var("SUSHY_VENV").unwrap_or_else(|_| "/var/tmp/groundwork-sushy-venv".into());
    PathBuf::from(v).join("bin/sushy-emulator")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_surface_against_sushy_tools() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("sushy.log")).unwrap();
    let child = Command::new(sushy_bin())
        .args(["--fake", "-i", "127.0.0.1", "-p", &port.to_string()])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("sushy-emulator is installed (tests/run sets up its venv)");
    let _p = Proc(child, None);
    tokio::task::block_in_place(|| wait_http(port));
    let c = RedfishBmc::new(&endpoint(port, "admin", "password")).unwrap();
    let before = c.power_status().await.unwrap();
    assert!(matches!(before, Power::On | Power::Off));
    c.set_boot(BootTarget::Pxe, true, true).await.unwrap();
    let raw: serde_json::Value = {
        let sys = reqwest::get(format!("http://127.0.0.1:{port}/redfish/v1/Systems"))
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap();
        let path = sys["Members"][0]["@odata.id"].as_str().unwrap().to_string();
        reqwest::get(format!("http://127.0.0.1:{port}{path}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    assert_eq!(raw["Boot"]["BootSourceOverrideTarget"], "Pxe", "{raw}");
    assert_eq!(raw["Boot"]["BootSourceOverrideMode"], "UEFI", "{raw}");
    // (The fake driver keeps BootSourceOverrideEnabled at Continuous whatever is sent; the
    // QEMU-backed BMC below checks Once.)
    // The fake driver accepts the actions (it does not simulate transitions).
    c.set_power(PowerAction::On).await.unwrap();
    c.set_power(PowerAction::Off).await.unwrap();
    let info = c.info().await.unwrap();
    assert_eq!(info.protocol, "redfish");
    let inv = c.inventory().await.unwrap();
    assert!(inv.uuid.is_some(), "{inv:?}");
}

fn shim(dir: &Path, port: u16) -> Proc {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/rig/redfish_shim.py");
    let log = std::fs::File::create(dir.join("shim.log")).unwrap();
    let child = Command::new("python3")
        .arg(script)
        .arg(port.to_string())
        .arg(dir)
        .args(["admin", "r3dfish"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Proc(child, Some(dir.join("qemu.pid")))
}

fn qemu_running(dir: &Path) -> Option<String> {
    let pid = std::fs::read_to_string(dir.join("qemu.pid")).ok()?;
    std::fs::read_to_string(format!("/proc/{}/cmdline", pid.trim())).ok()
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn powers_a_qemu_machine_through_a_redfish_bmc() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _shim = shim(dir.path(), port);
    tokio::task::block_in_place(|| wait_http(port));

    let bad = RedfishBmc::new(&endpoint(port, "admin", "nope")).unwrap();
    let e = bad.power_status().await.unwrap_err();
    assert!(matches!(&e, BmcError::Auth(m) if m.contains("401")), "{e}");
    assert!(!e.to_string().contains("nope"));

    let c = RedfishBmc::new(&endpoint(port, "admin", "r3dfish")).unwrap();
    assert_eq!(c.power_status().await.unwrap(), Power::Off);
    c.set_boot(BootTarget::Pxe, true, false).await.unwrap();
    c.set_power(PowerAction::On).await.unwrap();
    wait_for("QEMU to run", || qemu_running(dir.path()).is_some()).await;
    assert!(
        qemu_running(dir.path()).unwrap().contains("order=n"),
        "PXE once"
    );
    assert_eq!(c.power_status().await.unwrap(), Power::On);

    c.set_power(PowerAction::Off).await.unwrap();
    wait_for("QEMU to stop", || qemu_running(dir.path()).is_none()).await;
    assert_eq!(c.power_status().await.unwrap(), Power::Off);

    // "Once" was consumed by the boot: the next power on boots from disk.
    c.set_power(PowerAction::On).await.unwrap();
    wait_for("QEMU to run again", || qemu_running(dir.path()).is_some()).await;
    assert!(qemu_running(dir.path()).unwrap().contains("order=c"));
    c.set_power(PowerAction::Off).await.unwrap();

    let inv = c.inventory().await.unwrap();
    assert_eq!(inv.mac_addresses, vec!["52:54:00:ab:cd:01".to_string()]);
    assert_eq!(inv.drives_bytes, vec![8 << 30]);
    assert_eq!(inv.manufacturer.as_deref(), Some("QEMU"));
    assert_eq!(inv.logical_processors, Some(1));
}

#[tokio::test]
async fn an_unreachable_redfish_bmc_is_a_bounded_error() {
    let port = free_port(); // nothing listens
    let mut ep = endpoint(port, "admin", "x");
    ep.timeout = Duration::from_secs(2);
    let t = Instant::now();
    let e = RedfishBmc::new(&ep)
        .unwrap()
        .power_status()
        .await
        .unwrap_err();
    assert!(matches!(e, BmcError::Http(_) | BmcError::Timeout(_)), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
}
