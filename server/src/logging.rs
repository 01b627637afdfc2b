//! Logging: stderr (text or JSON lines) and the per-object log hub.

use groundwork_observe::LogHub;

/// Logs to stderr (text or JSON lines) and, when `hub` is given, copies the lines about each
/// object into it for `groundwork logs`. `RUST_LOG` filters stderr; the hub keeps info and up.
pub(crate) fn init_logging(format: &str, hub: Option<&LogHub>) -> anyhow::Result<()> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = match format {
        "json" => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        "text" => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
        other => anyhow::bail!("--log-format {other:?}: use text or json"),
    };
    let hub_layer = hub.map(|h| {
        h.layer()
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(hub_layer)
        .try_init()
        .map_err(|e| anyhow::anyhow!("setting up logging: {e}"))?;
    Ok(())
}

/// Logging for the standalone services (stderr only).
pub fn init_logging_plain(format: &str) -> anyhow::Result<()> {
    init_logging(format, None)
}
