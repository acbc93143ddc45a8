//! `Config::from_env_with` over fixed variable tables (the process environment is never
//! changed), `Config::from_env` once, and the reporter options `Reporter::start` refuses.

use std::time::Duration;

use kinde_meter::api::{CreateMeterUsageRecordRequest, Credentials, Domain};
use kinde_meter::config::env;
use kinde_meter::{Config, ConfigError, InitError, Reporter};
use kinde_meter_emulator::Emulator;
use kinde_meter_workspace::vars;

const DOMAIN: (&str, &str) = ("KINDE_DOMAIN", "acme.kinde.com");

fn config(pairs: &[(&str, &str)]) -> Config {
    Config::from_env_with(vars(pairs)).expect("a configuration")
}

fn error(pairs: &[(&str, &str)]) -> ConfigError {
    Config::from_env_with(vars(pairs)).expect_err("a configuration error")
}

/// The variable a `Missing` or `Malformed` error names.
fn named(e: &ConfigError) -> &'static str {
    match e {
        ConfigError::Missing { var, .. } | ConfigError::Malformed { var, .. } => var,
        other => panic!("names no variable: {other:?}"),
    }
}

// ----- KINDE_DOMAIN -----

#[test]
fn domain_is_read_in_every_form_users_write() {
    for raw in [
        "acme.kinde.com",
        "acme.kinde.com/",
        "https://acme.kinde.com",
        "https://acme.kinde.com/",
        "  https://acme.kinde.com/\n",
    ] {
        let c = config(&[("KINDE_DOMAIN", raw), ("KINDE_ACCESS_TOKEN", "tok")]);
        assert_eq!(c.domain().as_str(), "https://acme.kinde.com", "{raw:?}");
        assert_eq!(
            c.domain(),
            &Domain::parse("acme.kinde.com").expect("domain"),
            "{raw:?}"
        );
    }
}

#[test]
fn missing_domain_is_named() {
    for pairs in [
        &[("KINDE_ACCESS_TOKEN", "tok")][..],
        &[("KINDE_DOMAIN", ""), ("KINDE_ACCESS_TOKEN", "tok")][..],
        &[("KINDE_DOMAIN", "   "), ("KINDE_ACCESS_TOKEN", "tok")][..],
        &[][..],
    ] {
        let e = error(pairs);
        assert!(matches!(e, ConfigError::Missing { .. }), "{pairs:?}: {e:?}");
        assert_eq!(named(&e), "KINDE_DOMAIN");
        assert!(e.to_string().starts_with("KINDE_DOMAIN is not set"), "{e}");
    }
}

#[test]
fn malformed_domain_is_named_with_the_reason() {
    for (raw, why) in [
        ("ftp://x", "scheme `ftp`"),
        ("https://acme.kinde.com/path", "must not contain a path"),
        ("https://acme.kinde.com/api/", "must not contain a path"),
        ("https://acme.kinde.com?x=1", "query"),
        ("https://user:pw@acme.kinde.com", "user name"),
        ("acme kinde com", "not a Kinde domain"),
    ] {
        let e = error(&[("KINDE_DOMAIN", raw), ("KINDE_ACCESS_TOKEN", "tok")]);
        assert!(matches!(e, ConfigError::Malformed { .. }), "{raw:?}: {e:?}");
        assert_eq!(named(&e), "KINDE_DOMAIN");
        let shown = e.to_string();
        assert!(shown.starts_with("KINDE_DOMAIN is malformed"), "{shown}");
        assert!(shown.contains(why), "{raw:?}: {shown}");
        assert!(shown.contains("acme.kinde.com"), "says how: {shown}");
    }
}

