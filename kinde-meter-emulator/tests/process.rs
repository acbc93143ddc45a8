//! The `kinde-emulator` binary as a child process: its URL line, usage recorded over
//! HTTP, the ledger read through the control API, a clean stop on SIGTERM, and exit
//! status 2 for a bad flag.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{fetch_token_with, get, meter};

const BIN: &str = env!("CARGO_BIN_EXE_kinde-emulator");

/// A running `kinde-emulator`, killed if the test fails before it stops it.
struct Running {
    child: Child,
    base_url: String,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = spawn(args);
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the URL line");
        let base_url = line.trim_end().to_owned();
        assert!(
            base_url.starts_with("http://127.0.0.1:") && line.ends_with('\n'),
            "{line:?}"
        );
        Running { child, base_url }
    }

    /// Sends SIGTERM and waits (at most 10 s) for the exit status.
    fn terminate(mut self) -> ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) with a valid signal number on the pid of our own child,
        // which has not been reaped yet (we still hold its `Child`), so the pid is
        // not reused.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "kinde-emulator did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serves_records_usage_reports_its_ledger_and_stops_on_sigterm() {
    let running = Running::start(&[
        "--client-id",
        "proc-client",
        "--client-secret=proc-secret",
        "--known-agreements",
        "agr_1,agr_2",
        "--known-features=calls",
        "--seed",
        "7",
    ]);
    let base = running.base_url.clone();

    let token = fetch_token_with(&base, "proc-client", "proc-secret");
    assert_eq!(meter(&base, &token, "agr_1", "calls", "2").status, 200);
    assert_eq!(meter(&base, &token, "agr_1", "calls", "3").status, 200);
    // The known lists apply.
    assert_eq!(meter(&base, &token, "agr_9", "calls", "1").status, 400);
    assert_eq!(meter(&base, &token, "agr_2", "rows", "1").status, 400);

    let ledger = get(&base, "/_emulator/ledger").json();
    assert_eq!(
        ledger,
        serde_json::json!({
            "totals": [{"agreement": "agr_1", "feature": "calls", "total": "5"}],
            "sum": "5",
        })
    );
    assert_eq!(get(&base, "/_emulator/counts").json()["rejected"], 2);

    let port = base.rsplit(':').next().unwrap().to_owned();
    let status = running.terminate();
    assert_eq!(status.code(), Some(0), "{status:?}");
    // The port is closed once it exited.
    assert!(std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err());
}

#[test]
fn faults_from_flags_apply() {
    let running = Running::start(&["--fault-status-503", "1"]);
    let base = running.base_url.clone();
    let token = fetch_token_with(&base, "emulator-client-id", "emulator-client-secret");
    assert_eq!(meter(&base, &token, "agr", "feat", "1").status, 503);
    assert_eq!(get(&base, "/_emulator/faults").json()["status_503"], 1.0);
    assert_eq!(running.terminate().code(), Some(0));
}

#[test]
fn billing_flags_make_plans_customers_scopes_and_the_webhook() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = format!("http://{}/hooks", closed.local_addr().unwrap());
    drop(closed);
    let running = Running::start(&[
        "--plan",
        "pro=calls,rows",
        "--organization=org_p=pro",
        "--user",
        "kp_p=pro",
        "--scopes",
        "create:meter_usage,read:organizations",
        "--cycle-length",
        "60",
        "--webhook-url",
        &hook,
        "--webhook-retry-delays-ms=",
    ]);
    let base = running.base_url.clone();
    let billing = get(&base, "/_emulator/billing").json();
    assert_eq!(billing["cycle_length_secs"], 60.0);
    let customers = billing["customers"].as_array().unwrap();
    assert_eq!(customers.len(), 2);
    let org = customers.iter().find(|c| c["org_code"] == "org_p").unwrap();
    let agreement = org["agreements"][0]["id"].as_str().unwrap().to_owned();

    let token = fetch_token_with(&base, "emulator-client-id", "emulator-client-secret");
    let auth = format!("Bearer {token}");
    let r = common::send(
        &base,
        "GET",
        "/api/v1/organization?code=org_p&expand=billing",
        &[("Authorization", auth.as_str())],
        "",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json()["billing"]["agreements"][0]["agreement_id"],
        agreement.as_str()
    );
    // read:billing_agreements was not granted.
    let path = format!(
        "/api/v1/billing/agreements?customer_id={}",
        org["customer_id"].as_str().unwrap()
    );
    let r = common::send(&base, "GET", &path, &[("Authorization", auth.as_str())], "");
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["errors"][0]["code"], "FORBIDDEN");
    assert_eq!(meter(&base, &token, &agreement, "calls", "2").status, 200);

    assert_eq!(
        get(&base, "/_emulator/webhook").json(),
        serde_json::json!({"url": hook, "retry_delays_ms": []})
    );
    let r = common::post_json(
        &base,
        "/_emulator/cancel-agreement",
        &serde_json::json!({"agreement_id": agreement}).to_string(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(meter(&base, &token, &agreement, "calls", "2").status, 400);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = get(&base, "/_emulator/webhook-deliveries").json();
        if d[0]["finished"] == true {
            assert_eq!(d[0]["type"], "customer.agreement_cancelled");
            assert_eq!(d[0]["attempts"], 1);
            break;
        }
        assert!(Instant::now() < deadline, "{d}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(running.terminate().code(), Some(0));
}

#[test]
fn cancelled_agreements_accept_usage_from_the_flag() {
    let running = Running::start(&[
        "--plan=p=f",
        "--organization=org_q=p",
        "--cancelled-agreements-accept-usage",
    ]);
    let base = running.base_url.clone();
    let billing = get(&base, "/_emulator/billing").json();
    assert_eq!(billing["cancelled_agreements_accept_usage"], true);
    let agreement = billing["customers"][0]["agreements"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = serde_json::json!({"agreement_id": agreement}).to_string();
    assert_eq!(
        common::post_json(&base, "/_emulator/cancel-agreement", &body).status,
        200
    );
    let token = fetch_token_with(&base, "emulator-client-id", "emulator-client-secret");
    assert_eq!(meter(&base, &token, &agreement, "f", "1").status, 200);
    assert_eq!(running.terminate().code(), Some(0));
}

/// Starts `kinde-emulator` with `args`, its stdout and stderr piped to the test.
fn spawn(args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kinde-emulator")
}

fn run_to_end(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = spawn(args);
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (child.wait().unwrap().code(), out, err)
}

#[test]
fn a_bad_flag_exits_2_and_names_the_flag() {
    for (args, flag) in [
        (&["--no-such-flag"][..], "--no-such-flag"),
        (&["--port", "banana"][..], "--port"),
        (&["--fault-status-503=7"][..], "--fault-status-503"),
        (&["--seed"][..], "--seed"),
        (&["--plan", "pro"][..], "--plan"),
        (&["--webhook-url", "https://x:1/"][..], "--webhook-url"),
    ] {
        let (code, out, err) = run_to_end(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn help_prints_the_flags_and_exits_0() {
    let (code, out, _) = run_to_end(&["--help"]);
    assert_eq!(code, Some(0));
    for flag in [
        "--port",
        "--client-secret",
        "--fault-drop-after-apply",
        "--seed",
        "--plan",
        "--organization",
        "--scopes",
        "--webhook-url",
        "--cancelled-agreements-accept-usage",
    ] {
        assert!(out.contains(flag), "{flag} missing from:\n{out}");
    }
}
