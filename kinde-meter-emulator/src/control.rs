//! The HTTP control API under `/_emulator/`: the ledger, the logs and the counts
//! to read, and faults, token expiry, downtime and reset to act on, for tests that
//! drive the emulator from another process (the `kinde-emulator` binary).
//!
//! JSON in and out. Requests to it are not logged and never throttled, faulted or
//! marked down. Routes are listed in the crate documentation.

use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::{Method, Request};
use serde_json::{Map, Value, json};

use crate::exchange::{HttpResponse, Shared, read_body, to_response};
use crate::faults::Faults;
use crate::ledger::{
    AcceptedRecord, Counts, ReceivedRequest, Reply, RequestOutcome, TokenRequest, is_secret_header,
};
use crate::validate::EmulatedMeterType;

/// The reserved path prefix of the control API.
pub(crate) const PREFIX: &str = "/_emulator";

/// Whether a request path belongs to the control API.
pub(crate) fn is_control_path(path: &str) -> bool {
    path == PREFIX
        || path
            .strip_prefix(PREFIX)
            .is_some_and(|r| r.starts_with('/'))
}

/// Answers one control request.
pub(crate) async fn handle(shared: &Shared, req: Request<Incoming>) -> HttpResponse {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let body = match read_body(req.into_body()).await {
        Ok(Some(body)) => body,
        Ok(None) => return error(413, "the body is larger than 64 KiB"),
        Err(_) => return error(400, "the body could not be read"),
    };
    let route = path.strip_prefix(PREFIX).unwrap_or_default();
    let get = method == Method::GET;
    let post = method == Method::POST;
    let reply = match route {
        "/ledger" if get => Ok(ledger(shared)),
        "/accepted" if get => Ok(accepted(shared)),
        "/requests" if get => Ok(requests(shared)),
        "/token-requests" if get => Ok(token_requests(shared)),
        "/counts" if get => Ok(counts_json(&shared.lock().counts())),
        "/status" if get => Ok(status(shared)),
        "/faults" if get => Ok(faults_json(&shared.lock().config.faults)),
        "/faults" if post || method == Method::PUT => set_faults(shared, &body),
        "/expire-tokens" if post => {
            shared.lock().expire_tokens();
            Ok(json!({"ok": true}))
        }
        "/down" if post => down(shared, &body),
        "/up" if post => {
            shared.lock().unavailable_for(Duration::ZERO);
            Ok(json!({"ok": true}))
        }
        "/reset" if post => {
            shared.lock().reset();
            Ok(json!({"ok": true}))
        }
        "/ledger" | "/accepted" | "/requests" | "/token-requests" | "/counts" | "/status" => {
            return method_not_allowed("GET");
        }
        "/faults" => return method_not_allowed("GET, PUT, POST"),
        "/expire-tokens" | "/down" | "/up" | "/reset" => return method_not_allowed("POST"),
        _ => return error(404, &format!("no control route {path}")),
    };
    match reply {
        Ok(value) => to_response(Reply::json(200, &value)),
        Err(message) => error(400, &message),
    }
}

fn error(status: u16, message: &str) -> HttpResponse {
    to_response(Reply::json(status, &json!({ "error": message })))
}

fn method_not_allowed(allow: &'static str) -> HttpResponse {
    let mut reply = Reply::json(
        405,
        &json!({ "error": format!("method not allowed; allowed: {allow}") }),
    );
    reply.headers.push(("allow", allow.to_owned()));
    to_response(reply)
}

/// Milliseconds from the emulator's start to `t`.
fn millis(started_at: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(started_at).as_millis()).unwrap_or(u64::MAX)
}

fn ledger(shared: &Shared) -> Value {
    let state = shared.lock();
    let totals: Vec<Value> = state
        .ledger()
        .iter()
        .map(|((agreement, feature), total)| {
            json!({"agreement": agreement, "feature": feature, "total": total.to_string()})
        })
        .collect();
    let sum: crate::Amount = state.ledger().values().sum();
    json!({ "totals": totals, "sum": sum.to_string() })
}

fn accepted(shared: &Shared) -> Value {
    let state = shared.lock();
    let start = state.started_at;
    Value::Array(
        state
            .accepted()
            .iter()
            .map(|a| accepted_json(a, start))
            .collect(),
    )
}

fn accepted_json(a: &AcceptedRecord, start: Instant) -> Value {
    json!({
        "agreement": a.agreement,
        "feature": a.feature,
        "value": a.value.to_string(),
        "meter_type": match a.meter_type {
            EmulatedMeterType::Delta => "delta",
            EmulatedMeterType::Absolute => "absolute",
        },
        "meter_type_explicit": a.meter_type_explicit,
        "timestamp": a.timestamp,
        "idempotency_key": a.idempotency_key,
        "request_index": a.request_index,
        "ambiguous": a.ambiguous,
        "arrived_ms": millis(start, a.arrived_at),
        "applied_ms": millis(start, a.applied_at),
    })
}

fn requests(shared: &Shared) -> Value {
    let state = shared.lock();
    let start = state.started_at;
    Value::Array(
        state
            .requests()
            .iter()
            .enumerate()
            .map(|(i, r)| request_json(i, r, start))
            .collect(),
    )
}

fn headers_json(headers: &[(String, String)]) -> Value {
    Value::Array(
        headers
            .iter()
            .map(|(name, value)| {
                let value = if is_secret_header(name) {
                    "<redacted>"
                } else {
                    value.as_str()
                };
                json!([name, value])
            })
            .collect(),
    )
}

