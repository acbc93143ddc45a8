//! The HTTP control API under `/_emulator/`: the ledger, the logs and the counts
//! to read, and faults, token expiry, downtime and reset to act on, for tests that
//! drive the emulator from another process (the `kinde-emulator` binary).
//!
//! JSON in and out. Requests to it are not logged and never throttled, faulted or
//! marked down. Routes are listed in the crate documentation.

use std::time::{Duration, Instant, SystemTime};

use hyper::body::Incoming;
use hyper::{Method, Request};
use serde_json::{Map, Value, json};

use crate::billing::{agreement_json, cycle_json};
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
        "/billing" if get => Ok(shared.lock().billing.dump(SystemTime::now())),
        "/plans" if post => add_plan(shared, &body),
        "/organizations" if post => add_organization(shared, &body),
        "/users" if post => add_user(shared, &body),
        "/customers" if post => add_customer(shared, &body),
        "/change-plan" if post => change_plan(shared, &body),
        "/cancel-agreement" if post => cancel_agreement(shared, &body),
        "/period-end" if post => period_end(shared, &body),
        "/scopes" if get => Ok(scopes_json(shared)),
        "/scopes" if post || method == Method::PUT => set_scopes(shared, &body),
        "/billing-settings" if get => Ok(billing_settings_json(shared)),
        "/billing-settings" if post || method == Method::PUT => set_billing_settings(shared, &body),
        "/webhook" if get => Ok(webhook_json(shared)),
        "/webhook" if post || method == Method::PUT => set_webhook(shared, &body),
        "/webhook-deliveries" if get => Ok(webhook_deliveries(shared)),
        "/ledger"
        | "/accepted"
        | "/requests"
        | "/token-requests"
        | "/counts"
        | "/status"
        | "/billing"
        | "/webhook-deliveries" => {
            return method_not_allowed("GET");
        }
        "/faults" | "/scopes" | "/billing-settings" | "/webhook" => {
            return method_not_allowed("GET, PUT, POST");
        }
        "/expire-tokens" | "/down" | "/up" | "/reset" | "/plans" | "/organizations" | "/users"
        | "/customers" | "/change-plan" | "/cancel-agreement" | "/period-end" => {
            return method_not_allowed("POST");
        }
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
        "cycle": a.cycle.as_ref().map(cycle_json),
        "arrival_cycle": a.arrival_cycle.as_ref().map(cycle_json),
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
        RequestOutcome::Forbidden => ("forbidden", None, None),
        RequestOutcome::Read => ("read", None, None),
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
        "forbidden": c.forbidden,
        "reads": c.reads,
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

// ----- billing objects -----

/// The body's object, refusing fields other than `allowed`.
fn fields(body: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, String> {
    let map = body_object(body)?;
    if let Some(key) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!(
            "unknown field `{key}` (expected: {})",
            allowed.join(", ")
        ));
    }
    Ok(map)
}

/// A required string field.
fn string_field<'a>(map: &'a Map<String, Value>, name: &str) -> Result<&'a str, String> {
    match map.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("`{name}` must be a string")),
        None => Err(format!("`{name}` is required")),
    }
}

/// A list of strings.
fn string_list(value: &Value, name: &str) -> Result<Vec<String>, String> {
    value
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| format!("`{name}` must be a list of strings"))
}

fn customer_json(made: &crate::BillingCustomer) -> Value {
    json!({"customer_id": made.customer_id, "agreement_id": made.agreement_id})
}

fn add_plan(shared: &Shared, body: &[u8]) -> Result<Value, String> {
    let map = fields(body, &["code", "features"])?;
    let code = string_field(&map, "code")?;
    let features = match map.get("features") {
        Some(v) => string_list(v, "features")?,
        None => return Err("`features` is required (a list of feature codes)".to_owned()),
    };
    shared
        .lock()
        .billing
        .add_plan(code, features.clone())
        .map_err(|e| e.to_string())?;
    Ok(json!({"code": code, "features": features}))
}

fn add_organization(shared: &Shared, body: &[u8]) -> Result<Value, String> {
    let map = fields(body, &["code", "plan", "name"])?;
    let code = string_field(&map, "code")?;
    let plan = string_field(&map, "plan")?;
    let name = match map.get("name") {
        None => code,
        Some(_) => string_field(&map, "name")?,
    };
    let made = shared
        .lock()
        .add_organization(code, name, plan)
        .map_err(|e| e.to_string())?;
    Ok(customer_json(&made))
}

fn add_user(shared: &Shared, body: &[u8]) -> Result<Value, String> {
    let map = fields(body, &["id", "plan"])?;
    let made = shared
        .lock()
        .add_user(string_field(&map, "id")?, string_field(&map, "plan")?)
        .map_err(|e| e.to_string())?;
    Ok(customer_json(&made))
}

fn add_customer(shared: &Shared, body: &[u8]) -> Result<Value, String> {
    let map = fields(body, &["plan"])?;
    let made = shared
        .lock()
        .add_customer(string_field(&map, "plan")?)
        .map_err(|e| e.to_string())?;
    Ok(customer_json(&made))
}

fn change_plan(shared: &Shared, body: &[u8]) -> Result<Value, String> {
    let map = fields(body, &["customer_id", "plan"])?;
    let id = shared
        .lock()
        .change_plan(
            string_field(&map, "customer_id")?,
            string_field(&map, "plan")?,
        )
        .map_err(|e| e.to_string())?;
    Ok(json!({ "agreement_id": id }))
}

fn cancel_agreement(shared: &Shared, body: &[u8]) -> Result<Value, String> {
    let map = fields(body, &["agreement_id"])?;
    shared
        .lock()
        .cancel_agreement(string_field(&map, "agreement_id")?)
        .map_err(|e| e.to_string())?;
    Ok(json!({"ok": true}))
}

