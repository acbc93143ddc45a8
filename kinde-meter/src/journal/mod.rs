//! The durable journal: what the reporter holds, on disk, so a crash loses at most the
//! open window.
//!
//! Each process writes its own *run* (`runs/<id>/`), a sequence of append-only segments,
//! under a lock it holds while it lives. An entry says a record's state (`Put`: new,
//! merged, or after a failed attempt), that an attempt is about to leave (`Start`), or that
//! it is done (`Settle`). A closed window's records are written and synced before any of
//! them is sent, and every `Start` is synced before its request leaves, so a restart knows
//! which sends are ambiguous. Outcomes are written, not synced: one lost to a power cut
//! only makes its record look in flight, which is resent as ambiguous (reported), never
//! dropped.
//!
//! At start, a process adopts every run whose lock is free (a dead process's): it moves
//! the run into its own (`adopted/`, one atomic rename, so two processes never take the
//! same run), reads it, writes what is not settled into its own segment, syncs, and only
//! then removes it. Settled space is reclaimed a segment at a time: when a segment fills,
//! what is still live is written again into a new one, synced, and the old segments are
//! removed oldest first, so a crash at any point leaves a journal that reads the same.
//!
//! Why not a database: the state is small (the records waiting for delivery) and written
//! in order, which is what an append-only log does best, with one dependency (`crc32fast`)
//! and no C. A B-tree file that is damaged is lost whole; a damaged segment loses only
//! what it held, and is kept for inspection. sled was ruled out: its maintenance is in
//! question and its 1.0 is still an alpha; redb would do, at a 40 s build and a newer MSRV.

pub(crate) mod format;
pub(crate) mod fs;
mod recovery;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use self::format::{Entry, Stored};
use self::fs::{Fs, RunLock, Segment, join};
pub(crate) use self::recovery::Recovered;
use self::recovery::segment_name;
use crate::usage::{JournalFailure, RecordId};

/// The smallest journal limit accepted.
pub(crate) const MIN_BYTES: u64 = 64 * 1024;

/// Why a journal could not be opened.
#[derive(Debug)]
#[non_exhaustive]
pub enum JournalError {
    /// The directory could not be set up or locked.
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A dead process's journal was written by a newer kinde-meter. It is left as it is.
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// Its format version.
        found: u32,
        /// The newest this build reads.
        supported: u32,
    },
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Io {
                action,
                path,
                source,
            } => write!(
                f,
                "could not {action} {} for the kinde-meter journal: {source}; check that the directory set by \
                 `Config::journal` (KINDE_METER_JOURNAL_DIR) is writable",
                path.display()
            ),
            JournalError::NewerFormat {
                path,
                found,
                supported,
            } => write!(
                f,
                "the kinde-meter journal file {} has format version {found}, newer than this build reads \
                 ({supported}): it holds usage a newer release recorded; run that release on this directory until \
                 it is delivered, or give this one another directory",
                path.display()
            ),
        }
    }
}

impl std::error::Error for JournalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JournalError::Io { source, .. } => Some(source),
            JournalError::NewerFormat { .. } => None,
        }
    }
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// A live record's last written state, kept to write again when its segment is reclaimed.
struct Live {
    /// Its last `Put`, encoded.
    put: Vec<u8>,
    /// Whether an attempt started after it.
    started: bool,
}

