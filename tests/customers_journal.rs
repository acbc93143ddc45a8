//! A customer's record killed (SIGKILL) while its first attempt
//! is in flight, then resumed from the journal after a plan change. The README: "The
//! agreement a record was first sent to is journaled with it and kept for every retry: a
//! retry after an ambiguous failure never lands on another agreement."
//!
//! The child is this same test binary, re-run with `CUSTOMERS_JOURNAL_CHILD=<journal dir>` on the
//! test `child` (which does nothing otherwise).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kinde_meter::api::{Credentials, Domain};
use kinde_meter::{Config, Customer, UnsentRecord, meter, with_customer};
use kinde_meter_emulator::{Emulator, Faults};
use kinde_meter_workspace::reporter::{fast_config, wait_until};

#[meter(feature = "api_calls")]
fn api_call() {}

fn acme() -> Customer {
    Customer::org("org_acme").expect("test setup")
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "CHILD {line}");
    let _ = out.flush();
}

/// The child: `warm` = resolve the customer first (one delivered call), then wait for
/// `go` on stdin; then record 5 calls, flush (durable) and wait to be killed.
#[test]
fn child() {
    let Ok(dir) = std::env::var("CUSTOMERS_JOURNAL_CHILD") else {
        return;
    };
    let url = std::env::var("CUSTOMERS_JOURNAL_URL").expect("test setup");
    let id = std::env::var("CUSTOMERS_JOURNAL_ID").expect("test setup");
    let secret = std::env::var("CUSTOMERS_JOURNAL_SECRET").expect("test setup");
    let warm = std::env::var("CUSTOMERS_JOURNAL_WARM").is_ok();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("test setup");
    rt.block_on(async {
        let config = Config::new(
            Domain::parse(&url).expect("test setup"),
            Credentials::client_credentials(id, secret),
        )
        .journal(&dir)
        .flush_interval(Duration::from_secs(60))
        .request_timeout(Duration::from_secs(30));
        let guard = kinde_meter::init(config).expect("test setup");
        if warm {
            with_customer(acme(), async { api_call() }).await;
            let _ = guard.flush(Duration::from_secs(5)).await;
            assert!(wait_until(Duration::from_secs(5), || guard
                .stats()
                .delivered
                == 1));
            say("warm");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).expect("test setup");
        }
        with_customer(acme(), async {
            for _ in 0..5 {
                api_call();
            }
        })
        .await;
        let report = guard.flush(Duration::from_secs(5)).await;
        say(&format!("flushed {}", report.durable));
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
}

/// The parent restarts the global reporter: one run at a time.
static TURN: Mutex<()> = Mutex::new(());

fn run(warm: bool) -> (u128, u128, Vec<UnsentRecord>) {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let emulator = Emulator::builder()
        .plan("basic", ["api_calls"])
        .plan("pro", ["api_calls", "exports"])
        .organization("org_acme", "basic")
        .start()
        .expect("emulator");
    let customer = emulator
        .organization_customer("org_acme")
        .expect("test setup");
    let old = emulator.customer_agreements(&customer)[0].id.clone();
    let dir = std::env::temp_dir().join(format!("customers-journal-{}-{warm}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test setup");
    if !warm {
        emulator.set_faults(Faults::none().latency(Duration::from_secs(2)));
    }
    let mut child = Command::new(std::env::current_exe().expect("test setup"))
        .args(["child", "--exact", "--nocapture", "--test-threads=1"])
        .env("CUSTOMERS_JOURNAL_CHILD", &dir)
        .env("CUSTOMERS_JOURNAL_URL", emulator.base_url())
        .env("CUSTOMERS_JOURNAL_ID", emulator.client_id())
        .env("CUSTOMERS_JOURNAL_SECRET", emulator.client_secret())
        .envs(warm.then_some(("CUSTOMERS_JOURNAL_WARM", "1")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("test setup");
    let mut stdin = child.stdin.take().expect("test setup");
    let mut lines = BufReader::new(child.stdout.take().expect("test setup")).lines();
    let mut next = |want: &str| loop {
        let line = lines.next().expect("child output").expect("test setup");
        // libtest may print `test child ... ` on the same line first.
        if let Some(at) = line.find("CHILD ") {
            let rest = &line[at + "CHILD ".len()..];
            assert!(rest.starts_with(want), "{rest}");
            return rest.to_owned();
        }
    };
    if warm {
        next("warm");
        emulator.set_faults(Faults::none().latency(Duration::from_secs(2)));
        writeln!(stdin, "go").expect("test setup");
    }
    assert_eq!(next("flushed"), "flushed true");
    // The first attempt of the 5 is out (held by the emulator's latency): kill.
    assert!(wait_until(Duration::from_secs(5), || emulator.in_flight() > 0));
    child.kill().expect("test setup");
    child.wait().expect("test setup");
    // The emulator applies it anyway (its apply is detached from the client).
    let want = if warm { 6 } else { 5 };
    assert!(wait_until(Duration::from_secs(5), || emulator
        .total(&old, "api_calls")
        .whole()
        == Some(want)));
    emulator.set_faults(Faults::none());
    let new = emulator.change_plan(&customer, "pro").expect("test setup");

    // A new process on the journal: it resumes the record.
    let unsent: Arc<Mutex<Vec<UnsentRecord>>> = Arc::default();
    let hook = Arc::clone(&unsent);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("test setup");
    rt.block_on(async {
        let guard = kinde_meter::init(
            fast_config(&emulator)
                .journal(&dir)
                .on_unsent(move |r| hook.lock().expect("lock").extend_from_slice(r)),
        )
        .expect("test setup");
        let report = guard.shutdown(Duration::from_secs(10)).await;
        eprintln!("resumed: {report:?}");
    });
    let total = |a: &str| emulator.total(a, "api_calls").whole().expect("test setup");
    let _ = std::fs::remove_dir_all(&dir);
    let unsent = unsent.lock().expect("lock").clone();
    (total(&old), total(&new), unsent)
}

/// The customer was looked up for this record (cache miss): `resolved` binds it in
/// memory only (`Outbox::requeue` logs a Put that nobody writes before `journal.start`).
#[test]
fn killed_in_flight_after_a_lookup_is_resumed_to_the_same_agreement() {
    if std::env::var("CUSTOMERS_JOURNAL_CHILD").is_ok() {
        return;
    }
    let (old, new, unsent) = run(false);
    assert_eq!(
        (old, new),
        (5, 0),
        "the record applied to the old agreement was sent to the new one too; unsent {unsent:?}"
    );
}

/// The customer was cached (bound in `start_due`, written before the start): control.
#[test]
fn killed_in_flight_after_a_cache_hit_is_resumed_to_the_same_agreement() {
    if std::env::var("CUSTOMERS_JOURNAL_CHILD").is_ok() {
        return;
    }
    let (old, new, unsent) = run(true);
    assert_eq!((old, new), (6, 0), "unsent {unsent:?}");
}
