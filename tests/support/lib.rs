//! Support for tests that run the real `shoal` binary: where it is, how to run it in a clean
//! environment, and scratch project directories that remove themselves. [`stack`]: end-to-end
//! projects on the real Docker engine. [`netcluster`]: managers in containers on a private
//! network, for partition tests. [`managers`]: managers as processes on loopback. [`multinode`]:
//! a manager and several agents (nodes) on the local engine. [`relay`]: a TCP relay whose
//! connections a test can reset.

pub mod managers;
pub mod multinode;
pub mod netcluster;
pub mod relay;
pub mod stack;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The `shoal` binary of the profile this test was built with (`target/<profile>/shoal`).
/// `cargo test --workspace` builds it before running any test, because the orchestrator
/// package has integration tests of its own.
pub fn shoal_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SHOAL_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/<test> → target/<profile>/shoal
    let profile_dir = exe.parent().and_then(Path::parent).expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("shoal");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p shoal-orchestrator` (or cargo test --workspace)",
        bin.display()
    );
    bin
}

/// A `shoal` command with a minimal, predictable environment (no COMPOSE_* from the caller).
pub fn shoal(dir: &Path) -> Command {
    let mut cmd = Command::new(shoal_bin());
    cmd.current_dir(dir).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).env("HOME", dir);
    cmd
}

/// The result of a finished command, with its output as text.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Runs the command to completion.
pub fn run(cmd: &mut Command) -> Run {
    cmd.output().map(Run::from).unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// A scratch project directory, removed when dropped (pass or fail).
pub struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    /// A new directory whose name is `name` (the project name compose derives from it).
    pub fn new(name: &str) -> Project {
        let dir = tempfile::Builder::new().prefix("shoal-test-").tempdir().expect("temp dir");
        let project = Project { dir };
        std::fs::create_dir_all(project.path().join(name)).expect("project dir");
        project
    }

    /// The scratch root; projects live in `root/<name>`.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file (creating its directories) relative to the scratch root.
    pub fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.path().join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("parent dir");
        }
        std::fs::write(&path, text).expect("write file");
        path
    }
}
