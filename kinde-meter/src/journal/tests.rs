//! The journal against a real directory: reopen after a kill (a dropped journal, never
//! closed), adoption, damage at every offset, a failing disk, the byte limit, and a model.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::tests::stored;
use super::fs::RealFs;
use super::fs::faulty::FaultyFs;
use super::*;
use crate::usage::{Attempts, JournalIssue};

/// A directory removed when the test ends.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "kinde-meter-journal-{name}-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A journal on a fresh directory, written through a file system that fails on demand.
fn faulty_journal(name: &str) -> (TempDir, FaultyFs, Journal) {
    let root = TempDir::new(name);
    let fs = FaultyFs::default();
    let (j, _) = Journal::open(&root.0, 1 << 20, Arc::new(fs.clone())).expect("open");
    (root, fs, j)
}

/// Three records of `j`'s run, values 5, 6 and 7.
fn three_records(j: &Journal) -> [Stored; 3] {
    [(1, 5), (2, 6), (3, 7)].map(|(seq, value)| with_run(stored(seq, value), j.run()))
}

fn open(root: &Path) -> (Journal, Recovered) {
    Journal::open(root, 1 << 20, Arc::new(RealFs)).expect("open")
}

fn with_run(mut s: Stored, run: u64) -> Stored {
    s.id.run = run;
    s
}

/// What a reopen resumes: id -> (state, in flight).
fn resumed(r: &Recovered) -> BTreeMap<RecordId, (Stored, bool)> {
    r.live
        .iter()
        .map(|l| (l.stored.id, (l.stored.clone(), l.in_flight)))
        .collect()
}

/// Resumes everything as it was read, as the reporter does under at-least-once.
fn resume_all(j: &mut Journal, r: &Recovered) {
    let keep: Vec<Stored> = r.live.iter().map(|l| l.stored.clone()).collect();
    j.resume(&keep, &[]).expect("resume");
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "kmj") {
                found.push(p);
            }
        }
    }
    found
}

#[test]
fn a_killed_run_is_read_back_whole_by_the_next_start() {
    let root = TempDir::new("reopen");
    let (mut j, first) = open(&root.0);
    assert!(first.live.is_empty());
    let run = j.run();
    let a = with_run(stored(1, 5), run);
    let b = with_run(stored(2, 7), run);
    let c = with_run(stored(3, 9), run);
    j.put_window(&[a.clone(), b.clone(), c.clone()], &[])
        .expect("window");
    j.start(&[a.id, b.id]).expect("start");
    j.settle(a.id).expect("settle");
    let mut b2 = b.clone();
    b2.attempts = Attempts {
        count: 2,
        maybe_applied: false,
        last_error: Some("503".to_owned()),
        bound: None,
    };
    j.put(&b2).expect("retry state");
    j.start(&[b.id]).expect("start again");
    // Killed: never closed, its lock released as the process would release it.
    drop(j);
    let (mut j2, r) = open(&root.0);
    let got = resumed(&r);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[&b.id], (b2, true), "the last state, and in flight");
    assert_eq!(got[&c.id], (c.clone(), false));
    resume_all(&mut j2, &r);
    assert_eq!(
        segment_files(&root.0).len(),
        1,
        "the adopted run is removed once its records are written again"
    );
    j2.settle(b.id).expect("settle");
    j2.settle(c.id).expect("settle");
    j2.close();
    let (_j3, r) = open(&root.0);
    assert!(r.live.is_empty(), "{:?}", r.live);
}

#[test]
fn a_live_processs_run_is_never_adopted() {
    let root = TempDir::new("live");
    let (mut first, _) = open(&root.0);
    let a = with_run(stored(1, 5), first.run());
    first
        .put_window(std::slice::from_ref(&a), &[])
        .expect("window");
    let (_second, seen) = open(&root.0);
    assert!(seen.live.is_empty(), "took a live run: {:?}", seen.live);
    drop(first);
    let (_third, adopted) = open(&root.0);
    assert_eq!(resumed(&adopted).len(), 1, "the dead run is adopted once");
    let (_fourth, again) = open(&root.0);
    assert!(again.live.is_empty(), "adopted twice");
}

