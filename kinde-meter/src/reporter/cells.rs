//! Pre-aggregated usage cells: the per-call hot path.
//!
//! A *key* is (agreement, feature, meter type). Each key has a *slot* in a sharded table;
//! a delta slot holds one *cell* per thread that recorded it, an absolute slot one shared
//! cell. A thread keeps the cells it uses in a thread-local cache, open-addressed by the
//! key's hash (computed when the agreement id and the feature code were built), so a
//! steady-state call is one probe plus a plain add into a cell only that thread writes: no
//! lock, no allocation, no shared read-modify-write, no clock read, and no more work with
//! 100,000 active customers than with one.
//!
//! Delta cells hold a monotonic total; the flusher keeps a watermark per cell and takes
//! `total - watermark`, so what it reads is exactly what it removes and a concurrent add is
//! either in this flush or the next, never lost. A drain takes every key: usage is stamped
//! with the window it was recorded in, never held back for a later one.
//!
//! The pending-key bound counts slots that took usage since the last drain, plus the
//! records the worker holds. A drain leaves every slot with nothing pending, so it uncounts
//! them all and clears each cell's admission: the first add to a key after a drain goes
//! through the table, which counts the key again (or refuses it at the bound), and so does
//! every add after the final drain of a shutdown, which the table reports. A slot that a
//! thread cache still holds stays in the table after a drain, uncounted, and is freed once
//! no cache holds it. A thread cache holds at
//! most two slots per key of the bound, and once the table is crowded every drain asks all
//! threads to drop their caches, so memory stays bounded by `max_pending_keys` keys per
//! thread that records, and an idle thread pins memory but never the bound.
use std::cell::Cell;
use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::ThreadId;

use crate::api::{AgreementId, FeatureCode, InvalidInput, MeterType, content_hash};

/// Bumped when the table is crowded, so every thread drops its cached cells on its next
/// call and idle keys can be freed. One counter for all registries: bumps are rare.
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// The global registry's id; other registries count up from 1.
pub(crate) const GLOBAL_ID: u64 = 0;
static NEXT_REGISTRY_ID: AtomicU64 = AtomicU64::new(GLOBAL_ID + 1);

const SHARDS: usize = 16;

/// (agreement, feature, meter type): what one record is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Key {
    pub(crate) agreement: AgreementId,
    pub(crate) feature: FeatureCode,
    pub(crate) meter_type: MeterType,
}

/// An agreement as a metered call names it: an id from a scope, or a string from an
/// explicit `agreement = ...` that is validated only when its key is first seen.
#[derive(Clone, Copy, Debug)]
pub(crate) enum AgreementRef<'a> {
    Id(&'a AgreementId),
    Str(&'a str),
}

impl<'a> From<&'a AgreementId> for AgreementRef<'a> {
    fn from(id: &'a AgreementId) -> Self {
        AgreementRef::Id(id)
    }
}

impl<'a> From<&'a str> for AgreementRef<'a> {
    fn from(s: &'a str) -> Self {
        AgreementRef::Str(s)
    }
}

impl AgreementRef<'_> {
    /// The id, validating a string.
    pub(crate) fn to_id(self) -> Result<AgreementId, InvalidInput> {
        match self {
            AgreementRef::Id(id) => Ok(id.clone()),
            AgreementRef::Str(s) => AgreementId::new(s),
        }
    }
}

/// One cell, with the key it counts. Not padded to a cache line: a thread's cells are
/// allocated on that thread (allocators serve threads from separate arenas or caches),
/// and padding would double the memory of every key.
#[derive(Debug)]
pub(crate) struct UsageCell {
    /// Delta: monotonic (wrapping) sum of everything added. Absolute: the last value set.
    total: AtomicU64,
    /// Absolute: bumped on every set, so the flusher sees that a value is new.
    version: AtomicU64,
    /// Flusher-owned: the `total` (delta) or `version` (absolute) already taken.
    taken: AtomicU64,
    /// The only thread that adds to this cell; `None` for shared cells.
    owner: Option<ThreadId>,
    /// [`ADMITTED`] while a cached add may go straight into this cell: set by the table path
    /// once it has counted the key toward the bound, cleared by every drain (the key leaves
    /// the bound), and left clear by the final drain of a shutdown (usage after it must
    /// reach the table to be reported). Read by the hot path on the line the add touches.
    admitted: AtomicBool,
    registry: u64,
    /// The key, with the agreement id object of the call that made the cell: the thread
    /// caches compare its address first.
    key: Key,
}

impl UsageCell {
    fn new(owner: Option<ThreadId>, registry: u64, key: Key) -> Self {
        Self {
            total: AtomicU64::new(0),
            version: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            owner,
            admitted: AtomicBool::new(false),
            registry,
            key,
        }
    }

    /// Whether a cached add may go into this cell without the table (see `admitted`).
    #[inline(always)]
    fn is_admitted(&self) -> bool {
        self.admitted.load(Relaxed)
    }

    /// Adds to a cell this thread owns. A plain load and store: no other thread writes it.
    /// Refuses (`false`) a value that would take the usage pending in the cell past
    /// `u64::MAX`: the wrapping total could not tell that sum from a small one.
    #[inline]
    fn add_owned(&self, value: u64) -> bool {
        let t = self.total.load(Relaxed);
        // A stale `taken` only overstates what is pending: it may refuse early, never
        // accept a sum that wraps.
        let pending = t.wrapping_sub(self.taken.load(Relaxed));
        if pending.checked_add(value).is_none() {
            return false;
        }
        self.total.store(t.wrapping_add(value), Relaxed);
        true
    }

    /// Adds to a shared cell (used when thread-local storage is gone).
    fn add_shared(&self, value: u64) -> bool {
        self.total
            .fetch_update(Relaxed, Relaxed, |t| {
                let pending = t.wrapping_sub(self.taken.load(Relaxed));
                pending.checked_add(value).map(|_| t.wrapping_add(value))
            })
            .is_ok()
    }

