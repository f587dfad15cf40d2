//! Snapshot data in files of their own, `snapshots/<index>.snap` under the state dir; redb holds
//! only the snapshot's metadata. At 100,000 tasks a snapshot is tens of megabytes: written as a
//! redb value it cost the raft thread seconds and redb hundreds of megabytes to build the pages.
//! A file is written by the thread that serialized the state, while the raft thread goes on;
//! the raft thread then records the metadata in one small transaction.
//!
//! A file is complete before it is named (written as `.tmp`, synced, renamed, the directory
//! synced), and it is referenced only after that, so a crash leaves at worst an unreferenced file,
//! removed at the next start.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use super::{SnapshotFill, StoreError};

/// The directory under the state dir.
pub const DIR: &str = "snapshots";

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join(DIR)
}

/// Where the data of the snapshot at `index` is.
pub fn path(state_dir: &Path, index: u64) -> PathBuf {
    dir(state_dir).join(format!("{index:020}.snap"))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::SnapshotFile { path: path.to_path_buf(), source }
}

/// Writes the data of the snapshot at `index`, durably.
pub fn write(state_dir: &Path, index: u64, data: &[u8]) -> Result<(), StoreError> {
    write_with(state_dir, index, Box::new(|out| out.write_all(data))).map(|_| ())
}

/// Writes the data of the snapshot at `index` as `fill` produces it, durably, through a small
/// buffer (the data is never whole in memory); how many bytes it wrote.
pub fn write_with(state_dir: &Path, index: u64, fill: SnapshotFill<'_>) -> Result<u64, StoreError> {
    let dir = dir(state_dir);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let target = path(state_dir, index);
    let temporary = target.with_extension("tmp");
    let file = File::create(&temporary).map_err(io_err(&temporary))?;
    let mut out = BufWriter::with_capacity(1 << 16, file);
    fill(&mut out).map_err(io_err(&temporary))?;
    let file = out.into_inner().map_err(|e| io_err(&temporary)(e.into_error()))?;
    file.sync_all().map_err(io_err(&temporary))?;
    let size = file.metadata().map_err(io_err(&temporary))?.len();
    drop(file);
    std::fs::rename(&temporary, &target).map_err(io_err(&target))?;
    File::open(&dir).and_then(|d| d.sync_all()).map_err(io_err(&dir))?;
    Ok(size)
}

pub fn read(state_dir: &Path, index: u64) -> Result<Vec<u8>, StoreError> {
    let path = path(state_dir, index);
    std::fs::read(&path).map_err(io_err(&path))
}

/// Removes every snapshot file but the one at `keep`: older snapshots, and unreferenced or
/// unfinished ones a crash left. Failures are logged, not fatal: a stray file costs only space.
pub fn remove_all_but(state_dir: &Path, keep: u64) {
    let Ok(listing) = std::fs::read_dir(dir(state_dir)) else { return };
    let keep = path(state_dir, keep);
    for entry in listing.flatten() {
        let path = entry.path();
        if path != keep {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(target: "shoal::raft", "cannot remove the old snapshot file {}: {e}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_snapshot_reads_back_and_the_others_are_removed() {
        let state_dir = tempfile::tempdir().expect("temp dir");
        write(state_dir.path(), 7, b"seven").expect("written");
        write(state_dir.path(), 9, b"nine!").expect("written");
        std::fs::write(dir(state_dir.path()).join("crashed.tmp"), b"half").expect("a stray file");
        assert_eq!(read(state_dir.path(), 9).expect("read"), b"nine!");
        remove_all_but(state_dir.path(), 9);
        let left: Vec<_> =
            std::fs::read_dir(dir(state_dir.path())).expect("listed").flatten().map(|e| e.path()).collect();
        assert_eq!(left, vec![path(state_dir.path(), 9)]);
        let err = read(state_dir.path(), 7).expect_err("removed");
        assert!(err.to_string().contains("00000000000000000007.snap"), "{err}");
    }

    #[test]
    fn data_written_in_pieces_lands_whole_and_a_failed_writer_leaves_no_snapshot() {
        let state_dir = tempfile::tempdir().expect("temp dir");
        // More than the buffer holds, in pieces, as a serializer writes it.
        let piece = vec![b'x'; 5000];
        let size = write_with(state_dir.path(), 3, Box::new(|out| (0..40).try_for_each(|_| out.write_all(&piece))))
            .expect("written");
        assert_eq!(size, 200_000);
        assert_eq!(read(state_dir.path(), 3).expect("read"), vec![b'x'; 200_000]);

        let failing: SnapshotFill = Box::new(|out| {
            out.write_all(b"half")?;
            Err(std::io::Error::other("the serializer failed"))
        });
        let err = write_with(state_dir.path(), 4, failing).expect_err("a failed writer fails the write");
        assert!(err.to_string().contains("00000000000000000004.tmp"), "{err}");
        assert!(read(state_dir.path(), 4).is_err(), "no snapshot file under its name");
    }
}
