//! The single `groundwork` binary.

fn main() {
    std::process::exit(groundwork_cli::main());
}
