//! The webhooks already handled, to tell a redelivery from a new webhook: a bounded set
//! of ids, each kept for the replay window after it was first verified.
//!
//! In memory only: after a restart, a redelivery of a webhook handled before it is new
//! again. So event handlers must be idempotent anyway; this keeps Kinde's retries (up to
//! 36 h) from being handled twice in the common case.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use std::time::Instant;

use aws_lc_rs::digest::{SHA256, digest};

/// What identifies one webhook across deliveries, hashed so every entry has the same
/// small size whatever the sender put in its id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct ReplayKey([u8; 32]);

impl ReplayKey {
    /// The key of `id`, in the namespace `kind` (so a `webhook-id` never collides with an
    /// `event_id` of the same text).
    pub(super) fn new(kind: &str, id: &[u8]) -> Self {
        // The namespace's length first, so that no (namespace, id) pair reads as another.
        let mut bytes = Vec::with_capacity(8 + kind.len() + id.len());
        bytes.extend_from_slice(&(kind.len() as u64).to_le_bytes());
        bytes.extend_from_slice(kind.as_bytes());
        bytes.extend_from_slice(id);
        let mut key = [0; 32];
        key.copy_from_slice(digest(&SHA256, &bytes).as_ref());
        Self(key)
    }
}

impl fmt::Debug for ReplayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ReplayKey({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

#[derive(Default)]
struct Seen {
    first_seen: HashMap<ReplayKey, Instant>,
    /// The keys in the order they were first seen, to forget them in that order. May
    /// hold keys already forgotten (by `forget`): those are skipped.
    order: VecDeque<(Instant, ReplayKey)>,
    /// Keys forgotten before their window was over, to make room.
    evicted: u64,
}

impl Seen {
    /// Pops the oldest entry; whether it was still remembered.
    fn pop_oldest(&mut self) -> Option<bool> {
        let (at, key) = self.order.pop_front()?;
        let live = self.first_seen.get(&key) == Some(&at);
        if live {
            self.first_seen.remove(&key);
        }
        Some(live)
    }
}

pub(super) struct ReplayGuard {
    window: Duration,
    capacity: usize,
    seen: Mutex<Seen>,
}

impl ReplayGuard {
    pub(super) fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window,
            capacity,
            seen: Mutex::default(),
        }
    }

    pub(super) fn window(&self) -> Duration {
        self.window
    }

    /// Remembers `key`, or says it is already remembered: one step under one lock, so
    /// that of concurrent deliveries of one webhook exactly one is first.
    pub(super) fn first_sight(&self, key: ReplayKey, now: Instant) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        while seen
            .order
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= self.window)
        {
            seen.pop_oldest();
        }
        if seen.first_seen.contains_key(&key) {
            return false;
        }
        // Full: forget the oldest early. A redelivery of it would be handled again, which
        // idempotent handlers absorb; refusing new webhooks instead would lose them.
        while seen.first_seen.len() >= self.capacity {
            if seen.pop_oldest() == Some(true) {
                seen.evicted += 1;
                if seen.evicted == 1 || seen.evicted.is_power_of_two() {
                    tracing::warn!(
                        target: "kinde_meter",
                        capacity = self.capacity,
                        evicted = seen.evicted,
                        "more webhooks within the replay window than its capacity: the oldest ids are \
                         forgotten early; raise `replay_capacity`"
                    );
                }
            }
        }
        seen.first_seen.insert(key, now);
        seen.order.push_back((now, key));
        true
    }

    /// Forgets `key`, so that the next delivery of its webhook is handled again (its
    /// handling failed).
    pub(super) fn forget(&self, key: ReplayKey) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.first_seen.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> ReplayKey {
        ReplayKey::new("webhook-id", id.as_bytes())
    }

    #[test]
    fn namespaces_do_not_collide() {
        assert_ne!(ReplayKey::new("a", b"b\0c"), ReplayKey::new("a\0b", b"c"));
        assert_ne!(
            ReplayKey::new("webhook-id", b"x"),
            ReplayKey::new("event_id", b"x")
        );
        assert_eq!(key("x"), key("x"));
    }

    #[test]
    fn ids_are_remembered_for_the_window() {
        let guard = ReplayGuard::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        assert!(guard.first_sight(key("a"), at(0)));
        assert!(!guard.first_sight(key("a"), at(0)));
        assert!(!guard.first_sight(key("a"), at(9)));
        assert!(guard.first_sight(key("b"), at(9)));
        assert!(guard.first_sight(key("a"), at(10)), "a's window is over");
        assert!(!guard.first_sight(key("b"), at(10)), "b's is not");
    }

    #[test]
    fn capacity_forgets_the_oldest_first() {
        let guard = ReplayGuard::new(Duration::from_secs(10), 3);
        let now = Instant::now();
        for id in ["a", "b", "c", "d"] {
            assert!(guard.first_sight(key(id), now));
        }
        assert!(!guard.first_sight(key("d"), now));
        assert!(!guard.first_sight(key("b"), now));
        assert!(
            guard.first_sight(key("a"), now),
            "a was evicted to make room for d"
        );
        let seen = guard.seen.lock().expect("lock");
        assert_eq!(seen.first_seen.len(), 3);
        assert_eq!(seen.evicted, 2);
    }

    #[test]
    fn a_forgotten_id_is_new_again() {
        let guard = ReplayGuard::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        assert!(guard.first_sight(key("a"), at(0)));
        guard.forget(key("a"));
        assert!(guard.first_sight(key("a"), at(1)));
        assert!(guard.first_sight(key("b"), at(2)));
        // The stale entry left by the first sighting of `a` is skipped: the window of
        // the second one runs from its own time.
        assert!(!guard.first_sight(key("a"), at(10)));
        assert!(guard.first_sight(key("a"), at(11)));
    }

    #[test]
    fn concurrent_sightings_have_one_winner() {
        let guard = ReplayGuard::new(Duration::from_secs(60), 100);
        let now = Instant::now();
        let winners: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| usize::from(guard.first_sight(key("same"), now))))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(winners, 1);
    }
}