/// The journal of one process: its run, open for appending.
pub(crate) struct Journal {
    fs: Arc<dyn Fs>,
    run: u64,
    dir: PathBuf,
    _lock: RunLock,
    /// The segment appended to; `None` after a failed write, until one is opened again.
    segment: Option<Box<dyn Segment>>,
    index: u64,
    /// Bytes in the current segment, and in older ones not yet removed.
    bytes: u64,
    /// Whether the current segment's file was created (so it is removed in its turn).
    created: bool,
    older: VecDeque<(u64, u64)>,
    max_bytes: u64,
    segment_limit: u64,
    live: HashMap<RecordId, Live>,
    live_bytes: u64,
    unsynced: bool,
    /// Set when a write failed whose content the journal holds anyway (a settle, a
    /// state, a window that may be on disk): the next write rewrites everything first.
    rewrite_pending: bool,
    /// Set when a damaged file could not be moved aside, or a run could not be listed:
    /// the adopted runs are then kept (read again at the next start) rather than removed
    /// with the evidence.
    keep_adopted: bool,
    /// The adopted runs that were read: the only ones [`Journal::resume`] removes.
    adopted: Vec<String>,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.dir)
            .field("live", &self.live.len())
            .field("bytes", &self.total())
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens a run of this process in `root`, adopting and reading the runs of dead
    /// processes. Call [`Journal::resume`] with what is kept of them.
    pub(crate) fn open(
        root: &Path,
        max_bytes: u64,
        fs: Arc<dyn Fs>,
    ) -> Result<(Journal, Recovered), JournalError> {
        let runs = join(root, &["runs"]);
        let quarantine = join(root, &["quarantine"]);
        for dir in [&runs, &quarantine] {
            fs.create_dir_all(dir)
                .map_err(io_error("create the directory", dir))?;
        }
        remove_leftovers(&*fs, &runs);
        let run = loop {
            let id = fastrand::u64(1..);
            if !fs.list(&runs).unwrap_or_default().contains(&run_name(id)) {
                break id;
            }
        };
        let name = run_name(run);
        // Created under a hidden name and renamed, so a run in `runs/` always has its lock.
        let fresh = join(&runs, &[&format!(".new-{name}")]);
        let dir = join(&runs, &[&name]);
        fs.create_dir_all(&fresh)
            .map_err(io_error("create the directory", &fresh))?;
        let lock = fs
            .try_lock(&join(&fresh, &["lock"]))
            .map_err(io_error("lock", &fresh))?
            .ok_or_else(|| JournalError::Io {
                action: "lock",
                path: fresh.clone(),
                source: io::Error::other("locked by another process"),
            })?;
        fs.rename(&fresh, &dir)
            .and_then(|()| fs.sync_dir(&runs))
            .map_err(io_error("create the run", &dir))?;
        adopt_orphans(&*fs, &runs, &name, &dir);
        let newer = |newer: recovery::Newer| JournalError::NewerFormat {
            path: newer.path,
            found: newer.version,
            supported: format::VERSION,
        };
        // Checked before anything is read or moved aside, so a newer build finds its
        // runs as it left them.
        if let Some(found) = recovery::newer_in(&*fs, &dir) {
            give_back_adopted(&*fs, &runs, &dir);
            return Err(newer(found));
        }
        let recovered = match recovery::read_run(&*fs, &dir, &quarantine) {
            Ok(r) => r,
            Err(found) => {
                give_back_adopted(&*fs, &runs, &dir);
                return Err(newer(found));
            }
        };
        let segment_limit = (max_bytes / 4).clamp(MIN_BYTES / 2, 8 * 1024 * 1024);
        let mut journal = Journal {
            fs,
            run,
            dir,
            _lock: lock,
            segment: None,
            index: 0,
            bytes: 0,
            created: false,
            older: VecDeque::new(),
            max_bytes,
            segment_limit,
            live: HashMap::new(),
            live_bytes: 0,
            unsynced: false,
            rewrite_pending: false,
            keep_adopted: !recovered.quarantined_all,
            adopted: recovered.adopted.clone(),
        };
        // The first segment, so a failing disk shows at start, not at the first window.
        if let Err(e) = journal.rotate() {
            tracing::error!(target: "kinde_meter", dir = %journal.dir.display(), "the kinde-meter journal could not open a segment: {e}");
        }
        Ok((journal, recovered))
    }

    /// The id of this process's run: the first half of every new record's id.
    pub(crate) fn run(&self) -> u64 {
        self.run
    }

    /// Writes what is kept of the adopted runs (with their attempts as they now stand)
    /// and settles what was handed back, syncs, and removes the adopted runs.
    pub(crate) fn resume(&mut self, keep: &[Stored], settled: &[RecordId]) -> io::Result<()> {
        let mut bytes = Vec::new();
        for stored in keep {
            let start = bytes.len();
            format::encode(&Entry::Put(stored.clone()), &mut bytes);
            self.track_put(stored.id, bytes[start..].to_vec());
        }
        for &id in settled {
            format::encode(&Entry::Settle(id), &mut bytes);
        }
        if let Err(e) = self.append(&bytes).and_then(|()| self.sync()) {
            // The adopted runs stay (read again at the next start, before this run);
            // this run's next write rewrites what it holds.
            self.rewrite_pending = true;
            return Err(e);
        }
        if !self.keep_adopted {
            let adopted = join(&self.dir, &["adopted"]);
            for name in std::mem::take(&mut self.adopted) {
                // Hidden first, in one rename: a half-removed run read again could
                // bring back records its removed segments had settled.
                let hidden = join(&adopted, &[&format!(".dead-{name}")]);
                if self.fs.rename(&join(&adopted, &[&name]), &hidden).is_ok() {
                    let _ = self.fs.sync_dir(&adopted);
                    let _ = self.fs.remove_dir_all(&hidden);
                }
            }
        }
        Ok(())
    }

    /// Writes a closed window's records (new or changed) and syncs: after `Ok`, a crash
    /// does not lose them. `in_flight` are records it did not hold whose attempt is out:
    /// written with a start, so a restart resends them as ambiguous. On `Err`,
    /// [`WindowFailure::tracked`] says what the journal now holds of them.
    pub(crate) fn put_window(
        &mut self,
        records: &[Stored],
        in_flight: &[Stored],
    ) -> Result<(), WindowFailure> {
        if records.is_empty() && in_flight.is_empty() {
            return Ok(());
        }
        let mut puts = Vec::with_capacity(records.len() + in_flight.len());
        let mut bytes = Vec::new();
        for (stored, started) in records
            .iter()
            .map(|s| (s, false))
            .chain(in_flight.iter().map(|s| (s, true)))
        {
            let start = bytes.len();
            format::encode(&Entry::Put(stored.clone()), &mut bytes);
            let put = bytes[start..].to_vec();
            if started {
                format::encode(&Entry::Start(stored.id), &mut bytes);
            }
            puts.push((stored.id, put, started));
        }
        let new = bytes.len() as u64;
        if self.total() + new > self.max_bytes {
            if self.dead_bytes() > self.max_bytes / 4 {
                let _ = self.rotate();
            }
            if self.total() + new > self.max_bytes {
                return Err(WindowFailure {
                    cause: JournalFailure::Full {
                        max_bytes: self.max_bytes,
                    },
                    tracked: false,
                });
            }
        }
        let written = self.try_append(&bytes).and_then(|()| {
            self.sync().map_err(|error| Failed {
                error,
                taken_back: false,
            })
        });
        // Possibly on disk (a write not taken back, a failed sync): tracked as if
        // written, so their attempts wait for a start the journal can write, and the
        // next write rewrites them whole.
        let tracked = written.as_ref().map_or_else(|f| !f.taken_back, |()| true);
        if tracked && written.is_err() {
            self.rewrite_pending = true;
        }
        if tracked {
            for (id, put, started) in puts {
                self.track_put(id, put);
                if let Some(live) = self.live.get_mut(&id).filter(|_| started) {
                    live.started = true;
                }
            }
        }
        written.map_err(|f| WindowFailure {
            cause: JournalFailure::Io(f.error),
            tracked,
        })
    }

    /// Writes a record's new state after a failed attempt (not synced: losing it only
    /// makes the attempt look in flight). Records that were never journaled are skipped.
    /// The state is what the journal holds from now on even if the write fails: the next
    /// write then rewrites it.
    pub(crate) fn put(&mut self, stored: &Stored) -> io::Result<()> {
        if !self.live.contains_key(&stored.id) {
            return Ok(());
        }
        let mut bytes = Vec::new();
        format::encode(&Entry::Put(stored.clone()), &mut bytes);
        let written = self.append(&bytes);
        self.rewrite_pending |= written.is_err();
        self.track_put(stored.id, bytes);
        written
    }

    /// Writes that attempts of `ids` are about to leave, and syncs. On `Err`, none of
    /// the journaled ones may be sent.
    pub(crate) fn start(&mut self, ids: &[RecordId]) -> io::Result<()> {
        let mut bytes = Vec::new();
        let mut started = Vec::new();
        for id in ids {
            if self.live.contains_key(id) {
                format::encode(&Entry::Start(*id), &mut bytes);
                started.push(*id);
            }
        }
        if bytes.is_empty() {
            return Ok(());
        }
        self.append(&bytes)?;
        // Marked only once appended: a rewrite after a failure must not claim a start
        // that never reached the file. Marked even if the sync fails: it may be there.
        for id in started {
            if let Some(live) = self.live.get_mut(&id) {
                live.started = true;
            }
        }
        self.sync()
    }

    /// Writes that `id` is done with (not synced). Done with even if the write fails:
    /// the next write's rewrite leaves it out.
    pub(crate) fn settle(&mut self, id: RecordId) -> io::Result<()> {
        let Some(live) = self.live.remove(&id) else {
            return Ok(());
        };
        self.live_bytes = self.live_bytes.saturating_sub(live.put.len() as u64);
        let mut bytes = Vec::new();
        format::encode(&Entry::Settle(id), &mut bytes);
        let written = self.append(&bytes);
        self.rewrite_pending |= written.is_err();
        written
    }

    /// Whether what is on disk may differ from what the journal holds (a write failed
    /// since the last rewrite): until [`Journal::rewrite`] succeeds, nothing it holds is
    /// known to be durable.
    pub(crate) fn needs_rewrite(&self) -> bool {
        self.segment.is_none() || self.rewrite_pending
    }

    /// Writes everything live into a new segment and syncs it.
    pub(crate) fn rewrite(&mut self) -> io::Result<()> {
        self.rotate()
    }

    /// Whether `id` is on disk (so it survives this process).
    pub(crate) fn holds(&self, id: RecordId) -> bool {
        self.live.contains_key(&id)
    }

    /// Syncs what was written since the last sync.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        if !self.unsynced {
            return Ok(());
        }
        let result = match &mut self.segment {
            Some(segment) => segment.sync(),
            None => Err(io::Error::other("no segment is open")),
        };
        match result {
            Ok(()) => {
                self.unsynced = false;
                Ok(())
            }
            Err(e) => {
                self.segment = None;
                Err(e)
            }
        }
    }

    /// Ends the run: removed when nothing in it is live, else left for the next start
    /// to adopt (its lock is released when this is dropped).
    pub(crate) fn close(mut self) {
        let _ = self.sync();
        if !self.live.is_empty() || self.keep_adopted {
            return;
        }
        self.segment = None;
        let Some(runs) = self.dir.parent().map(Path::to_path_buf) else {
            return;
        };
        let name = run_name(self.run);
        let hidden = join(&runs, &[&format!(".dead-{name}")]);
        if self.fs.rename(&self.dir, &hidden).is_ok() {
            let _ = self.fs.sync_dir(&runs);
            let _ = self.fs.remove_dir_all(&hidden);
        }
    }

    fn total(&self) -> u64 {
        self.bytes + self.older.iter().map(|s| s.1).sum::<u64>()
    }

    fn track_put(&mut self, id: RecordId, put: Vec<u8>) {
        self.live_bytes += put.len() as u64;
        if let Some(old) = self.live.insert(
            id,
            Live {
                put,
                started: false,
            },
        ) {
            self.live_bytes = self.live_bytes.saturating_sub(old.put.len() as u64);
        }
    }

    fn dead_bytes(&self) -> u64 {
        self.total().saturating_sub(self.live_bytes)
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.try_append(bytes).map_err(|f| f.error)
    }

    /// Appends `bytes`; on failure, says whether the segment is as it was before.
    fn try_append(&mut self, bytes: &[u8]) -> Result<(), Failed> {
        // A new segment after a failure (the old one may end in a torn write), or when
        // the settled part is at least as big as the live one: each rotation rewrites
        // what is live, so it waits until that much space comes back.
        let full = self.bytes + bytes.len() as u64 > self.segment_limit
            && self.dead_bytes() >= self.live_bytes.max(self.segment_limit / 2);
        if (self.needs_rewrite() || full)
            && let Err(error) = self.rotate()
        {
            // Nothing of `bytes` was written.
            return Err(Failed {
                error,
                taken_back: true,
            });
        }
        let Some(segment) = &mut self.segment else {
            return Err(Failed {
                error: io::Error::other("no segment is open"),
                taken_back: true,
            });
        };
        match segment.append(bytes) {
            Ok(()) => {
                self.bytes += bytes.len() as u64;
                self.unsynced = true;
                Ok(())
            }
            Err(error) => {
                // Take back what part of it landed; if that fails too, the segment may
                // end in whole entries of it, or a torn one: write on in a new segment,
                // which starts with everything live.
                let taken_back = segment.truncate(self.bytes).is_ok();
                if !taken_back {
                    self.segment = None;
                }
                Err(Failed { error, taken_back })
            }
        }
    }

    /// Opens a new segment holding every live record, syncs it, then removes the older
    /// segments, oldest first (each removal synced before the next: a power cut that kept
    /// an older segment but not a newer one could bring back what the newer settled).
    fn rotate(&mut self) -> io::Result<()> {
        let mut bytes = format::header().to_vec();
        for (id, live) in &self.live {
            bytes.extend_from_slice(&live.put);
            if live.started {
                format::encode(&Entry::Start(*id), &mut bytes);
            }
        }
        if self.created {
            self.older.push_back((self.index, self.bytes));
        }
        self.segment = None;
        self.created = false;
        self.bytes = 0;
        // A new number even when this fails, so a half-made file is never appended to.
        self.index += 1;
        let path = join(&self.dir, &[&segment_name(self.index)]);
        let mut segment = self.fs.create(&path)?;
        self.created = true;
        segment.append(&bytes)?;
        self.bytes = bytes.len() as u64;
        segment.sync()?;
        self.fs.sync_dir(&self.dir)?;
        self.segment = Some(segment);
        self.unsynced = false;
        self.rewrite_pending = false;
        // Everything live is in the new segment, synced: the older ones hold nothing
        // that is not settled or written again.
        while let Some(&(old, _)) = self.older.front() {
            let removed = self
                .fs
                .remove_file(&join(&self.dir, &[&segment_name(old)]))
                .and_then(|()| self.fs.sync_dir(&self.dir));
            if removed.is_err() {
                break;
            }
            self.older.pop_front();
        }
        Ok(())
    }
}