    /// Sets an absolute value (last write wins).
    #[inline]
    fn set(&self, value: u64) {
        self.total.store(value, Relaxed);
        self.version.fetch_add(1, Release);
    }

    #[inline]
    fn apply(&self, meter_type: MeterType, value: u64) -> bool {
        match meter_type {
            MeterType::Delta if self.owner.is_some() => self.add_owned(value),
            MeterType::Delta => self.add_shared(value),
            MeterType::Absolute => {
                self.set(value);
                true
            }
        }
    }

    /// Delta not yet taken.
    fn pending_delta(&self) -> u64 {
        self.total
            .load(Acquire)
            .wrapping_sub(self.taken.load(Relaxed))
    }

    /// Takes the delta not yet taken.
    fn take_delta(&self) -> u64 {
        let now = self.total.load(Acquire);
        let before = self.taken.swap(now, Relaxed);
        now.wrapping_sub(before)
    }

    /// Takes the absolute value if it was set since the last take.
    fn take_absolute(&self) -> Option<u64> {
        let version = self.version.load(Acquire);
        if version == self.taken.load(Relaxed) {
            return None;
        }
        let value = self.total.load(Relaxed);
        self.taken.store(version, Relaxed);
        Some(value)
    }
}

#[derive(Debug, Default)]
struct Slot {
    cells: Vec<Arc<UsageCell>>,
    /// Whether this slot counts toward the bound: it took usage through the table since
    /// the last drain.
    counted: bool,
}

#[derive(Debug, Default)]
struct Shard {
    slots: HashMap<Key, Slot>,
    /// Delta usage drains took out of this shard's cells, in total.
    taken: u128,
    /// Set by the final drain of a shutdown: usage added through the table afterwards is
    /// kept for the next start but reported, since no report accounts for it.
    stopped: bool,
}

/// What went wrong with a call's usage. Owns what the report needs, so the caller can
/// report it after the scope lookup has ended.
#[derive(Debug)]
pub(crate) enum Problem {
    /// Refused: the bound is reached and this key is not pending.
    Overflow {
        agreement: AgreementId,
        max_pending_keys: usize,
    },
    /// Refused: the feature code is invalid.
    InvalidFeature(InvalidInput),
    /// Refused: the agreement id is invalid.
    InvalidAgreement(InvalidInput),
    /// Added, but after the reporter's final drain: it waits for the next start.
    AfterShutdown { agreement: AgreementId },
    /// Refused: the key's usage pending in this window would pass `u64::MAX`.
    PendingSumTooLarge,
}

/// What one drain found for a key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Drained {
    pub(crate) key: Key,
    /// Delta: the sum taken (may exceed `u64::MAX` across threads). Absolute: the value.
    pub(crate) value: u128,
}

/// A table of cells. The global one backs `record` and `#[meter]`; each
/// non-global `Reporter` has its own.
pub(crate) struct Registry {
    id: u64,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    slots_pending: AtomicUsize,
    /// Records the worker holds (waiting or in flight); they count toward the bound.
    records_held: AtomicUsize,
    max_pending_keys: AtomicUsize,
    /// Set when a new key arrives past the high-water mark or is refused; the worker
    /// flushes early when it sees it.
    wants_flush: tokio::sync::Notify,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("id", &self.id)
            .field("keys", &self.slots_pending.load(Relaxed))
            .field("max_pending_keys", &self.max_pending_keys.load(Relaxed))
            .finish_non_exhaustive()
    }
}