/// `{"agreement_id", "period_end": "<RFC 3339>"}` or `{"agreement_id", "in_ms": N}`
/// (N milliseconds from now, negative for the past).
fn period_end(shared: &Shared, body: &[u8]) -> Result<Value, String> {
    let map = fields(body, &["agreement_id", "period_end", "in_ms"])?;
    let id = string_field(&map, "agreement_id")?;
    let now = SystemTime::now();
    let end = match (map.get("period_end"), map.get("in_ms")) {
        (Some(_), None) => {
            let text = string_field(&map, "period_end")?;
            crate::clock::parse_rfc3339(text).ok_or_else(|| {
                format!("`period_end` must be an RFC 3339 date-time like 2026-12-01T00:00:00Z, got `{text}`")
            })?
        }
        (None, Some(ms)) => {
            let ms = ms
                .as_f64()
                .filter(|v| v.is_finite())
                .ok_or_else(|| "`in_ms` must be a number of milliseconds".to_owned())?;
            let d = Duration::try_from_secs_f64(ms.abs() / 1000.0)
                .map_err(|_| "`in_ms` is out of range".to_owned())?;
            let end = if ms >= 0.0 {
                now.checked_add(d)
            } else {
                now.checked_sub(d)
            };
            end.ok_or_else(|| "`in_ms` is out of range".to_owned())?
        }
        _ => return Err("give exactly one of `period_end` (RFC 3339) and `in_ms`".to_owned()),
    };
    let agreement = shared
        .lock()
        .set_period_end(id, end)
        .map_err(|e| e.to_string())?;
    let mut value = agreement_json(&agreement);
    value["customer_id"] = json!(agreement.customer_id);
    value["current_period_index"] = json!(agreement.current_period.index);
    Ok(value)
}

fn scopes_json(shared: &Shared) -> Value {
    json!({ "scopes": shared.lock().config.scopes })
}

fn set_scopes(shared: &Shared, body: &[u8]) -> Result<Value, String> {
    let map = fields(body, &["scopes"])?;
    let scopes = match map.get("scopes") {
        Some(v) => string_list(v, "scopes")?,
        None => return Err("`scopes` is required (a list of scope names)".to_owned()),
    };
    shared.lock().config.scopes = scopes.into_iter().collect();
    Ok(scopes_json(shared))
}

fn billing_settings_json(shared: &Shared) -> Value {
    let state = shared.lock();
    json!({
        "cycle_length_secs": state.billing.cycle_length.as_secs_f64(),
        "cancelled_agreements_accept_usage": state.billing.cancelled_accept_usage,
    })
}

/// Absent fields stay as they are.
fn set_billing_settings(shared: &Shared, body: &[u8]) -> Result<Value, String> {
    let map = fields(
        body,
        &["cycle_length_secs", "cancelled_agreements_accept_usage"],
    )?;
    let length = match map.get("cycle_length_secs") {
        Some(v) => {
            let d = duration_field(v, "cycle_length_secs", 1.0)?;
            if d.is_zero() {
                return Err("`cycle_length_secs` must be more than zero".to_owned());
            }
            Some(d)
        }
        None => None,
    };
    let accept = match map.get("cancelled_agreements_accept_usage") {
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            return Err("`cancelled_agreements_accept_usage` must be true or false".to_owned());
        }
        None => None,
    };
    {
        let mut state = shared.lock();
        if let Some(length) = length {
            state.billing.roll_all(SystemTime::now());
            state.billing.cycle_length = length;
        }
        if let Some(accept) = accept {
            state.billing.cancelled_accept_usage = accept;
        }
    }
    Ok(billing_settings_json(shared))
}

fn webhook_json(shared: &Shared) -> Value {
    let state = shared.lock();
    let delays: Vec<Value> = state
        .config
        .webhook_retry_delays
        .iter()
        .map(|d| duration_millis(*d))
        .collect();
    json!({ "url": state.config.webhook_url, "retry_delays_ms": delays })
}

/// `{"url": "http://…" | null, "retry_delays_ms": [..]}`; absent fields stay as they are.
fn set_webhook(shared: &Shared, body: &[u8]) -> Result<Value, String> {
    let map = fields(body, &["url", "retry_delays_ms"])?;
    let url = match map.get("url") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(url)) => {
            crate::webhook::check_url(url)?;
            Some(Some(url.clone()))
        }
        Some(_) => return Err("`url` must be a string or null".to_owned()),
    };
    let delays = match map.get("retry_delays_ms") {
        None => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|v| duration_field(v, "retry_delays_ms", 1e-3))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err("`retry_delays_ms` must be a list of milliseconds".to_owned()),
    };
    {
        let mut state = shared.lock();
        if let Some(url) = url {
            state.config.webhook_url = url;
        }
        if let Some(delays) = delays {
            state.config.webhook_retry_delays = delays;
        }
    }
    Ok(webhook_json(shared))
}

fn webhook_deliveries(shared: &Shared) -> Value {
    let state = shared.lock();
    Value::Array(
        state
            .webhook_deliveries()
            .iter()
            .map(|d| {
                json!({
                    "webhook_id": d.webhook_id,
                    "event_id": d.event_id,
                    "type": d.event_type,
                    "customer_id": d.customer_id,
                    "data": d.data,
                    "url": d.url,
                    "attempts": d.attempts,
                    "last_status": d.last_status,
                    "last_error": d.last_error,
                    "delivered": d.delivered,
                    "finished": d.finished,
                })
            })
            .collect(),
    )
}
