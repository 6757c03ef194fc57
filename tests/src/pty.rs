//! Pseudo-terminal pairs standing in for USB serial adapters, for every test that feeds the
//! gateway's serial input (the gateway's own serial tests and the end-to-end ones), so there is
//! one way to make them.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};

/// One pseudo-terminal pair in raw mode (no echo, no line editing, 8-bit clean). The test
/// writes the "sensor" side on `master`; `path` is the terminal the gateway opens; `slave` is
/// kept open so the line stays up until the pair is dropped (and can be asked how many bytes
/// wait unread).
pub struct Pty {
    pub master: File,
    pub slave: OwnedFd,
    pub path: PathBuf,
}

/// A new raw pseudo-terminal pair. Panics if the system has none to give (a test cannot run
/// without it).
pub fn pty() -> Pty {
    let pair = nix::pty::openpty(None, None).expect("openpty");
    for fd in [&pair.master, &pair.slave] {
        let mut t = tcgetattr(fd).expect("tcgetattr on a new pty");
        cfmakeraw(&mut t);
        tcsetattr(fd, SetArg::TCSANOW, &t).expect("tcsetattr on a new pty");
    }
    let path = nix::unistd::ttyname(&pair.slave).expect("ttyname of a new pty");
    Pty {
        master: File::from(pair.master),
        slave: pair.slave,
        path,
    }
}

/// Waits until another process has opened the terminal behind `master` (the tests close their
/// slave handle first, so a hang-up on the master means nobody has it open), at most 20 s, then
/// another 300 ms because the gateway flushes the terminal right after opening it. Panics when
/// nobody opens it.
pub fn wait_for_reader(master: &File) {
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut pfd = nix::libc::pollfd {
            fd: master.as_raw_fd(),
            events: nix::libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { nix::libc::poll(&mut pfd, 1, 0) };
        if n >= 0 && pfd.revents & nix::libc::POLLHUP == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never opened the pty"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
}