/// An append that failed, and whether the segment is as it was before it.
struct Failed {
    error: io::Error,
    taken_back: bool,
}

/// A window the journal could not write.
#[derive(Debug)]
pub(crate) struct WindowFailure {
    pub(crate) cause: JournalFailure,
    /// Whether the journal holds the window's records anyway (they may be on disk, and
    /// its next write rewrites them). If not, nothing of the window is on disk, and the
    /// records keep the state they had before it.
    pub(crate) tracked: bool,
}

fn run_name(id: u64) -> String {
    format!("{id:016x}")
}

/// Removes runs that were being removed (all settled) when their process died.
fn remove_leftovers(fs: &dyn Fs, runs: &Path) {
    // `.new-` runs are left: one may be a live process's, between its creation and its
    // rename, and an empty directory costs nothing.
    for name in fs.list(runs).unwrap_or_default() {
        if name.starts_with(".dead-") {
            let _ = fs.remove_dir_all(&join(runs, &[&name]));
        }
    }
}

/// Moves every run whose lock is free into `dir/adopted/`.
fn adopt_orphans(fs: &dyn Fs, runs: &Path, own: &str, dir: &Path) {
    let adopted = join(dir, &["adopted"]);
    for name in fs.list(runs).unwrap_or_default() {
        if name.starts_with('.') || name == own {
            continue;
        }
        let path = join(runs, &[&name]);
        // Held by a live process, or moved away by another adopter since listed.
        let Ok(Some(_lock)) = fs.try_lock(&join(&path, &["lock"])) else {
            continue;
        };
        if fs.create_dir_all(&adopted).is_err() {
            return;
        }
        let _ = fs.sync_dir(dir);
        // The rename is the hand-over: whoever's rename succeeds owns the run.
        if fs.rename(&path, &join(&adopted, &[&name])).is_ok() {
            let _ = fs.sync_dir(runs);
            let _ = fs.sync_dir(&adopted);
        }
    }
}

/// Moves adopted runs back to `runs/` (when this process will not deliver them). Its
/// own run is removed only if they all went back; else it stays, adoptable as a whole.
fn give_back_adopted(fs: &dyn Fs, runs: &Path, dir: &Path) {
    let adopted = join(dir, &["adopted"]);
    let mut all_back = true;
    for name in fs.list(&adopted).unwrap_or_default() {
        if !name.starts_with('.') {
            all_back &= fs
                .rename(&join(&adopted, &[&name]), &join(runs, &[&name]))
                .is_ok();
        }
    }
    let _ = fs.sync_dir(runs);
    if all_back {
        let _ = fs.remove_dir_all(dir);
    }
}

#[cfg(test)]
pub(crate) mod tests;