#[test]
fn two_processes_starting_at_once_never_adopt_the_same_run() {
    for round in 0..20 {
        let root = TempDir::new("race");
        let (mut dead, _) = open(&root.0);
        let records: Vec<Stored> = (1..=5)
            .map(|i| with_run(stored(i, i), dead.run()))
            .collect();
        dead.put_window(&records, &[]).expect("window");
        drop(dead);
        let path = root.0.clone();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let (j, r) = open(&path);
                    (j, r.live.len())
                })
            })
            .collect();
        let found: Vec<(Journal, usize)> = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        let total: usize = found.iter().map(|f| f.1).sum();
        assert_eq!(
            total, 5,
            "round {round}: records adopted {total} times over"
        );
    }
}

#[test]
fn a_newer_format_is_refused_and_left_as_it_is() {
    let root = TempDir::new("newer");
    let (mut j, _) = open(&root.0);
    j.put_window(&[with_run(stored(1, 5), j.run())], &[])
        .expect("window");
    drop(j);
    let seg = segment_files(&root.0).pop().expect("a segment");
    let mut bytes = std::fs::read(&seg).expect("read");
    bytes[8..12].copy_from_slice(&(format::VERSION + 1).to_le_bytes());
    let crc = crc32fast::hash(&bytes[..12]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&seg, &bytes).expect("write");
    let e = Journal::open(&root.0, 1 << 20, Arc::new(RealFs)).expect_err("refused");
    let message = e.to_string();
    assert!(
        message.contains("format version 2") && message.contains("newer"),
        "{message}"
    );
    let left = segment_files(&root.0);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(std::fs::read(&left[0]).expect("read"), bytes, "untouched");
    assert!(
        left[0]
            .parent()
            .and_then(Path::parent)
            .is_some_and(|p| p.ends_with("runs")),
        "given back to runs/ for a newer build: {}",
        left[0].display()
    );
}

/// Damage in one dead run can hide settles of its own records only: a sibling run read
/// beside it resumes whole.
#[test]
fn damage_in_one_run_leaves_the_runs_beside_it_alone() {
    let root = TempDir::new("siblings");
    let (mut a, _) = open(&root.0);
    let (mut b, _) = open(&root.0);
    let ra: Vec<Stored> = (1..=3).map(|i| with_run(stored(i, i), a.run())).collect();
    let rb: Vec<Stored> = (4..=6).map(|i| with_run(stored(i, i), b.run())).collect();
    a.put_window(&ra, &[]).expect("window");
    b.put_window(&rb, &[]).expect("window");
    let a_dir = a.dir.clone();
    drop(a);
    drop(b);
    let seg = segment_files(&a_dir).pop().expect("segment");
    let mut bytes = std::fs::read(&seg).expect("read");
    // Inside the second of three entries.
    let entry = (bytes.len() - format::HEADER_LEN) / 3;
    bytes[format::HEADER_LEN + entry + 30] ^= 0x01;
    std::fs::write(&seg, &bytes).expect("write");
    let (_j, r) = open(&root.0);
    let got = resumed(&r);
    for s in &rb {
        assert_eq!(
            got.get(&s.id).map(|g| &g.0),
            Some(s),
            "the undamaged run resumes"
        );
    }
    let handed: Vec<RecordId> = r.damaged.iter().map(|s| s.id).collect();
    assert_eq!(
        handed,
        vec![ra[0].id],
        "only what the damage may have settled"
    );
    assert!(got.contains_key(&ra[2].id), "read past the damage");
}

/// Writes a run with settled, in-flight and waiting records, and returns its one
/// segment's bytes and what the next start must find.
fn sample_run(root: &Path) -> (PathBuf, Vec<u8>, BTreeMap<RecordId, (Stored, bool)>) {
    let (mut j, _) = open(root);
    let run = j.run();
    let r: Vec<Stored> = (1..=4).map(|i| with_run(stored(i, 10 * i), run)).collect();
    j.put_window(&r[..2], &[]).expect("window");
    j.start(&[r[0].id]).expect("start");
    j.settle(r[0].id).expect("settle");
    j.put_window(&r[2..], &[]).expect("window");
    j.start(&[r[2].id]).expect("start");
    j.sync().expect("sync");
    drop(j);
    let seg = segment_files(root).pop().expect("segment");
    let bytes = std::fs::read(&seg).expect("read");
    let expected = [(&r[1], false), (&r[2], true), (&r[3], false)]
        .into_iter()
        .map(|(s, f)| (s.id, (s.clone(), f)))
        .collect();
    (seg, bytes, expected)
}

