//! Reading a run at start: every record that is not settled, and what was damaged.
//!
//! A run is its own segments plus the runs it adopted (in `adopted/`), which are older
//! than anything it wrote itself, so they are read first, depth first. Within a run,
//! segments are read in the order they were written. The last `Put` of a record is its
//! state; a `Start` after it means an attempt was in flight; a `Settle` ends it.
//!
//! A damaged entry may have hidden a `Settle`, so every record whose state was written
//! before the damage is handed back instead of resent. A record written again after it
//! (carried forward, retried) is known whole and resumes.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use super::format::{self, End, Entry, Header, Piece, Stored};
use super::fs::{Fs, join};
use crate::usage::{JournalIssue, RecordId};

/// What a run held, read back.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// Records to resume, in the order they were first written.
    pub(crate) live: Vec<Resumed>,
    /// Records written before damage, so possibly settled: to hand back.
    pub(crate) damaged: Vec<Stored>,
    /// Damage found (quarantined files, torn tails), to report.
    pub(crate) issues: Vec<JournalIssue>,
    /// Whether every run was read whole and every damaged file moved aside (else the
    /// adopted runs must be kept as they are).
    pub(crate) quarantined_all: bool,
    /// The adopted runs read (names in `adopted/`): the only ones a resume may remove.
    pub(crate) adopted: Vec<String>,
}

/// A record to resume, and whether an attempt of it was in flight when its run ended.
#[derive(Debug)]
pub(crate) struct Resumed {
    pub(crate) stored: Stored,
    pub(crate) in_flight: bool,
}

/// A segment written by a newer kinde-meter: refused, never read or changed.
#[derive(Debug)]
pub(crate) struct Newer {
    pub(crate) path: PathBuf,
    pub(crate) version: u32,
}

#[derive(Default)]
struct State {
    put: Option<(Stored, usize)>,
    started: bool,
    settled: bool,
    first_seen: usize,
}

struct Reader<'a> {
    fs: &'a dyn Fs,
    quarantine: PathBuf,
    records: HashMap<RecordId, State>,
    /// Counts entries and damaged stretches, in reading order.
    position: usize,
    /// Where damage was read, where the run it was read in began (its own entries and
    /// those of the runs it adopted are the only ones it can hide a settle of), and the
    /// issue (a quarantined file) that reports it.
    damage: Vec<(usize, usize, usize)>,
    /// Where each run being read began, innermost last.
    run_starts: Vec<usize>,
    adopted: Vec<String>,
    issues: Vec<JournalIssue>,
    quarantined_all: bool,
}

/// The name of segment `index` of a run.
pub(crate) fn segment_name(index: u64) -> String {
    format!("seg-{index:010}.kmj")
}

fn segment_index(name: &str) -> Option<u64> {
    name.strip_prefix("seg-")?
        .strip_suffix(".kmj")?
        .parse()
        .ok()
}

/// The segments of the run in `dir`, oldest first.
fn segments(fs: &dyn Fs, dir: &Path) -> io::Result<Vec<String>> {
    let mut found: Vec<(u64, String)> = fs
        .list(dir)?
        .into_iter()
        .filter_map(|name| segment_index(&name).map(|i| (i, name)))
        .collect();
    found.sort();
    Ok(found.into_iter().map(|(_, name)| name).collect())
}

/// The first segment in the run in `dir` (or the runs it adopted) written by a newer
/// kinde-meter, if any: checked before anything is read, so such a run is left whole.
pub(crate) fn newer_in(fs: &dyn Fs, dir: &Path) -> Option<Newer> {
    let adopted = join(dir, &["adopted"]);
    for name in fs.list(&adopted).unwrap_or_default() {
        if !name.starts_with('.')
            && let Some(newer) = newer_in(fs, &join(&adopted, &[&name]))
        {
            return Some(newer);
        }
    }
    for name in segments(fs, dir).unwrap_or_default() {
        let path = join(dir, &[&name]);
        if let Ok(bytes) = fs.read(&path)
            && let Header::Newer(version) = format::read_header(&bytes)
        {
            return Some(Newer { path, version });
        }
    }
    None
}

/// Reads the run in `dir` (and the runs it adopted). Damaged segments are moved to
/// `quarantine`.
pub(crate) fn read_run(fs: &dyn Fs, dir: &Path, quarantine: &Path) -> Result<Recovered, Newer> {
    let mut reader = Reader {
        fs,
        quarantine: quarantine.to_path_buf(),
        records: HashMap::new(),
        position: 0,
        damage: Vec::new(),
        run_starts: Vec::new(),
        adopted: Vec::new(),
        issues: Vec::new(),
        quarantined_all: true,
    };
    reader.run(dir)?;
    Ok(reader.finish())
}

