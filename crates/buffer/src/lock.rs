//! The buffer directory's lock: one gateway per buffer, or two writers would corrupt each other.
//!
//! [`open`](super::open) takes an exclusive, non-blocking `flock` on `<dir>/LOCK` before
//! recovery touches anything, and writes its pid into the file so that a second gateway started
//! on the same directory can say who holds it. The lock is advisory and belongs to the open file
//! description: the kernel drops it when the process dies, however it dies, so a power cut or a
//! `kill -9` never leaves a stale lock behind (the pid left in the file is only a hint; the
//! `flock` is the truth).
//!
//! Within one process the lock lives as long as the buffer's shared state (it is a field of it):
//! it is released once the writer thread, the writer handles and the reader are all gone, so a
//! test (or a library user) can close a buffer and open it again. The read-only tools
//! (`ioc-gateway buffer stats|export`) never take it.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::BufferError;

/// Name of the lock file inside the buffer directory.
pub const LOCK_FILE: &str = "LOCK";
/// How long `acquire` waits for a buffer of this same process that is shutting down.
const SAME_PROCESS_WAIT: Duration = Duration::from_secs(2);

/// Directories (canonical paths) this process holds a lock on right now.
static HELD_HERE: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

fn held_here() -> std::sync::MutexGuard<'static, BTreeSet<PathBuf>> {
    HELD_HERE.lock().unwrap_or_else(|e| e.into_inner())
}

/// An exclusive lock on a buffer directory; dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct DirLock {
    flock: Option<Flock<File>>,
    /// Canonical path of the locked directory.
    dir: PathBuf,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Unlock first, then let waiters of this process know.
        drop(self.flock.take());
        held_here().remove(&self.dir);
    }
}

/// The pid written in a lock file, if it holds one.
pub fn read_lock_pid(dir: &Path) -> Option<u32> {
    let mut text = String::new();
    File::open(dir.join(LOCK_FILE))
        .ok()?
        .take(64)
        .read_to_string(&mut text)
        .ok()?;
    text.trim().parse().ok()
}

/// Takes the lock on `dir` (which must exist), or says who holds it.
pub(crate) fn acquire(dir: &Path) -> Result<DirLock, BufferError> {
    let canonical = dir.canonicalize().map_err(|e| BufferError::io(dir, e))?;
    let path = canonical.join(LOCK_FILE);
    let deadline = Instant::now() + SAME_PROCESS_WAIT;
    loop {
        // Never truncate before holding the lock: the file names the current holder.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| BufferError::io(&path, e))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(flock) => {
                let pid = format!("{}\n", std::process::id());
                flock
                    .set_len(0)
                    .and_then(|()| flock.write_all_at(pid.as_bytes(), 0))
                    .map_err(|e| BufferError::io(&path, e))?;
                held_here().insert(canonical.clone());
                return Ok(DirLock {
                    flock: Some(flock),
                    dir: canonical,
                });
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                // A buffer of this very process that is closing (its writer thread exiting)
                // lets go within moments; anyone else holds it for real.
                let ours = held_here().contains(&canonical);
                if ours && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                return Err(BufferError::InUse {
                    dir: canonical.clone(),
                    pid: read_lock_pid(&canonical),
                });
            }
            Err((_, errno)) => {
                return Err(BufferError::io(&path, io::Error::from(errno)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_fails_naming_the_holder_and_release_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = acquire(dir.path()).unwrap();
        assert_eq!(read_lock_pid(dir.path()), Some(std::process::id()));
        let started = Instant::now();
        let err = acquire(dir.path()).unwrap_err();
        // Same process: it waited for the holder to go away, then gave up.
        assert!(started.elapsed() >= SAME_PROCESS_WAIT);
        match &err {
            BufferError::InUse { dir: d, pid } => {
                assert_eq!(d, &dir.path().canonicalize().unwrap());
                assert_eq!(*pid, Some(std::process::id()));
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains(&dir.path().canonicalize().unwrap().display().to_string()));
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(first);
        let again = acquire(dir.path()).unwrap();
        drop(again);
    }
}
