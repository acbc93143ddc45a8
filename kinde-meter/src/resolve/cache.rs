//! The resolver's cache: one lookup at a time per customer (single flight), answers kept
//! for a time to live, refusals for a shorter one, a stale answer served while a
//! refresh runs, and a bound on customers held.
//!
//! A transient failure (transport, 5xx, 429) is never cached: the records that needed
//! it wait a backoff and ask again, as deliveries do.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::{AgreementResolver, CustomerAgreements, ResolveError};
use crate::api::{Customer, CustomerId, Timestamp};

/// How long answers are kept, and how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CacheSettings {
    /// An answer is used without asking again for this long.
    pub(crate) ttl: Duration,
    /// A refusal (unknown customer, missing scope) is kept this long.
    pub(crate) negative_ttl: Duration,
    /// Past its time to live, an answer is still used for this long while a refresh runs.
    pub(crate) stale_for: Duration,
    /// Customers held at most; the oldest answer goes first.
    pub(crate) max_customers: usize,
    /// A refresh started in the background gives up after this long, so a lookup that
    /// never answers does not hold the customer's flight for good.
    pub(crate) lookup_timeout: Duration,
}

type Answer = Result<Arc<CustomerAgreements>, Arc<ResolveError>>;

struct Entry {
    answer: Answer,
    at: Instant,
}

#[derive(Default)]
struct State {
    entries: HashMap<Customer, Entry>,
    flights: HashMap<Customer, Arc<OnceCell<Answer>>>,
    /// Bumped by every invalidation: a lookup that started before it is not cached.
    epoch: u64,
}

/// What the cache holds for a customer, without asking anyone.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// An answer to use.
    Found(Arc<CustomerAgreements>),
    /// A refusal still in force (asking again is left to [`Cached::get`], which
    /// answers it at once).
    Refused,
    /// Nothing usable: ask with [`Cached::get`].
    Miss,
}

