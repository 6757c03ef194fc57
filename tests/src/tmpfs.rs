//! A small filesystem for one test: how the disk-full tests get a disk that really fills
//! (ENOSPC), where mounting is allowed (root or CAP_SYS_ADMIN).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted for one test; unmounted on `Drop` (lazily if something still holds it).
pub struct Tmpfs {
    /// Where it is mounted.
    pub path: PathBuf,
}

impl Tmpfs {
    /// `mount -t tmpfs -o size=<size> tmpfs <path>`; `Err` with the reason when not allowed.
    pub fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if output.status.success() {
            Ok(Tmpfs {
                path: path.to_path_buf(),
            })
        } else {
            Err(format!(
                "mount -t tmpfs failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}
