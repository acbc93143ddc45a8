//! Fleet mode with real processes: replica and deliverer processes (`fleet-child`), a
//! real `redis-server`, the emulator over loopback, and kill -9, SIGSTOP, Redis restarts
//! and 429 storms. Each test prints a `FIGURES` line: recorded, delivered, duplicated,
//! lost (0), and Kinde requests per window.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kinde_meter::Config;
use kinde_meter::fleet::FleetStats;
use kinde_meter_emulator::{Emulator, Faults};
use kinde_meter_workspace::EmulatorExt;
use kinde_meter_workspace::fleet::{meter_requests, stats, wait_delivered, wait_sending, whole};
use kinde_meter_workspace::redis::{Persistence, RedisServer};

const CHILD: &str = env!("CARGO_BIN_EXE_fleet-child");
const NAMESPACE: &str = "chaos";

/// A `fleet-child` process and the lines it printed.
struct Process {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Process {
    fn spawn(role: &str, emulator: &Emulator, redis: &RedisServer, extra: &[String]) -> Self {
        let mut child = Command::new(CHILD)
            .arg(role)
            .arg(emulator.base_url())
            .arg(emulator.client_id())
            .arg(emulator.client_secret())
            .arg(redis.url())
            .arg(NAMESPACE)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn fleet-child");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    fn replica(
        emulator: &Emulator,
        redis: &RedisServer,
        keys: (u64, u64),
        rounds: u64,
        extra: &[&str],
    ) -> Self {
        let mut args = vec![keys.0.to_string(), keys.1.to_string(), rounds.to_string()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Self::spawn("replica", emulator, redis, &args)
    }

    fn deliverer(emulator: &Emulator, redis: &RedisServer, extra: &[&str]) -> Self {
        let args: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let mut p = Self::spawn("deliver", emulator, redis, &args);
        p.wait_for("delivering", Duration::from_secs(20));
        p
    }

    /// Waits for a line starting with `prefix`; returns it.
    fn wait_for(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.seen.iter().find(|l| l.starts_with(prefix)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    assert!(!line.starts_with("error"), "fleet-child: {line}");
                    self.seen.push(line);
                }
                Err(_) => panic!("no `{prefix}` line within {timeout:?}; saw {:?}", self.seen),
            }
        }
    }

    /// Reads what it printed until it exits.
    fn finish(&mut self) -> &[String] {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(60)) {
            self.seen.push(line);
        }
        let _ = self.child.wait();
        &self.seen
    }

    /// The usage its `round ... recorded <v>` lines say was recorded.
    fn recorded(&mut self) -> u64 {
        self.finish();
        self.seen
            .iter()
            .filter_map(|l| l.strip_prefix("round "))
            .map(|l| {
                l.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .expect("round line")
            })
            .sum()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn signal(&self, signal: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Asks a deliverer to stop and waits for it.
    fn stop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "stop");
        }
        self.wait_for("stopped", Duration::from_secs(30));
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(emulator: &Emulator, redis: &RedisServer) -> Config {
    emulator
        .config()
        .fleet(redis.url())
        .fleet_namespace(NAMESPACE)
}

/// How exactly a case can know its duplicates.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Duplicates {
    /// Every duplicate is an attempt the emulator applied without a clean answer: the
    /// ledger is recorded plus those, exactly.
    AsTheEmulatorSaw,
    /// A process was killed or frozen after a clean answer reached its socket: the
    /// emulator cannot tell, so the excess is bounded by what the fleet reported
    /// ambiguous.
    WithinAmbiguous,
}

