//! A small filesystem for one test: how the disk-full tests get a disk that really fills
//! (ENOSPC), and the wedged-disk tests one whose writes block ([`FreezableFs`]), where mounting
//! is allowed (root or CAP_SYS_ADMIN).

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

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

/// An ext4 image mounted on a loop device; thawed and unmounted on drop.
pub struct FreezableFs {
    /// Where it is mounted.
    pub mount: PathBuf,
    _dir: TempDir,
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl FreezableFs {
    /// Creates and mounts the image; `Err` with the reason where mounting is not allowed.
    pub fn new() -> Result<Self, String> {
        let dir = TempDir::new().map_err(|e| e.to_string())?;
        let image = dir.path().join("disk.img");
        let mount = dir.path().join("mnt");
        std::fs::create_dir_all(&mount).map_err(|e| e.to_string())?;
        let f = std::fs::File::create(&image).map_err(|e| e.to_string())?;
        f.set_len(96 << 20).map_err(|e| e.to_string())?;
        let path = |p: &Path| p.display().to_string();
        run("/usr/sbin/mkfs.ext4", &["-q", "-F", &path(&image)])?;
        run("mount", &["-o", "loop", &path(&image), &path(&mount)])?;
        Ok(FreezableFs { mount, _dir: dir })
    }
    /// `fsfreeze -f`: from now on every write and fsync on it blocks.
    pub fn freeze(&self) {
        run(
            "/usr/sbin/fsfreeze",
            &["-f", &self.mount.display().to_string()],
        )
        .unwrap();
    }
    /// `fsfreeze -u`: blocked writes complete.
    pub fn thaw(&self) {
        let _ = run(
            "/usr/sbin/fsfreeze",
            &["-u", &self.mount.display().to_string()],
        );
    }
}

impl Drop for FreezableFs {
    fn drop(&mut self) {
        self.thaw();
        let _ = run("umount", &["-l", &self.mount.display().to_string()]);
    }
}