/// Lets thread caches grow to hold `max_pending_keys` keys (they never shrink: a smaller bound
/// only means fewer keys reach them).
fn let_caches_hold(max_pending_keys: usize) {
    let slots = max_pending_keys
        .saturating_mul(2)
        .clamp(CACHE_MIN_SLOTS, MAX_CACHE_SLOTS)
        .next_power_of_two();
    CACHE_MAX_SLOTS.fetch_max(slots, Relaxed);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here can leave a slot half-updated, so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    pub(crate) fn new(max_pending_keys: usize) -> Self {
        Self::with_id(NEXT_REGISTRY_ID.fetch_add(1, Relaxed), max_pending_keys)
    }

    /// The registry behind `record` and `#[meter]`.
    pub(crate) fn global(max_pending_keys: usize) -> Self {
        Self::with_id(GLOBAL_ID, max_pending_keys)
    }

    fn with_id(id: u64, max_pending_keys: usize) -> Self {
        let_caches_hold(max_pending_keys);
        Self {
            id,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            slots_pending: AtomicUsize::new(0),
            records_held: AtomicUsize::new(0),
            max_pending_keys: AtomicUsize::new(max_pending_keys),
            wants_flush: tokio::sync::Notify::new(),
        }
    }

    pub(crate) fn set_max_pending_keys(&self, max_pending_keys: usize) {
        let_caches_hold(max_pending_keys);
        self.max_pending_keys.store(max_pending_keys, Relaxed);
    }

    pub(crate) fn max_pending_keys(&self) -> usize {
        self.max_pending_keys.load(Relaxed)
    }

    /// Slots that count toward the bound.
    pub(crate) fn pending_slots(&self) -> usize {
        self.slots_pending.load(Relaxed)
    }

    /// Records the worker holds; they count toward the bound.
    pub(crate) fn set_records_held(&self, records: usize) {
        self.records_held.store(records, Relaxed);
    }

    /// Keys in the table plus records the worker holds: what the bound limits.
    pub(crate) fn pending_keys(&self) -> usize {
        self.pending_slots() + self.records_held.load(Relaxed)
    }

    /// Resolves when a caller asked for an early flush.
    pub(crate) async fn flush_wanted(&self) {
        self.wants_flush.notified().await;
    }

    fn high_water(&self) -> usize {
        self.max_pending_keys() / 2
    }

    fn shard(&self, key: &Key) -> &Mutex<Shard> {
        let h = self.hasher.hash_one(key) as usize;
        &self.shards[h % self.shards.len()]
    }

    /// Adds `value` for a key. `Err` says what to report.
    #[inline]
    pub(crate) fn record(
        &self,
        agreement: AgreementRef<'_>,
        feature: &FeatureCode,
        meter_type: MeterType,
        value: u64,
    ) -> Result<(), Problem> {
        let lookup = match agreement {
            AgreementRef::Id(id) => record_cached(self.id, id, feature, meter_type, value),
            AgreementRef::Str(s) => record_cached(self.id, s, feature, meter_type, value),
        };
        match lookup {
            Lookup::Hit => Ok(()),
            miss => self.record_in_table(agreement, feature, meter_type, value, miss),
        }
    }

    /// Adds through the table (its shard lock), caching the cell for next time.
    #[cold]
    pub(crate) fn record_in_table(
        &self,
        agreement: AgreementRef<'_>,
        feature: &FeatureCode,
        meter_type: MeterType,
        value: u64,
        lookup: Lookup,
    ) -> Result<(), Problem> {
        let cache = lookup != Lookup::NoCache;
        let (cell, agreement, stopped) = self.cell_for(agreement, feature, meter_type, cache)?;
        if !cell.apply(meter_type, value) {
            return Err(Problem::PendingSumTooLarge);
        }
        if stopped {
            // Not cached, so every later call comes here and is reported too.
            return Err(Problem::AfterShutdown { agreement });
        }
        if cache {
            let key = &cell.key;
            let hash = key_hash(
                key.agreement.content_hash(),
                key.feature.content_hash(),
                self.id,
                meter_type,
            );
            // The cache may be gone already during thread teardown.
            let _ = with_cache(|cache| cache.insert(hash, Arc::clone(&cell)));
        }
        Ok(())
    }

    /// Finds or creates this thread's cell for a key (a shared cell when `per_thread` is
    /// false or the key is absolute), with the validated agreement and whether the
    /// reporter has stopped. Counts the slot toward the bound.
    fn cell_for(
        &self,
        agreement: AgreementRef<'_>,
        feature: &FeatureCode,
        meter_type: MeterType,
        per_thread: bool,
    ) -> Result<(Arc<UsageCell>, AgreementId, bool), Problem> {
        let key = Key {
            agreement: agreement.to_id().map_err(Problem::InvalidAgreement)?,
            feature: FeatureCode::new_checked(feature).map_err(Problem::InvalidFeature)?,
            meter_type,
        };
        let owner = match meter_type {
            MeterType::Delta if per_thread => Some(std::thread::current().id()),
            _ => None,
        };
        let agreement = key.agreement.clone();
        let mut shard = lock(self.shard(&key));
        let stopped = shard.stopped;
        let counted = shard.slots.get(&key).is_some_and(|slot| slot.counted);
        if !counted {
            // New to the bound: a new key, or one whose usage a drain took.
            let keys = self.pending_keys();
            let max_pending_keys = self.max_pending_keys();
            if keys >= max_pending_keys {
                self.wants_flush.notify_one();
                return Err(Problem::Overflow {
                    agreement,
                    max_pending_keys,
                });
            }
            if keys + 1 >= self.high_water() {
                self.wants_flush.notify_one();
            }
            self.slots_pending.fetch_add(1, Relaxed);
        }
        let slot = shard.slots.entry(key.clone()).or_default();
        slot.counted = true;
        let cell = match slot.cells.iter().find(|c| c.owner == owner) {
            Some(cell) => Arc::clone(cell),
            None => {
                let cell = Arc::new(UsageCell::new(owner, self.id, key.clone()));
                slot.cells.push(Arc::clone(&cell));
                cell
            }
        };
        // Under the shard lock, so a drain cannot clear it in between: counted, and not
        // stopped, so cached adds may go straight in until the next drain.
        cell.admitted.store(!stopped, Relaxed);
        Ok((cell, agreement, stopped))
    }

    /// Takes everything recorded since the last drain, one entry per key with something
    /// new, and uncounts every slot. Frees cells and keys nobody can add to any more.
    pub(crate) fn drain(&self) -> Vec<Drained> {
        self.drain_shards(false)
    }

    /// The last drain of a shutdown: like [`Registry::drain`], and marks every shard
    /// stopped under its lock, so usage added through the table afterwards is reported as
    /// [`Problem::AfterShutdown`]. Thread caches are dropped first (a new generation), so
    /// later calls reach the table.
    pub(crate) fn drain_final(&self) -> Vec<Drained> {
        GENERATION.fetch_add(1, Relaxed);
        self.drain_shards(true)
    }

    /// Lets usage added through the table be delivered again (a new start).
    pub(crate) fn restart(&self) {
        for shard in self.shards.iter() {
            lock(shard).stopped = false;
        }
    }

    fn drain_shards(&self, stop: bool) -> Vec<Drained> {
        let mut out = Vec::new();
        let mut slots_left = 0;
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            shard.stopped |= stop;
            let Shard { slots, taken, .. } = &mut *shard;
            slots.retain(|key, slot| {
                let mut sum: u128 = 0;
                let mut absolute = None;
                slot.cells.retain_mut(|cell| {
                    // The key leaves the bound: the next add to this cell goes through the
                    // table, which counts it again (or, after the final drain, reports it).
                    cell.admitted.store(false, Relaxed);
                    // Unique means no thread cache holds it, so nobody can add to it again
                    // (`get_mut` synchronises with the last holder's drop).
                    let orphan = Arc::get_mut(cell).is_some();
                    match key.meter_type {
                        MeterType::Delta => sum += u128::from(cell.take_delta()),
                        MeterType::Absolute => {
                            if let Some(v) = cell.take_absolute() {
                                absolute = Some(v);
                            }
                        }
                    }
                    !orphan
                });
                match absolute {
                    Some(v) => sum = u128::from(v),
                    // Counted under this shard's lock with the watermarks it moved, so a
                    // concurrent `recorded_delta` sees the usage either here or in cells.
                    None => *taken += sum,
                }
                if sum != 0 || absolute.is_some() {
                    out.push(Drained {
                        key: key.clone(),
                        value: sum,
                    });
                }
                // Nothing is pending in this slot any more: it leaves the bound.
                if std::mem::take(&mut slot.counted) {
                    self.slots_pending.fetch_sub(1, Relaxed);
                }
                !slot.cells.is_empty()
            });
            slots_left += slots.len();
        }
        if self.pending_keys() >= self.high_water() || slots_left >= self.max_pending_keys() {
            // Crowded: ask every thread to let go of its cached cells so that idle keys
            // can be freed by the next drain.
            GENERATION.fetch_add(1, Relaxed);
        }
        out
    }

    /// Delta usage all drains took, in total: what records were made of.
    pub(crate) fn taken_delta(&self) -> u128 {
        self.shards.iter().map(|s| lock(s).taken).sum()
    }

    /// All delta usage ever added: what drains took plus what waits in cells. Exact at
    /// any moment, since each shard's part is read under its lock.
    pub(crate) fn recorded_delta(&self) -> u128 {
        let mut sum = 0u128;
        for shard in self.shards.iter() {
            let shard = lock(shard);
            sum += shard.taken;
            for (key, slot) in &shard.slots {
                if key.meter_type == MeterType::Delta {
                    sum += slot
                        .cells
                        .iter()
                        .map(|c| u128::from(c.pending_delta()))
                        .sum::<u128>();
                }
            }
        }
        sum
    }
}

