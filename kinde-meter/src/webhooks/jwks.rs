//! The business's signing keys (JWKS), fetched from `<domain>/.well-known/jwks`, cached,
//! and fetched again when a token names a key the cache does not have: at most once per
//! minimum interval, one fetch at a time.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http::StatusCode;
use http::header::ACCEPT;
use serde::Deserialize;

use super::base64url;
use super::error::WebhookError;
use crate::api::{BuildError, Domain, MAX_BODY, read_capped};

/// Default shortest time between two fetches of the JWKS.
pub const DEFAULT_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// Default time allowed for one fetch of the JWKS.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Where Kinde publishes a business's keys.
const JWKS_PATH: &str = "/.well-known/jwks";
/// The smallest modulus accepted, in bytes (2048 bits, as `RSA_PKCS1_2048_8192_SHA256`).
const MIN_MODULUS: usize = 256;

/// One RS256 public key.
pub(super) struct Key {
    pub(super) kid: Option<String>,
    /// The modulus, big-endian, without leading zeros.
    pub(super) n: Vec<u8>,
    /// The public exponent, big-endian, without leading zeros.
    pub(super) e: Vec<u8>,
}

/// The usable keys of one JWKS.
#[derive(Default)]
struct KeySet {
    keys: Vec<Arc<Key>>,
}

/// A key found for a token, or why not.
enum Lookup {
    Found(Arc<Key>),
    /// The token names no key and there are this many.
    Ambiguous(usize),
    NotFound,
}

impl KeySet {
    /// Parses a JWKS, keeping the RSA keys for RS256 signatures (`alg` RS256 or absent,
    /// `use` sig or absent) with a modulus of at least 2048 bits: a key of another kind
    /// cannot verify an RS256 token, so it is skipped rather than failing the set.
    fn parse(json: &[u8]) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Set {
            keys: Vec<serde_json::Value>,
        }
        #[derive(Deserialize)]
        struct Jwk {
            kty: String,
            alg: Option<String>,
            #[serde(rename = "use")]
            usage: Option<String>,
            kid: Option<String>,
            n: String,
            e: String,
        }
        let set: Set = serde_json::from_slice(json)
            .map_err(|e| format!("the JWKS is not a JSON object with a `keys` array ({e})"))?;
        let mut keys = Vec::new();
        for value in set.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                continue;
            };
            if jwk.kty != "RSA"
                || jwk.alg.as_deref().is_some_and(|alg| alg != "RS256")
                || jwk.usage.as_deref().is_some_and(|usage| usage != "sig")
            {
                continue;
            }
            let (Some(n), Some(e)) = (
                base64url::decode(jwk.n.as_bytes()),
                base64url::decode(jwk.e.as_bytes()),
            ) else {
                continue;
            };
            // RFC 7518 says without leading zeros, but some publishers pad `n` with one,
            // and the verifier refuses them: strip rather than lose the key.
            let (n, e) = (strip_zeros(n), strip_zeros(e));
            if n.len() < MIN_MODULUS || e.is_empty() {
                continue;
            }
            keys.push(Arc::new(Key { kid: jwk.kid, n, e }));
        }
        if keys.is_empty() {
            return Err("the JWKS has no RSA key for RS256 signatures".to_owned());
        }
        Ok(Self { keys })
    }

    fn find(&self, kid: Option<&str>) -> Lookup {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|key| key.kid.as_deref() == Some(kid))
                .map_or(Lookup::NotFound, |key| Lookup::Found(Arc::clone(key))),
            None => match &*self.keys {
                [] => Lookup::NotFound,
                [key] => Lookup::Found(Arc::clone(key)),
                keys => Lookup::Ambiguous(keys.len()),
            },
        }
    }
}

fn strip_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    bytes.drain(..zeros);
    bytes
}

/// Where the keys come from, when they are fetched.
#[derive(Clone)]
struct Source {
    http: reqwest::Client,
    url: String,
    timeout: Duration,
}

