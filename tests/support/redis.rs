//! A real `redis-server` on 127.0.0.1 with a directory of its own, for the fleet tests.
//!
//! Missing `redis-server` is a failure that says how to install it, never a skip: CI
//! installs it (`.ci/run`), and a test that silently passed without it would prove
//! nothing.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to install the server, for the error that says it is missing.
pub const INSTALL_HINT: &str = "redis-server is not installed: install it (Debian/Ubuntu: `apt-get install -y redis-server`; macOS: \
     `brew install redis`) and run again";

/// Whether the server keeps what it holds across a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// No snapshot, no AOF: a restart loses everything.
    None,
    /// `appendonly yes`, `appendfsync always`: every write is on disk before Redis
    /// answers.
    Aof,
}

/// A `redis-server` child process, killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    persistence: Persistence,
}

impl RedisServer {
    /// Starts a server on a free loopback port, in a new temporary directory.
    ///
    /// # Panics
    ///
    /// When `redis-server` is missing or does not start: the test cannot run.
    pub fn start(persistence: Persistence) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "kinde-meter-redis-{}-{:08x}",
            std::process::id(),
            fastrand_u32()
        ));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let port = free_port();
        let mut server = Self {
            child: None,
            port,
            dir,
            persistence,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(&self.dir)
            .arg("--save")
            .arg("")
            .arg("--daemonize")
            .arg("no")
            .arg("--protected-mode")
            .arg("yes")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match self.persistence {
            Persistence::None => {
                command.arg("--appendonly").arg("no");
            }
            Persistence::Aof => {
                command
                    .arg("--appendonly")
                    .arg("yes")
                    .arg("--appendfsync")
                    .arg("always");
            }
        }
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL_HINT}"),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on 127.0.0.1:{} within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it answers `PING` with `PONG` (it may be loading its AOF before).
    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut reply = [0u8; 16];
        matches!(stream.read(&mut reply), Ok(n) if reply[..n].starts_with(b"+PONG"))
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Its directory (the AOF lives here).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills it with SIGKILL (nothing is flushed that was not already on disk).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory, after [`RedisServer::kill`].
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nothing listens on now (redis-server cannot pick its own and say it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

fn fastrand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}
