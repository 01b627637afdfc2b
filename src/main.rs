//! The single `groundwork` binary.

/// mimalloc instead of glibc malloc: the API server allocates and frees many small JSON
/// values per request, and glibc's allocator was a fifth of its CPU under write load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    lean_agent();
    std::process::exit(groundwork_cli::main());
}

/// The node agent runs next to the services it converges and should stay small. mimalloc
/// commits its first arena eagerly (16 MiB resident for an agent's few MiB of state); its
/// options are read from the environment once, before `main`, so the agent sets
/// `MIMALLOC_ARENA_EAGER_COMMIT=0` and executes itself again (same PID, same arguments).
fn lean_agent() {
    use std::os::unix::process::CommandExt;
    const OPT: &str = "MIMALLOC_ARENA_EAGER_COMMIT";
    if std::env::var_os(OPT).is_some() || !std::env::args_os().any(|a| a == "node-agent") {
        return;
    }
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .env(OPT, "0")
        .exec();
    eprintln!("groundwork: could not execute itself with {OPT}=0 ({err}); going on");
}