/// What the entries say, folded by the rule the journal documents (the last `Put` is the
/// state, a `Start` after it means in flight, a `Settle` ends it): the reference reading.
fn fold(entries: &[Entry]) -> BTreeMap<RecordId, (Stored, bool)> {
    let mut state = BTreeMap::new();
    for e in entries {
        match e {
            Entry::Put(s) => {
                state.insert(s.id, (s.clone(), false));
            }
            Entry::Start(id) => {
                if let Some(m) = state.get_mut(id) {
                    m.1 = true;
                }
            }
            Entry::Settle(id) => {
                state.remove(id);
            }
        }
    }
    state
}

#[test]
fn a_cut_at_any_offset_resumes_exactly_the_history_before_it() {
    let root = TempDir::new("cut-model");
    let (_, bytes, expected) = sample_run(&root.0);
    let all = entries(format::decode_all(&bytes).0);
    assert_eq!(fold(&all), expected, "the sample run reads back whole");
    let mut torn_seen = 0;
    for cut in 0..bytes.len() {
        let root = TempDir::new("cut");
        let (seg, _, _) = sample_run(&root.0);
        std::fs::write(&seg, &bytes[..cut]).expect("cut");
        let (_j, r) = open(&root.0);
        let (prefix, end) = format::decode_all(&bytes[..cut]);
        let prefix = entries(prefix);
        assert_eq!(resumed(&r), fold(&prefix), "cut {cut}");
        assert!(r.damaged.is_empty(), "cut {cut}: a cut is not damage");
        let torn = r
            .issues
            .iter()
            .any(|i| matches!(i, JournalIssue::TornTail { .. }));
        assert_eq!(
            torn,
            cut > format::HEADER_LEN && end != format::End::Clean,
            "cut {cut}"
        );
        torn_seen += usize::from(torn);
    }
    assert!(
        torn_seen > bytes.len() / 2,
        "most cuts fall inside an entry"
    );
}

fn entries(pieces: Vec<format::Piece>) -> Vec<Entry> {
    pieces
        .into_iter()
        .filter_map(|p| match p {
            format::Piece::Entry(e) => Some(e),
            format::Piece::Damaged { .. } => None,
        })
        .collect()
}

/// Where the last `Put` of each record lies in a segment.
fn put_ranges(bytes: &[u8]) -> BTreeMap<RecordId, std::ops::Range<usize>> {
    let mut at = format::HEADER_LEN;
    let mut ranges = BTreeMap::new();
    for e in entries(format::decode_all(bytes).0) {
        let mut encoded = Vec::new();
        format::encode(&e, &mut encoded);
        if let Entry::Put(s) = &e {
            ranges.insert(s.id, at..at + encoded.len());
        }
        at += encoded.len();
    }
    ranges
}

#[test]
fn a_flipped_bit_anywhere_is_caught_and_nothing_it_hid_is_resent() {
    let root = TempDir::new("flip-model");
    let (_, bytes, expected) = sample_run(&root.0);
    let last_put = put_ranges(&bytes);
    for offset in 0..bytes.len() {
        for bit in [0x01u8, 0x80]
            .into_iter()
            .filter(|&b| b == 0x01 || offset % 3 == 0)
        {
            let root = TempDir::new("flip");
            let (seg, _, _) = sample_run(&root.0);
            let mut flipped = bytes.clone();
            flipped[offset] ^= bit;
            std::fs::write(&seg, &flipped).expect("flip");
            let (_j, r) = open(&root.0);
            let got = resumed(&r);
            let reported = !r.issues.is_empty();
            assert!(
                reported,
                "offset {offset} bit {bit:#x}: damage not reported"
            );
            // Nothing invented: what resumes is what the run held, and a record it had
            // settled is never resumed (damage that may hide a settle hands back).
            for (id, (s, _)) in &got {
                match expected.get(id) {
                    Some((full, _)) => assert_eq!(s, full, "offset {offset}"),
                    None => panic!("offset {offset} bit {bit:#x}: settled record {id:?} resumed"),
                }
            }
            // Nothing lost silently: every waiting record resumes or is handed back,
            // unless the flip hit its state itself (or the header, which makes the
            // whole file unreadable). Either way the damage is reported.
            let handed: Vec<RecordId> = r.damaged.iter().map(|s| s.id).collect();
            for id in expected.keys() {
                let own_state_hit = offset < format::HEADER_LEN || last_put[id].contains(&offset);
                assert!(
                    got.contains_key(id) || handed.contains(id) || own_state_hit,
                    "offset {offset} bit {bit:#x}: record {id:?} gone without a trace: {r:?}"
                );
            }
            if r.issues
                .iter()
                .any(|i| matches!(i, JournalIssue::Quarantined { .. }))
            {
                let q = std::fs::read_dir(root.0.join("quarantine"))
                    .expect("quarantine")
                    .count();
                assert_eq!(
                    q, 1,
                    "offset {offset}: the damaged file is kept, moved aside"
                );
            }
        }
    }
}