/// Checks conservation (nothing lost; the excess is duplicates the fleet reported) and
/// prints the case's figures.
fn check(
    case: &str,
    emulator: &Emulator,
    recorded: u64,
    windows: u64,
    s: &FleetStats,
    duplicates: Duplicates,
) {
    let ledger = whole(emulator.ledger_sum());
    let lost = recorded.saturating_sub(ledger);
    let duplicated = ledger.saturating_sub(recorded);
    let requests = meter_requests(emulator);
    println!(
        "FIGURES {case}: recorded={recorded} delivered={} duplicated={duplicated} ambiguous={} lost={lost} \
         requests={requests} windows={windows} requests_per_window={:.1} expired_leases={} throttled={}",
        s.delivered,
        s.ambiguous,
        requests as f64 / windows.max(1) as f64,
        s.expired_leases,
        s.throttled,
    );
    assert_eq!(lost, 0, "{case}: usage lost");
    assert_eq!(
        s.delivered, recorded,
        "{case}: the fleet's own count of what Kinde accepted"
    );
    if duplicates == Duplicates::AsTheEmulatorSaw {
        assert_eq!(
            duplicated,
            whole(emulator.ambiguous_applied()),
            "{case}: duplicates"
        );
    }
    assert!(
        duplicated <= s.ambiguous,
        "{case}: duplicates beyond what was reported ambiguous"
    );
    assert_eq!(
        s.rejected + s.unsent,
        0,
        "{case}: nothing rejected or handed back"
    );
}

/// Runs `deliverers` deliverer processes and `replicas` replica processes that each
/// record `keys` keys for `rounds` rounds, on a Redis of their own, until the fleet has
/// delivered everything. Returns what was recorded, and the fleet's figures.
fn run_fleet(
    emulator: &Emulator,
    deliverers: usize,
    replicas: usize,
    keys: u64,
    rounds: u64,
    gather_ms: &str,
) -> (u64, FleetStats) {
    let redis = RedisServer::start(Persistence::None);
    let gather = ["--gather-ms", gather_ms];
    let mut deliverers: Vec<Process> = (0..deliverers)
        .map(|_| Process::deliverer(emulator, &redis, &gather))
        .collect();
    let mut replicas: Vec<Process> = (0..replicas)
        .map(|_| Process::replica(emulator, &redis, (0, keys), rounds, &gather))
        .collect();
    let recorded = replicas.iter_mut().map(Process::recorded).sum();
    let s = wait_delivered(&config(emulator, &redis), emulator, Duration::from_secs(60));
    for d in &mut deliverers {
        d.stop();
    }
    (recorded, s)
}

#[test]
fn conservation_across_three_replica_processes_and_two_deliverers() {
    let emulator = Emulator::start().expect("emulator");
    emulator.set_faults(
        Faults::none()
            .drop_after_apply(0.05)
            .status_503(0.05)
            .status_500_after_apply(0.03),
    );
    let (recorded, s) = run_fleet(&emulator, 2, 3, 50, 8, "300");
    check(
        "conservation (3 replicas, 2 deliverers, Kinde faults)",
        &emulator,
        recorded,
        8,
        &s,
        Duplicates::AsTheEmulatorSaw,
    );
    assert_eq!(
        s.handoffs,
        3 * 50 * 8,
        "each replica handed off each key once per round"
    );
}

/// A short lease, and a request timeout inside it.
const LEASE: [&str; 6] = [
    "--lease-ms",
    "3000",
    "--request-timeout-ms",
    "2000",
    "--gather-ms",
    "100",
];

/// One replica's window of `keys` keys handed off, and a deliverer whose sends hang at
/// Kinde (1.5 s each): returns them with what was recorded, once a send is in flight.
fn a_deliverer_in_a_hanging_send(keys: u64) -> (Emulator, RedisServer, u64, Process) {
    let emulator = Emulator::start().expect("emulator");
    emulator.set_faults(Faults::none().latency(Duration::from_millis(1500)));
    let redis = RedisServer::start(Persistence::None);
    let mut replica = Process::replica(&emulator, &redis, (0, keys), 1, &LEASE);
    let recorded = replica.recorded();
    let deliverer = Process::deliverer(&emulator, &redis, &LEASE);
    wait_sending(&emulator, Duration::from_secs(20));
    (emulator, redis, recorded, deliverer)
}

#[test]
fn kill_9_of_a_deliverer_mid_send() {
    let (emulator, redis, recorded, mut victim) = a_deliverer_in_a_hanging_send(20);
    victim.kill9();
    emulator.set_faults(Faults::none());
    let mut heir = Process::deliverer(&emulator, &redis, &LEASE);
    let s = wait_delivered(
        &config(&emulator, &redis),
        &emulator,
        Duration::from_secs(60),
    );
    heir.stop();
    check(
        "kill -9 of a deliverer mid-send",
        &emulator,
        recorded,
        1,
        &s,
        Duplicates::WithinAmbiguous,
    );
    assert!(
        s.expired_leases >= 1,
        "the dead deliverer's claims were taken back by lease: {s:?}"
    );
}