impl Source {
    /// Fetches and parses the JWKS. It is public and unauthenticated, so this is a plain
    /// GET and not `api::request`, which is the path of bearer-token calls.
    async fn fetch(&self) -> Result<KeySet, String> {
        let response = self
            .http
            .get(&self.url)
            .header(ACCEPT, "application/json")
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| describe(&e, self.timeout))?;
        let status = response.status();
        if status != StatusCode::OK {
            return Err(format!("answered {status}"));
        }
        let body = read_capped(response)
            .await
            .map_err(|e| describe(&e, self.timeout))?;
        if body.cut {
            return Err(format!("the JWKS is longer than {MAX_BODY} bytes"));
        }
        KeySet::parse(&body.bytes)
    }
}

fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        format!("no answer within {timeout:?}")
    } else {
        // The source chain says what failed (DNS, connection refused, TLS).
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

/// What the fetches have done so far. Held, behind an async lock, for the whole of a
/// fetch: that makes concurrent refreshes one fetch, the others waiting for its keys.
#[derive(Default)]
struct Fetches {
    last_started: Option<Instant>,
    last_error: Option<String>,
    count: u64,
}

struct State {
    keys: RwLock<Arc<KeySet>>,
    fetches: tokio::sync::Mutex<Fetches>,
}

/// A Kinde business's webhook signing keys: the JWKS at `<domain>/.well-known/jwks`.
///
/// Fetched on first use and cached. A token naming a key the cache does not have (Kinde
/// rotated its keys) makes it fetch again, but at most once per
/// [`min_refresh_interval`](Self::min_refresh_interval), so that forged key ids cannot
/// make it hammer Kinde; concurrent refreshes share one fetch. Bodies are read up to
/// 64 KiB. Plain `http` is only accepted for loopback hosts (a local Kinde): keys
/// fetched without TLS could be swapped by anyone on the path.
///
/// Cheap to clone: clones share the cache.
///
/// ```
/// use std::time::Duration;
/// use kinde_meter::api::Domain;
/// use kinde_meter::webhooks::Jwks;
///
/// let jwks = Jwks::new(Domain::parse("acme.kinde.com")?)?
///     .min_refresh_interval(Duration::from_secs(60));
/// assert_eq!(jwks.url(), Some("https://acme.kinde.com/.well-known/jwks"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Jwks {
    /// `None` for keys given up front, never fetched.
    source: Option<Source>,
    min_interval: Duration,
    state: Arc<State>,
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.current();
        let kids: Vec<_> = keys.keys.iter().map(|key| key.kid.as_deref()).collect();
        f.debug_struct("Jwks")
            .field("url", &self.url())
            .field("kids", &kids)
            .field("min_refresh_interval", &self.min_interval)
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// The keys of `domain`, fetched with a client of their own (rustls, no redirects).
    pub fn new(domain: Domain) -> Result<Self, BuildError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("kinde-meter/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| BuildError::Http {
                source: Box::new(e),
            })?;
        Self::with_client(domain, http)
    }

    /// The keys of `domain`, fetched with `http` (to share a connection pool or set a
    /// proxy; the fetch's timeout is still [`fetch_timeout`](Self::fetch_timeout)).
    pub fn with_client(domain: Domain, http: reqwest::Client) -> Result<Self, BuildError> {
        if !domain.is_https() && !domain.is_loopback() {
            return Err(BuildError::InvalidOption {
                option: "domain",
                reason: format!(
                    "{domain} uses plain http for a host that is not loopback: signing keys \
                     fetched without TLS could be swapped by anyone on the path, and forged \
                     webhooks would verify; use https://"
                ),
            });
        }
        Ok(Self {
            source: Some(Source {
                http,
                url: domain.url(JWKS_PATH),
                timeout: DEFAULT_FETCH_TIMEOUT,
            }),
            min_interval: DEFAULT_MIN_REFRESH_INTERVAL,
            state: Arc::new(State {
                keys: RwLock::default(),
                fetches: tokio::sync::Mutex::default(),
            }),
        })
    }

    /// Fixed keys, a JWKS document given up front and never fetched (tests, offline).
    ///
    /// ```
    /// use kinde_meter::webhooks::Jwks;
    ///
    /// let err = Jwks::from_json(br#"{"keys":[{"kty":"EC","crv":"P-256"}]}"#).unwrap_err();
    /// assert!(err.to_string().contains("no RSA key"));
    /// ```
    pub fn from_json(jwks: &[u8]) -> Result<Self, BuildError> {
        let keys = KeySet::parse(jwks).map_err(|reason| BuildError::InvalidOption {
            option: "with_keys",
            reason: format!("is not a usable JWKS: {reason}"),
        })?;
        Ok(Self {
            source: None,
            min_interval: DEFAULT_MIN_REFRESH_INTERVAL,
            state: Arc::new(State {
                keys: RwLock::new(Arc::new(keys)),
                fetches: tokio::sync::Mutex::default(),
            }),
        })
    }

    /// The shortest time between two fetches (default 30 s). A token with an unknown key
    /// id within this time of the last fetch is refused without fetching.
    #[must_use]
    pub fn min_refresh_interval(mut self, interval: Duration) -> Self {
        self.min_interval = interval;
        self
    }

    /// The time allowed for one fetch (default 5 s).
    #[must_use]
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        if let Some(source) = &mut self.source {
            source.timeout = timeout;
        }
        self
    }

    /// The address the keys are fetched from, or `None` for fixed keys.
    pub fn url(&self) -> Option<&str> {
        self.source.as_ref().map(|source| source.url.as_str())
    }

    fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.state.keys.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The key to verify a token naming `kid` with, fetching the JWKS if the cache does
    /// not have it and the last fetch is old enough.
    pub(super) async fn key(&self, kid: Option<&str>) -> Result<Arc<Key>, WebhookError> {
        match self.current().find(kid) {
            Lookup::Found(key) => return Ok(key),
            Lookup::Ambiguous(keys) => return Err(WebhookError::MissingKeyId { keys }),
            Lookup::NotFound => {}
        }
        let Some(source) = &self.source else {
            return Err(not_found(kid));
        };
        let mut fetches = self.state.fetches.lock().await;
        // Another call may have fetched the key while this one waited for the lock.
        if let Lookup::Found(key) = self.current().find(kid) {
            return Ok(key);
        }
        let due = fetches
            .last_started
            .is_none_or(|at| at.elapsed() >= self.min_interval);
        if due {
            fetches.last_started = Some(Instant::now());
            fetches.count += 1;
            // Stays if this call is dropped mid-fetch (its client hung up): the keys are
            // then unknown, not known to lack the `kid`.
            fetches.last_error = Some("a fetch was interrupted before it finished".to_owned());
            match source.fetch().await {
                Ok(keys) => {
                    tracing::debug!(target: "kinde_meter", url = %source.url, keys = keys.keys.len(), "fetched the webhook signing keys");
                    *self.state.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
                    fetches.last_error = None;
                }
                Err(reason) => {
                    tracing::warn!(target: "kinde_meter", url = %source.url, %reason, "could not fetch Kinde's webhook signing keys");
                    fetches.last_error = Some(reason);
                }
            }
        }
        match self.current().find(kid) {
            Lookup::Found(key) => Ok(key),
            Lookup::Ambiguous(keys) => Err(WebhookError::MissingKeyId { keys }),
            // The last fetch failed: the key may well exist, so Kinde should retry.
            Lookup::NotFound => match &fetches.last_error {
                Some(reason) => Err(WebhookError::KeysUnavailable {
                    url: source.url.clone(),
                    reason: reason.clone(),
                }),
                None => Err(not_found(kid)),
            },
        }
    }

    /// How many fetches have been started.
    #[cfg(test)]
    pub(super) async fn fetch_count(&self) -> u64 {
        self.state.fetches.lock().await.count
    }
}