#[test]
fn a_failing_disk_refuses_windows_and_recovers_when_it_heals() {
    for kind in [
        io::ErrorKind::StorageFull,
        io::ErrorKind::Other,
        io::ErrorKind::ReadOnlyFilesystem,
    ] {
        let (root, fs, mut j) = faulty_journal("faulty");
        let [a, b, c] = three_records(&j);
        j.put_window(std::slice::from_ref(&a), &[])
            .expect("healthy");
        fs.fail(kind);
        // The write lands half-way; it is taken back, so nothing of it is on disk.
        match j.put_window(std::slice::from_ref(&b), &[]) {
            Err(WindowFailure {
                cause: JournalFailure::Io(e),
                tracked: false,
            }) => assert_eq!(e.kind(), kind),
            other => panic!("{kind:?}: {other:?}"),
        }
        assert!(!j.holds(b.id), "a window that failed is memory only");
        assert!(j.start(&[a.id]).is_err(), "so `a` must not be sent");
        fs.heal();
        j.put_window(std::slice::from_ref(&c), &[]).expect("healed");
        drop(j);
        let (_j, r) = open(&root.0);
        let got = resumed(&r);
        assert_eq!(
            got.keys().copied().collect::<Vec<_>>(),
            vec![a.id, c.id],
            "{kind:?}"
        );
        assert!(
            r.issues.is_empty(),
            "{kind:?}: the half write was taken back: {:?}",
            r.issues
        );
        assert!(!got[&a.id].1, "{kind:?}: its start never reached the file");
    }
}

/// A power cut keeps only what was synced: closed windows and the starts of attempts are
/// synced before anything relies on them, so they survive it; an outcome written after
/// its attempt may be lost, and the record then resumes in flight (resent as ambiguous,
/// reported), never as if it had not been sent.
#[test]
fn a_power_cut_keeps_every_window_and_every_start() {
    let (root, fs, mut j) = faulty_journal("power");
    let [a, b, c] = three_records(&j);
    j.put_window(std::slice::from_ref(&a), &[]).expect("window");
    j.start(&[a.id]).expect("start");
    let mut retried = a.clone();
    retried.attempts.count += 1;
    retried.attempts.last_error = Some("503".to_owned());
    j.put(&retried).expect("retry state");
    j.put_window(std::slice::from_ref(&c), &[]).expect("window");
    j.put_window(std::slice::from_ref(&b), &[]).expect("window");
    // The last sync before the cut is this start's own.
    j.start(&[b.id]).expect("start");
    j.settle(b.id).expect("delivered");
    fs.power_cut();
    drop(j);
    let (_j, r) = open(&root.0);
    let got = resumed(&r);
    assert_eq!(
        got.get(&a.id),
        Some(&(retried, false)),
        "synced along with the next window"
    );
    assert_eq!(
        got.get(&c.id),
        Some(&(c.clone(), false)),
        "a window is synced"
    );
    assert_eq!(
        got.get(&b.id),
        Some(&(b.clone(), true)),
        "its settle was lost, its start was not: resent as ambiguous"
    );
}