/// A resolver behind the cache.
pub(crate) struct Cached {
    inner: Arc<dyn AgreementResolver>,
    settings: CacheSettings,
    state: Mutex<State>,
    /// Questions put to the resolver (not answered from here).
    lookups: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Cached {
    pub(crate) fn new(inner: Arc<dyn AgreementResolver>, settings: CacheSettings) -> Self {
        Self {
            inner,
            settings,
            state: Mutex::new(State::default()),
            lookups: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn usable(&self, entry: &Entry, now: Instant) -> bool {
        let age = now.saturating_duration_since(entry.at);
        match entry.answer {
            Ok(_) => age < self.settings.ttl,
            Err(_) => age < self.settings.negative_ttl,
        }
    }

    fn stale_but_servable(&self, entry: &Entry, now: Instant) -> bool {
        let age = now.saturating_duration_since(entry.at);
        entry.answer.is_ok() && age < self.settings.ttl.saturating_add(self.settings.stale_for)
    }

    /// What is held for `customer`. A stale answer is served, and a refresh started on
    /// the current runtime (if there is one and none runs).
    pub(crate) fn cached(self: &Arc<Self>, customer: &Customer) -> Lookup {
        let now = Instant::now();
        let refresh = {
            let state = self.state();
            let Some(entry) = state.entries.get(customer) else {
                return Lookup::Miss;
            };
            if self.usable(entry, now) {
                return match &entry.answer {
                    Ok(found) => Lookup::Found(Arc::clone(found)),
                    Err(_) => Lookup::Refused,
                };
            }
            if !self.stale_but_servable(entry, now) {
                return Lookup::Miss;
            }
            let Ok(found) = &entry.answer else {
                return Lookup::Miss;
            };
            (Arc::clone(found), !state.flights.contains_key(customer))
        };
        let (found, start) = refresh;
        if start && let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let this = Arc::clone(self);
            let customer = customer.clone();
            runtime.spawn(async move {
                // Dropped at the timeout: the flight's cell is free again for the next ask.
                let timeout = this.settings.lookup_timeout;
                drop(tokio::time::timeout(timeout, this.fetch(&customer)).await);
            });
        }
        Lookup::Found(found)
    }

    /// The answer for `customer`: held, or asked for, with one lookup in flight per
    /// customer however many ask at once.
    pub(crate) async fn get(&self, customer: &Customer) -> Answer {
        {
            let state = self.state();
            if let Some(entry) = state.entries.get(customer)
                && self.usable(entry, Instant::now())
            {
                return entry.answer.clone();
            }
        }
        self.fetch(customer).await
    }

    /// Asks the resolver (joining a lookup in flight) and keeps a cacheable answer.
    async fn fetch(&self, customer: &Customer) -> Answer {
        let (flight, epoch) = {
            let mut state = self.state();
            let epoch = state.epoch;
            let flight = Arc::clone(state.flights.entry(customer.clone()).or_default());
            (flight, epoch)
        };
        let answer = flight
            .get_or_init(|| async {
                self.lookups
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.inner
                    .agreements(customer)
                    .await
                    .map(Arc::new)
                    .map_err(Arc::new)
            })
            .await
            .clone();
        let mut state = self.state();
        if state
            .flights
            .get(customer)
            .is_some_and(|f| Arc::ptr_eq(f, &flight))
        {
            state.flights.remove(customer);
            let cacheable = match &answer {
                Ok(_) => true,
                Err(e) => !e.is_transient(),
            };
            if cacheable && state.epoch == epoch {
                self.make_room(&mut state);
                state.entries.insert(
                    customer.clone(),
                    Entry {
                        answer: answer.clone(),
                        at: Instant::now(),
                    },
                );
            }
        }
        answer
    }

    fn make_room(&self, state: &mut State) {
        if state.entries.len() < self.settings.max_customers.max(1) {
            return;
        }
        let now = Instant::now();
        state
            .entries
            .retain(|_, e| self.usable(e, now) || self.stale_but_servable(e, now));
        while state.entries.len() >= self.settings.max_customers.max(1) {
            let Some(oldest) = state
                .entries
                .iter()
                .min_by_key(|(_, e)| e.at)
                .map(|(c, _)| c.clone())
            else {
                break;
            };
            state.entries.remove(&oldest);
        }
    }

    /// Questions put to the resolver so far.
    pub(crate) fn lookups(&self) -> u64 {
        self.lookups.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Forgets `customer`'s answer, and whatever a lookup in flight brings back.
    pub(crate) fn invalidate(&self, customer: &Customer) {
        let mut state = self.state();
        state.epoch += 1;
        state.entries.remove(customer);
        state.flights.remove(customer);
    }

    /// Forgets every customer that is, or resolved to, the billing customer `id`, and
    /// the organization and user named. Returns the customers forgotten.
    pub(crate) fn invalidate_billing(
        &self,
        id: Option<&CustomerId>,
        named: &[Customer],
    ) -> Vec<Customer> {
        let mut state = self.state();
        state.epoch += 1;
        let mut gone: Vec<Customer> = state
            .entries
            .iter()
            .filter(|(customer, entry)| {
                named.contains(customer)
                    || id.is_some_and(|id| {
                        **customer == Customer::Id(id.clone())
                            || entry
                                .answer
                                .as_ref()
                                .is_ok_and(|a| a.customer_id.as_ref() == Some(id))
                    })
            })
            .map(|(c, _)| c.clone())
            .collect();
        for customer in &gone {
            state.entries.remove(customer);
            state.flights.remove(customer);
        }
        for customer in named {
            if !gone.contains(customer) {
                state.flights.remove(customer);
                gone.push(customer.clone());
            }
        }
        gone
    }

    /// The earliest end of a billing cycle after `after`, over the answers held.
    pub(crate) fn next_period_end(&self, after: Timestamp) -> Option<Timestamp> {
        let state = self.state();
        state
            .entries
            .values()
            .filter_map(|e| e.answer.as_ref().ok())
            .filter_map(|a| a.next_period_end(after))
            .min_by_key(|t| t.unix_seconds())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::api::{Agreement, AgreementId, FeatureCode};
    use crate::resolve::ResolveFuture;

    /// Counts lookups, answers after a delay, and can be told to fail.
    struct Counting {
        calls: AtomicUsize,
        delay: Duration,
        fail: std::sync::atomic::AtomicBool,
    }

    impl AgreementResolver for Counting {
        fn agreements<'a>(&'a self, customer: &'a Customer) -> ResolveFuture<'a> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let fail = self.fail.load(Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(self.delay).await;
                if fail {
                    return Err(ResolveError::Lookup(crate::api::ApiError::Timeout {
                        after: Duration::from_secs(1),
                    }));
                }
                if matches!(customer, Customer::User(_)) {
                    return Err(ResolveError::UnknownCustomer {
                        customer: customer.clone(),
                        reason: "no".into(),
                    });
                }
                let id = AgreementId::new(format!("agreement_{n}")).expect("id");
                Ok(CustomerAgreements {
                    customer_id: Some(CustomerId::new("customer_1").expect("id")),
                    agreements: vec![Agreement::new(id, [FeatureCode::from_static("f")])],
                })
            })
        }
    }

    fn cache(ttl: u64, max: usize) -> (Arc<Cached>, Arc<Counting>) {
        let inner = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            delay: Duration::from_millis(50),
            fail: false.into(),
        });
        let settings = CacheSettings {
            ttl: Duration::from_secs(ttl),
            negative_ttl: Duration::from_secs(5),
            stale_for: Duration::from_secs(30),
            max_customers: max,
            lookup_timeout: Duration::from_secs(5),
        };
        (Arc::new(Cached::new(inner.clone(), settings)), inner)
    }

