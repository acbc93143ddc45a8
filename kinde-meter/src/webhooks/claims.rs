//! A webhook token's claims: the registered time claims, checked when present, and the
//! top-level fields Kinde documents (`type`, `event_id`, `event_timestamp`, `timestamp`,
//! `source`, `data`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::error::WebhookError;

/// The claims of a verified token.
pub(super) struct Claims {
    pub(super) kind: String,
    pub(super) fields: Map<String, Value>,
    iat: Option<i64>,
    exp: Option<i64>,
    nbf: Option<i64>,
}

/// What the time checks allow.
#[derive(Clone, Copy, Debug)]
pub(super) struct TimeRules {
    pub(super) leeway: Duration,
    /// How old an `iat` may be: the replay window, past which the webhook's id may have
    /// been forgotten.
    pub(super) max_age: Duration,
}

/// This server's clock in Unix seconds (0 for a clock set before 1970).
pub(super) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// A NumericDate claim (RFC 7519 §2: seconds, maybe fractional), `None` when absent.
/// Present but not a number is refused: a time claim that cannot be read cannot be
/// honoured, and ignoring it would accept a token its issuer meant to expire.
fn numeric_date(fields: &Map<String, Value>, claim: &str) -> Result<Option<i64>, WebhookError> {
    match fields.get(claim) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            // Whole seconds, rounded down; `as` saturates, and the bound keeps it finite.
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.floor() as i64)
            })
            .map(Some)
            .ok_or_else(|| WebhookError::malformed(format!("the `{claim}` claim is out of range"))),
        Some(_) => Err(WebhookError::malformed(format!(
            "the `{claim}` claim is not a number of seconds"
        ))),
    }
}

impl Claims {
    /// Parses the claims: a JSON object with a `type` string; the time claims, when
    /// present, numbers. Everything else is read leniently by `event.rs`.
    pub(super) fn parse(json: &[u8]) -> Result<Self, WebhookError> {
        let fields: Map<String, Value> = serde_json::from_slice(json).map_err(|e| {
            WebhookError::malformed(format!("the token's claims are not a JSON object ({e})"))
        })?;
        let kind = match fields.get("type") {
            Some(Value::String(kind)) => kind.clone(),
            _ => {
                return Err(WebhookError::malformed(
                    "the token has no `type` claim (the event's type, such as `customer.plan_changed`)",
                ));
            }
        };
        Ok(Self {
            kind,
            iat: numeric_date(&fields, "iat")?,
            exp: numeric_date(&fields, "exp")?,
            nbf: numeric_date(&fields, "nbf")?,
            fields,
        })
    }

    /// Checks `exp`, `nbf` and `iat`, each only when present: Kinde does not document
    /// them on webhooks.
    pub(super) fn check_times(&self, now: i64, rules: TimeRules) -> Result<(), WebhookError> {
        let leeway = secs(rules.leeway);
        let leeway_secs = rules.leeway.as_secs();
        if let Some(exp) = self.exp
            && now > exp.saturating_add(leeway)
        {
            return Err(WebhookError::Expired {
                expired_at: exp,
                now,
                leeway_secs,
            });
        }
        for (claim, at) in [("nbf", self.nbf), ("iat", self.iat)] {
            if let Some(at) = at
                && at > now.saturating_add(leeway)
            {
                return Err(WebhookError::NotYetValid {
                    claim,
                    valid_from: at,
                    now,
                    leeway_secs,
                });
            }
        }
        if let Some(iat) = self.iat
            && now
                > iat
                    .saturating_add(secs(rules.max_age))
                    .saturating_add(leeway)
        {
            return Err(WebhookError::TooOld {
                issued_at: iat,
                now,
                window_secs: rules.max_age.as_secs(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: TimeRules = TimeRules {
        leeway: Duration::from_secs(60),
        max_age: Duration::from_secs(3600),
    };
    const NOW: i64 = 1_800_000_000;

    fn claims(extra: &str) -> Result<Claims, WebhookError> {
        Claims::parse(format!(r#"{{"type":"customer.plan_changed"{extra}}}"#).as_bytes())
    }

    fn check(extra: &str) -> Result<(), WebhookError> {
        claims(extra)?.check_times(NOW, RULES)
    }

    #[test]
    fn absent_time_claims_are_not_required() {
        check("").expect("no time claims");
        check(r#","exp":null,"iat":null,"nbf":null"#).expect("null time claims");
    }

    #[test]
    fn time_claims_are_checked_with_the_leeway() {
        let at = |offset: i64| NOW + offset;
        check(&format!(r#","exp":{}"#, at(-60))).expect("within the leeway");
        check(&format!(r#","exp":{}.9"#, at(-60))).expect("fractional");
        check(&format!(r#","nbf":{},"iat":{}"#, at(60), at(60))).expect("within the leeway");
        check(&format!(r#","iat":{}"#, at(-3660))).expect("as old as allowed");
        assert!(matches!(
            check(&format!(r#","exp":{}"#, at(-61))),
            Err(WebhookError::Expired {
                leeway_secs: 60,
                ..
            })
        ));
        assert!(matches!(
            check(&format!(r#","nbf":{}"#, at(61))),
            Err(WebhookError::NotYetValid { claim: "nbf", .. })
        ));
        assert!(matches!(
            check(&format!(r#","iat":{}"#, at(61))),
            Err(WebhookError::NotYetValid { claim: "iat", .. })
        ));
        assert!(matches!(
            check(&format!(r#","iat":{}"#, at(-3661))),
            Err(WebhookError::TooOld {
                window_secs: 3600,
                ..
            })
        ));
        // Absurd values neither overflow nor pass.
        assert!(check(&format!(r#","exp":{}"#, i64::MIN)).is_err());
        check(&format!(r#","exp":{}"#, i64::MAX)).expect("far future");
        assert!(check(r#","exp":-1e300"#).is_err());
    }

    #[test]
    fn unreadable_claims_are_refused() {
        for (extra, why) in [
            (r#","exp":"tomorrow""#, "`exp` claim is not a number"),
            (r#","iat":true"#, "`iat` claim is not a number"),
            (r#","nbf":{}"#, "`nbf` claim is not a number"),
        ] {
            let err = claims(extra).err().expect("refused").to_string();
            assert!(err.contains(why), "{extra}: {err}");
        }
        for json in [
            &b"[]"[..],
            b"null",
            b"{\"type\":3}",
            b"{}",
            b"{\"type\":\"x\"",
        ] {
            let err = Claims::parse(json).err().expect("refused");
            assert!(matches!(err, WebhookError::Malformed { .. }), "{err}");
        }
    }
}
