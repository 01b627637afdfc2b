//! Each machine's progress until all are Ready.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use groundwork_types::{Node, NodePhase};

/// Shows each machine's phase changes until all are Ready, then the time in each phase.
pub(super) async fn progress(kubeconfig: &Path, n: u8, timeout: Duration) -> anyhow::Result<()> {
    let api = crate::client::connect(Some(kubeconfig.to_path_buf())).await?;
    let nodes: kube::Api<Node> = kube::Api::all(api.client);
    let t0 = Instant::now();
    let mut seen: BTreeMap<String, Option<NodePhase>> = BTreeMap::new();
    loop {
        let list = nodes.list(&Default::default()).await?;
        let mut ready = 0;
        for node in list.items.iter().filter(|n| {
            n.metadata
                .name
                .as_deref()
                .is_some_and(|x| x.starts_with("lab-"))
        }) {
            let name = node.metadata.name.clone().unwrap_or_default();
            let st = node.status.clone().unwrap_or_default();
            if st.phase == Some(NodePhase::Ready) {
                ready += 1;
            }
            if seen.get(&name) != Some(&st.phase) {
                let why = st
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Provisioned")
                    .map(|c| c.message.clone())
                    .unwrap_or_default();
                println!(
                    "[{:>6.1}s] {name:<8} {:<15} {why}",
                    t0.elapsed().as_secs_f64(),
                    st.phase
                        .map(|p| format!("{p:?}"))
                        .unwrap_or_else(|| "-".into())
                );
                seen.insert(name, st.phase);
            }
        }
        if ready == n as usize {
            println!(
                "lab: all {n} machines Ready in {:.1}s",
                t0.elapsed().as_secs_f64()
            );
            for node in &list.items {
                let hist = node
                    .status
                    .as_ref()
                    .and_then(|s| s.provisioning.as_ref())
                    .map(|p| p.history.clone())
                    .unwrap_or_default();
                println!(
                    "  {}: {}",
                    node.metadata.name.as_deref().unwrap_or(""),
                    groundwork_types::phase_times(&hist)
                );
            }
            return Ok(());
        }
        if t0.elapsed() > timeout {
            bail!(
                "not every machine was Ready within {timeout:?}; see `groundwork describe node NAME` and the lab's logs"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Shows each layer's phase changes (and what it waits for) until the stack is Ready.
pub(super) async fn layers(
    kubeconfig: &Path,
    stack: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    use groundwork_types::{LayerPhase, ServiceStack};
    let api = crate::client::connect(Some(kubeconfig.to_path_buf())).await?;
    let stacks: kube::Api<ServiceStack> = kube::Api::all(api.client);
    let t0 = Instant::now();
    let mut seen: BTreeMap<String, (Option<LayerPhase>, Option<String>)> = BTreeMap::new();
    loop {
        let s = stacks.get(stack).await?;
        let st = s.status.clone().unwrap_or_default();
        for l in &st.layers {
            let now = (l.phase, l.waiting_for.clone());
            if seen.get(&l.name) != Some(&now) {
                println!(
                    "[{:>6.1}s] layer {:<12} {:<12} {}",
                    t0.elapsed().as_secs_f64(),
                    l.name,
                    l.phase
                        .map(|p| format!("{p:?}"))
                        .unwrap_or_else(|| "-".into()),
                    l.waiting_for
                        .as_ref()
                        .map(|w| format!("waiting for {w}"))
                        .unwrap_or_else(|| l.endpoints.join(" "))
                );
                seen.insert(l.name.clone(), now);
            }
        }
        let ready = !st.layers.is_empty()
            && st.layers.iter().all(|l| l.phase == Some(LayerPhase::Ready))
            && st.observed_generation == s.metadata.generation;
        if ready {
            println!(
                "lab: stack {stack}: all {} layers Ready in {:.1}s",
                st.layers.len(),
                t0.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if t0.elapsed() > timeout {
            bail!(
                "stack {stack} was not Ready within {timeout:?}; see `groundwork describe servicestack {stack}` and `kubectl get serviceinstances`"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