impl Reader<'_> {
    fn run(&mut self, dir: &Path) -> Result<(), Newer> {
        let top = self.run_starts.is_empty();
        self.run_starts.push(self.position);
        let adopted = join(dir, &["adopted"]);
        let children = match self.fs.list(&adopted) {
            Ok(names) => names,
            Err(e) => {
                tracing::error!(target: "kinde_meter", dir = %adopted.display(), "could not list adopted journal runs; they are kept for the next start: {e}");
                self.quarantined_all = false;
                Vec::new()
            }
        };
        for name in children {
            if !name.starts_with('.') {
                self.run(&join(&adopted, &[&name]))?;
                if top {
                    self.adopted.push(name);
                }
            }
        }
        let segments = match segments(self.fs, dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(target: "kinde_meter", dir = %dir.display(), "could not list a journal run: {e}");
                self.quarantined_all = false;
                self.run_starts.pop();
                return Ok(());
            }
        };
        for name in segments {
            self.segment(&join(dir, &[&name]), dir)?;
        }
        self.run_starts.pop();
        Ok(())
    }

    fn segment(&mut self, path: &Path, dir: &Path) -> Result<(), Newer> {
        let bytes = match self.fs.read(path) {
            Ok(b) => b,
            // Removed since it was listed: a settled segment being reclaimed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                tracing::error!(target: "kinde_meter", path = %path.display(), "could not read a journal segment: {e}");
                let at = self.next_position();
                self.quarantine(path, dir, &[at], 0);
                return Ok(());
            }
        };
        match format::read_header(&bytes) {
            Header::Ok => {}
            Header::Partial => return Ok(()),
            Header::Newer(version) => {
                return Err(Newer {
                    path: path.to_path_buf(),
                    version,
                });
            }
            Header::Damaged => {
                let at = self.next_position();
                self.quarantine(path, dir, &[at], bytes.len() as u64);
                return Ok(());
            }
        }
        let (pieces, end) = format::decode_all(&bytes);
        let mut damaged_at = Vec::new();
        let mut damaged_bytes = 0;
        for piece in pieces {
            match piece {
                Piece::Entry(entry) => self.apply(entry),
                Piece::Damaged { len, .. } => {
                    damaged_at.push(self.next_position());
                    damaged_bytes += len as u64;
                }
            }
        }
        if let End::Torn { at } = end {
            let dropped = (bytes.len() - at) as u64;
            tracing::warn!(
                target: "kinde_meter",
                path = %path.display(),
                bytes = dropped,
                "a kinde-meter journal segment ends in a partial write, which is dropped"
            );
            self.issues.push(JournalIssue::TornTail {
                path: path.to_path_buf(),
                bytes: dropped,
            });
        }
        if !damaged_at.is_empty() {
            self.quarantine(path, dir, &damaged_at, damaged_bytes);
        }
        Ok(())
    }

    fn next_position(&mut self) -> usize {
        self.position += 1;
        self.position
    }

    fn apply(&mut self, entry: Entry) {
        let position = self.next_position();
        let state = self.records.entry(entry.id()).or_insert_with(|| State {
            first_seen: position,
            ..State::default()
        });
        match entry {
            Entry::Put(stored) => {
                state.put = Some((stored, position));
                state.started = false;
            }
            Entry::Start(_) => state.started = true,
            Entry::Settle(_) => state.settled = true,
        }
    }

    /// Moves the segment at `path` aside, and notes where its damage was read.
    fn quarantine(&mut self, path: &Path, dir: &Path, at: &[usize], unreadable_bytes: u64) {
        let name = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let to = join(
            &self.quarantine,
            &[&format!(
                "{}-{}-{:08x}",
                name(dir),
                name(path),
                fastrand::u32(..)
            )],
        );
        let moved = self
            .fs
            .rename(path, &to)
            .and_then(|()| self.fs.sync_dir(&self.quarantine));
        let path = match moved {
            Ok(()) => to,
            Err(e) => {
                tracing::error!(
                    target: "kinde_meter",
                    path = %path.display(),
                    "could not move a damaged journal segment to quarantine; its run is kept as it is: {e}"
                );
                self.quarantined_all = false;
                path.to_path_buf()
            }
        };
        let issue = self.issues.len();
        let run_start = self.run_starts.last().copied().unwrap_or(0);
        self.damage
            .extend(at.iter().map(|&p| (p, run_start, issue)));
        self.issues.push(JournalIssue::Quarantined {
            path,
            unreadable_bytes,
            records: 0,
            value: 0,
        });
    }

    fn finish(mut self) -> Recovered {
        let mut states: Vec<State> = self.records.into_values().collect();
        states.sort_by_key(|s| s.first_seen);
        let mut live = Vec::new();
        let mut damaged = Vec::new();
        for state in states {
            let Some((stored, put_at)) = state.put else {
                continue;
            };
            if state.settled {
                continue;
            }
            // Damage read after its last state, in its run, may have hidden its settle.
            match self
                .damage
                .iter()
                .find(|&&(at, run_start, _)| run_start < put_at && put_at < at)
            {
                Some(&(_, _, issue)) => {
                    if let Some(JournalIssue::Quarantined { records, value, .. }) =
                        self.issues.get_mut(issue)
                    {
                        *records += 1;
                        *value = value.saturating_add(stored.usage.delta());
                    }
                    damaged.push(stored);
                }
                None => live.push(Resumed {
                    stored,
                    in_flight: state.started,
                }),
            }
        }
        Recovered {
            live,
            damaged,
            issues: self.issues,
            quarantined_all: self.quarantined_all,
            adopted: self.adopted,
        }
    }
}
