//! A kill -9 campaign against the durable journal: "a crash, a kill or a deploy loses at
//! most the open window".
//!
//! A child process (`tests/journal/child.rs`) records a known workload round after round
//! with a journal, and prints `durable <round>` once a round's flush says its window is
//! on disk. The test kills it with SIGKILL at a random moment, over and over, each new
//! child on the same journal directory starting from the round after the last one
//! printed durable, while the emulator answers with faults and random latency (so kills
//! land in the middle of requests, and some attempts are applied without the client
//! knowing). A quarter of the kills land while the child starts, adopting and replaying
//! what the dead ones left. Then, faults off, a child runs the remaining rounds to the
//! end, and one more starts and shuts down with nothing to record (a drain run).
//!
//! What Kinde must then hold, per key:
//!
//! - every round at least once: a round printed durable was on disk, so no kill loses it,
//!   and the others were recorded again by the next child. Checked on the usage of
//!   distinct idempotency keys, so a duplicate cannot hide a loss;
//! - at most that, plus for each kill the round the child was in the middle of (partly
//!   flushed by the timer before the kill, recorded again after it), plus the values the
//!   children reported as `MeterError::Ambiguous`; under distinct idempotency keys, at
//!   most that plus the open rounds (a replayed record keeps its key);
//! - and a record Kinde applied twice (same idempotency key) must have been reported
//!   ambiguous by some child. Nothing may be reported unsent, and no other error.
//!
//! A kill loses what the process had not yet written; what it wrote stays in the page
//! cache. So this checks that the journal writes before it acknowledges and that a start
//! takes over what dead processes left, not that it syncs (a power cut is another test).
//!
//! A second campaign runs two children at once on one journal directory, each recording
//! keys of its own, and kills one of them at a time (which one drawn at random) while the
//! other keeps running: "several processes may share a directory", "a start adopts the
//! runs whose lock is free", "two processes never deliver the same record" and "a live
//! process's run is never touched". Each killed child is restarted at once from the round
//! after its own last durable one. A dead run goes to whichever start opens the journal
//! first, so a child may take over the other's dead runs (one left by a restart killed
//! before it adopted, or one the other's restart had not reached yet): what is checked is
//! per key, never per child. Then, faults off, the child left running is told to finish a
//! few rounds on and the other one is restarted to the end, both at once, then one drain
//! run. The same checks per key hold; a start that took a live process's run would show as
//! records delivered by two processes and never reported ambiguous, or as usage lost (the
//! live process's later writes going to files the adopter removes).
//!
//! `KINDE_METER_CAMPAIGN_SEED` replays a campaign's kill times and fault draws (the seed
//! is printed; timing still varies from run to run), `KINDE_METER_CAMPAIGN_KILLS` sets
//! the number of kills (of each campaign).

#[path = "journal/plan.rs"]
mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kinde_meter_emulator::{Counts, Emulator, Faults};

const CHILD: &str = env!("CARGO_BIN_EXE_journal-child");
/// Kills by default: some 0.3 s each (a kill lands 0 to 600 ms after its spawn, or 0 to
/// 150 ms), so the campaign takes under a minute.
const DEFAULT_KILLS: usize = 150;
/// Kills by default in the campaign of two children: some 0.25 s each (a kill lands 0 to
/// 600 ms, or 0 to 150 ms, after the one before), so it takes under 40 s.
const DEFAULT_KILLS_OF_TWO: usize = 120;
/// Keys per child.
const KEYS: u64 = 6;
/// Longest time between a spawn and its kill (between two kills, with two children).
const MAX_LIFETIME_MS: u64 = 600;
/// Longest time between a spawn and an early kill, one that lands while the child starts.
const EARLY_KILL_MS: u64 = 150;
/// Rounds a killed child is given: more than it can record before its kill.
const ROUNDS_PER_RUN: u64 = 1_000;
/// Rounds the final child records past the last one any child began.
const FINAL_EXTRA_ROUNDS: u64 = 3;
/// What a child that is not killed may take (its shutdown deadline is 60 s).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// xorshift64*: the kill times and the emulator's seed, reproducible from one number.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_number(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?}: {e}")),
    )
}

