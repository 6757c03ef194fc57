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

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::BufferError;

/// Name of the lock file inside the buffer directory.
pub const LOCK_FILE: &str = "LOCK";
/// How long `acquire` waits for a buffer of this same process that is shutting down.
const SAME_PROCESS_WAIT: Duration = Duration::from_secs(2);

/// Directories (canonical paths) this process holds a lock on right now, each with the id of the
/// [`DirLock`] holding it.
static HELD_HERE: Mutex<BTreeMap<PathBuf, u64>> = Mutex::new(BTreeMap::new());
/// Id of the next [`DirLock`] taken by this process.
static NEXT_LOCK_ID: AtomicU64 = AtomicU64::new(0);

fn held_here() -> std::sync::MutexGuard<'static, BTreeMap<PathBuf, u64>> {
    HELD_HERE.lock().unwrap_or_else(|e| e.into_inner())
}

/// An exclusive lock on a buffer directory; dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct DirLock {
    flock: Option<Flock<File>>,
    /// Canonical path of the locked directory.
    dir: PathBuf,
    /// Its entry in [`HELD_HERE`].
    id: u64,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Unlock and forget the entry under one guard, as `acquire` locks and checks entries
        // under it: a waiter of this process never sees the flock taken and the entry gone. And
        // forget only our own entry: if another buffer of this process holds the directory now,
        // a later open must know it is ours and wait for it, not fail at once.
        let mut held = held_here();
        drop(self.flock.take());
        if held.get(&self.dir) == Some(&self.id) {
            held.remove(&self.dir);
        }
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
        // See `DirLock::drop` for why the flock and the entries change under one guard.
        let mut held = held_here();
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(flock) => {
                let pid = format!("{}\n", std::process::id());
                flock
                    .set_len(0)
                    .and_then(|()| flock.write_all_at(pid.as_bytes(), 0))
                    .map_err(|e| BufferError::io(&path, e))?;
                let id = NEXT_LOCK_ID.fetch_add(1, Ordering::Relaxed);
                held.insert(canonical.clone(), id);
                return Ok(DirLock {
                    flock: Some(flock),
                    dir: canonical,
                    id,
                });
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                // A buffer of this very process that is closing (its writer thread exiting)
                // lets go within moments; anyone else holds it for real.
                let ours = held.contains_key(&canonical);
                drop(held);
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

    /// What a crash-and-reopen in one process does: the buffer's writer thread drops the lock
    /// while the next open takes it. Every reopen must wait for the closing buffer, never fail.
    #[test]
    fn reopening_while_another_thread_closes_the_buffer_always_waits() {
        let dir = tempfile::tempdir().unwrap();
        let mut lock = acquire(dir.path()).unwrap();
        for round in 0..300 {
            let closing = std::thread::spawn(move || drop(lock));
            lock = acquire(dir.path()).unwrap_or_else(|e| panic!("round {round}: {e}"));
            closing.join().unwrap();
        }
    }

    /// A lock dropped late (its flock already released, the next buffer holding the directory)
    /// must not forget the next buffer's entry, or a later open would not wait for it.
    #[test]
    fn a_late_drop_does_not_hide_the_next_holder_from_later_waiters() {
        let dir = tempfile::tempdir().unwrap();
        let canonical = dir.path().canonicalize().unwrap();
        let mut closing = acquire(dir.path()).unwrap();
        drop(closing.flock.take());
        let next = acquire(dir.path()).unwrap();
        drop(closing);
        assert!(
            held_here().contains_key(&canonical),
            "the open buffer's directory is no longer known as held by this process"
        );
        // So a third open, while the second buffer is closing, waits for it instead of failing.
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(next);
        });
        let third = acquire(dir.path());
        releaser.join().unwrap();
        assert!(third.is_ok(), "{:?}", third.err());
    }
}
