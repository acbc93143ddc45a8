//! Sending the webhook outbox: one customer's events in order, customers side by side,
//! each attempt signed afresh and its outcome written to the state. Apart from
//! `webhook.rs` (the signer, the token, the wire) so that the state's types do not point
//! back at the state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::json;
use tokio::sync::mpsc;

use crate::clock::{format_rfc3339, unix_secs};
use crate::exchange::Shared;
use crate::webhook::{Outgoing, WEBHOOK_TOKEN_LIFETIME_SECS, post};

/// Takes deliveries in order and sends them, one customer's after the other's
/// but customers side by side.
pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    let mut queues: HashMap<String, mpsc::UnboundedSender<Outgoing>> = HashMap::new();
    while let Some(out) = rx.recv().await {
        let tx = queues.entry(out.customer_id.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(customer_queue(shared.clone(), rx));
            tx
        });
        let _ = tx.send(out);
    }
}

async fn customer_queue(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    while let Some(out) = rx.recv().await {
        deliver(&shared, out).await;
    }
}

async fn deliver(shared: &Shared, out: Outgoing) {
    let signer = match shared.signer() {
        Ok(signer) => signer,
        Err(e) => {
            shared
                .lock()
                .webhook_attempted(out.index, out.epoch, Err(e.to_string()), true);
            return;
        }
    };
    let attempts = out.retry_delays.len() + 1;
    for attempt in 0..attempts {
        if let Some(wait) = attempt.checked_sub(1).and_then(|i| out.retry_delays.get(i)) {
            tokio::time::sleep(*wait).await;
        }
        let now = SystemTime::now();
        let iat = unix_secs(now);
        let mut claims = out.claims.clone();
        claims["timestamp"] = json!(format_rfc3339(now));
        claims["iat"] = json!(iat);
        claims["exp"] = json!(iat + WEBHOOK_TOKEN_LIFETIME_SECS);
        let body = signer.sign(&claims);
        let result = post(&out.url, &out.webhook_id, body).await;
        let delivered = result == Ok(200);
        let last = attempt + 1 == attempts;
        shared
            .lock()
            .webhook_attempted(out.index, out.epoch, result, delivered || last);
        if delivered {
            return;
        }
    }
}