/// `KINDE_METER_CAMPAIGN_SEED`, or one drawn from the clock.
fn campaign_seed() -> u64 {
    env_number("KINDE_METER_CAMPAIGN_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    })
}

/// `KINDE_METER_CAMPAIGN_KILLS`, or `default`.
fn campaign_kills(default: usize) -> usize {
    env_number("KINDE_METER_CAMPAIGN_KILLS").map_or(default, |k| k as usize)
}

/// The emulator of a campaign, answering with faults and random latency.
fn faulty_emulator(rng: &mut Rng) -> Emulator {
    let faults = Faults::none()
        .status_503(0.08)
        .drop_before_apply(0.04)
        .status_500_after_apply(0.04)
        .drop_after_apply(0.04)
        .latency(Duration::from_millis(10))
        .latency_jitter(Duration::from_millis(400));
    Emulator::builder()
        .seed(rng.next())
        .faults(faults)
        .start()
        .expect("emulator")
}

/// How long to wait before the next kill: a quarter of the time at most
/// [`EARLY_KILL_MS`] (while the child starts: adopting and replaying what the dead ones
/// left), otherwise at most [`MAX_LIFETIME_MS`].
fn kill_delay(rng: &mut Rng) -> Duration {
    let ms = if rng.below(4) == 0 {
        rng.below(EARLY_KILL_MS + 1)
    } else {
        rng.below(MAX_LIFETIME_MS + 1)
    };
    Duration::from_millis(ms)
}

/// The journal directory: removed at the end, kept (and named) if the test fails.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str, seed: u64) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "kinde-meter-{name}-{}-{seed}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("create the journal directory");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "journal directory kept for inspection: {}",
                self.0.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// What one child said and how it ended.
#[derive(Debug)]
struct Output {
    lines: Vec<String>,
    stderr: String,
    status: ExitStatus,
    /// Whether it had exited on its own before being killed.
    exited_before_kill: bool,
    /// From its spawn to its reaping.
    span: (Instant, Instant),
}

/// A running child: killed and reaped when dropped, so a failing test leaves none behind.
struct Running {
    child: Child,
    spawned: Instant,
    stdin: Option<ChildStdin>,
    /// Set once it has printed `started`.
    started: Arc<AtomicBool>,
    stdout: Option<JoinHandle<Vec<String>>>,
    stderr: Option<JoinHandle<String>>,
}

impl Running {
    /// A child recording rounds `first..=last` of keys `first_key..first_key + KEYS`.
    fn spawn(emulator: &Emulator, journal: &Path, first: u64, last: u64, first_key: u64) -> Self {
        let spawned = Instant::now();
        let mut child = Command::new(CHILD)
            .arg(emulator.base_url())
            .arg(emulator.client_id())
            .arg(emulator.client_secret())
            .arg(journal)
            .arg(first.to_string())
            .arg(last.to_string())
            .arg(KEYS.to_string())
            .arg(first_key.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the journal child");
        // Read as it comes, so a chatty child never blocks on a full pipe.
        let out: ChildStdout = child.stdout.take().expect("piped stdout");
        let err: ChildStderr = child.stderr.take().expect("piped stderr");
        let stdin = child.stdin.take();
        let started = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&started);
        let stdout = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line == "started" {
                    seen.store(true, Ordering::SeqCst);
                }
                lines.push(line);
            }
            lines
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(err).read_to_string(&mut s);
            s
        });
        Self {
            child,
            spawned,
            stdin,
            started,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    /// Whether it has printed `started` (its journal opened, the dead runs adopted).
    fn has_started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    /// Tells it to record `rounds` more rounds after the one in progress, then shut down.
    fn finish(&mut self, rounds: u64) {
        let stdin = self.stdin.as_mut().expect("piped stdin");
        stdin
            .write_all(format!("finish {rounds}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("tell the child to finish");
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then everything it printed.
    fn kill(mut self) -> Output {
        let exited_before_kill = matches!(self.child.try_wait(), Ok(Some(_)));
        let _ = self.child.kill();
        let status = self.child.wait().expect("reap the child");
        self.collect(status, exited_before_kill)
    }

    /// Waits for it to exit on its own; kills it and fails past `timeout`.
    fn wait(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                return self.collect(status, true);
            }
            if Instant::now() >= deadline {
                let out = self.kill();
                panic!(
                    "the child did not finish within {timeout:?} (a hang?); it printed:\n{}\nstderr:\n{}",
                    out.lines.join("\n"),
                    out.stderr
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn collect(&mut self, status: ExitStatus, exited_before_kill: bool) -> Output {
        self.stdin = None;
        let lines = self
            .stdout
            .take()
            .map(|h| h.join().expect("stdout reader"))
            .unwrap_or_default();
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().expect("stderr reader"))
            .unwrap_or_default();
        Output {
            lines,
            stderr,
            status,
            exited_before_kill,
            span: (self.spawned, Instant::now()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// One `ambiguous` line.
#[derive(Debug, Clone)]
struct Ambiguous {
    idempotency_key: String,
    agreement: String,
    value: u64,
}

/// One child of a campaign (the one child, or one of two on the same journal): its keys,
/// and what its runs said about its rounds. Its runs record rounds one after another;
/// what is checked is per key, so which process delivered a record does not matter.
#[derive(Debug, Default)]
struct Lane {
    /// It records keys `first_key..first_key + KEYS`.
    first_key: u64,
    kills: usize,
    /// The last round one of its runs printed durable.
    last_durable: Option<u64>,
    /// The highest round one of its runs began.
    max_begun: Option<u64>,
    /// Per kill, the round the run had begun and not printed durable.
    open_rounds: Vec<u64>,
    /// The last round of its final run, once it has finished.
    last: Option<u64>,
}

impl Lane {
    fn keys(&self) -> Range<u64> {
        self.first_key..self.first_key + KEYS
    }

    fn next_round(&self) -> u64 {
        self.last_durable.map_or(0, |r| r + 1)
    }

    fn records(&self, agreement: &str) -> bool {
        self.keys().any(|k| plan::agreement(k) == agreement)
    }
}

/// One run's lines and lifetime, to explain a failure.
#[derive(Debug)]
struct RunLog {
    /// Its child, or none for the drain run.
    lane: Option<usize>,
    lines: Vec<String>,
    span: (Instant, Instant),
}

/// What the children said, over the whole campaign.
#[derive(Debug, Default)]
struct Campaign {
    runs: usize,
    kills: usize,
    /// Kills that landed before the child's reporter was running.
    kills_before_start: usize,
    lanes: Vec<Lane>,
    ambiguous: Vec<Ambiguous>,
    /// `ambiguous` lines a child printed about the other child's keys: a record it resumed
    /// from a run of the other child's that it adopted.
    ambiguous_of_the_other: usize,
    /// Spawns while the other child had not printed `started` yet (both starting: either
    /// may adopt the other's dead run).
    spawns_beside_a_start: usize,
    /// Partial entries found at the end of a journal file (a kill in the middle of a write).
    torn: usize,
    /// Lines and outcomes that must not happen, with the run they came from.
    problems: Vec<String>,
    /// Every run's lines and lifetime, to explain a failure.
    logs: Vec<RunLog>,
}

/// What one run's lines say about its rounds.
#[derive(Debug, Default)]
struct RunRounds {
    started: bool,
    /// The round begun and not printed durable, if any.
    open: Option<u64>,
    durable: Vec<u64>,
    done: Option<bool>,
}

impl Campaign {
    /// A campaign of `children` children, each with keys of its own.
    fn new(children: u64) -> Self {
        Self {
            lanes: (0..children)
                .map(|c| Lane {
                    first_key: c * KEYS,
                    ..Lane::default()
                })
                .collect(),
            ..Self::default()
        }
    }

    /// Takes in one run's output: of child `lane` (none for the drain run), told to
    /// start from round `first`.
    fn absorb(&mut self, lane: Option<usize>, first: u64, out: &Output) -> RunRounds {
        self.runs += 1;
        let run = self.runs;
        self.logs.push(RunLog {
            lane,
            lines: out.lines.clone(),
            span: out.span,
        });
        let mut rounds = RunRounds::default();
        let mut expected = first;
        for line in &out.lines {
            let (word, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            match word {
                "started" => rounds.started = true,
                "begin" => {
                    let r: u64 = rest.parse().expect("begin <round>");
                    assert!(
                        r == expected && rounds.open.is_none(),
                        "run {run}: began round {r}, expected {expected}: {:?}",
                        out.lines
                    );
                    rounds.open = Some(r);
                    if let Some(l) = lane {
                        let lane = &mut self.lanes[l];
                        lane.max_begun = lane.max_begun.max(Some(r));
                    }
                }
                "durable" => {
                    let r: u64 = rest.parse().expect("durable <round>");
                    assert_eq!(rounds.open, Some(r), "run {run}: {:?}", out.lines);
                    rounds.open = None;
                    rounds.durable.push(r);
                    if let Some(l) = lane {
                        let lane = &mut self.lanes[l];
                        lane.last_durable = lane.last_durable.max(Some(r));
                    }
                    expected = r + 1;
                }
                "ambiguous" => {
                    let mut f = rest.splitn(4, ' ');
                    let (Some(key), Some(agreement), Some(value)) = (f.next(), f.next(), f.next())
                    else {
                        panic!("run {run}: malformed line {line:?}");
                    };
                    if lane.is_some_and(|l| !self.lanes[l].records(agreement)) {
                        self.ambiguous_of_the_other += 1;
                    }
                    self.ambiguous.push(Ambiguous {
                        idempotency_key: key.to_owned(),
                        agreement: agreement.to_owned(),
                        value: value.parse().expect("ambiguous value"),
                    });
                }
                "torn" => self.torn += 1,
                "done" => rounds.done = Some(rest == "true"),
                "stats" => {}
                // `error`, `unsent`, `notdurable`, and anything unforeseen.
                _ => self.problems.push(format!("run {run}: {line}")),
            }
        }
        if !out.stderr.trim().is_empty() {
            self.problems
                .push(format!("run {run}: stderr: {}", out.stderr.trim()));
        }
        rounds
    }

    /// Takes in the output of a run of child `lane` that was killed.
    fn killed(&mut self, lane: usize, first: u64, out: &Output) {
        let rounds = self.absorb(Some(lane), first, out);
        self.kills += 1;
        self.lanes[lane].kills += 1;
        if out.exited_before_kill {
            self.problems.push(format!(
                "run {}: exited on its own ({}) before its kill",
                self.runs, out.status
            ));
        }
        if !rounds.started {
            self.kills_before_start += 1;
        }
        if let Some(open) = rounds.open {
            self.lanes[lane].open_rounds.push(open);
        }
    }

    /// Takes in the output of the final run of child `lane`, which must have printed every
    /// round from `first` durable (to `last`, when given) and shut down complete. Returns
    /// its last round.
    fn finished(&mut self, lane: usize, first: u64, last: Option<u64>, out: &Output) -> u64 {
        let rounds = self.absorb(Some(lane), first, out);
        let end = last.or(rounds.durable.last().copied()).unwrap_or(first);
        assert_eq!(
            rounds.durable,
            (first..=end).collect::<Vec<_>>(),
            "the final run printed every round durable: {:?}",
            out.lines
        );
        assert!(
            self.lanes[lane].max_begun <= Some(end),
            "the final run ended at round {end}, before a round begun: {:?}",
            out.lines
        );
        assert_eq!(rounds.done, Some(true), "the final run: {:?}", out.lines);
        assert!(out.status.success(), "the final run: {}", out.status);
        self.lanes[lane].last = Some(end);
        end
    }

    /// Takes in the output of the drain run.
    fn drained(&mut self, first: u64, out: &Output) {
        let drain = self.absorb(None, first, out);
        assert_eq!(drain.done, Some(true), "the drain run: {:?}", out.lines);
        assert!(out.status.success(), "the drain run: {}", out.status);
    }
}

/// What key `key` records in round `round`, all calls together.
fn round_amount(round: u64, key: u64) -> u64 {
    (0..plan::CALLS_PER_ROUND)
        .map(|call| plan::amount(round, key, call))
        .sum()
}

impl Campaign {
    /// The indices of the runs alive at `t`, or of the last one that ended before it.
    fn runs_at(&self, t: Instant) -> Vec<usize> {
        let alive: Vec<usize> = (0..self.logs.len())
            .filter(|&i| self.logs[i].span.0 <= t && t <= self.logs[i].span.1)
            .collect();
        if !alive.is_empty() {
            return alive;
        }
        vec![
            (0..self.logs.len())
                .filter(|&i| self.logs[i].span.1 < t)
                .max_by_key(|&i| self.logs[i].span.1)
                .unwrap_or(0),
        ]
    }

    /// "run 3", or "runs 3, 4" (numbered from 1).
    fn run_names(runs: &[usize]) -> String {
        let numbers: Vec<String> = runs.iter().map(|i| (i + 1).to_string()).collect();
        match numbers.as_slice() {
            [one] => format!("run {one}"),
            _ => format!("runs {}", numbers.join(", ")),
        }
    }

    /// "run 3", with its child when there are two.
    fn run_name(&self, i: usize) -> String {
        match self.logs[i].lane {
            _ if self.lanes.len() < 2 => format!("run {}", i + 1),
            Some(lane) => format!("run {} (child {lane})", i + 1),
            None => format!("run {} (drain)", i + 1),
        }
    }

    /// What the emulator and the children saw of one idempotency key.
    fn explain(&self, emulator: &Emulator, key: &str, t0: Instant) -> String {
        let ms = |t: Instant| t.saturating_duration_since(t0).as_millis();
        let mut s = String::new();
        let mut runs = BTreeSet::new();
        for (i, r) in emulator.requests().iter().enumerate() {
            let carries = r
                .headers
                .iter()
                .any(|(n, v)| n == "idempotency-key" && v == key);
            if carries {
                let at = self.runs_at(r.arrived_at);
                runs.extend(at.iter().copied());
                s += &format!(
                    "\n    request {i} at {} ms ({}): {:?}, status {:?}, answered at {:?} ms",
                    ms(r.arrived_at),
                    Self::run_names(&at),
                    r.outcome,
                    r.status,
                    r.responded_at.map(ms)
                );
            }
        }
        // The runs from its first request to its last, and what each got to say.
        let (Some(&from), Some(&to)) = (runs.first(), runs.last()) else {
            return s;
        };
        for (run, log) in self.logs.iter().enumerate().take(to + 1).skip(from) {
            let said = |word: &str| log.lines.iter().filter(|l| l.starts_with(word)).count();
            s += &format!(
                "\n    {} lived {}..{} ms: {} lines, started: {}, rounds begun {}, ambiguous lines {}",
                self.run_name(run),
                ms(log.span.0),
                ms(log.span.1),
                log.lines.len(),
                said("started") > 0,
                said("begin "),
                said("ambiguous ")
            );
        }
        for (run, log) in self.logs.iter().enumerate() {
            for line in log.lines.iter().filter(|l| l.contains(key)) {
                s += &format!(
                    "\n    {} ({}..{} ms) said: {line}",
                    self.run_name(run),
                    ms(log.span.0),
                    ms(log.span.1)
                );
            }
        }
        s
    }
}

fn units(amount: kinde_meter_emulator::Amount) -> u128 {
    amount.whole().expect("whole units")
}

/// What the emulator had seen when the kills ended.
struct DuringKills {
    counts: Counts,
    requests: usize,
}

impl DuringKills {
    fn of(emulator: &Emulator) -> Self {
        Self {
            counts: emulator.counts(),
            requests: emulator.requests().len(),
        }
    }
}

impl Campaign {
    /// Checks what Kinde holds, per key, once every child has finished (its `last` set),
    /// and prints the figures: a table per key, then `headline`, then the tallies. Returns
    /// what failed.
    fn verdict(
        &self,
        emulator: &Emulator,
        started: Instant,
        during: &DuringKills,
        headline: impl FnOnce() -> String,
    ) -> Vec<String> {
        let accepted = emulator.accepted();
        let mut by_key: BTreeMap<String, (String, u128, usize)> = BTreeMap::new();
        for a in &accepted {
            let key = a
                .idempotency_key
                .clone()
                .unwrap_or_else(|| panic!("a record without an idempotency key: {a:?}"));
            let value = units(a.value);
            let entry = by_key
                .entry(key.clone())
                .or_insert_with(|| (a.agreement.clone(), value, 0));
            assert_eq!(
                (entry.0.as_str(), entry.1),
                (a.agreement.as_str(), value),
                "idempotency key {key} applied with different contents"
            );
            entry.2 += 1;
        }
        let reported: BTreeSet<&str> = self
            .ambiguous
            .iter()
            .map(|a| a.idempotency_key.as_str())
            .collect();
        let most_applications = by_key.values().map(|(_, _, n)| *n).max().unwrap_or(0);
        // Applied more than once: by one process, or by two (a record delivered by its own
        // process and by one that adopted a run it should not have).
        let duplicated: Vec<(&String, &(String, u128, usize))> =
            by_key.iter().filter(|(_, (_, _, n))| *n > 1).collect();
        let unreported: Vec<_> = duplicated
            .iter()
            .filter(|(k, _)| !reported.contains(k.as_str()))
            .collect();

        let ledger = emulator.ledger();
        let known: BTreeSet<String> = self
            .lanes
            .iter()
            .flat_map(Lane::keys)
            .map(plan::agreement)
            .collect();
        let strangers: Vec<_> = ledger
            .keys()
            .filter(|(a, f)| !known.contains(a) || f != plan::FEATURE)
            .collect();

        let mut failures = self.problems.clone();
        if !strangers.is_empty() {
            failures.push(format!("billed to keys nobody recorded: {strangers:?}"));
        }
        for (k, (agreement, value, n)) in &unreported {
            failures.push(format!(
                "idempotency key {k} ({agreement}, value {value}) applied {n} times and never reported ambiguous:{}",
                self.explain(emulator, k, started)
            ));
        }
        let mut totals = (0u128, 0u128, 0u128, 0u128, 0u128, 0u128);
        eprintln!(
            "{:<16} {:>9} {:>9} {:>11} {:>9} {:>9} {:>10}",
            "key", "recorded", "ledger", "duplicates", "extra", "open", "ambiguous"
        );
        for lane in &self.lanes {
            let rounds_recorded = lane.last.expect("every child has finished") + 1;
            for key in lane.keys() {
                let agreement = plan::agreement(key);
                let recorded: u128 = (0..rounds_recorded)
                    .map(|r| u128::from(round_amount(r, key)))
                    .sum();
                let open: u128 = lane
                    .open_rounds
                    .iter()
                    .map(|&r| u128::from(round_amount(r, key)))
                    .sum();
                let ambiguous: u128 = self
                    .ambiguous
                    .iter()
                    .filter(|a| a.agreement == agreement)
                    .map(|a| u128::from(a.value))
                    .sum();
                let held = ledger
                    .get(&(agreement.clone(), plan::FEATURE.to_owned()))
                    .map_or(0, |a| units(*a));
                // Applications of a record past its first: what ambiguity cost.
                let duplicates: u128 = by_key
                    .values()
                    .filter(|(a, _, _)| *a == agreement)
                    .map(|(_, v, n)| v * (*n as u128 - 1))
                    .sum();
                let distinct = held - duplicates;
                eprintln!(
                    "{agreement:<16} {recorded:>9} {held:>9} {duplicates:>11} {:>9} {open:>9} {ambiguous:>10}",
                    distinct as i128 - recorded as i128
                );
                totals.0 += recorded;
                totals.1 += held;
                totals.2 += duplicates;
                totals.3 += distinct.saturating_sub(recorded);
                totals.4 += open;
                totals.5 += ambiguous;
                if distinct < recorded {
                    failures.push(format!(
                        "{agreement}: lost usage: {recorded} recorded in closed windows, Kinde holds {held}, \
                         of which {duplicates} are second applications of the same records"
                    ));
                }
                if held > recorded + open + ambiguous {
                    failures.push(format!(
                        "{agreement}: Kinde holds {held}, more than the {recorded} recorded + {open} of the rounds open \
                         at a kill + {ambiguous} reported ambiguous"
                    ));
                }
                if distinct > recorded + open {
                    failures.push(format!(
                        "{agreement}: {} more than recorded under distinct idempotency keys, beyond the {open} of the \
                         rounds open at a kill (a replayed record sent under a new key?)",
                        distinct - recorded
                    ));
                }
            }
        }

        let ambiguous_value: u128 = self.ambiguous.iter().map(|a| u128::from(a.value)).sum();
        eprintln!("{}", headline());
        eprintln!(
            "  units recorded {}, Kinde holds {}; extra from rounds open at a kill {} (at most {})",
            totals.0, totals.1, totals.3, totals.4
        );
        eprintln!(
            "  ambiguous reports {} (value {ambiguous_value}, {} distinct records); records applied more than once {} \
             (extra value {}, at most {} applications of one record), of them never reported ambiguous {}",
            self.ambiguous.len(),
            reported.len(),
            duplicated.len(),
            totals.2,
            most_applications,
            unreported.len()
        );
        let seen = &during.counts;
        eprintln!(
            "  torn journal tails {}; emulator during the kills: {} requests, {} applied, \
             {} faults answered, {} dropped, {} abandoned by their client, {} applied without a clean 200",
            self.torn,
            during.requests,
            seen.accepted,
            seen.faults,
            seen.dropped,
            seen.abandoned,
            seen.ambiguous
        );
        failures
    }
}

#[test]
fn kill_9_loses_at_most_the_open_window_and_reports_every_duplicate() {
    let started = Instant::now();
    let seed = campaign_seed();
    let kills = campaign_kills(DEFAULT_KILLS);
    eprintln!("journal kill campaign: seed {seed} (KINDE_METER_CAMPAIGN_SEED), {kills} kills");
    let mut rng = Rng::new(seed);
    let emulator = faulty_emulator(&mut rng);
    let journal = TempDir::new("journal-kill", seed);
    let mut campaign = Campaign::new(1);

    // The kills.
    while campaign.kills < kills {
        let first = campaign.lanes[0].next_round();
        let child = Running::spawn(&emulator, &journal.0, first, first + ROUNDS_PER_RUN, 0);
        std::thread::sleep(kill_delay(&mut rng));
        let out = child.kill();
        campaign.killed(0, first, &out);
    }
    let during = DuringKills::of(&emulator);

    // To the end, without faults, then a drain run.
    emulator.set_faults(Faults::none());
    let lane = &campaign.lanes[0];
    let first = lane.next_round();
    let last = lane.max_begun.unwrap_or(0).max(first) + FINAL_EXTRA_ROUNDS;
    let out = Running::spawn(&emulator, &journal.0, first, last, 0).wait(RUN_TIMEOUT);
    campaign.finished(0, first, Some(last), &out);
    let out = Running::spawn(&emulator, &journal.0, last + 1, last, 0).wait(RUN_TIMEOUT);
    campaign.drained(last + 1, &out);
    assert!(
        emulator.wait_idle(Duration::from_secs(30)),
        "the emulator is still handling requests"
    );

    // What Kinde holds.
    let failures = campaign.verdict(&emulator, started, &during, || {
        format!(
            "seed {seed}: {} kills ({} before the reporter started) over {} runs, {} rounds x {KEYS} keys, {:.1} s",
            campaign.kills,
            campaign.kills_before_start,
            campaign.runs,
            last + 1,
            started.elapsed().as_secs_f64()
        )
    });
    assert!(
        failures.is_empty(),
        "seed {seed} (KINDE_METER_CAMPAIGN_SEED={seed} KINDE_METER_CAMPAIGN_KILLS={kills}):\n{}",
        failures.join("\n")
    );
}

#[test]
fn kill_9_beside_a_live_process_on_the_same_journal_leaves_its_run_alone() {
    let started = Instant::now();
    let seed = campaign_seed();
    let kills = campaign_kills(DEFAULT_KILLS_OF_TWO);
    eprintln!(
        "journal kill campaign, two children on one journal: seed {seed} (KINDE_METER_CAMPAIGN_SEED), {kills} kills"
    );
    let mut rng = Rng::new(seed);
    let emulator = faulty_emulator(&mut rng);
    let journal = TempDir::new("journal-kill-two", seed);
    let mut campaign = Campaign::new(2);
    // A child of `lane`, from the round after its last durable one; the round it starts at.
    let spawn = |campaign: &mut Campaign, lane: usize, other: Option<&Running>| {
        if other.is_some_and(|o| !o.has_started()) {
            campaign.spawns_beside_a_start += 1;
        }
        let lane = &campaign.lanes[lane];
        let first = lane.next_round();
        let child = Running::spawn(
            &emulator,
            &journal.0,
            first,
            first + ROUNDS_PER_RUN,
            lane.first_key,
        );
        (first, child)
    };
    let mut children: [Option<(u64, Running)>; 2] = [None, None];
    for lane in 0..2 {
        let other = children[1 - lane].as_ref().map(|(_, c)| c);
        let spawned = spawn(&mut campaign, lane, other);
        children[lane] = Some(spawned);
    }

    // The kills, of one child at a time, the other one running on.
    while campaign.kills < kills {
        let victim = usize::from(rng.below(2) == 1);
        std::thread::sleep(kill_delay(&mut rng));
        let (first, child) = children[victim].take().expect("both children run");
        let out = child.kill();
        campaign.killed(victim, first, &out);
        if campaign.kills < kills {
            let other = children[1 - victim].as_ref().map(|(_, c)| c);
            let spawned = spawn(&mut campaign, victim, other);
            children[victim] = Some(spawned);
        }
    }
    let during = DuringKills::of(&emulator);

    // Faults off: the child still running is told to finish a few rounds on, the one
    // killed last is restarted to the end beside it; then a drain run.
    emulator.set_faults(Faults::none());
    if children.iter().any(Option::is_none)
        && children.iter().flatten().any(|(_, c)| !c.has_started())
    {
        campaign.spawns_beside_a_start += 1;
    }
    let finals: Vec<(usize, u64, Option<u64>, Running)> = (0..2)
        .map(|lane| match children[lane].take() {
            Some((first, mut running)) => {
                running.finish(FINAL_EXTRA_ROUNDS);
                (lane, first, None, running)
            }
            None => {
                let l = &campaign.lanes[lane];
                let first = l.next_round();
                let last = l.max_begun.unwrap_or(0).max(first) + FINAL_EXTRA_ROUNDS;
                let running = Running::spawn(&emulator, &journal.0, first, last, l.first_key);
                (lane, first, Some(last), running)
            }
        })
        .collect();
    let mut end = 0;
    for (lane, first, last, running) in finals {
        let out = running.wait(RUN_TIMEOUT);
        end = end.max(campaign.finished(lane, first, last, &out));
    }
    let out = Running::spawn(&emulator, &journal.0, end + 1, end, 0).wait(RUN_TIMEOUT);
    campaign.drained(end + 1, &out);
    assert!(
        emulator.wait_idle(Duration::from_secs(30)),
        "the emulator is still handling requests"
    );

    // What Kinde holds.
    let failures = campaign.verdict(&emulator, started, &during, || {
        let [a, b] = &campaign.lanes[..] else {
            unreachable!("two children")
        };
        let rounds = |l: &Lane| l.last.map_or(0, |r| r + 1);
        format!(
            "seed {seed}: {} kills ({} before the reporter started) over {} runs of two children on one journal, \
             {} + {} rounds x {KEYS} keys, {:.1} s\n  kills per child {} + {}; spawns while the other child was \
             starting {}; ambiguous reports of the other child's keys {}",
            campaign.kills,
            campaign.kills_before_start,
            campaign.runs,
            rounds(a),
            rounds(b),
            started.elapsed().as_secs_f64(),
            a.kills,
            b.kills,
            campaign.spawns_beside_a_start,
            campaign.ambiguous_of_the_other
        )
    });
    assert!(
        failures.is_empty(),
        "seed {seed} (KINDE_METER_CAMPAIGN_SEED={seed} KINDE_METER_CAMPAIGN_KILLS={kills}):\n{}",
        failures.join("\n")
    );
}
