//! `kinde-emulator`: the Kinde emulator as a process, for tests in any language.
//!
//! Listens on 127.0.0.1, prints its base URL as one line on stdout when ready, and
//! stops on SIGINT or SIGTERM with exit status 0. Bad flags: a message on stderr
//! and exit status 2. `kinde-emulator --help` prints the flags.

#![warn(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use kinde_meter_emulator::{Emulator, EmulatorBuilder, Faults, RateLimit};

const USAGE: &str = "\
kinde-emulator: a local, stateful Kinde (token, meter usage and billing read endpoints,
signed billing webhooks) on 127.0.0.1

Usage: kinde-emulator [FLAGS]

Prints its base URL (http://127.0.0.1:PORT) as one line on stdout when ready; stops on
SIGINT or SIGTERM. The control API is under /_emulator/ on the same port.

Flags (`--flag value` or `--flag=value`):
  --port N                    port on 127.0.0.1; 0 (the default) picks a free one
  --client-id ID              client id the token endpoint accepts [emulator-client-id]
  --client-secret SECRET      client secret it accepts [emulator-client-secret]
  --static-token TOKEN        an access token that is always valid
  --known-agreements A,B      refuse usage for other agreements (repeatable)
  --known-features F,G        refuse usage for other feature codes (repeatable)
  --token-lifetime SECS       lifetime of issued tokens, in seconds [3600]
  --unauthorized-status CODE  403 (default) or 401 for a bad token
  --omit-expires-in           leave expires_in out of token responses
  --rate-limit PER_SEC        token-bucket limit on meter requests per second
  --rate-burst N              bucket size for --rate-limit [the rate, rounded up]
  --concurrency-limit N       429 for a meter request while N others are handled
  --retry-after-header        429s also carry Retry-After
  --honor-idempotency-key     200 without applying for an Idempotency-Key seen before
  --fault-status-500 P        probability of each injected fault (0..=1), per request:
  --fault-status-502 P          500, 502, 503 and a dropped connection are not applied;
  --fault-status-503 P          the three *-after-apply faults and a malformed 200
  --fault-drop-before-apply P   are applied, so ambiguous to the client
  --fault-status-500-after-apply P
  --fault-drop-after-apply P
  --fault-malformed-200 P
  --latency-ms MS             delay before handling each meter request
  --latency-jitter-ms MS      extra delay drawn from 0..=MS
  --seed N                    seed of the fault draws [0]
  --scopes A,B                the scopes granted to the application (repeatable; empty
                                for none) [create:meter_usage,read:billing_agreements,
                                read:organizations,read:users]
  --plan CODE=F1,F2           a plan and its feature codes (repeatable)
  --organization CODE=PLAN    an organization that is a billing customer on PLAN
  --user ID=PLAN              a user (kp_...) that is a billing customer on PLAN
                                (both repeatable; read their ids from GET /_emulator/billing)
  --cycle-length SECS         length of billing cycles, in seconds [2592000, 30 days]
  --cancelled-agreements-accept-usage
                              accept usage for cancelled agreements (default: 400
                                AGREEMENT_CANCELLED)
  --webhook-url URL           POST signed billing events to URL (http://host:port/path)
  --webhook-retry-delays-ms A,B
                              waits between delivery attempts, in ms [100,500,2000];
                                empty for no retries
  -h, --help                  print this and exit
  -V, --version               print the version and exit
";

/// What the command line asks for.
#[derive(Debug)]
enum Action {
    Help,
    Version,
    Run(Box<EmulatorBuilder>),
}

fn main() -> ExitCode {
    let action = match parse(std::env::args().skip(1)) {
        Ok(action) => action,
        Err(message) => {
            eprintln_quiet(&format!(
                "kinde-emulator: {message}\nRun `kinde-emulator --help` for the flags."
            ));
            return ExitCode::from(2);
        }
    };
    match action {
        Action::Help => print_quiet(USAGE),
        Action::Version => print_quiet(&format!("kinde-emulator {}\n", env!("CARGO_PKG_VERSION"))),
        Action::Run(builder) => run(*builder),
    }
}

fn run(builder: EmulatorBuilder) -> ExitCode {
    let emulator = match builder.start() {
        Ok(emulator) => emulator,
        Err(e) => {
            eprintln_quiet(&format!("kinde-emulator: cannot start: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln_quiet(&format!("kinde-emulator: cannot start: {e}"));
            return ExitCode::FAILURE;
        }
    };
    // Install the handlers before announcing the URL, so a signal sent right after
    // reading it is never the default (fatal) one.
    let signals = match runtime.block_on(async { Signals::new() }) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln_quiet(&format!("kinde-emulator: cannot listen for signals: {e}"));
            return ExitCode::FAILURE;
        }
    };
    if print_quiet(&format!("{}\n", emulator.base_url())) != ExitCode::SUCCESS {
        return ExitCode::FAILURE;
    }
    runtime.block_on(signals.wait());
    emulator.shutdown();
    ExitCode::SUCCESS
}

/// SIGINT and SIGTERM (Ctrl-C elsewhere).
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    #[cfg(not(unix))]
    fn new() -> std::io::Result<Self> {
        Ok(Signals {})
    }

    #[cfg(unix)]
    async fn wait(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }

    #[cfg(not(unix))]
    async fn wait(self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Writes to stdout and flushes; a closed stdout is a failure, not a panic.
fn print_quiet(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn eprintln_quiet(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Parses the flags (the program name left out).
fn parse(args: impl IntoIterator<Item = String>) -> Result<Action, String> {
    let mut builder = Emulator::builder();
    let mut faults = Faults::none();
    let mut rate: Option<f64> = None;
    let mut burst: Option<u32> = None;
    let mut agreements: Option<Vec<String>> = None;
    let mut features: Option<Vec<String>> = None;
    let mut client_id: Option<String> = None;
    let mut client_secret: Option<String> = None;
    let mut scopes: Option<Vec<String>> = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        // Flags without a value.
        let switch = match flag.as_str() {
            "-h" | "--help" => return Ok(Action::Help),
            "-V" | "--version" => return Ok(Action::Version),
            "--omit-expires-in"
            | "--retry-after-header"
            | "--honor-idempotency-key"
            | "--cancelled-agreements-accept-usage" => true,
            _ => false,
        };
        if switch {
            if inline.is_some() {
                return Err(format!("`{flag}` takes no value"));
            }
            builder = match flag.as_str() {
                "--omit-expires-in" => builder.omit_expires_in(true),
                "--retry-after-header" => builder.retry_after_header(true),
                "--cancelled-agreements-accept-usage" => {
                    builder.cancelled_agreements_accept_usage(true)
                }
                _ => builder.honor_idempotency_key(true),
            };
            continue;
        }
        if !flag.starts_with('-') {
            return Err(format!(
                "unexpected argument `{flag}` (flags start with --)"
            ));
        }
        if !is_known(&flag) {
            return Err(format!("unknown flag `{flag}`"));
        }
        let value = match inline {
            Some(value) => value,
            None => args
                .next()
                .ok_or_else(|| format!("`{flag}` needs a value"))?,
        };
        let bad = |what: &str| format!("`{flag}`: {what}, got `{value}`");
        match flag.as_str() {
            "--port" => {
                builder = builder.port(
                    value
                        .parse()
                        .map_err(|_| bad("expected a port number 0..=65535"))?,
                )
            }
            "--client-id" => {
                client_id = Some(non_empty(&value).ok_or_else(|| bad("expected a non-empty id"))?)
            }
            "--client-secret" => {
                client_secret =
                    Some(non_empty(&value).ok_or_else(|| bad("expected a non-empty secret"))?)
            }
            "--static-token" => {
                builder = builder.static_token(
                    non_empty(&value).ok_or_else(|| bad("expected a non-empty token"))?,
                )
            }
            "--known-agreements" => agreements
                .get_or_insert_with(Vec::new)
                .extend(list(&value).ok_or_else(|| bad("expected a comma-separated list of ids"))?),
            "--known-features" => features.get_or_insert_with(Vec::new).extend(
                list(&value).ok_or_else(|| bad("expected a comma-separated list of codes"))?,
            ),
            "--token-lifetime" => {
                builder = builder.token_lifetime(
                    seconds(&value, 1.0)
                        .ok_or_else(|| bad("expected a non-negative number of seconds"))?,
                )
            }
            "--unauthorized-status" => {
                builder = builder.unauthorized_status(match value.as_str() {
                    "401" => 401,
                    "403" => 403,
                    _ => return Err(bad("expected 401 or 403")),
                })
            }
            "--rate-limit" => {
                rate = Some(
                    value
                        .parse::<f64>()
                        .ok()
                        .filter(|r| r.is_finite() && *r > 0.0)
                        .ok_or_else(|| bad("expected a positive number of requests per second"))?,
                )
            }
            "--rate-burst" => {
                burst = Some(
                    value
                        .parse::<u32>()
                        .ok()
                        .filter(|b| *b > 0)
                        .ok_or_else(|| bad("expected a positive whole number"))?,
                )
            }
            "--concurrency-limit" => {
                let limit: usize = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad("expected a whole number of at least 1"))?;
                builder = builder.concurrency_limit(limit)
            }
            "--latency-ms" => {
                faults = faults.latency(
                    seconds(&value, 1e-3)
                        .ok_or_else(|| bad("expected a non-negative number of milliseconds"))?,
                )
            }
            "--latency-jitter-ms" => {
                faults = faults.latency_jitter(
                    seconds(&value, 1e-3)
                        .ok_or_else(|| bad("expected a non-negative number of milliseconds"))?,
                )
            }
            "--seed" => {
                builder = builder.seed(
                    value
                        .parse()
                        .map_err(|_| bad("expected a whole number 0..=2^64-1"))?,
                )
            }
            "--scopes" => {
                let granted = scopes.get_or_insert_with(Vec::new);
                if !value.is_empty() {
                    granted.extend(
                        list(&value)
                            .ok_or_else(|| bad("expected a comma-separated list of scopes"))?,
                    );
                }
            }
            "--plan" => {
                let (code, features) = value
                    .split_once('=')
                    .filter(|(code, _)| !code.is_empty())
                    .ok_or_else(|| bad("expected CODE=FEATURE,FEATURE"))?;
                let features = if features.is_empty() {
                    Vec::new()
                } else {
                    list(features).ok_or_else(|| bad("expected CODE=FEATURE,FEATURE"))?
                };
                builder = builder.plan(code, features)
            }
            "--organization" | "--user" => {
                let (id, plan) = value
                    .split_once('=')
                    .filter(|(id, plan)| !id.is_empty() && !plan.is_empty())
                    .ok_or_else(|| bad("expected ID=PLAN"))?;
                builder = if flag == "--user" {
                    builder.user(id, plan)
                } else {
                    builder.organization(id, plan)
                }
            }
            "--cycle-length" => {
                builder = builder.cycle_length(
                    seconds(&value, 1.0)
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| bad("expected a positive number of seconds"))?,
                )
            }
            "--webhook-url" => {
                if !value.starts_with("http://") {
                    return Err(bad("expected an http://host:port/path URL"));
                }
                builder = builder.webhook_url(value.clone())
            }
            "--webhook-retry-delays-ms" => {
                let delays = if value.is_empty() {
                    Vec::new()
                } else {
                    list(&value)
                        .and_then(|items| {
                            items
                                .iter()
                                .map(|ms| seconds(ms, 1e-3))
                                .collect::<Option<Vec<_>>>()
                        })
                        .ok_or_else(|| bad("expected a comma-separated list of milliseconds"))?
                };
                builder = builder.webhook_retry_delays(delays)
            }
            _ => {
                // Only the --fault-* flags are left (is_known above).
                let name = flag.trim_start_matches("--fault-").replace('-', "_");
                let p = value
                    .parse::<f64>()
                    .ok()
                    .filter(|p| (0.0..=1.0).contains(p))
                    .ok_or_else(|| bad("expected a probability in 0..=1"))?;
                faults =
                    set_fault(faults, &name, p).ok_or_else(|| format!("unknown flag `{flag}`"))?;
            }
        }
    }
    if burst.is_some() && rate.is_none() {
        return Err("`--rate-burst` needs `--rate-limit`".to_owned());
    }
    if let Some(rate) = rate {
        // `as` saturates; the rate is positive and finite here.
        let burst = burst.unwrap_or_else(|| (rate.ceil() as u32).max(1));
        builder = builder.rate_limit(RateLimit::new(rate, burst));
    }
    if client_id.is_some() || client_secret.is_some() {
        builder = builder.client_credentials(
            client_id.unwrap_or_else(|| "emulator-client-id".to_owned()),
            client_secret.unwrap_or_else(|| "emulator-client-secret".to_owned()),
        );
    }
    if let Some(agreements) = agreements {
        builder = builder.known_agreements(agreements);
    }
    if let Some(features) = features {
        builder = builder.known_features(features);
    }
    if let Some(scopes) = scopes {
        builder = builder.scopes(scopes);
    }
    Ok(Action::Run(Box::new(builder.faults(faults))))
}

const FLAGS: &[&str] = &[
    "--port",
    "--client-id",
    "--client-secret",
    "--static-token",
    "--known-agreements",
    "--known-features",
    "--token-lifetime",
    "--unauthorized-status",
    "--rate-limit",
    "--rate-burst",
    "--concurrency-limit",
    "--latency-ms",
    "--latency-jitter-ms",
    "--seed",
    "--fault-status-500",
    "--fault-status-502",
    "--fault-status-503",
    "--fault-drop-before-apply",
    "--fault-status-500-after-apply",
    "--fault-drop-after-apply",
    "--fault-malformed-200",
    "--scopes",
    "--plan",
    "--organization",
    "--user",
    "--cycle-length",
    "--webhook-url",
    "--webhook-retry-delays-ms",
];

fn is_known(flag: &str) -> bool {
    FLAGS.contains(&flag)
}

fn set_fault(faults: Faults, name: &str, p: f64) -> Option<Faults> {
    Some(match name {
        "status_500" => faults.status_500(p),
        "status_502" => faults.status_502(p),
        "status_503" => faults.status_503(p),
        "drop_before_apply" => faults.drop_before_apply(p),
        "status_500_after_apply" => faults.status_500_after_apply(p),
        "drop_after_apply" => faults.drop_after_apply(p),
        "malformed_200" => faults.malformed_200(p),
        _ => return None,
    })
}

fn non_empty(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_owned())
}

/// A comma-separated list of non-empty items.
fn list(value: &str) -> Option<Vec<String>> {
    let items: Vec<String> = value.split(',').map(|s| s.trim().to_owned()).collect();
    (!items.iter().any(String::is_empty)).then_some(items)
}

/// A non-negative number of `unit_secs` seconds.
fn seconds(value: &str, unit_secs: f64) -> Option<Duration> {
    let v: f64 = value.parse().ok()?;
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    Duration::try_from_secs_f64(v * unit_secs).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse_args(args: &[&str]) -> Result<Action, String> {
        parse(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn every_flag_parses() {
        let action = parse_args(&[
            "--port=0",
            "--client-id",
            "id",
            "--client-secret=s",
            "--static-token",
            "tok",
            "--known-agreements",
            "a,b",
            "--known-agreements=c",
            "--known-features",
            "f",
            "--token-lifetime",
            "1.5",
            "--unauthorized-status",
            "401",
            "--omit-expires-in",
            "--rate-limit",
            "2.5",
            "--rate-burst",
            "4",
            "--concurrency-limit",
            "3",
            "--retry-after-header",
            "--honor-idempotency-key",
            "--fault-status-500",
            "0.1",
            "--fault-status-502=0.1",
            "--fault-status-503",
            "0.1",
            "--fault-drop-before-apply",
            "0.1",
            "--fault-status-500-after-apply",
            "0.1",
            "--fault-drop-after-apply",
            "0.1",
            "--fault-malformed-200",
            "0.1",
            "--latency-ms",
            "5",
            "--latency-jitter-ms",
            "2",
            "--seed",
            "9",
            "--scopes",
            "create:meter_usage,read:users",
            "--scopes=",
            "--plan",
            "pro=calls,rows",
            "--plan=free=",
            "--organization",
            "org_1=pro",
            "--user=kp_1=free",
            "--cycle-length",
            "60",
            "--cancelled-agreements-accept-usage",
            "--webhook-url",
            "http://127.0.0.1:9/hooks",
            "--webhook-retry-delays-ms",
            "10,20",
            "--webhook-retry-delays-ms=",
        ])
        .unwrap();
        assert!(matches!(action, Action::Run(_)));
        assert!(matches!(parse_args(&["--help"]), Ok(Action::Help)));
        assert!(matches!(parse_args(&["-V"]), Ok(Action::Version)));
    }

    #[test]
    fn bad_flags_name_the_flag() {
        for (args, needle) in [
            (&["--nope"][..], "--nope"),
            (&["--port"][..], "--port"),
            (&["--port", "70000"][..], "--port"),
            (&["--fault-status-503", "2"][..], "--fault-status-503"),
            (&["--fault-teapot", "0.1"][..], "--fault-teapot"),
            (&["--seed", "-1"][..], "--seed"),
            (
                &["--unauthorized-status", "500"][..],
                "--unauthorized-status",
            ),
            (&["--omit-expires-in=yes"][..], "--omit-expires-in"),
            (&["--rate-burst", "3"][..], "--rate-burst"),
            (&["--known-agreements", "a,,b"][..], "--known-agreements"),
            (&["--token-lifetime", "NaN"][..], "--token-lifetime"),
            (&["--concurrency-limit", "0"][..], "--concurrency-limit"),
            (&["stray"][..], "stray"),
            (&["--plan", "=calls"][..], "--plan"),
            (&["--plan", "pro"][..], "--plan"),
            (&["--organization", "org_1"][..], "--organization"),
            (&["--user", "kp_1="][..], "--user"),
            (&["--cycle-length", "0"][..], "--cycle-length"),
            (&["--webhook-url", "https://x:1/"][..], "--webhook-url"),
            (
                &["--webhook-retry-delays-ms", "1,x"][..],
                "--webhook-retry-delays-ms",
            ),
            (&["--scopes", "a,,b"][..], "--scopes"),
            (
                &["--cancelled-agreements-accept-usage=1"][..],
                "--cancelled-agreements-accept-usage",
            ),
        ] {
            let err = parse_args(args).unwrap_err();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }
}