/// The outcome of a cache probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Added.
    Hit,
    /// Not cached: look the key up in the table.
    Miss,
    /// Thread-local storage is gone (thread teardown): use a shared cell, uncached.
    NoCache,
}

/// The hot path: adds to this thread's cached cell for the key, if there is one.
///
/// One thread-local load, one probe at the slot the key's hash picks (the agreement's and
/// the feature's hashes were computed when they were built), address compares, and a plain
/// add into a cell only this thread writes. Its cost does not depend on how many keys are
/// active, up to the cache's size (see [`LocalCache`]). Every argument is a plain word:
/// an enum passed through memory here stalls store forwarding on every call.
#[inline(always)]
pub(crate) fn record_cached<A: ProbeAgreement>(
    registry: u64,
    agreement: A,
    feature: &FeatureCode,
    meter_type: MeterType,
    value: u64,
) -> Lookup {
    let cache = CACHE.with(Cell::get);
    if cache.is_null() || cache == GONE {
        // Created (or found gone) by the slow path.
        return if cache.is_null() {
            Lookup::Miss
        } else {
            Lookup::NoCache
        };
    }
    // SAFETY: a pointer other than null and `GONE` came from `Box::into_raw` in
    // `new_cache` for this thread and is freed only after `GONE` replaced it. Only a
    // shared reference is made here, and nothing runs while it is live but this
    // function's own reads and the cell's atomic add: the only `&mut` (in `with_cache`)
    // is made by the slow path, never while this one lives.
    let cache = unsafe { &*cache };
    let hash = key_hash(
        agreement.hash(),
        feature.content_hash(),
        registry,
        meter_type,
    );
    let found = cache.find(hash, |cell| {
        cell.registry == registry
            && cell.key.meter_type == meter_type
            && agreement.is(&cell.key.agreement)
            && same_feature(feature, &cell.key.feature)
    });
    let Some(cell) = found.filter(|cell| cell.is_admitted()) else {
        return Lookup::Miss;
    };
    // A cached delta cell is always this thread's own.
    match meter_type {
        MeterType::Delta => {
            if !cell.add_owned(value) {
                // The table path refuses it and says why.
                return Lookup::Miss;
            }
        }
        MeterType::Absolute => cell.set(value),
    }
    Lookup::Hit
}

/// An agreement as a call gives it to [`record_cached`].
pub(crate) trait ProbeAgreement: Copy {
    /// The id's content hash.
    fn hash(self) -> u64;
    /// Whether this is `id`.
    fn is(self, id: &AgreementId) -> bool;
}

impl ProbeAgreement for &AgreementId {
    #[inline(always)]
    fn hash(self) -> u64 {
        self.content_hash()
    }
    #[inline(always)]
    fn is(self, id: &AgreementId) -> bool {
        // The same id object as the one the cell was made with, else the same text.
        self.ptr() == id.ptr() || self.as_str() == id.as_str()
    }
}

impl ProbeAgreement for &str {
    #[inline(always)]
    fn hash(self) -> u64 {
        content_hash(self.as_bytes())
    }
    #[inline(always)]
    fn is(self, id: &AgreementId) -> bool {
        self == id.as_str()
    }
}

#[inline(always)]
fn same_feature(probe: &FeatureCode, key: &FeatureCode) -> bool {
    let (probe, key) = (probe.as_str(), key.as_str());
    (probe.as_ptr() == key.as_ptr() && probe.len() == key.len()) || probe == key
}

/// Combines the parts' hashes (each already mixed) into the key's. The low half, which
/// picks the slot, depends on the agreement only: a customer's features sit in adjacent
/// slots, so the calls of one request share a cache line of the table. The high half adds
/// the feature and meter type, so that a probe's first compare tells them apart.
#[inline(always)]
fn key_hash(agreement: u64, feature: u64, registry: u64, meter_type: MeterType) -> u64 {
    let home = agreement ^ registry.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let kind = (feature ^ meter_type as u64).wrapping_mul(0xff51_afd7_ed55_8ccd);
    (home & 0xffff_ffff) | ((home ^ kind) & !0xffff_ffff)
}

/// One cached cell. The key it stands for is the cell's own ([`UsageCell::key`]), which also
/// keeps the strings whose addresses the probe compares alive.
struct CacheEntry {
    hash: u64,
    cell: Arc<UsageCell>,
}

