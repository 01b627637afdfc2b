//! The IPMI client against OpenIPMI's ipmi_sim (a BMC implementation we did not write) whose
//! chassis control starts and stops a real QEMU machine; ipmitool checks every result.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use groundwork_bmc::ipmi::{IpmiBmc, IpmiConfig};
use groundwork_bmc::{Bmc, BmcError, BootTarget, Power, PowerAction};

struct IpmiSim {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for IpmiSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(pid) = self.qemu_pid() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl IpmiSim {
    fn start() -> IpmiSim {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path();
        let port = free_udp_port();
        let chassis = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/rig/chassis.sh");
        std::fs::write(
            w.join("sim.emu"),
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nsel_enable 0x20 1000 0x0a\nmc_enable 0x20\n",
        )
        .unwrap();
        std::fs::write(
            w.join("lan.conf"),
            format!(
                "name \"gwtest\"\nset_working_mc 0x20\n  startlan 1\n    addr 127.0.0.1 {port}\n    priv_limit admin\n    allowed_auths_callback none md2 md5 straight\n    allowed_auths_user none md2 md5 straight\n    allowed_auths_operator none md2 md5 straight\n    allowed_auths_admin none md2 md5 straight\n    guid a123456789abcdefa123456789abcdef\n  endlan\n  chassis_control \"{} {}\"\n  user 2 true  \"admin\" \"password\" admin 10 none md2 md5 straight\n",
                chassis.display(),
                w.display()
            ),
        )
        .unwrap();
        std::fs::create_dir(w.join("state")).unwrap();
        let log = std::fs::File::create(w.join("ipmi_sim.log")).unwrap();
        let child = Command::new("ipmi_sim")
            .args(["-n", "-c"])
            .arg(w.join("lan.conf"))
            .arg("-f")
            .arg(w.join("sim.emu"))
            .arg("-s")
            .arg(w.join("state"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("ipmi_sim is installed (tests/run installs openipmi)");
        let sim = IpmiSim { child, dir, port };
        // Bounded wait for the BMC to answer.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sim
            .ipmitool(&["chassis", "power", "status"])
            .contains("Chassis Power is")
        {
            assert!(Instant::now() < deadline, "ipmi_sim did not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
        sim
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn ipmitool(&self, args: &[&str]) -> String {
        let out = Command::new("timeout")
            .args([
                "20",
                "ipmitool",
                "-I",
                "lanplus",
                "-C",
                "3",
                "-H",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "admin",
                "-P",
                "password",
                "-R",
                "2",
                "-N",
                "1",
            ])
            .args(args)
            .output()
            .expect("ipmitool");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn qemu_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.dir().join("qemu.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    fn client(&self, password: &str) -> IpmiBmc {
        let mut cfg = IpmiConfig::new(
            format!("127.0.0.1:{}", self.port).parse().unwrap(),
            "admin",
            password,
        );
        cfg.attempt_timeout = Duration::from_secs(2);
        IpmiBmc::new(cfg)
    }
}

async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn powers_a_qemu_machine_through_openipmi_and_ipmitool_agrees() {
    let sim = tokio::task::block_in_place(IpmiSim::start);
    let c = sim.client("password");
    assert_eq!(c.power_status().await.unwrap(), Power::Off);
    assert!(sim.qemu_pid().is_none());

    c.set_boot(BootTarget::Pxe, true, false).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(sim.dir().join("bootdev"))
            .unwrap()
            .trim(),
        "pxe"
    );

    c.set_power(PowerAction::On).await.unwrap();
    wait_for("the QEMU machine to run", Duration::from_secs(20), || {
        sim.qemu_pid().is_some()
    })
    .await;
    assert_eq!(c.power_status().await.unwrap(), Power::On);
    let out = tokio::task::block_in_place(|| sim.ipmitool(&["chassis", "power", "status"]));
    assert!(out.contains("Chassis Power is on"), "{out}");
    let pid = sim.qemu_pid().unwrap();
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.contains("order=n"), "PXE first: {cmdline:?}");

    c.set_power(PowerAction::Off).await.unwrap();
    wait_for("the QEMU machine to stop", Duration::from_secs(20), || {
        sim.qemu_pid().is_none()
    })
    .await;
    assert_eq!(c.power_status().await.unwrap(), Power::Off);
    let out = tokio::task::block_in_place(|| sim.ipmitool(&["chassis", "power", "status"]));
    assert!(out.contains("Chassis Power is off"), "{out}");

    // ipmitool sets, we read; we set, ipmitool reads.
    let out = tokio::task::block_in_place(|| sim.ipmitool(&["chassis", "power", "on"]));
    assert!(out.contains("Up/On"), "{out}");
    assert_eq!(c.power_status().await.unwrap(), Power::On);
    c.set_power(PowerAction::Off).await.unwrap();
    let out = tokio::task::block_in_place(|| sim.ipmitool(&["chassis", "power", "status"]));
    assert!(out.contains("Chassis Power is off"), "{out}");

    let info = c.info().await.unwrap();
    assert_eq!(info.ipmi_version.as_deref(), Some("2.0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_suite_17_are_clear_errors_against_openipmi() {
    let sim = tokio::task::block_in_place(IpmiSim::start);
    let e = sim.client("wrong").power_status().await.unwrap_err();
    assert!(
        matches!(&e, BmcError::Auth(m) if m.contains("wrong password")),
        "{e}"
    );
    // OpenIPMI's ipmi_sim does not implement the SHA-256 algorithms.
    let mut cfg = IpmiConfig::new(
        format!("127.0.0.1:{}", sim.port).parse().unwrap(),
        "admin",
        "password",
    );
    cfg.suite = groundwork_bmc::ipmi::CipherSuite::Suite17;
    let e = IpmiBmc::new(cfg).power_status().await.unwrap_err();
    assert!(
        matches!(&e, BmcError::Unsupported(m) if m.contains("cipher suite 17")),
        "{e}"
    );
    assert!(sim.qemu_pid().is_none());
}