fn request_json(index: usize, r: &ReceivedRequest, start: Instant) -> Value {
    let (outcome, fault, applied) = match r.outcome {
        RequestOutcome::Pending => ("pending", None, None),
        RequestOutcome::Accepted => ("accepted", None, None),
        RequestOutcome::Replayed => ("replayed", None, None),
        RequestOutcome::Rejected => ("rejected", None, None),
        RequestOutcome::Unauthorized => ("unauthorized", None, None),
        RequestOutcome::Throttled => ("throttled", None, None),
        RequestOutcome::NotFound => ("not_found", None, None),
        RequestOutcome::Unavailable => ("unavailable", None, None),
        RequestOutcome::Fault(kind) => ("fault", Some(kind.name()), None),
        RequestOutcome::Abandoned { applied } => ("abandoned", None, Some(applied)),
    };
    json!({
        "index": index,
        "method": r.method,
        "path": r.path,
        "query": r.query,
        "headers": headers_json(&r.headers),
        "body": r.body_str(),
        "status": r.status,
        "outcome": outcome,
        "fault": fault,
        "applied": applied,
        "error_codes": r.error_codes,
        "rate_limit_reset": r.rate_limit_reset,
        "retry_after": r.retry_after,
        "arrived_ms": millis(start, r.arrived_at),
        "responded_ms": r.responded_at.map(|t| millis(start, t)),
    })
}

fn token_requests(shared: &Shared) -> Value {
    let state = shared.lock();
    let start = state.started_at;
    Value::Array(
        state
            .token_requests()
            .iter()
            .map(|t| token_request_json(t, start))
            .collect(),
    )
}

fn token_request_json(t: &TokenRequest, start: Instant) -> Value {
    json!({
        "headers": headers_json(&t.headers),
        "grant_type": t.grant_type,
        "client_id": t.client_id,
        "audience": t.audience,
        "status": t.status,
        "error": t.error,
        "issued": t.issued,
        "arrived_ms": millis(start, t.arrived_at),
    })
}

fn counts_json(c: &Counts) -> Value {
    json!({
        "accepted": c.accepted,
        "replayed": c.replayed,
        "rejected": c.rejected,
        "unauthorized": c.unauthorized,
        "throttled": c.throttled,
        "not_found": c.not_found,
        "unavailable": c.unavailable,
        "faults": c.faults,
        "dropped": c.dropped,
        "abandoned": c.abandoned,
        "ambiguous": c.ambiguous,
        "tokens_issued": c.tokens_issued,
    })
}

fn status(shared: &Shared) -> Value {
    let mut state = shared.lock();
    json!({
        "down": state.is_unavailable(),
        "in_flight": state.in_flight,
        "max_in_flight": state.max_in_flight,
    })
}

fn duration_millis(d: Duration) -> Value {
    json!(d.as_secs_f64() * 1000.0)
}

fn faults_json(f: &Faults) -> Value {
    let mut map = Map::new();
    for (name, p) in f.probabilities() {
        map.insert(name.to_owned(), json!(p));
    }
    map.insert(
        "latency_ms".to_owned(),
        duration_millis(f.latency.unwrap_or_default()),
    );
    map.insert(
        "latency_jitter_ms".to_owned(),
        duration_millis(f.latency_jitter),
    );
    Value::Object(map)
}

/// The JSON object of a request body (an empty body is an empty object).
fn body_object(body: &[u8]) -> Result<Map<String, Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("the body must be a JSON object".to_owned()),
        Err(e) => Err(format!("the body is not JSON: {e}")),
    }
}

/// A non-negative, finite number of milliseconds or seconds.
fn duration_field(value: &Value, name: &str, unit_secs: f64) -> Result<Duration, String> {
    value
        .as_f64()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .and_then(|v| Duration::try_from_secs_f64(v * unit_secs).ok())
        .ok_or_else(|| format!("`{name}` must be a non-negative number"))
}

/// Parses the faults of a `PUT /_emulator/faults` body; absent fields are zero.
pub(crate) fn parse_faults(body: &[u8]) -> Result<Faults, String> {
    let mut faults = Faults::none();
    for (name, value) in body_object(body)? {
        match name.as_str() {
            "latency_ms" => faults = faults.latency(duration_field(&value, &name, 1e-3)?),
            "latency_jitter_ms" => {
                faults = faults.latency_jitter(duration_field(&value, &name, 1e-3)?);
            }
            _ => {
                let p = value
                    .as_f64()
                    .filter(|p| (0.0..=1.0).contains(p))
                    .ok_or_else(|| format!("`{name}` must be a probability in 0..=1"))?;
                if !faults.set_probability(&name, p) {
                    return Err(format!("unknown fault `{name}`"));
                }
            }
        }
    }
    Ok(faults)
}

fn set_faults(shared: &Shared, body: &[u8]) -> Result<Value, String> {
    let faults = parse_faults(body)?;
    let value = faults_json(&faults);
    shared.lock().config.faults = faults;
    Ok(value)
}

fn down(shared: &Shared, body: &[u8]) -> Result<Value, String> {
    let map = body_object(body)?;
    if let Some(key) = map.keys().find(|k| *k != "seconds") {
        return Err(format!("unknown field `{key}`"));
    }
    let seconds = map
        .get("seconds")
        .ok_or_else(|| "`seconds` is required".to_owned())?;
    let d = duration_field(seconds, "seconds", 1.0)?;
    shared.lock().unavailable_for(d);
    Ok(json!({ "down": !d.is_zero(), "seconds": d.as_secs_f64() }))
}