    fn org(code: &str) -> Customer {
        Customer::org(code).expect("code")
    }

    fn agreement_of(answer: &Answer) -> String {
        answer.as_ref().expect("an answer").agreements[0]
            .id
            .to_string()
    }

    #[tokio::test(start_paused = true)]
    async fn a_hundred_concurrent_asks_for_one_customer_send_one_lookup() {
        let (cache, inner) = cache(60, 100);
        let asks = (0..100).map(|_| {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move { agreement_of(&cache.get(&org("org_a")).await) })
        });
        let mut answers = Vec::new();
        for ask in asks {
            answers.push(ask.await.expect("task"));
        }
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
        assert!(answers.iter().all(|a| a == "agreement_0"));
    }

    #[tokio::test(start_paused = true)]
    async fn answers_expire_serve_stale_while_refreshing_and_are_invalidated() {
        let (cache, inner) = cache(60, 100);
        let a = org("org_a");
        assert_eq!(agreement_of(&cache.get(&a).await), "agreement_0");
        assert!(matches!(cache.cached(&a), Lookup::Found(_)));
        tokio::time::advance(Duration::from_secs(61)).await;
        // Stale: served, and a refresh starts.
        let Lookup::Found(stale) = cache.cached(&a) else {
            panic!("a stale answer is served")
        };
        assert_eq!(stale.agreements[0].id.as_str(), "agreement_0");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
        let Lookup::Found(fresh) = cache.cached(&a) else {
            panic!("refreshed")
        };
        assert_eq!(fresh.agreements[0].id.as_str(), "agreement_1");
        // Past its stale window an answer is not served.
        tokio::time::advance(Duration::from_secs(100)).await;
        assert!(matches!(cache.cached(&a), Lookup::Miss));
        assert_eq!(agreement_of(&cache.get(&a).await), "agreement_2");
        cache.invalidate(&a);
        assert!(matches!(cache.cached(&a), Lookup::Miss));
        assert_eq!(agreement_of(&cache.get(&a).await), "agreement_3");
        // By billing customer id: the organization that resolved to it goes.
        let gone = cache.invalidate_billing(Some(&CustomerId::new("customer_1").expect("id")), &[]);
        assert_eq!(gone, vec![a.clone()]);
        assert!(matches!(cache.cached(&a), Lookup::Miss));
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_kept_briefly_and_transient_failures_not_at_all() {
        let (cache, inner) = cache(60, 100);
        let user = Customer::user("kp_1").expect("id");
        assert!(cache.get(&user).await.is_err());
        assert!(matches!(cache.cached(&user), Lookup::Refused));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(matches!(cache.cached(&user), Lookup::Miss));
        inner.fail.store(true, Ordering::SeqCst);
        let a = org("org_a");
        assert!(cache.get(&a).await.is_err());
        assert!(matches!(cache.cached(&a), Lookup::Miss));
    }

    #[tokio::test(start_paused = true)]
    async fn the_bound_holds_and_the_oldest_answer_goes() {
        let (cache, _) = cache(60, 3);
        for i in 0..5 {
            drop(cache.get(&org(&format!("org_{i}"))).await);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(cache.state().entries.len(), 3);
        assert!(matches!(cache.cached(&org("org_0")), Lookup::Miss));
        assert!(matches!(cache.cached(&org("org_4")), Lookup::Found(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_in_flight_during_an_invalidation_is_not_kept() {
        let (cache, _) = cache(60, 100);
        let a = org("org_a");
        let ask = {
            let cache = Arc::clone(&cache);
            let a = a.clone();
            tokio::spawn(async move { cache.get(&a).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        cache.invalidate(&a);
        assert!(ask.await.expect("task"));
        assert!(matches!(cache.cached(&a), Lookup::Miss));
    }
}
