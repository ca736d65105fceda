//! Long-running child processes (etcd, kube-apiserver, MinIO) that never
//! outlive the process that started them.
//!
//! Three layers make sure of that: [`Daemon`] kills its process when dropped;
//! an `atexit` hook kills whatever is still registered when the parent exits
//! normally (a test binary's shared environment lives in a static that is
//! never dropped); and every child is started with `PR_SET_PDEATHSIG`, so
//! even a parent killed with SIGKILL takes its children along.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, Once, mpsc};
use std::time::{Duration, Instant};

use sluice_core::sync::lock;

use super::Error;

/// A running child process whose output goes to a log file.
pub struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts `command`, writing its stdout and stderr to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Result<Self, Error> {
        let io = |source| Error::Io {
            what: format!("creating {}", log.display()),
            source,
        };
        let out = File::create(log).map_err(io)?;
        let err = out.try_clone().map_err(io)?;
        command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = spawn_from_keeper(command).map_err(|source| Error::Spawn {
            name: name.to_owned(),
            source,
        })?;
        register(child.id());
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the end of the log if the process has exited.
    pub fn check_running(&mut self) -> Result<(), Error> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::Exited {
                name: self.name.clone(),
                status: status.to_string(),
                log_tail: log_tail(&self.log),
            }),
            Err(source) => Err(Error::Io {
                what: format!("waiting for {}", self.name),
                source,
            }),
        }
    }

    /// Asks the process to stop (SIGTERM) and waits up to `grace` for it
    /// to exit; dropping the daemon afterwards kills whatever is left.
    pub fn terminate(&mut self, grace: Duration) {
        // SAFETY: kill(2) on a child we started and have not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (SIGKILL), as a crash or the OOM killer would,
    /// and reaps it.
    pub fn kill(&mut self) {
        kill_group(self.child.id());
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to exit by itself; its exit
    /// status, or None if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `ready` every 50 ms until it answers true, the process exits,
    /// or `timeout` passes.
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            if ready() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    name: self.name.clone(),
                    timeout,
                    log_tail: log_tail(&self.log),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        unregister(self.child.id());
        kill_group(self.child.id());
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago. Another process may take it
/// before the caller binds it; callers retry with a fresh port when their
/// server fails to start.
pub fn free_port() -> Result<u16, Error> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|source| Error::Io {
            what: "finding a free loopback port".into(),
            source,
        })
}

/// Whether a plain-HTTP GET of `path` on a loopback port answers 200.
pub fn http_ok(port: u16, path: &str) -> bool {
    http_get(port, path).is_some_and(|(status, _)| status == 200)
}

/// A plain-HTTP GET of `path` on a loopback port: the status and the body,
/// or None when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http(port, "GET", path, &[], b"")
}

/// A plain-HTTP request on a loopback port, with extra `headers` and a
/// `body`: the status and the body of the response, or None when nothing
/// answers.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String)> {
    http_at(
        SocketAddr::from(([127, 0, 0, 1], port)),
        method,
        path,
        headers,
        body,
    )
}

/// [`http`] to any address of this machine.
pub fn http_at(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut request = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    // The server may answer (413) before it read a large body.
    let _ = stream.write_all(&bytes);
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())?;
    Some((status, body))
}

/// The last 40 lines of a log file, for error messages.
pub fn log_tail(log: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(log) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    format!("--- end of {} ---\n{tail}", log.display())
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
/// not the process. Test threads come and go, so children are forked by one
/// thread that lives as long as the process.
fn spawn_from_keeper(command: Command) -> std::io::Result<Child> {
    static KEEPER: Mutex<Option<mpsc::Sender<SpawnRequest>>> = Mutex::new(None);
    let mut keeper = lock(&KEEPER);
    let requests = keeper.get_or_insert_with(|| {
        let (send, receive) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testenv-keeper".into())
            .spawn(move || {
                // The sender lives in a static, so this loop ends only with
                // the process.
                for (mut command, reply) in receive {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("starting the testenv keeper thread");
        send
    });
    let (reply, answer) = mpsc::channel();
    requests
        .send((command, reply))
        .map_err(|_| std::io::Error::other("testenv keeper thread is gone"))?;
    drop(keeper);
    answer
        .recv()
        .map_err(|_| std::io::Error::other("testenv keeper thread is gone"))?
}

/// Live children (by pid), clean-ups and directories to remove at exit.
static LIVE: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());
static HOOKS: Mutex<Vec<fn()>> = Mutex::new(Vec::new());
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static AT_EXIT: Once = Once::new();

fn register(pid: u32) {
    install_exit_hook();
    lock(&LIVE).insert(pid);
}

fn unregister(pid: u32) {
    lock(&LIVE).remove(&pid);
}

/// Runs `hook` at exit, once the children are killed and before the
/// directories are removed.
pub fn run_at_exit(hook: fn()) {
    install_exit_hook();
    lock(&HOOKS).push(hook);
}

/// Removes `dir` at exit unless it is gone by then.
pub fn remove_at_exit(dir: &Path) {
    install_exit_hook();
    lock(&DIRS).push(dir.to_owned());
}

fn install_exit_hook() {
    AT_EXIT.call_once(|| {
        // SAFETY: registering a plain extern "C" function.
        unsafe {
            libc::atexit(at_exit);
        }
    });
}

extern "C" fn at_exit() {
    if let Ok(live) = LIVE.lock() {
        live.iter().copied().for_each(kill_group);
    }
    if let Ok(hooks) = HOOKS.lock() {
        hooks.iter().for_each(|hook| hook());
    }
    if let Ok(dirs) = DIRS.lock() {
        for dir in dirs.iter() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Children lead their own process group; kill the whole group.
fn kill_group(pid: u32) {
    // SAFETY: kill(2) on the group of a child we started and have not reaped.
    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
    }
}
