//! Benchmark: power status of N BMCs that speak real IPMI 2.0 over LAN (the simulated BMC, one
//! UDP socket each on 127.0.0.1), polled by Groundwork's client concurrently and sequentially,
//! against sequential `ipmitool -I lanplus` (what most tools shell out to). Every poll opens
//! a full RMCP+ session (RAKP handshake, suite 3), reads the chassis status and closes.
//! Usage: cargo run --release -p groundwork-bmc --example poll_bench -- [N] [ROUNDS]

use std::process::Command;
use std::time::{Duration, Instant};

use groundwork_bmc::ipmi::sim::SimBmc;
use groundwork_bmc::ipmi::{IpmiBmc, IpmiConfig};
use groundwork_bmc::{Bmc, Power};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);

    // The BMCs get their own runtime (one thread), the client another.
    let sims_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let sims: Vec<SimBmc> = sims_rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..n {
            let s = SimBmc::start("127.0.0.1:0".parse().unwrap(), "admin", "password")
                .await
                .unwrap();
            s.set_power(i % 2 == 0);
            v.push(s);
        }
        v
    });
    let addrs: Vec<_> = sims.iter().map(|s| s.addr).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let clients: Vec<IpmiBmc> = addrs
        .iter()
        .map(|a| IpmiBmc::new(IpmiConfig::new(*a, "admin", "password")))
        .collect();

    let check = |r: &[Power]| {
        for (i, p) in r.iter().enumerate() {
            assert_eq!(*p == Power::On, i % 2 == 0, "BMC {i}");
        }
    };
    let mut concurrent = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let r: Vec<Power> = rt.block_on(async {
            futures::future::join_all(clients.iter().map(|c| c.power_status()))
                .await
                .into_iter()
                .map(|r| r.expect("power status"))
                .collect()
        });
        concurrent.push(t.elapsed());
        check(&r);
    }
    let mut sequential = Vec::new();
    for _ in 0..rounds.min(3) {
        let t = Instant::now();
        let r: Vec<Power> = rt.block_on(async {
            let mut out = Vec::new();
            for c in &clients {
                out.push(c.power_status().await.expect("power status"));
            }
            out
        });
        sequential.push(t.elapsed());
        check(&r);
    }
    let t = Instant::now();
    for (i, a) in addrs.iter().enumerate() {
        let out = Command::new("ipmitool")
            .args([
                "-I",
                "lanplus",
                "-C",
                "3",
                "-H",
                "127.0.0.1",
                "-p",
                &a.port().to_string(),
            ])
            .args([
                "-U", "admin", "-P", "password", "chassis", "power", "status",
            ])
            .output()
            .expect("ipmitool");
        let text = String::from_utf8_lossy(&out.stdout);
        let want = if i % 2 == 0 { "on" } else { "off" };
        assert!(
            text.contains(&format!("Chassis Power is {want}")),
            "BMC {i}: {text}"
        );
    }
    let ipmitool = t.elapsed();
    let c = median(concurrent);
    let s = median(sequential);
    println!("BMCs: {n} (simulated, real RMCP+ suite 3 on 127.0.0.1; one session per poll)");
    println!(
        "groundwork concurrent : {:>8.1} ms  ({:.0} polls/s)",
        c.as_secs_f64() * 1e3,
        n as f64 / c.as_secs_f64()
    );
    println!(
        "groundwork sequential : {:>8.1} ms  ({:.2} ms/poll)",
        s.as_secs_f64() * 1e3,
        s.as_secs_f64() * 1e3 / n as f64
    );
    println!(
        "ipmitool sequential   : {:>8.1} ms  ({:.2} ms/poll)",
        ipmitool.as_secs_f64() * 1e3,
        ipmitool.as_secs_f64() * 1e3 / n as f64
    );
    println!(
        "ratio ipmitool sequential / groundwork concurrent: {:.1}x",
        ipmitool.as_secs_f64() / c.as_secs_f64()
    );
    println!(
        "ratio ipmitool sequential / groundwork sequential: {:.1}x",
        ipmitool.as_secs_f64() / s.as_secs_f64()
    );
    drop(sims);
}