#[test]
fn credentials_in_the_domain_are_refused_without_echoing_them() {
    // Every error path of domain parsing: the userinfo alone, and with something else
    // wrong (scheme, host, port, path, query), written with and without a scheme.
    for raw in [
        "https://user:hunter2-secret@acme.kinde.com",
        "user:hunter2-secret@acme.kinde.com",
        "https://:hunter2-secret@acme.kinde.com",
        "https://hunter2-secret@acme.kinde.com",
        "ftp://user:hunter2-secret@acme.kinde.com",
        "https://user:hunter2-secret@acme kinde com",
        "https://user:hunter2-secret@acme.kinde.com:99999",
        "https://user:hunter2/secret@acme.kinde.com",
        "https://user:hunter2?secret@acme.kinde.com",
        "https://user:hunter2#secret@acme.kinde.com",
        "https://user:hunter2-secret@acme.kinde.com/api?x=1",
        "https://user:hunter2-secret@@acme.kinde.com",
        "  https://user:hunter2-secret@acme.kinde.com  ",
        "https://user:hunter2-secret\u{FF20}acme.kinde.com",
    ] {
        let e = error(&[("KINDE_DOMAIN", raw), ("KINDE_ACCESS_TOKEN", "tok")]);
        assert_eq!(named(&e), "KINDE_DOMAIN", "{raw:?}: {e:?}");
        for text in [e.to_string(), format!("{e:?}")] {
            assert!(!text.contains("hunter2"), "{raw:?} leaked: {text}");
            assert!(text.contains("KINDE_DOMAIN"), "{raw:?}: {text}");
            assert!(
                text.contains("remove the user name and password from the URL"),
                "{raw:?}: {text}"
            );
        }
        let direct = Domain::parse(raw).expect_err(raw);
        for text in [direct.to_string(), format!("{direct:?}")] {
            assert!(!text.contains("hunter2"), "{raw:?} leaked: {text}");
        }
    }
}

// ----- credentials -----

const MANAGEMENT: [(&str, &str); 2] = [
    ("KINDE_MANAGEMENT_CLIENT_ID", "management-id"),
    ("KINDE_MANAGEMENT_CLIENT_SECRET", "management-secret-value"),
];
const M2M: [(&str, &str); 2] = [
    ("KINDE_M2M_CLIENT_ID", "m2m-id"),
    ("KINDE_M2M_CLIENT_SECRET", "m2m-secret-value"),
];
const CLIENT: [(&str, &str); 2] = [
    ("KINDE_CLIENT_ID", "client-id"),
    ("KINDE_CLIENT_SECRET", "client-secret-value"),
];
const TOKEN: (&str, &str) = ("KINDE_ACCESS_TOKEN", "access-token-value");
const SECRETS: [&str; 4] = [
    "management-secret-value",
    "m2m-secret-value",
    "client-secret-value",
    "access-token-value",
];

/// The `Debug` of the configuration, checked to hold no secret.
fn shown(c: &Config) -> String {
    let text = format!("{c:?}");
    for secret in SECRETS {
        assert!(!text.contains(secret), "{text}");
    }
    text
}

#[test]
fn client_pairs_take_precedence_management_then_m2m_then_client() {
    let cases: [(Vec<(&str, &str)>, &str); 5] = [
        (
            [&MANAGEMENT[..], &M2M, &CLIENT, &[TOKEN]].concat(),
            "management-id",
        ),
        ([&M2M[..], &CLIENT, &[TOKEN]].concat(), "m2m-id"),
        ([&CLIENT[..], &[TOKEN]].concat(), "client-id"),
        ([&MANAGEMENT[..], &CLIENT].concat(), "management-id"),
        (CLIENT.to_vec(), "client-id"),
    ];
    for (mut pairs, id) in cases {
        pairs.push(DOMAIN);
        let text = shown(&config(&pairs));
        assert!(
            text.contains(&format!(
                "ClientCredentials {{ client_id: {id:?}, client_secret: \"***\" }}"
            )),
            "{id}: {text}"
        );
    }
}

#[test]
fn client_id_is_trimmed() {
    let c = config(&[
        DOMAIN,
        ("KINDE_M2M_CLIENT_ID", "  m2m-id\n"),
        ("KINDE_M2M_CLIENT_SECRET", "m2m-secret-value"),
    ]);
    assert!(shown(&c).contains("client_id: \"m2m-id\""));
}