/// How many slots a lookup tries, from the key's home slot on, before it counts as a
/// miss. Bounded so that keys made to collide cost a trip to the table, never a long
/// scan.
const PROBE_LIMIT: usize = 16;
/// The smallest cache, in slots.
const CACHE_MIN_SLOTS: usize = 64;
/// No thread cache grows past this many slots (64 MiB of entries, for a bound of two
/// million keys), whatever the bound; below 2^32, since a slot is picked by the low half
/// of the key's hash.
const MAX_CACHE_SLOTS: usize = 1 << 22;
/// The largest cache: two slots per key of the largest bound of any registry, so a
/// thread that records every pending key still finds each one in the cache.
static CACHE_MAX_SLOTS: AtomicUsize = AtomicUsize::new(CACHE_MIN_SLOTS);

/// A thread's cells, open-addressed by key hash with linear probing. Entries are never
/// removed one by one (an insert into a full probe window replaces the entry in the
/// key's home slot, and a new generation clears them all), so a probe stops at the first
/// empty slot. It doubles at half full (so probe windows seldom fill and evict), up to
/// [`CACHE_MAX_SLOTS`].
struct LocalCache {
    generation: u64,
    /// Set while a `&mut` to this cache is live, so a re-entrant use cannot alias it.
    busy: bool,
    len: usize,
    slots: Box<[Option<CacheEntry>]>,
}

impl LocalCache {
    fn new(slots: usize) -> Self {
        Self {
            generation: GENERATION.load(Relaxed),
            busy: false,
            len: 0,
            slots: (0..slots).map(|_| None).collect(),
        }
    }

