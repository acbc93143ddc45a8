//! Injected faults on the meter usage endpoint.

use std::time::Duration;

/// Faults to inject on the meter usage endpoint (set with
/// [`EmulatorBuilder::faults`](crate::EmulatorBuilder::faults) or
/// [`Emulator::set_faults`](crate::Emulator::set_faults)).
///
/// Each probability is in `0.0..=1.0` (out-of-range values are clamped, NaN is
/// zero). For every meter request that passes authentication and throttling,
/// the emulator draws one number from its seeded generator and picks at most
/// one fault, walking the fields in declaration order: when probabilities sum
/// past 1, the earlier ones win.
///
/// The struct is `#[non_exhaustive]`, so new kinds of fault can be added without
/// breaking anyone: build it from [`Faults::none`] with the setters, which are named
/// after the fields (the fields stay public to read, and to assign on a value you
/// already have).
///
/// ```
/// use std::time::Duration;
/// use kinde_meter_emulator::Faults;
///
/// let flaky = Faults::none()
///     .status_503(0.1)
///     .drop_after_apply(0.05)
///     .latency(Duration::from_millis(20));
/// assert_eq!(flaky.status_503, 0.1);
/// assert_eq!(Faults::default(), Faults::none());
/// ```
///
/// Over the control API of the `kinde-emulator` binary the same settings are a JSON
/// object with the same names (see the crate documentation).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
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

    /// Sets [`status_500`](Self::status_500): answer 500 without applying.
    #[must_use]
    pub fn status_500(mut self, probability: f64) -> Self {
        self.status_500 = probability;
        self
    }

    /// Sets [`status_502`](Self::status_502): answer 502 (HTML) without applying.
    #[must_use]
    pub fn status_502(mut self, probability: f64) -> Self {
        self.status_502 = probability;
        self
    }

    /// Sets [`status_503`](Self::status_503): answer 503 without applying.
    #[must_use]
    pub fn status_503(mut self, probability: f64) -> Self {
        self.status_503 = probability;
        self
    }

    /// Sets [`drop_before_apply`](Self::drop_before_apply): close the connection
    /// without answering, not applied.
    #[must_use]
    pub fn drop_before_apply(mut self, probability: f64) -> Self {
        self.drop_before_apply = probability;
        self
    }

    /// Sets [`status_500_after_apply`](Self::status_500_after_apply): apply, then answer 500.
    #[must_use]
    pub fn status_500_after_apply(mut self, probability: f64) -> Self {
        self.status_500_after_apply = probability;
        self
    }

    /// Sets [`drop_after_apply`](Self::drop_after_apply): apply, then close the
    /// connection without answering.
    #[must_use]
    pub fn drop_after_apply(mut self, probability: f64) -> Self {
        self.drop_after_apply = probability;
        self
    }

    /// Sets [`malformed_200`](Self::malformed_200): apply, then answer 200 with a body
    /// that is not the documented JSON.
    #[must_use]
    pub fn malformed_200(mut self, probability: f64) -> Self {
        self.malformed_200 = probability;
        self
    }

    /// Sets [`latency`](Self::latency): a delay before handling each request
    /// (`Duration::ZERO` is the same as none).
    #[must_use]
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = (!latency.is_zero()).then_some(latency);
        self
    }

    /// Sets [`latency_jitter`](Self::latency_jitter): an extra delay drawn uniformly
    /// from `0..=jitter`.
    #[must_use]
    pub fn latency_jitter(mut self, jitter: Duration) -> Self {
        self.latency_jitter = jitter;
        self
    }

    /// The probabilities by their names in the control API's JSON, in draw order.
    pub(crate) fn probabilities(&self) -> [(&'static str, f64); 7] {
        [
            ("status_500", self.status_500),
            ("status_502", self.status_502),
            ("status_503", self.status_503),
            ("drop_before_apply", self.drop_before_apply),
            ("status_500_after_apply", self.status_500_after_apply),
            ("drop_after_apply", self.drop_after_apply),
            ("malformed_200", self.malformed_200),
        ]
    }

    /// Sets a probability by its name in the control API's JSON; `false` for an unknown name.
    pub(crate) fn set_probability(&mut self, name: &str, p: f64) -> bool {
        let field = match name {
            "status_500" => &mut self.status_500,
            "status_502" => &mut self.status_502,
            "status_503" => &mut self.status_503,
            "drop_before_apply" => &mut self.drop_before_apply,
            "status_500_after_apply" => &mut self.status_500_after_apply,
            "drop_after_apply" => &mut self.drop_after_apply,
            "malformed_200" => &mut self.malformed_200,
            _ => return false,
        };
        *field = p;
        true
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
#[non_exhaustive]
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
    /// The fault's name: the name of its probability in [`Faults`] and in the control
    /// API's JSON (`"status_503"`, `"drop_after_apply"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Status500 => "status_500",
            FaultKind::Status502 => "status_502",
            FaultKind::Status503 => "status_503",
            FaultKind::DropBeforeApply => "drop_before_apply",
            FaultKind::Status500AfterApply => "status_500_after_apply",
            FaultKind::DropAfterApply => "drop_after_apply",
            FaultKind::Malformed200 => "malformed_200",
        }
    }

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