#[test]
fn half_a_pair_names_the_missing_variable() {
    for (id_var, secret_var) in env::CLIENT_PAIRS {
        let e = error(&[DOMAIN, (id_var, "some-id")]);
        assert!(matches!(e, ConfigError::Missing { .. }), "{e:?}");
        assert_eq!(named(&e), secret_var);
        assert!(
            e.to_string()
                .starts_with(&format!("{secret_var} is not set")),
            "{e}"
        );

        let e = error(&[DOMAIN, (secret_var, "some-secret-value")]);
        assert_eq!(named(&e), id_var);
        let text = format!("{e} {e:?}");
        assert!(text.contains(id_var), "{text}");
        assert!(!text.contains("some-secret-value"), "{text}");
    }
    // Half a pair is an error even when a lower pair, or a token, is complete.
    let e = error(
        &[
            &[DOMAIN, ("KINDE_MANAGEMENT_CLIENT_ID", "x")][..],
            &M2M,
            &[TOKEN],
        ]
        .concat(),
    );
    assert_eq!(named(&e), "KINDE_MANAGEMENT_CLIENT_SECRET");
}

#[test]
fn empty_values_count_as_missing() {
    // An empty management pair falls through to the M2M one.
    let c = config(
        &[
            &[
                DOMAIN,
                ("KINDE_MANAGEMENT_CLIENT_ID", ""),
                ("KINDE_MANAGEMENT_CLIENT_SECRET", " "),
            ][..],
            &M2M,
        ]
        .concat(),
    );
    assert!(shown(&c).contains("client_id: \"m2m-id\""));
    // An empty secret next to an id is a missing secret.
    let e = error(&[
        DOMAIN,
        ("KINDE_CLIENT_ID", "client-id"),
        ("KINDE_CLIENT_SECRET", ""),
    ]);
    assert_eq!(named(&e), "KINDE_CLIENT_SECRET");
    // An empty token is no token.
    let e = error(&[DOMAIN, ("KINDE_ACCESS_TOKEN", "")]);
    assert_eq!(named(&e), "KINDE_MANAGEMENT_CLIENT_ID");
}

#[test]
fn access_token_is_used_when_no_pair_is_set() {
    let c = config(&[DOMAIN, TOKEN]);
    assert!(shown(&c).contains("AccessToken(\"***\")"));
    let c = config(&[DOMAIN, ("KINDE_ACCESS_TOKEN", "  access-token-value\n")]);
    assert!(
        shown(&c).contains("AccessToken(\"***\")"),
        "surrounding blanks are trimmed"
    );
    // A pair wins over the token.
    let c = config(&[&[DOMAIN, TOKEN][..], &CLIENT].concat());
    assert!(shown(&c).contains("client_id: \"client-id\""));
}

#[test]
fn access_token_with_a_space_is_named_and_not_shown() {
    for token in [
        "access-token-value and more",
        "access-token-value\tx",
        "access-token-value\ninjected: header",
        "access-token-value\r\nx",
        "access-tökén-value",
        "access-token-value\u{7f}",
    ] {
        let e = error(&[DOMAIN, ("KINDE_ACCESS_TOKEN", token)]);
        assert!(matches!(e, ConfigError::Malformed { .. }), "{e:?}");
        assert_eq!(named(&e), "KINDE_ACCESS_TOKEN");
        let text = format!("{e} {e:?}");
        assert!(text.contains("KINDE_ACCESS_TOKEN"), "{text}");
        assert!(!text.contains("access-token-value"), "{text}");
    }
}

