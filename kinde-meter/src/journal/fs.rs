//! The file system as the journal uses it: a seam so tests can make writes fail (no
//! space, an I/O error, a read-only disk) where a real disk cannot be made to.

use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// An open segment, appended to.
pub(crate) trait Segment: Send {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Makes what was appended durable (`fdatasync`).
    fn sync(&mut self) -> io::Result<()>;
    /// Cuts the file back to `len` bytes (to take back a write that failed part-way).
    fn truncate(&mut self, len: u64) -> io::Result<()>;
}

/// A lock on a run, held until dropped (or until its process dies).
#[derive(Debug)]
pub(crate) struct RunLock(#[allow(dead_code, reason = "held for its lock")] File);

pub(crate) trait Fs: Send + Sync + fmt::Debug {
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The names in `dir`; an absent `dir` has none.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Creates `path`, which must not exist, for appending.
    fn create(&self, path: &Path) -> io::Result<Box<dyn Segment>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Makes the names in `dir` durable (new, renamed and removed files).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Locks `path` (created if absent) for this process; `None` when another holds it.
    fn try_lock(&self, path: &Path) -> io::Result<Option<RunLock>>;
}

/// The real file system.
#[derive(Debug, Default)]
pub(crate) struct RealFs;

struct RealSegment(File);

impl Segment for RealSegment {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl Fs for RealFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for entry in entries {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn Segment>> {
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(RealSegment(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<RunLock>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(RunLock(file))),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }
}

/// A path under `root` made of `parts`.
pub(crate) fn join(root: &Path, parts: &[&str]) -> PathBuf {
    let mut p = root.to_path_buf();
    for part in parts {
        p.push(part);
    }
    p
}

/// A file system that fails on demand, for the journal's fault tests: writes and syncs
/// fail with the given error (no space, an I/O error, read-only) while it is set.
#[cfg(test)]
pub(crate) mod faulty {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Debug, Default)]
    pub(crate) struct FaultyFs {
        failure: Arc<Mutex<Option<io::ErrorKind>>>,
        truncate_fails: Arc<std::sync::atomic::AtomicBool>,
        /// Bytes of each segment made durable by its last sync.
        synced: Arc<Mutex<std::collections::HashMap<PathBuf, u64>>>,
    }

    impl FaultyFs {
        /// A power cut: every segment written through this file system loses what was
        /// not synced. (Directory entries are taken as they are: the journal syncs its
        /// directory after each name it creates, renames or removes.)
        pub(crate) fn power_cut(&self) {
            for (path, len) in self.synced.lock().expect("lock").iter() {
                if let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) {
                    let _ = file.set_len(*len);
                }
            }
        }

        /// Whether taking back a failed write fails too (it succeeds unless set).
        pub(crate) fn fail_truncate(&self, fails: bool) {
            self.truncate_fails
                .store(fails, std::sync::atomic::Ordering::SeqCst);
        }

        fn truncate_fails(&self) -> bool {
            self.truncate_fails
                .load(std::sync::atomic::Ordering::SeqCst)
        }

        /// From now on, every write, sync, create and rename fails with `kind`.
        pub(crate) fn fail(&self, kind: io::ErrorKind) {
            *self.failure.lock().expect("lock") = Some(kind);
        }

        pub(crate) fn heal(&self) {
            *self.failure.lock().expect("lock") = None;
        }

        fn check(&self) -> io::Result<()> {
            match *self.failure.lock().expect("lock") {
                Some(kind) => Err(io::Error::new(kind, format!("injected: {kind}"))),
                None => Ok(()),
            }
        }
    }

    struct FaultySegment {
        inner: Box<dyn Segment>,
        fs: FaultyFs,
        path: PathBuf,
        written: u64,
    }

    impl Segment for FaultySegment {
        fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
            if let Err(e) = self.fs.check() {
                // A failing disk often takes part of a write: leave a torn tail.
                let half = &bytes[..bytes.len() / 2];
                if self.inner.append(half).is_ok() {
                    self.written += half.len() as u64;
                }
                return Err(e);
            }
            self.inner.append(bytes)?;
            self.written += bytes.len() as u64;
            Ok(())
        }

        fn sync(&mut self) -> io::Result<()> {
            self.fs.check()?;
            self.inner.sync()?;
            self.fs
                .synced
                .lock()
                .expect("lock")
                .insert(self.path.clone(), self.written);
            Ok(())
        }

        fn truncate(&mut self, len: u64) -> io::Result<()> {
            if self.fs.truncate_fails() {
                return Err(io::Error::other("injected: truncate"));
            }
            self.inner.truncate(len)?;
            self.written = len;
            Ok(())
        }
    }

    impl Fs for FaultyFs {
        fn create_dir_all(&self, path: &Path) -> io::Result<()> {
            self.check()?;
            RealFs.create_dir_all(path)
        }

        fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
            RealFs.list(dir)
        }

        fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
            RealFs.read(path)
        }

        fn create(&self, path: &Path) -> io::Result<Box<dyn Segment>> {
            self.check()?;
            let inner = RealFs.create(path)?;
            self.synced
                .lock()
                .expect("lock")
                .insert(path.to_path_buf(), 0);
            Ok(Box::new(FaultySegment {
                inner,
                fs: self.clone(),
                path: path.to_path_buf(),
                written: 0,
            }))
        }

        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            self.check()?;
            RealFs.rename(from, to)
        }

        fn remove_file(&self, path: &Path) -> io::Result<()> {
            self.check()?;
            RealFs.remove_file(path)
        }

        fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
            self.check()?;
            RealFs.remove_dir_all(path)
        }

        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            self.check()?;
            RealFs.sync_dir(dir)
        }

        fn try_lock(&self, path: &Path) -> io::Result<Option<RunLock>> {
            RealFs.try_lock(path)
        }
    }
}
