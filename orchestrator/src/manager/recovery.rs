//! Starting a cluster over from a state: `shoal cluster backup` files and `shoal server --restore`,
//! and `--force-new-cluster`, which keeps a manager's state after the permanent loss of quorum.
//! Both end the same way: a new raft group of one whose first snapshot holds the state.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::machine::{decode, encode, ClusterMachine};
use crate::store::raft::{self, Bootstrap, NoopTransport, RaftConfig, StoreError, DB_FILE, SNAPSHOT_DIR};
use crate::store::state::ClusterState;

/// First line of a backup file; the state (JSON) follows.
const BACKUP_HEADER: &str = "shoal-backup v1";

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{} is not a Shoal backup (it does not start with `{BACKUP_HEADER}`); make one with `shoal cluster backup FILE`", path.display())]
    NotABackup { path: PathBuf },
    #[error("{} is a damaged backup: {reason}", path.display())]
    Damaged { path: PathBuf, reason: String },
    #[error("{} already holds cluster state; restore into an empty --state-dir", path.display())]
    NotEmpty { path: PathBuf },
    #[error("{} holds no cluster state to recover; --force-new-cluster needs the state dir of a former manager", path.display())]
    NothingToRecover { path: PathBuf },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the local raft log did not finish replaying within {0:?}")]
    Replay(Duration),
}

/// The bytes of a backup file for `state` (as `Backup` returns it), with the index it was taken at.
pub fn backup_file_bytes(state: &[u8], applied_index: u64) -> Vec<u8> {
    let mut bytes = format!("{BACKUP_HEADER} applied_index={applied_index}\n").into_bytes();
    bytes.extend_from_slice(state);
    bytes
}

pub fn write_backup(path: &Path, state: &[u8], applied_index: u64) -> Result<(), RecoveryError> {
    // Write aside, then rename: a crash never leaves a half-written backup under the name.
    let partial = path.with_extension("partial");
    let error = |source| RecoveryError::Write { path: path.to_path_buf(), source };
    std::fs::write(&partial, backup_file_bytes(state, applied_index)).map_err(error)?;
    std::fs::rename(&partial, path).map_err(error)
}

pub fn read_backup(path: &Path) -> Result<ClusterState, RecoveryError> {
    let bytes = std::fs::read(path).map_err(|source| RecoveryError::Read { path: path.to_path_buf(), source })?;
    parse_backup(path, &bytes)
}

fn parse_backup(path: &Path, bytes: &[u8]) -> Result<ClusterState, RecoveryError> {
    let newline = bytes.iter().position(|b| *b == b'\n');
    let header = newline.map(|n| String::from_utf8_lossy(&bytes[..n]).to_string()).unwrap_or_default();
    let (Some(newline), true) = (newline, header.starts_with(BACKUP_HEADER)) else {
        return Err(RecoveryError::NotABackup { path: path.to_path_buf() });
    };
    let state: ClusterState =
        decode(&bytes[newline + 1..]).map_err(|reason| RecoveryError::Damaged { path: path.to_path_buf(), reason })?;
    Ok(fresh(state))
}

/// A state as the first entry of a new log: indexes restart there.
fn fresh(mut state: ClusterState) -> ClusterState {
    state.applied_index = 0;
    state
}

pub fn has_raft_state(state_dir: &Path) -> bool {
    state_dir.join(DB_FILE).exists()
}

pub fn ensure_empty(state_dir: &Path) -> Result<(), RecoveryError> {
    if has_raft_state(state_dir) {
        return Err(RecoveryError::NotEmpty { path: state_dir.to_path_buf() });
    }
    Ok(())
}

/// Replays member `id`'s local log (snapshot plus committed entries) without talking to anyone,
/// returns the state, and moves the old raft database aside (kept, not deleted). The caller
/// starts a new group of one from the state.
pub async fn recover_for_new_cluster(state_dir: &Path, id: u64) -> Result<ClusterState, RecoveryError> {
    if !has_raft_state(state_dir) {
        return Err(RecoveryError::NothingToRecover { path: state_dir.to_path_buf() });
    }
    let mut config = RaftConfig::new(id, state_dir);
    config.bootstrap = Bootstrap::Join;
    // Alone, it must not win an election or change anything while replaying.
    config.election_tick = 1_000_000;
    let (machine, _) = ClusterMachine::new();
    let node = raft::start(config, machine, Arc::new(NoopTransport)).await?;
    let timeout = Duration::from_secs(60);
    let replayed = node.handle.wait_for(timeout, |s| s.applied_index >= s.commit_index).await;
    let state = node.state.read(|m| m.state.clone());
    node.handle.clone().shutdown().await;
    node.task.join().await?;
    replayed.map_err(|_| RecoveryError::Replay(timeout))?;
    let stamp = crate::manager::cluster::now();
    // The snapshot files go with the database that names them.
    for name in [DB_FILE, SNAPSHOT_DIR] {
        let old = state_dir.join(name);
        if !old.exists() {
            continue;
        }
        let aside = state_dir.join(format!("{name}.before-force-new-cluster-{stamp}"));
        std::fs::rename(&old, &aside).map_err(|source| RecoveryError::Write { path: aside.clone(), source })?;
        tracing::info!("the former raft state is kept at {}", aside.display());
    }
    Ok(fresh(state))
}

/// The serialized form of a state, as backups carry it.
pub fn state_bytes(state: &ClusterState) -> Vec<u8> {
    encode(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_round_trips_and_other_files_are_refused_with_the_reason() {
        let mut state = ClusterState { next_task_id: 42, applied_index: 7, ..ClusterState::default() };
        state.tokens = Some(crate::manager::tokens::generate(&[1u8; 32]));
        let bytes = backup_file_bytes(&state_bytes(&state), 7);
        let read = parse_backup(Path::new("b"), &bytes).expect("a backup");
        assert_eq!(read.next_task_id, 42);
        assert_eq!(read.tokens, state.tokens);
        assert_eq!(read.applied_index, 0, "a restored state starts a new log");
        let err = parse_backup(Path::new("compose.yaml"), b"services: {}\n").expect_err("not a backup");
        assert!(err.to_string().contains("shoal cluster backup"), "{err}");
        let err = parse_backup(Path::new("b"), b"shoal-backup v1 applied_index=1\n{broken").expect_err("damaged");
        assert!(err.to_string().contains("damaged"), "{err}");
    }
}
