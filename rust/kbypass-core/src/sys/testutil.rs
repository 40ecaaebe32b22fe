//! Test helpers: root check, C layout probes, throwaway network namespaces with veth pairs.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether the tests run as root (they then must exercise the kernel paths).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Compile `src` with the system C compiler and return its stdout, or `None` when no compiler
/// or headers are available (the caller skips with an "optional:" reason).
pub fn compile_and_run_c(name: &str, src: &str) -> Option<String> {
    let dir = std::env::temp_dir().join(format!("kbx-c-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let c = dir.join("probe.c");
    let exe = dir.join("probe");
    std::fs::write(&c, src).ok()?;
    let ok = Command::new("cc")
        .arg("-o")
        .arg(&exe)
        .arg(&c)
        .output()
        .ok()?
        .status
        .success();
    let out = if ok {
        Command::new(&exe).output().ok()
    } else {
        None
    };
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A network namespace `kbx-<pid>-<n>` holding a veth pair `kbx0`/`kbx1` (198.18.x.1/.2, MACs
/// 02:00:00:00:00:01/02), removed on drop even when the test panics.
pub struct VethNs {
    /// Namespace name.
    pub name: String,
    /// Third octet of the /24 in 198.18.0.0/15 (kbx0 = .1, kbx1 = .2).
    pub net: u8,
}

impl VethNs {
    /// Create the namespace and the veth pair, both ends up.
    pub fn new() -> Result<Self, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("kbx-{}-{n}", std::process::id());
        ip(&["netns", "add", &name])?;
        let me = VethNs {
            name,
            net: 100 + (n % 100) as u8,
        };
        let ns = me.name.as_str();
        ip(&[
            "-n", ns, "link", "add", "kbx0", "type", "veth", "peer", "name", "kbx1",
        ])?;
        ip(&[
            "-n",
            ns,
            "link",
            "set",
            "kbx0",
            "address",
            "02:00:00:00:00:01",
        ])?;
        ip(&[
            "-n",
            ns,
            "link",
            "set",
            "kbx1",
            "address",
            "02:00:00:00:00:02",
        ])?;
        let a = format!("198.18.{}.1/24", 100 + (n % 100));
        let b = format!("198.18.{}.2/24", 100 + (n % 100));
        ip(&["-n", ns, "addr", "add", &a, "dev", "kbx0"])?;
        ip(&["-n", ns, "addr", "add", &b, "dev", "kbx1"])?;
        ip(&["-n", ns, "link", "set", "kbx0", "up"])?;
        ip(&["-n", ns, "link", "set", "kbx1", "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(me)
    }

    /// Run `f` on a fresh thread that has entered this namespace (setns affects only the thread).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter_netns(&path);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

/// Move the calling thread into the network namespace at `path` (panics on failure: test helper).
pub fn enter_netns(path: &str) {
    let f = std::fs::File::open(path).expect("open netns");
    use std::os::fd::AsRawFd;
    // SAFETY: a valid namespace fd; CLONE_NEWNET only changes this thread's network namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
}

impl Drop for VethNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
