//! kinde-meter (work in progress).
pub mod api;
mod context;
pub use api::{AgreementId, FeatureCode, MeterType};
pub use context::{
    AgreementFutureExt, AgreementGuard, WithAgreement, current_agreement, enter_agreement,
    with_agreement,
};
#[cfg(feature = "testing")]
pub mod testing;