/// A write that fails part-way and cannot be taken back may have left whole entries:
/// the journal then holds the window as if written, so its attempts wait for a start it
/// can write, and its next write rewrites everything live into a fresh segment.
#[test]
fn a_failed_write_that_cannot_be_taken_back_is_held_as_written() {
    let root = TempDir::new("untaken");
    let fs = FaultyFs::default();
    let (mut j, _) = Journal::open(&root.0, 1 << 20, Arc::new(fs.clone())).expect("open");
    let run = j.run();
    let window: Vec<Stored> = (1..=4).map(|i| with_run(stored(i, i), run)).collect();
    fs.fail(io::ErrorKind::Other);
    fs.fail_truncate(true);
    let failure = j.put_window(&window, &[]).expect_err("failing");
    assert!(failure.tracked);
    assert!(window.iter().all(|s| j.holds(s.id)));
    fs.heal();
    fs.fail_truncate(false);
    assert!(
        j.needs_rewrite(),
        "not durable until rewritten, even with no new write"
    );
    j.rewrite().expect("rewritten");
    assert!(!j.needs_rewrite());
    drop(j);
    let (_j, r) = open(&root.0);
    let got = resumed(&r);
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got.values().all(|g| !g.1), "none started");
    assert!(
        r.issues
            .iter()
            .all(|i| matches!(i, JournalIssue::TornTail { .. })),
        "the abandoned segment ends in a torn half entry at most: {:?}",
        r.issues
    );
}

/// A settle or a state that fails to be written, even when the failed write is taken
/// back, is what the journal holds: the next write rewrites everything, so a delivered
/// record does not come back.
#[test]
fn a_settle_that_failed_is_written_by_the_next_rewrite() {
    let (root, fs, mut j) = faulty_journal("settle-failed");
    let [a, b, c] = three_records(&j);
    j.put_window(&[a.clone(), b.clone()], &[]).expect("window");
    j.start(&[a.id, b.id]).expect("start");
    fs.fail(io::ErrorKind::StorageFull);
    assert!(j.settle(a.id).is_err());
    let mut retried = b.clone();
    retried.attempts.count += 1;
    assert!(j.put(&retried).is_err());
    assert!(j.needs_rewrite());
    fs.heal();
    j.put_window(std::slice::from_ref(&c), &[]).expect("window");
    drop(j);
    let (_j, r) = open(&root.0);
    let got = resumed(&r);
    assert!(!got.contains_key(&a.id), "delivered, and back: {got:?}");
    assert_eq!(got.get(&b.id), Some(&(retried, false)), "its new state");
    assert!(got.contains_key(&c.id));
}

/// Rewriting what is live costs its size, so it waits until as much is settled: with
/// more live records than a segment holds, settling them one by one must not rewrite
/// the journal at each settle.
#[test]
fn reclaiming_space_costs_in_proportion_to_what_was_settled() {
    let root = TempDir::new("storm");
    let (mut j, _) = Journal::open(&root.0, MIN_BYTES, Arc::new(RealFs)).expect("open");
    let run = j.run();
    let records: Vec<Stored> = (1..=400).map(|i| with_run(stored(i, i), run)).collect();
    for chunk in records.chunks(20) {
        j.put_window(chunk, &[]).expect("window");
    }
    assert!(
        j.live_bytes > j.segment_limit,
        "more live than a segment: {} bytes",
        j.live_bytes
    );
    let before = j.index;
    for s in &records[..200] {
        j.settle(s.id).expect("settle");
    }
    let rotations = j.index - before;
    assert!(rotations <= 2, "{rotations} rotations for 200 settles");
}

#[test]
fn the_byte_limit_refuses_new_windows_and_settled_space_is_reclaimed() {
    let root = TempDir::new("limit");
    let (mut j, _) = Journal::open(&root.0, MIN_BYTES, Arc::new(RealFs)).expect("open");
    let run = j.run();
    let mut written = Vec::new();
    let mut seq = 0;
    let full = loop {
        seq += 1;
        let s = with_run(stored(seq, seq), run);
        match j.put_window(std::slice::from_ref(&s), &[]) {
            Ok(()) => written.push(s),
            Err(e) => break e,
        }
        assert!(seq < 10_000, "never full");
    };
    assert!(matches!(
        full,
        WindowFailure { cause: JournalFailure::Full { max_bytes }, tracked: false } if max_bytes == MIN_BYTES
    ));
    let on_disk: u64 = segment_files(&root.0)
        .iter()
        .map(|p| std::fs::metadata(p).expect("meta").len())
        .sum();
    assert!(on_disk <= MIN_BYTES + 4096, "{on_disk} bytes on disk");
    for s in &written {
        j.settle(s.id).expect("settle");
    }
    for _ in 0..written.len() * 2 {
        seq += 1;
        let s = with_run(stored(seq, seq), run);
        j.put_window(std::slice::from_ref(&s), &[])
            .expect("room again once settled");
        j.settle(s.id).expect("settle");
    }
    assert!(
        segment_files(&root.0).len() <= 3,
        "{:?}",
        segment_files(&root.0)
    );
    drop(j);
    let (_j, r) = open(&root.0);
    assert!(r.live.is_empty());
}