#[test]
fn nothing_but_the_domain_names_the_management_id_and_the_alternatives() {
    let e = error(&[DOMAIN]);
    assert!(matches!(e, ConfigError::Missing { .. }), "{e:?}");
    assert_eq!(named(&e), "KINDE_MANAGEMENT_CLIENT_ID");
    let shown = e.to_string();
    assert!(
        shown.starts_with("KINDE_MANAGEMENT_CLIENT_ID is not set"),
        "{shown}"
    );
    for alternative in [
        "KINDE_MANAGEMENT_CLIENT_SECRET",
        "KINDE_M2M_",
        "KINDE_CLIENT_",
        "KINDE_ACCESS_TOKEN",
    ] {
        assert!(shown.contains(alternative), "{alternative}: {shown}");
    }
}

#[test]
fn from_env_reads_the_process_environment() {
    // Only read, never set: when KINDE_DOMAIN happens to be set there is nothing to check.
    if std::env::var_os("KINDE_DOMAIN").is_some() {
        return;
    }
    let e = Config::from_env().expect_err("no KINDE_DOMAIN");
    assert_eq!(named(&e), "KINDE_DOMAIN");
}

#[tokio::test]
async fn configuration_from_variables_reaches_kinde() {
    let kinde = Emulator::start().expect("emulator");
    let request = CreateMeterUsageRecordRequest::new(
        "agreement_1".parse().expect("agreement id"),
        "api_calls".parse().expect("feature code"),
        2u64,
    );
    let base = kinde.base_url();
    let token = kinde.issue_token();
    let cases = [
        // The form a secret has when it is read from a file with its final newline.
        vec![
            ("KINDE_DOMAIN", format!("{base}/")),
            ("KINDE_MANAGEMENT_CLIENT_ID", kinde.client_id().to_owned()),
            (
                "KINDE_MANAGEMENT_CLIENT_SECRET",
                format!("{}\n", kinde.client_secret()),
            ),
        ],
        vec![
            ("KINDE_DOMAIN", base.clone()),
            ("KINDE_CLIENT_ID", kinde.client_id().to_owned()),
            ("KINDE_CLIENT_SECRET", kinde.client_secret().to_owned()),
        ],
        vec![
            ("KINDE_DOMAIN", base.clone()),
            ("KINDE_ACCESS_TOKEN", token),
        ],
    ];
    for case in cases {
        let pairs: Vec<(&str, &str)> = case.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let names: Vec<&str> = pairs.iter().map(|(k, _)| *k).collect();
        let client = config(&pairs).client().expect("client");
        client
            .create_meter_usage_record(&request)
            .await
            .unwrap_or_else(|e| panic!("{names:?}: {e}"));
    }
    assert_eq!(kinde.total("agreement_1", "api_calls"), 6);
    assert_eq!(kinde.token_requests().len(), 2);
}

// ----- reporter options -----

fn base_config() -> Config {
    Config::new(
        Domain::parse("acme.kinde.com").expect("domain"),
        Credentials::access_token("tok"),
    )
}

