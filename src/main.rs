//! The single `groundwork` binary.

/// mimalloc instead of glibc malloc: the API server allocates and frees many small JSON
/// values per request, and glibc's allocator was a fifth of its CPU under write load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(groundwork_cli::main());
}