fn not_found(kid: Option<&str>) -> WebhookError {
    match kid {
        Some(kid) => WebhookError::UnknownKeyId {
            kid: kid.to_owned(),
        },
        // Only with an empty set, which `KeySet::parse` never makes.
        None => WebhookError::MissingKeyId { keys: 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(kid: &str, extra: &str) -> String {
        let n = base64url::encode(&[0xC5; 256]);
        format!(r#"{{"kty":"RSA","kid":"{kid}","n":"{n}","e":"AQAB"{extra}}}"#)
    }

    #[test]
    fn keeps_only_rs256_rsa_keys() {
        let short_n = base64url::encode(&[0xC5; 128]);
        let padded_n = base64url::encode(&[&[0u8][..], &[0xC5; 256]].concat());
        let json = format!(
            r#"{{"keys":[{},{},{},{},{{"kty":"EC","kid":"ec","crv":"P-256"}},
                {{"kty":"RSA","kid":"short","n":"{short_n}","e":"AQAB"}},
                {{"kty":"RSA","kid":"padded","n":"{padded_n}","e":"AQAB"}},
                {{"kty":"RSA","kid":"bad","n":"not base64!","e":"AQAB"}},
                "junk",{}]}}"#,
            jwk("a", r#","alg":"RS256","use":"sig""#),
            jwk("ps", r#","alg":"PS256""#),
            jwk("enc", r#","use":"enc""#),
            jwk("b", ""),
            jwk("c", r#","x5c":["..."],"unknown":1"#),
        );
        let keys = KeySet::parse(json.as_bytes()).expect("parses");
        let kids: Vec<_> = keys.keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, [Some("a"), Some("b"), Some("padded"), Some("c")]);
        assert!(
            keys.keys
                .iter()
                .all(|k| k.n.len() == 256 && k.e == [1, 0, 1])
        );
    }

    #[test]
    fn useless_documents_say_why() {
        for (json, why) in [
            (&b"[]"[..], "`keys` array"),
            (b"{}", "`keys` array"),
            (b"{\"keys\":[]}", "no RSA key"),
            (b"not json", "not a JSON object"),
        ] {
            let err = KeySet::parse(json).err().expect("refused");
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn a_token_without_kid_needs_a_single_key() {
        let one = format!(r#"{{"keys":[{}]}}"#, jwk("a", ""));
        let two = format!(r#"{{"keys":[{},{}]}}"#, jwk("a", ""), jwk("b", ""));
        let one = KeySet::parse(one.as_bytes()).expect("one");
        let two = KeySet::parse(two.as_bytes()).expect("two");
        assert!(matches!(one.find(None), Lookup::Found(_)));
        assert!(matches!(two.find(None), Lookup::Ambiguous(2)));
        assert!(matches!(two.find(Some("b")), Lookup::Found(k) if k.kid.as_deref() == Some("b")));
        assert!(matches!(two.find(Some("z")), Lookup::NotFound));
    }

    #[test]
    fn plain_http_only_for_loopback() {
        let remote = Domain::parse("http://acme.kinde.com").expect("domain");
        let err = Jwks::new(remote).expect_err("refused").to_string();
        assert!(err.contains("use https://"), "{err}");
        let local = Domain::parse("http://127.0.0.1:9").expect("domain");
        assert_eq!(
            Jwks::new(local).expect("loopback").url(),
            Some("http://127.0.0.1:9/.well-known/jwks")
        );
    }

    #[tokio::test]
    async fn an_unreachable_jwks_is_unavailable_and_not_fetched_again_at_once() {
        // Port 9 on loopback: refused at once, nothing leaves the machine.
        let interval = Duration::from_millis(300);
        let jwks = Jwks::new(Domain::parse("http://127.0.0.1:9").expect("domain"))
            .expect("jwks")
            .min_refresh_interval(interval);
        for _ in 0..3 {
            let err = jwks.key(Some("k")).await.err().expect("no keys");
            assert!(matches!(err, WebhookError::KeysUnavailable { .. }), "{err}");
            assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(
                err.to_string().contains("127.0.0.1:9/.well-known/jwks"),
                "{err}"
            );
        }
        assert_eq!(jwks.fetch_count().await, 1);
        tokio::time::sleep(interval).await;
        let _ = jwks.key(Some("k")).await;
        assert_eq!(jwks.fetch_count().await, 2);
    }
}
