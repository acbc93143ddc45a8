//! Metered futures are `Send` exactly when the body's future is; `!Send` bodies compile.
#![deny(warnings)]

use std::rc::Rc;

use kinde_meter::{AgreementId, meter, testing, with_agreement};

#[meter(feature = "send_call")]
async fn send_call(n: u32) -> u32 {
    tokio::task::yield_now().await;
    n
}

#[meter(feature = "send_return", on = "return", value = n)]
async fn send_return(n: u32) -> u32 {
    tokio::task::yield_now().await;
    n
}

#[meter(feature = "send_ok", on = "ok", agreement = &agreement)]
async fn send_ok(agreement: AgreementId, n: u32) -> Option<u32> {
    tokio::task::yield_now().await;
    Some(n)
}

#[meter(feature = "local_only", on = "return")]
async fn local_only(n: u32) -> u32 {
    let shared = Rc::new(n);
    tokio::task::yield_now().await;
    *shared
}

struct Queue {
    rows: std::sync::Mutex<Vec<u32>>,
}

impl Queue {
    // The `MutexGuard` in `value` is a temporary of the statement that evaluates it: it is
    // released before the body runs, so the future stays `Send` (and nothing deadlocks).
    #[meter(feature = "drains", on = "return", value = self.rows.lock().expect("lock").len())]
    async fn drain(&self) -> usize {
        tokio::task::yield_now().await;
        let mut rows = self.rows.lock().expect("lock");
        rows.drain(..).count()
    }

    #[meter(feature = "peeks", value = self.rows.lock().expect("lock").len())]
    async fn peek(&self) -> usize {
        tokio::task::yield_now().await;
        self.rows.lock().expect("lock").len()
    }
}

fn assert_send<T: Send>(value: T) -> T {
    value
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let capture = testing::capture();
    let acme: AgreementId = "agreement_acme".parse().expect("valid id");
    let task = runtime.spawn(capture.scope(with_agreement(acme.clone(), async move {
        assert_send(send_call(1)).await + assert_send(send_return(2)).await
    })));
    assert_eq!(runtime.block_on(task).ok(), Some(3));
    let ok = runtime.spawn(capture.scope(send_ok(acme, 4)));
    assert_eq!(runtime.block_on(ok).ok(), Some(Some(4)));
    assert_eq!(runtime.block_on(capture.scope(local_only(5))), 5);
    let queue = std::sync::Arc::new(Queue {
        rows: std::sync::Mutex::new(vec![1, 2, 3]),
    });
    let task =
        runtime.spawn(capture.scope(async move {
            assert_send(queue.peek()).await + assert_send(queue.drain()).await
        }));
    assert_eq!(runtime.block_on(task).ok(), Some(6));
    assert_eq!(capture.unattributed("peeks"), 3);
    assert_eq!(capture.unattributed("drains"), 3);
    assert_eq!(capture.total("agreement_acme", "send_call"), 1);
    assert_eq!(capture.total("agreement_acme", "send_return"), 2);
    assert_eq!(capture.total("agreement_acme", "send_ok"), 1);
    assert_eq!(capture.unattributed("local_only"), 1);
}
