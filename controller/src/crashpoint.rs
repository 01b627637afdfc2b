//! Named points where a debug build can be made to die abruptly, to test that what is
//! journalled survives a crash there (`tests/vault.rs`). A point fires when the file
//! `DATA_DIR/crashpoint` holds its name: the file is removed (so the restarted process goes
//! on) and the process aborts, with no cleanup, as a SIGKILL would. Release builds compile
//! every point to nothing.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static DIR: OnceLock<PathBuf> = OnceLock::new();

/// Where the `crashpoint` file is looked for (the server's data directory).
pub fn set_dir(dir: &Path) {
    let _ = DIR.set(dir.to_path_buf());
}

pub fn hit(name: &str) {
    #[cfg(debug_assertions)]
    {
        let Some(dir) = DIR.get() else { return };
        let f = dir.join("crashpoint");
        if std::fs::read_to_string(&f).is_ok_and(|t| t.trim() == name) {
            let _ = std::fs::remove_file(&f);
            eprintln!("groundwork: crash point {name}: aborting (a test asked for it)");
            std::process::abort();
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
