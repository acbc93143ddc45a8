//! Injected faults on the meter usage endpoint.

use std::time::Duration;

/// Faults to inject on the meter usage endpoint (set with
/// [`EmulatorBuilder::faults`](super::EmulatorBuilder::faults) or
/// [`Emulator::set_faults`](super::Emulator::set_faults)).
///
/// Each probability is in `0.0..=1.0` (out-of-range values are clamped, NaN is
/// zero). For every meter request that passes authentication and throttling,
/// the emulator draws one number from its seeded generator and picks at most
/// one fault, walking the fields in declaration order: when probabilities sum
/// past 1, the earlier ones win.
///
/// ```
/// use kinde_meter::testing::Faults;
///
/// let flaky = Faults { status_503: 0.1, drop_after_apply: 0.05, ..Faults::default() };
/// assert_eq!(Faults::default(), Faults::none());
/// # let _ = flaky;
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Answer 500 with a JSON error body, without applying.
    pub status_500: f64,
    /// Answer 502 with an HTML body, as a proxy would, without applying.
    pub status_502: f64,
    /// Answer 503 with a JSON error body, without applying.
    pub status_503: f64,
    /// Read the request, then close the connection without answering; not applied.
    pub drop_before_apply: f64,
    /// Apply the record, then answer 500 (ambiguous to the client).
    pub status_500_after_apply: f64,
    /// Apply the record, then close the connection without answering (ambiguous).
    pub drop_after_apply: f64,
    /// Apply the record, then answer 200 with a body that is not the documented
    /// JSON (`<html>OK</html>` or truncated JSON; ambiguous).
    pub malformed_200: f64,
    /// Delay before handling each request that passed authentication and throttling.
    pub latency: Option<Duration>,
    /// Extra delay drawn uniformly from `0..=latency_jitter` and added to `latency`.
    pub latency_jitter: Duration,
}

impl Faults {
    /// No faults (the same as `Faults::default()`).
    pub fn none() -> Self {
        Faults::default()
    }

    /// Draws the fault and the delay for one request.
    pub(crate) fn draw(&self, rng: &mut fastrand::Rng) -> Draw {
        let u = rng.f64();
        let table = [
            (FaultKind::Status500, self.status_500),
            (FaultKind::Status502, self.status_502),
            (FaultKind::Status503, self.status_503),
            (FaultKind::DropBeforeApply, self.drop_before_apply),
            (FaultKind::Status500AfterApply, self.status_500_after_apply),
            (FaultKind::DropAfterApply, self.drop_after_apply),
            (FaultKind::Malformed200, self.malformed_200),
        ];
        let mut cumulative = 0.0;
        let mut fault = None;
        for (kind, p) in table {
            cumulative += if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
            if u < cumulative {
                fault = Some(kind);
                break;
            }
        }
        let mut latency = self.latency.unwrap_or_default();
        if !self.latency_jitter.is_zero() {
            let max = u64::try_from(self.latency_jitter.as_nanos()).unwrap_or(u64::MAX);
            latency = latency.saturating_add(Duration::from_nanos(rng.u64(0..=max)));
        }
        let truncated_json = fault == Some(FaultKind::Malformed200) && rng.bool();
        Draw {
            fault,
            latency,
            truncated_json,
        }
    }
}

/// The outcome of one draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Draw {
    pub(crate) fault: Option<FaultKind>,
    pub(crate) latency: Duration,
    /// For a malformed 200: truncated JSON rather than HTML.
    pub(crate) truncated_json: bool,
}

/// One kind of injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// 500 without applying.
    Status500,
    /// 502 (HTML body) without applying.
    Status502,
    /// 503 without applying.
    Status503,
    /// Connection closed without a response; not applied.
    DropBeforeApply,
    /// Applied, then 500.
    Status500AfterApply,
    /// Applied, then the connection closed without a response.
    DropAfterApply,
    /// Applied, then a 200 whose body is not the documented JSON.
    Malformed200,
}

impl FaultKind {
    /// Whether the record is applied to the ledger before the fault strikes
    /// (such requests are ambiguous to the client).
    pub fn applies(self) -> bool {
        matches!(
            self,
            FaultKind::Status500AfterApply | FaultKind::DropAfterApply | FaultKind::Malformed200
        )
    }

    /// Whether the fault closes the connection instead of answering.
    pub fn drops_connection(self) -> bool {
        matches!(self, FaultKind::DropBeforeApply | FaultKind::DropAfterApply)
    }

    /// The HTTP status the client gets, or `None` when the connection is dropped.
    pub fn status(self) -> Option<u16> {
        match self {
            FaultKind::Status500 | FaultKind::Status500AfterApply => Some(500),
            FaultKind::Status502 => Some(502),
            FaultKind::Status503 => Some(503),
            FaultKind::Malformed200 => Some(200),
            FaultKind::DropBeforeApply | FaultKind::DropAfterApply => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certain_faults_always_hit_and_order_decides() {
        let mut rng = fastrand::Rng::with_seed(1);
        let f = Faults {
            status_503: 1.0,
            malformed_200: 1.0,
            ..Faults::default()
        };
        for _ in 0..100 {
            assert_eq!(f.draw(&mut rng).fault, Some(FaultKind::Status503));
        }
        let none = Faults {
            status_500: f64::NAN,
            status_502: -3.0,
            ..Faults::default()
        };
        for _ in 0..100 {
            assert_eq!(none.draw(&mut rng).fault, None);
        }
    }

    #[test]
    fn same_seed_same_sequence() {
        let f = Faults {
            status_500: 0.2,
            drop_before_apply: 0.2,
            malformed_200: 0.2,
            latency_jitter: Duration::from_millis(5),
            ..Faults::default()
        };
        let run = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..200).map(|_| f.draw(&mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        assert!(run(7).iter().all(|d| d.latency <= Duration::from_millis(5)));
    }
}
