//! The IPMI client against the simulated BMC (both cipher suites), and the simulated BMC
//! against ipmitool, the reference client (so the simulator is not only checked by our own
//! client).

use std::process::Command;
use std::time::Duration;

use groundwork_bmc::ipmi::sim::SimBmc;
use groundwork_bmc::ipmi::{CipherSuite, IpmiBmc, IpmiConfig};
use groundwork_bmc::{Bmc, BmcError, BootTarget, Power, PowerAction};

async fn sim() -> SimBmc {
    SimBmc::start("127.0.0.1:0".parse().unwrap(), "admin", "s3cret-pw")
        .await
        .unwrap()
}

fn client(sim: &SimBmc, suite: CipherSuite, password: &str) -> IpmiBmc {
    let mut cfg = IpmiConfig::new(sim.addr, "admin", password);
    cfg.suite = suite;
    cfg.attempt_timeout = Duration::from_millis(300);
    IpmiBmc::new(cfg)
}

#[tokio::test]
async fn power_and_boot_over_both_cipher_suites() {
    let sim = sim().await;
    for suite in [CipherSuite::Suite3, CipherSuite::Suite17] {
        let c = client(&sim, suite, "s3cret-pw");
        assert_eq!(c.power_status().await.unwrap(), Power::Off);
        c.set_power(PowerAction::On).await.unwrap();
        assert!(sim.state().power_on);
        assert_eq!(c.power_status().await.unwrap(), Power::On);
        c.set_boot(BootTarget::Pxe, true, true).await.unwrap();
        assert_eq!(
            sim.state().boot_flags,
            (0x80 | 0x20, 0x04),
            "valid, once, EFI, PXE"
        );
        c.set_boot(BootTarget::Disk, false, false).await.unwrap();
        assert_eq!(
            sim.state().boot_flags,
            (0x80 | 0x40, 0x08),
            "valid, persistent, BIOS, disk"
        );
        c.set_power(PowerAction::Off).await.unwrap();
        assert_eq!(c.power_status().await.unwrap(), Power::Off);
        assert_eq!(c.info().await.unwrap().ipmi_version.as_deref(), Some("2.0"));
    }
    let st = sim.state();
    assert_eq!(
        st.commands["close-session"], st.sessions_opened,
        "every session closed"
    );
}

#[tokio::test]
async fn wrong_password_and_user_are_authentication_errors() {
    let sim = sim().await;
    for suite in [CipherSuite::Suite3, CipherSuite::Suite17] {
        let e = client(&sim, suite, "not-it")
            .power_status()
            .await
            .unwrap_err();
        assert!(
            matches!(&e, BmcError::Auth(m) if m.contains("wrong password")),
            "{e}"
        );
        assert!(
            !e.to_string().contains("not-it"),
            "the password is never in an error"
        );
    }
    let mut cfg = IpmiConfig::new(sim.addr, "root", "s3cret-pw");
    cfg.attempt_timeout = Duration::from_millis(300);
    let e = IpmiBmc::new(cfg).power_status().await.unwrap_err();
    assert!(
        matches!(&e, BmcError::Auth(m) if m.contains("no such user")),
        "{e}"
    );
    assert_eq!(sim.state().sessions_opened, 0);
}

#[tokio::test]
async fn a_hung_bmc_times_out_within_the_budget() {
    let sim = sim().await;
    sim.set_unresponsive(true);
    let c = client(&sim, CipherSuite::Suite3, "s3cret-pw");
    let t = std::time::Instant::now();
    let e = c.power_status().await.unwrap_err();
    assert!(matches!(e, BmcError::Timeout(_)), "{e}");
    // 3 attempts of 300 ms.
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    sim.set_unresponsive(false);
    assert_eq!(c.power_status().await.unwrap(), Power::Off);
}

fn ipmitool(sim: &SimBmc, suite: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args([
            "20",
            "ipmitool",
            "-I",
            "lanplus",
            "-C",
            suite,
            "-H",
            "127.0.0.1",
        ])
        .args([
            "-p",
            &sim.addr.port().to_string(),
            "-U",
            "admin",
            "-P",
            "s3cret-pw",
        ])
        .args(["-R", "2", "-N", "1"])
        .args(args)
        .output()
        .expect("ipmitool is installed (tests/run installs it)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipmitool_agrees_with_the_simulator_on_both_suites() {
    let sim = sim().await;
    for suite in ["3", "17"] {
        sim.set_power(false);
        let s = sim.addr;
        let _ = s;
        let out =
            tokio::task::block_in_place(|| ipmitool(&sim, suite, &["chassis", "power", "status"]));
        assert!(out.contains("Chassis Power is off"), "suite {suite}: {out}");
        let out =
            tokio::task::block_in_place(|| ipmitool(&sim, suite, &["chassis", "power", "on"]));
        assert!(out.contains("Up/On"), "suite {suite}: {out}");
        assert!(sim.state().power_on);
        let out =
            tokio::task::block_in_place(|| ipmitool(&sim, suite, &["chassis", "bootdev", "pxe"]));
        assert!(
            out.contains("Set Boot Device to pxe"),
            "suite {suite}: {out}"
        );
        assert_eq!(sim.state().boot_flags.1, 0x04);
        // Our client reads what ipmitool set.
        let c = client(
            &sim,
            CipherSuite::from_id(suite.parse().unwrap()).unwrap(),
            "s3cret-pw",
        );
        assert_eq!(c.power_status().await.unwrap(), Power::On);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fru_and_sel_read_the_same_as_ipmitool() {
    use groundwork_bmc::ipmi::{Session, read_fru, read_sel};
    let sim = sim().await;
    let mut cfg = IpmiConfig::new(sim.addr, "admin", "s3cret-pw");
    cfg.suite = CipherSuite::Suite17;
    let mut s = Session::open(&cfg).await.unwrap();
    let fru = read_fru(&mut s).await.unwrap();
    let sel = read_sel(&mut s, 100).await.unwrap();
    s.close().await;
    let serial = format!("SIM-{}", sim.addr.port());
    assert_eq!(fru.product_serial.as_deref(), Some(serial.as_str()));
    assert_eq!(fru.product_name.as_deref(), Some("SimServer 1U"));
    assert_eq!(sel.len(), 2);
    assert_eq!(sel[0].sensor_type, 0x09, "power unit");
    assert!(sel[0].asserted && !sel[1].asserted);
    assert_eq!(sel[1].timestamp - sel[0].timestamp, 60);

    let out = tokio::task::block_in_place(|| ipmitool(&sim, "17", &["fru", "print", "0"]));
    assert!(
        out.contains(&format!("Product Serial        : {serial}")),
        "{out}"
    );
    assert!(
        out.contains("Product Name          : SimServer 1U"),
        "{out}"
    );
    assert!(out.contains("Board Mfg             : Groundwork"), "{out}");
    let out = tokio::task::block_in_place(|| ipmitool(&sim, "17", &["sel", "list"]));
    assert_eq!(
        out.lines().filter(|l| l.contains("Power Unit")).count(),
        2,
        "{out}"
    );
    assert!(
        out.contains("Asserted") && out.contains("Deasserted"),
        "{out}"
    );

    let inv = client(&sim, CipherSuite::Suite3, "s3cret-pw")
        .inventory()
        .await
        .unwrap();
    assert_eq!(inv.serial.as_deref(), Some(serial.as_str()));
    assert_eq!(inv.manufacturer.as_deref(), Some("Groundwork"));
}