/// The journal against a model: random windows, retries, starts, settles, kills and
/// reopenings, with segments small enough to rotate often. After every reopening the
/// journal resumes exactly what the model holds.
mod model {
    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Window(Vec<(u8, u64)>),
        Start(Vec<u8>),
        Retry(u8),
        Settle(u8),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => proptest::collection::vec((0..12u8, 1..1_000u64), 1..6).prop_map(Op::Window),
            2 => proptest::collection::vec(0..12u8, 1..4).prop_map(Op::Start),
            1 => (0..12u8).prop_map(Op::Retry),
            2 => (0..12u8).prop_map(Op::Settle),
            1 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn the_journal_resumes_what_the_model_holds(ops in proptest::collection::vec(op(), 1..60)) {
            let root = TempDir::new("model");
            let (mut j, _) = Journal::open(&root.0, MIN_BYTES, Arc::new(RealFs)).expect("open");
            // Slot -> record id, and the model: id -> (state, in flight).
            let mut slots: BTreeMap<u8, RecordId> = BTreeMap::new();
            let mut model: BTreeMap<RecordId, (Stored, bool)> = BTreeMap::new();
            let mut seq = 0;
            for op in ops {
                match op {
                    Op::Window(items) => {
                        let mut window = Vec::new();
                        for (slot, value) in items {
                            let s = match slots.get(&slot).and_then(|id| model.get(id)) {
                                // Merged into the waiting record of its slot.
                                Some((s, false)) => {
                                    let mut s = s.clone();
                                    s.usage.value += value;
                                    s
                                }
                                _ => {
                                    seq += 1;
                                    let s = with_run(stored(seq, value), j.run());
                                    slots.insert(slot, s.id);
                                    s
                                }
                            };
                            window.retain(|w: &Stored| w.id != s.id);
                            window.push(s);
                        }
                        j.put_window(&window, &[]).expect("window");
                        for s in window {
                            model.insert(s.id, (s, false));
                        }
                    }
                    Op::Start(which) => {
                        let ids: Vec<RecordId> = which.iter().filter_map(|s| slots.get(s)).copied()
                            .filter(|id| model.get(id).is_some_and(|m| !m.1)).collect();
                        j.start(&ids).expect("start");
                        for id in ids {
                            if let Some(m) = model.get_mut(&id) { m.1 = true; }
                        }
                    }
                    Op::Retry(slot) => {
                        if let Some((s, true)) = slots.get(&slot).and_then(|id| model.get(id)).cloned() {
                            let mut s = s;
                            s.attempts.count += 1;
                            s.attempts.last_error = Some("503".to_owned());
                            j.put(&s).expect("retry");
                            model.insert(s.id, (s, false));
                        }
                    }
                    Op::Settle(slot) => {
                        if let Some(&id) = slots.get(&slot)
                            && model.remove(&id).is_some()
                        {
                            j.settle(id).expect("settle");
                        }
                    }
                    Op::Reopen => {
                        drop(j);
                        let (mut next, r) = Journal::open(&root.0, MIN_BYTES, Arc::new(RealFs)).expect("reopen");
                        prop_assert_eq!(resumed(&r), model.clone());
                        prop_assert!(r.issues.is_empty(), "{:?}", r.issues);
                        resume_all(&mut next, &r);
                        j = next;
                        // Resumed as read: written again as a `Put`, so no longer in flight.
                        for m in model.values_mut() {
                            m.1 = false;
                        }
                    }
                }
            }
            drop(j);
            let (_j, r) = Journal::open(&root.0, MIN_BYTES, Arc::new(RealFs)).expect("reopen");
            let expected: BTreeMap<RecordId, Stored> = model.into_iter().map(|(id, (s, _))| (id, s)).collect();
            let got: BTreeMap<RecordId, Stored> = r.live.into_iter().map(|l| (l.stored.id, l.stored)).collect();
            prop_assert_eq!(got, expected);
        }
    }
}
