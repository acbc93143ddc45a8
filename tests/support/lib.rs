//! Helpers shared by the workspace's integration tests, examples and benchmarks.
//! Not published.

pub mod customers;
pub mod fleet;
pub mod logs;
pub mod redis;
pub mod reporter;

use kinde_meter::Config;
use kinde_meter::api::BuildError;
use kinde_meter::api::{Client, Credentials, Domain};
use kinde_meter_emulator::Emulator;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Ready-made kinde-meter connections to a [`Emulator`] (which knows nothing of
/// kinde-meter: it speaks HTTP only).
///
/// ```
/// use kinde_meter_emulator::Emulator;
/// use kinde_meter_workspace::EmulatorExt;
///
/// let emulator = Emulator::start()?;
/// let config = emulator.config().flush_interval(std::time::Duration::from_millis(100));
/// assert_eq!(config.domain().as_str(), emulator.base_url());
/// # Ok::<(), std::io::Error>(())
/// ```
pub trait EmulatorExt {
    /// The emulator's base URL as a [`Domain`] (`http://127.0.0.1:PORT`, allowed because
    /// it is loopback).
    fn domain(&self) -> Domain;

    /// Client credentials the emulator accepts.
    fn credentials(&self) -> Credentials;

    /// A reporter configuration pointed at the emulator (other settings at their
    /// defaults: adjust them with the `Config` setters).
    fn config(&self) -> Config;

    /// An API client pointed at the emulator.
    fn client(&self) -> Result<Client, BuildError>;
}

impl EmulatorExt for Emulator {
    fn domain(&self) -> Domain {
        // The emulator's own address always parses.
        Domain::parse(&self.base_url()).unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn credentials(&self) -> Credentials {
        Credentials::client_credentials(self.client_id(), self.client_secret())
    }

    fn config(&self) -> Config {
        Config::new(self.domain(), self.credentials())
    }

    fn client(&self) -> Result<Client, BuildError> {
        Client::new(self.domain(), self.credentials())
    }
}

/// A variable lookup over a fixed table, for `Config::from_env_with`: the process
/// environment is never read or changed.
pub fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let table: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| {
        table
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

/// A server on `127.0.0.1` that answers every request with the same hand-written bytes
/// and closes the connection: for answers no well-behaved server gives (garbage,
/// oversized bodies, redirects). Stops when dropped.
#[derive(Debug)]
pub struct RawHttpServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RawHttpServer {
    /// Starts answering with `response`, written as is.
    pub fn start(response: impl Into<Vec<u8>>) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let response = response.into();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, stopped) = (Arc::clone(&requests), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    // Errors are the client's doing (it may hang up on a long answer).
                    let _ = answer(conn, &response, &log);
                }
            }
        });
        Ok(Self {
            addr,
            requests,
            stop,
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far (head and body, as text), in arrival order.
    pub fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn answer(mut conn: TcpStream, response: &[u8], log: &Mutex<Vec<String>>) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while request.len() < head_end + length {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    log.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(String::from_utf8_lossy(&request).into_owned());
    conn.write_all(response)?;
    conn.flush()?;
    conn.shutdown(Shutdown::Write)
}

impl Drop for RawHttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
