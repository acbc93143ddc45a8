//! Helpers for the tests of customer billing: what the hooks saw, and the emulator's
//! view of an organization's agreements.

use std::sync::{Arc, Mutex};

use kinde_meter::{Config, MeterError, UnsentRecord};
use kinde_meter_emulator::Emulator;

/// What the `on_unsent` and `on_error` hooks were given.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    unsent: Arc<Mutex<Vec<UnsentRecord>>>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Seen {
    /// `config` with both hooks writing here.
    pub fn hooked(&self, config: Config) -> Config {
        let unsent = Arc::clone(&self.unsent);
        let errors = Arc::clone(&self.errors);
        config
            .on_unsent(move |r| unsent.lock().expect("lock").extend_from_slice(r))
            .on_error(move |e: &MeterError| errors.lock().expect("lock").push(e.to_string()))
    }

    /// The records handed back so far.
    pub fn unsent(&self) -> Vec<UnsentRecord> {
        self.unsent.lock().expect("lock").clone()
    }

    /// The errors reported so far, as their messages.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().expect("lock").clone()
    }
}

/// The billing customer of organization `org`, and its first agreement.
pub fn org_agreement(emulator: &Emulator, org: &str) -> (String, String) {
    let customer = emulator.organization_customer(org).expect("org");
    let id = emulator.customer_agreements(&customer)[0].id.clone();
    (customer, id)
}

/// What `agreement` received of `feature`, in whole units.
pub fn received(emulator: &Emulator, agreement: &str, feature: &str) -> u128 {
    emulator
        .total(agreement, feature)
        .whole()
        .expect("whole units")
}