#[test]
fn kill_9_of_a_replica_between_hand_off_and_reply() {
    let emulator = Emulator::start().expect("emulator");
    let redis = RedisServer::start(Persistence::None);
    let journal = redis.dir().join("replica-journal");
    let journal = journal.to_str().expect("utf-8 path");
    let mut victim = Process::replica(
        &emulator,
        &redis,
        (0, 20),
        3,
        &[
            "--journal",
            journal,
            "--kill-after-handoffs",
            "5",
            "--gather-ms",
            "100",
        ],
    );
    let recorded = victim.recorded();
    assert!(
        victim.seen.iter().any(|l| l == "killing"),
        "{:?}",
        victim.seen
    );
    // The next start on the same journal hands off again what the dead one had not heard
    // back about; Redis already holds some of it.
    let mut heir = Process::replica(
        &emulator,
        &redis,
        (0, 20),
        0,
        &["--journal", journal, "--gather-ms", "100"],
    );
    heir.finish();
    let handoffs = heir.wait_for("handoffs", Duration::from_secs(1));
    let already: u64 = handoffs
        .split(' ')
        .nth(2)
        .and_then(|v| v.parse().ok())
        .expect("handoffs line");
    assert!(
        already >= 1,
        "the replayed hand-off that Redis had applied was not applied again: {handoffs}"
    );
    let mut deliverer = Process::deliverer(&emulator, &redis, &["--gather-ms", "100"]);
    let s = wait_delivered(
        &config(&emulator, &redis),
        &emulator,
        Duration::from_secs(60),
    );
    deliverer.stop();
    check(
        "kill -9 of a replica between hand-off and reply",
        &emulator,
        recorded,
        3,
        &s,
        Duplicates::AsTheEmulatorSaw,
    );
    assert_eq!(
        whole(emulator.ledger_sum()),
        recorded,
        "no duplicate: Kinde had no fault"
    );
}

/// A deliverer frozen (SIGSTOP) while its sends hang loses its lease; another takes the
/// flights over, and the frozen one's late answers are fenced off.
#[test]
fn lease_expiry_while_a_send_hangs() {
    let (emulator, redis, recorded, mut frozen) = a_deliverer_in_a_hanging_send(12);
    frozen.signal(libc::SIGSTOP);
    emulator.set_faults(Faults::none());
    let mut heir = Process::deliverer(&emulator, &redis, &LEASE);
    let config = config(&emulator, &redis);
    let s = wait_delivered(&config, &emulator, Duration::from_secs(60));
    frozen.signal(libc::SIGCONT);
    // Its late settles must change nothing.
    std::thread::sleep(Duration::from_millis(1500));
    frozen.stop();
    heir.stop();
    let after = stats(&config);
    assert_eq!(
        (
            after.delivered_records,
            after.ambiguous_records,
            after.unsent_records
        ),
        (s.delivered_records, s.ambiguous_records, s.unsent_records),
        "a settle by the deliverer that lost its lease counted"
    );
    check(
        "lease expiry while a send hangs",
        &emulator,
        recorded,
        1,
        &after,
        Duplicates::WithinAmbiguous,
    );
    assert!(after.expired_leases >= 1, "{after:?}");
}

#[test]
fn a_429_storm_closes_one_gate_for_the_whole_fleet() {
    let emulator = Emulator::start().expect("emulator");
    emulator.throttle_for(Duration::from_secs(2));
    let (recorded, s) = run_fleet(&emulator, 2, 2, 30, 4, "100");
    let throttled = emulator.counts().throttled;
    check(
        "429 storm",
        &emulator,
        recorded,
        4,
        &s,
        Duplicates::AsTheEmulatorSaw,
    );
    assert!(throttled >= 1, "the storm was not seen");
    // While the gate is closed nobody sends: the 429s are the sends already in flight
    // when the first came back (4 per deliverer at most), not one per retry per entry.
    assert!(
        throttled <= 8,
        "{throttled} requests were sent into a closed gate"
    );
}