#[test]
fn reporter_refuses_invalid_options_naming_them() {
    let cases: Vec<(Config, &str)> = vec![
        (
            base_config().flush_interval(Duration::from_millis(99)),
            "flush_interval",
        ),
        (
            base_config().flush_interval(Duration::ZERO),
            "flush_interval",
        ),
        (base_config().max_in_flight(0), "max_in_flight"),
        (
            base_config().requests_per_second(0.0),
            "requests_per_second",
        ),
        (
            base_config().requests_per_second(f64::NAN),
            "requests_per_second",
        ),
        (
            base_config().requests_per_second(-1.0),
            "requests_per_second",
        ),
        (
            base_config().requests_per_second(f64::INFINITY),
            "requests_per_second",
        ),
        (base_config().max_pending_keys(0), "max_pending_keys"),
        (
            base_config().coalesce_window(Duration::from_millis(500)),
            "coalesce_window",
        ),
        (
            base_config().backoff(Duration::ZERO, Duration::from_secs(1)),
            "backoff",
        ),
        (
            base_config().backoff(Duration::from_secs(2), Duration::from_secs(1)),
            "backoff",
        ),
        (
            base_config().request_timeout(Duration::ZERO),
            "request_timeout",
        ),
        (
            base_config().connect_timeout(Duration::ZERO),
            "connect_timeout",
        ),
    ];
    for (config, option) in cases {
        let e = Reporter::start(config).expect_err(option);
        let InitError::Config(ConfigError::InvalidOption { option: named, .. }) = &e else {
            panic!("{option}: {e:?}");
        };
        assert_eq!(*named, option);
        let shown = e.to_string();
        assert!(shown.contains(&format!("`{option}`")), "{shown}");
    }
    // Plain http to a host that is not loopback.
    let insecure = Config::new(
        Domain::parse("http://acme.kinde.com").expect("domain"),
        Credentials::access_token("tok"),
    );
    let e = Reporter::start(insecure).expect_err("insecure");
    assert!(
        matches!(e, InitError::Config(ConfigError::InsecureHttp { .. })),
        "{e:?}"
    );
    // A static token given in code that no request could carry: refused at start, not
    // retried as "may have been applied" forever.
    let broken = Config::new(
        Domain::parse("acme.kinde.com").expect("domain"),
        Credentials::access_token("access-token-value\nx"),
    );
    let e = Reporter::start(broken).expect_err("a broken token");
    assert!(
        matches!(e, InitError::Config(ConfigError::InvalidAccessToken { .. })),
        "{e:?}"
    );
    let shown = format!("{e} {e:?}");
    assert!(shown.contains("KINDE_ACCESS_TOKEN"), "{shown}");
    assert!(!shown.contains("access-token-value"), "{shown}");
}

#[test]
fn reporter_starts_at_the_limits_of_every_option() {
    let config = base_config()
        .flush_interval(Duration::from_millis(100))
        .max_in_flight(1)
        .requests_per_second(kinde_meter::config::limits::REQUESTS_PER_SECOND.0)
        .max_pending_keys(1)
        .coalesce_window(Duration::from_secs(1))
        .backoff(Duration::from_millis(1), Duration::from_millis(1));
    let reporter = Reporter::start(config).expect("valid at the limits");
    let report = reporter.shutdown_blocking(Duration::from_secs(2));
    assert!(report.left.is_empty(), "{report:?}");
}

// ----- KINDE_METER_JOURNAL_DIR, KINDE_METER_JOURNAL_MAX_BYTES -----

#[test]
fn the_journal_is_off_unless_its_directory_is_set() {
    let off = format!("{:?}", config(&[DOMAIN, TOKEN]));
    assert!(off.contains("journal_dir: None"), "{off}");
    let on = format!(
        "{:?}",
        config(&[
            DOMAIN,
            TOKEN,
            (env::JOURNAL_DIR, " /var/lib/svc/meter \n"),
            (env::JOURNAL_MAX_BYTES, "1048576"),
        ])
    );
    assert!(
        on.contains(r#"journal_dir: Some("/var/lib/svc/meter")"#)
            && on.contains("journal_max_bytes: 1048576"),
        "{on}"
    );
}

#[test]
fn a_journal_limit_out_of_range_or_not_a_number_is_named() {
    for raw in ["lots", "-1", "1000", "1099511627777"] {
        let e = error(&[DOMAIN, TOKEN, (env::JOURNAL_MAX_BYTES, raw)]);
        assert_eq!(named(&e), "KINDE_METER_JOURNAL_MAX_BYTES", "{raw}: {e}");
        assert!(e.to_string().contains("65536"), "{raw}: {e}");
    }
}

#[test]
fn a_journal_limit_out_of_range_in_code_is_refused_at_start_naming_the_option() {
    let emulator = Emulator::start().expect("emulator");
    let config = Config::new(
        Domain::parse(&emulator.base_url()).expect("domain"),
        Credentials::access_token("t"),
    )
    .journal(std::env::temp_dir().join("kinde-meter-never-created"))
    .journal_max_bytes(10);
    match Reporter::start(config) {
        Err(InitError::Config(ConfigError::InvalidOption { option, .. })) => {
            assert_eq!(option, "journal_max_bytes")
        }
        other => panic!("{other:?}"),
    }
}
