//! kinde-meter (work in progress).
pub mod api;
mod context;
pub use context::{current_agreement, enter_agreement, with_agreement, AgreementFutureExt, AgreementGuard, WithAgreement};
pub use api::{AgreementId, FeatureCode, MeterType};
#[cfg(feature = "testing")]
pub mod testing;