    #[inline(always)]
    fn find(&self, hash: u64, is: impl Fn(&UsageCell) -> bool) -> Option<&UsageCell> {
        if self.generation != GENERATION.load(Relaxed) {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        for _ in 0..PROBE_LIMIT {
            let entry = self.slots.get(i)?.as_ref()?;
            if entry.hash == hash && is(&entry.cell) {
                return Some(&entry.cell);
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// Caches `cell` under `hash`, after a miss.
    fn insert(&mut self, hash: u64, cell: Arc<UsageCell>) {
        let generation = GENERATION.load(Relaxed);
        if self.generation != generation {
            // Start small again: a cache as large as the keys of a crowded past window
            // would spread today's few keys over megabytes, a cache miss per call.
            let busy = self.busy;
            *self = LocalCache::new(CACHE_MIN_SLOTS);
            self.busy = busy;
        }
        let max_slots = CACHE_MAX_SLOTS.load(Relaxed);
        if (self.len + 1) * 2 > self.slots.len() && self.slots.len() < max_slots {
            self.grow();
        }
        let mut entry = CacheEntry { hash, cell };
        if self.slots.len() < max_slots {
            match self.place(entry) {
                Ok(()) => return,
                // A crowded window: more room beats evicting a key that is still in use.
                Err(crowded) => {
                    self.grow();
                    entry = crowded;
                }
            }
        }
        if let Err(entry) = self.place(entry) {
            self.evict_home(entry);
        }
    }

    /// Replaces the entry in `entry`'s home slot (its window is full).
    fn evict_home(&mut self, entry: CacheEntry) {
        let home = entry.hash as usize & (self.slots.len() - 1);
        self.slots[home] = Some(entry);
    }

    /// Puts `entry` in the first free slot of its window (or over its own key's entry);
    /// gives it back if the window is full.
    fn place(&mut self, entry: CacheEntry) -> Result<(), CacheEntry> {
        let mask = self.slots.len() - 1;
        let home = entry.hash as usize & mask;
        let mut i = home;
        for _ in 0..PROBE_LIMIT {
            let slot = &mut self.slots[i];
            match slot {
                None => {
                    self.len += 1;
                    *slot = Some(entry);
                    return Ok(());
                }
                // The same key cached again (its cell was replaced after a refusal).
                Some(old) if Arc::ptr_eq(&old.cell, &entry.cell) || same_key(old, &entry) => {
                    *old = entry;
                    return Ok(());
                }
                Some(_) => i = (i + 1) & mask,
            }
        }
        Err(entry)
    }

    fn grow(&mut self) {
        let bigger = (0..self.slots.len() * 2).map(|_| None).collect();
        let old = std::mem::replace(&mut self.slots, bigger);
        self.len = 0;
        for entry in old.into_vec().into_iter().flatten() {
            if let Err(entry) = self.place(entry) {
                self.evict_home(entry);
            }
        }
    }
}

fn same_key(a: &CacheEntry, b: &CacheEntry) -> bool {
    a.hash == b.hash && a.cell.registry == b.cell.registry && a.cell.key == b.cell.key
}

/// Marks the per-thread cache as freed (thread teardown).
const GONE: *mut LocalCache = ptr::without_provenance_mut(1);

thread_local! {
    // This thread's cache: null until first used, `GONE` once freed. A raw pointer in a
    // `const`, destructor-free thread-local is one load on the hot path (a thread-local
    // with a destructor adds a registration check and a `RefCell` a borrow flag).
    static CACHE: Cell<*mut LocalCache> = const { Cell::new(ptr::null_mut()) };
    // Frees the cache when the thread exits, releasing its cells so they can be reaped.
    static CACHE_OWNER: CacheOwner = const { CacheOwner };
}

struct CacheOwner;

impl Drop for CacheOwner {
    fn drop(&mut self) {
        free_cache();
    }
}

fn free_cache() {
    let cache = CACHE.with(|slot| slot.replace(GONE));
    if !cache.is_null() && cache != GONE {
        // SAFETY: a pointer other than null and `GONE` came from `Box::into_raw` in
        // `new_cache` for this thread, and swapping `GONE` in first means no later call
        // can reach it; no reference to it is live (destructors run outside the hot path
        // and `with_cache`).
        drop(unsafe { Box::from_raw(cache) });
    }
}

#[cold]
fn new_cache() -> *mut LocalCache {
    if CACHE_OWNER.try_with(|_| ()).is_err() {
        // The thread is exiting: no cache any more.
        CACHE.with(|slot| slot.set(GONE));
        return GONE;
    }
    let cache = Box::into_raw(Box::new(LocalCache::new(CACHE_MIN_SLOTS)));
    CACHE.with(|slot| slot.set(cache));
    cache
}

/// Runs `f` on this thread's cache; `None` during thread teardown or if re-entered.
fn with_cache<R>(f: impl FnOnce(&mut LocalCache) -> R) -> Option<R> {
    let mut cache = CACHE.with(Cell::get);
    if cache.is_null() {
        cache = new_cache();
    }
    if cache == GONE {
        return None;
    }
    // SAFETY: `cache` came from `Box::into_raw` for this thread and is freed only after
    // `GONE` replaced it, so it is live. The `busy` flag makes this the only `&mut`: it is
    // read through the raw pointer first, and a nested call (impossible today: nothing
    // here runs user code) would get `None` instead of a second reference. No shared
    // reference from `record_cached` is live: that function returns before the slow path
    // that calls this one runs.
    unsafe {
        if (*cache).busy {
            return None;
        }
        (*cache).busy = true;
        let result = f(&mut *cache);
        (*cache).busy = false;
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> AgreementId {
        AgreementId::new(s).expect("valid")
    }
    const F: FeatureCode = FeatureCode::from_static("pro_gym");

    fn drain_all(r: &Registry) -> Vec<(String, u128)> {
        let mut v: Vec<_> = r
            .drain()
            .into_iter()
            .map(|d| {
                (
                    format!("{}/{}/{}", d.key.agreement, d.key.feature, d.key.meter_type),
                    d.value,
                )
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_pending_sum_past_u64_max_is_refused_not_wrapped() {
        let r = Registry::new(10);
        let a = id("agreement_a");
        r.record(AgreementRef::Id(&a), &F, MeterType::Delta, u64::MAX)
            .expect("added");
        // Through the cache (hit) and through the table: both refuse.
        for _ in 0..2 {
            assert!(matches!(
                r.record(AgreementRef::Id(&a), &F, MeterType::Delta, 2),
                Err(Problem::PendingSumTooLarge)
            ));
        }
        assert_eq!(
            drain_all(&r),
            vec![("agreement_a/pro_gym/delta".to_owned(), u128::from(u64::MAX))]
        );
        r.record(AgreementRef::Id(&a), &F, MeterType::Delta, 2)
            .expect("room again after the drain");
        assert_eq!(
            drain_all(&r),
            vec![("agreement_a/pro_gym/delta".to_owned(), 2)]
        );
    }

    #[test]
    fn many_keys_round_robin_are_each_counted_exactly() {
        // More keys than the smallest cache holds, so it grows and probes collide.
        let r = Registry::new(100_000);
        let keys = if cfg!(miri) { 300 } else { 5_000 };
        let ids: Vec<AgreementId> = (0..keys).map(|i| id(&format!("agreement_{i}"))).collect();
        for round in 1..=3u64 {
            for a in &ids {
                r.record(AgreementRef::Id(a), &F, MeterType::Delta, round)
                    .expect("added");
            }
        }
        let drained = r.drain();
        assert_eq!(drained.len(), ids.len());
        assert!(
            drained.iter().all(|d| d.value == 6),
            "1 + 2 + 3 for every key"
        );
    }

    #[test]
    fn the_same_id_from_another_object_or_a_string_adds_to_the_same_key() {
        let r = Registry::new(10);
        let first = id("agreement_same_text");
        let again = id("agreement_same_text");
        let other = id("agreement_other_text");
        r.record(AgreementRef::Id(&first), &F, MeterType::Delta, 1)
            .expect("added");
        r.record(AgreementRef::Id(&again), &F, MeterType::Delta, 2)
            .expect("added");
        r.record(
            AgreementRef::Str("agreement_same_text"),
            &F,
            MeterType::Delta,
            4,
        )
        .expect("added");
        r.record(AgreementRef::Id(&other), &F, MeterType::Delta, 8)
            .expect("added");
        let dynamic = FeatureCode::new("pro_gym").expect("valid");
        r.record(AgreementRef::Id(&first), &dynamic, MeterType::Delta, 16)
            .expect("added");
        assert_eq!(
            drain_all(&r),
            [
                ("agreement_other_text/pro_gym/delta".to_owned(), 8),
                ("agreement_same_text/pro_gym/delta".to_owned(), 23),
            ]
        );
    }

    #[test]
    fn a_cached_key_is_counted_again_after_a_drain_so_the_bound_holds() {
        let r = Registry::new(100);
        let ids: Vec<_> = (0..149).map(|i| id(&format!("agreement_r{i}"))).collect();
        for a in &ids[..49] {
            r.record(AgreementRef::Id(a), &F, MeterType::Delta, 1)
                .expect("added");
        }
        assert_eq!(r.drain().len(), 49);
        // The 49 are cached on this thread; after the drain they count again when used.
        let accepted = ids
            .iter()
            .filter(|a| {
                r.record(AgreementRef::Id(a), &F, MeterType::Delta, 1)
                    .is_ok()
            })
            .count();
        assert_eq!(accepted, 100, "no more keys pending at once than the bound");
        assert_eq!(r.drain().len(), 100);
    }

    #[test]
    fn a_key_pending_through_cache_hits_is_not_refused_for_another_thread() {
        let r = Arc::new(Registry::new(2));
        let k1 = id("agreement_k1");
        r.record(AgreementRef::Id(&k1), &F, MeterType::Delta, 1)
            .expect("added");
        r.drain();
        r.record(AgreementRef::Id(&k1), &F, MeterType::Delta, 5)
            .expect("cached key");
        r.record(
            AgreementRef::Id(&id("agreement_k2")),
            &F,
            MeterType::Delta,
            1,
        )
        .expect("second key");
        let refused = r.record(
            AgreementRef::Id(&id("agreement_k3")),
            &F,
            MeterType::Delta,
            1,
        );
        assert!(
            matches!(refused, Err(Problem::Overflow { .. })),
            "{refused:?}"
        );
        let (r2, k1b) = (Arc::clone(&r), k1.clone());
        let other =
            std::thread::spawn(move || r2.record(AgreementRef::Id(&k1b), &F, MeterType::Delta, 1))
                .join()
                .expect("thread");
        assert!(
            other.is_ok(),
            "k1 is pending, so it is not new to the bound: {other:?}"
        );
    }

    #[test]
    fn a_call_between_the_final_drains_steps_is_reported_after_it() {
        let r = Registry::new(10);
        let a = id("agreement_a");
        r.record(AgreementRef::Id(&a), &F, MeterType::Delta, 2)
            .expect("added");
        // The final drain's steps with a call in between, as another thread may make it.
        GENERATION.fetch_add(1, Relaxed);
        r.record(AgreementRef::Id(&a), &F, MeterType::Delta, 3)
            .expect("before the stop");
        let last: u128 = r.drain_shards(true).iter().map(|d| d.value).sum();
        assert_eq!(last, 5);
        for _ in 0..3 {
            let after = r.record(AgreementRef::Id(&a), &F, MeterType::Delta, 5);
            assert!(
                matches!(after, Err(Problem::AfterShutdown { .. })),
                "{after:?}"
            );
        }
    }

    #[test]
    fn calls_after_a_concurrent_final_drain_are_all_reported() {
        for _ in 0..if cfg!(miri) { 2 } else { 50 } {
            let r = Arc::new(Registry::new(10_000));
            let keys: Arc<Vec<AgreementId>> =
                Arc::new((0..64).map(|i| id(&format!("agreement_x{i}"))).collect());
            let stop = Arc::new(AtomicBool::new(false));
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let recorder = {
                let (r, keys, stop) = (Arc::clone(&r), Arc::clone(&keys), Arc::clone(&stop));
                std::thread::spawn(move || {
                    for k in keys.iter() {
                        let _ = r.record(AgreementRef::Id(k), &F, MeterType::Delta, 1);
                    }
                    ready_tx.send(()).expect("main thread");
                    let mut i = 0;
                    while !stop.load(Acquire) {
                        let _ = r.record(
                            AgreementRef::Id(&keys[i % keys.len()]),
                            &F,
                            MeterType::Delta,
                            1,
                        );
                        i += 1;
                    }
                    // After the final drain: nothing may be taken silently.
                    keys.iter()
                        .filter(|k| {
                            r.record(AgreementRef::Id(k), &F, MeterType::Delta, 1)
                                .is_ok()
                        })
                        .count()
                })
            };
            ready_rx.recv().expect("recorder");
            let _ = r.drain_final();
            stop.store(true, Release);
            assert_eq!(recorder.join().expect("recorder"), 0);
        }
    }

    #[test]
    fn the_cache_takes_repeated_adds_for_every_kind_of_key() {
        let r = Registry::new(10);
        let a = id("agreement_hits");
        let heap = FeatureCode::new("heap_feature").expect("valid");
        for (feature, meter_type) in [
            (&F, MeterType::Delta),
            (&heap, MeterType::Delta),
            (&F, MeterType::Absolute),
        ] {
            r.record(AgreementRef::Id(&a), feature, meter_type, 1)
                .expect("added");
            let again = id("agreement_hits");
            for hit in [
                record_cached(r.id, &a, feature, meter_type, 1),
                record_cached(r.id, &again, feature, meter_type, 1),
                record_cached(r.id, "agreement_hits", feature, meter_type, 1),
            ] {
                assert_eq!(hit, Lookup::Hit, "{feature} {meter_type}");
            }
            // Another registry's key of the same text is not this one's.
            assert_eq!(
                record_cached(r.id + 1_000, &a, feature, meter_type, 1),
                Lookup::Miss
            );
        }
    }

    #[test]
    fn a_thread_cache_grows_with_its_keys_and_starts_small_after_a_new_generation() {
        let r = Registry::new(10_000);
        let keys = if cfg!(miri) { 200 } else { 1_000 };
        let ids: Vec<_> = (0..keys).map(|i| id(&format!("agreement_g{i}"))).collect();
        let slots = || with_cache(|cache| (cache.slots.len(), cache.len)).expect("cache");
        // Other tests' drains start new generations too: measure a round none interrupted.
        let (grown, cached) = loop {
            let generation = GENERATION.load(Relaxed);
            for a in &ids {
                r.record(AgreementRef::Id(a), &F, MeterType::Delta, 1)
                    .expect("added");
            }
            if GENERATION.load(Relaxed) == generation {
                break slots();
            }
        };
        assert!(
            cached >= keys && grown >= 2 * cached,
            "{cached} keys in {grown} slots"
        );
        GENERATION.fetch_add(1, Relaxed);
        r.record(AgreementRef::Id(&ids[0]), &F, MeterType::Delta, 1)
            .expect("added");
        assert_eq!(
            slots(),
            (CACHE_MIN_SLOTS, 1),
            "a new generation starts the cache small"
        );
        assert_eq!(r.drain().len(), keys, "and loses no usage");
    }

    #[test]
    fn adds_are_drained_exactly_once() {
        let r = Registry::new(100);
        let a = id("agreement_a");
        for _ in 0..10 {
            r.record(AgreementRef::Id(&a), &F, MeterType::Delta, 3)
                .expect("added");
        }
        r.record(AgreementRef::Str("agreement_a"), &F, MeterType::Delta, 1)
            .expect("added");
        assert_eq!(
            drain_all(&r),
            vec![("agreement_a/pro_gym/delta".to_owned(), 31)]
        );
        assert_eq!(drain_all(&r), vec![]);
        r.record(AgreementRef::Id(&a), &F, MeterType::Delta, 2)
            .expect("added");
        assert_eq!(
            drain_all(&r),
            vec![("agreement_a/pro_gym/delta".to_owned(), 2)]
        );
    }

    #[test]
    fn threads_add_to_their_own_cells_and_the_sum_is_exact() {
        let r = Arc::new(Registry::new(100));
        let a = id("agreement_a");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (r, a) = (Arc::clone(&r), a.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        r.record(AgreementRef::Id(&a), &F, MeterType::Delta, 1)
                            .expect("added");
                    }
                })
            })
            .collect();
        let mut drained = 0u128;
        for t in threads {
            drained += r.drain().iter().map(|d| d.value).sum::<u128>();
            t.join().expect("thread");
        }
        drained += r.drain().iter().map(|d| d.value).sum::<u128>();
        assert_eq!(drained, 40_000);
        // The threads are gone, so their cells and the key were freed.
        assert_eq!(r.pending_slots(), 0);
    }

    #[test]
    fn absolute_is_last_write_wins_and_separate_from_delta() {
        let r = Registry::new(100);
        let a = id("agreement_a");
        r.record(AgreementRef::Id(&a), &F, MeterType::Absolute, 7)
            .expect("added");
        r.record(AgreementRef::Id(&a), &F, MeterType::Absolute, 5)
            .expect("added");
        r.record(AgreementRef::Id(&a), &F, MeterType::Delta, 4)
            .expect("added");
        assert_eq!(
            drain_all(&r),
            vec![
                ("agreement_a/pro_gym/absolute".to_owned(), 5),
                ("agreement_a/pro_gym/delta".to_owned(), 4)
            ]
        );
        assert_eq!(
            drain_all(&r),
            vec![],
            "an unchanged absolute is not sent again"
        );
        r.record(AgreementRef::Id(&a), &F, MeterType::Absolute, 0)
            .expect("added");
        assert_eq!(
            drain_all(&r),
            vec![("agreement_a/pro_gym/absolute".to_owned(), 0)]
        );
    }

    #[test]
    fn new_keys_past_the_bound_are_refused_and_existing_ones_still_add() {
        let r = Registry::new(2);
        let (a, b, c) = (id("agreement_a"), id("agreement_b"), id("agreement_c"));
        r.record(AgreementRef::Id(&a), &F, MeterType::Delta, 1)
            .expect("added");
        r.record(AgreementRef::Id(&b), &F, MeterType::Delta, 1)
            .expect("added");
        let refused = r.record(AgreementRef::Id(&c), &F, MeterType::Delta, 1);
        assert!(
            matches!(
                refused,
                Err(Problem::Overflow {
                    max_pending_keys: 2,
                    ..
                })
            ),
            "{refused:?}"
        );
        r.record(AgreementRef::Id(&a), &F, MeterType::Delta, 1)
            .expect("existing key");
        assert_eq!(r.drain().iter().map(|d| d.value).sum::<u128>(), 3);
    }

    #[test]
    fn invalid_input_is_refused_with_the_reason() {
        let r = Registry::new(10);
        let bad = FeatureCode::unchecked_static("pro gym");
        let a = id("agreement_a");
        assert!(matches!(
            r.record(AgreementRef::Id(&a), &bad, MeterType::Delta, 1),
            Err(Problem::InvalidFeature(_))
        ));
        assert!(matches!(
            r.record(AgreementRef::Str("not valid!"), &F, MeterType::Delta, 1),
            Err(Problem::InvalidAgreement(_))
        ));
        assert_eq!(r.pending_slots(), 0);
    }

    #[test]
    fn delivered_keys_held_by_idle_thread_caches_do_not_count_toward_the_bound() {
        let r = Arc::new(Registry::new(4));
        // Four threads each record one key and then stay idle, caches full.
        let (parked_tx, parked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let idle: Vec<_> = (0..4)
            .map(|i| {
                let (r, parked, release) =
                    (Arc::clone(&r), parked_tx.clone(), Arc::clone(&release_rx));
                std::thread::spawn(move || {
                    let a = id(&format!("agreement_idle_{i}"));
                    r.record(AgreementRef::Id(&a), &F, MeterType::Delta, 1)
                        .expect("added");
                    parked.send(()).expect("parked");
                    let _ = lock(&release).recv();
                })
            })
            .collect();
        for _ in 0..4 {
            parked_rx.recv().expect("parked");
        }
        assert_eq!(r.drain().iter().map(|d| d.value).sum::<u128>(), 4);
        assert_eq!(r.pending_slots(), 0, "drained keys are not pending");
        // New customers still get in, though the idle caches keep their slots alive.
        for i in 0..4 {
            let a = id(&format!("agreement_new_{i}"));
            r.record(AgreementRef::Id(&a), &F, MeterType::Delta, 1)
                .expect("a new key fits: nothing is pending");
        }
        drop(release_tx);
        for t in idle {
            t.join().expect("thread");
        }
    }

    #[test]
    fn usage_added_after_the_final_drain_is_kept_and_reported() {
        let r = Registry::new(10);
        let a = id("agreement_a");
        r.record(AgreementRef::Id(&a), &F, MeterType::Delta, 2)
            .expect("added");
        assert_eq!(r.drain_final().iter().map(|d| d.value).sum::<u128>(), 2);
        for _ in 0..3 {
            assert!(matches!(
                r.record(AgreementRef::Id(&a), &F, MeterType::Delta, 5),
                Err(Problem::AfterShutdown { .. })
            ));
        }
        assert_eq!(r.recorded_delta(), 17, "kept in the cells");
        r.restart();
        r.record(AgreementRef::Id(&a), &F, MeterType::Delta, 1)
            .expect("accepted again after a restart");
        assert_eq!(r.drain().iter().map(|d| d.value).sum::<u128>(), 16);
    }
}
