//! Signed billing webhooks: the signing key and its JWKS, the compact JWS, and the
//! delivery of events to the configured URL (asynchronous, in order per customer,
//! retried on any answer other than 200).

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

/// How long a webhook token stays valid: `exp` is `iat` plus this.
pub const WEBHOOK_TOKEN_LIFETIME_SECS: u64 = 300;
/// The default waits between delivery attempts: 100 ms, 500 ms, then 2 s (four
/// attempts in all). Kinde's real schedule is much longer: at once, then 5 s, 30 s,
/// 2 min, 10 min, 1 h, 4 h, then every 12 h for up to 36 h.
pub const DEFAULT_RETRY_DELAYS: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(2),
];
/// How long one delivery attempt may take (connecting, sending, reading the answer).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

// ----- base64url -----

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64url without padding (RFC 4648 §5), as JWS and JWK use it.
pub fn base64url_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            let sextet = (n >> (18 - 6 * i)) & 63;
            out.push(char::from(ALPHABET[sextet as usize]));
        }
    }
    out
}

/// Decodes base64url without padding; `None` for any other character, padding
/// included, or an impossible length.
pub fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| ALPHABET.iter().position(|a| *a == c);
    let bytes = text.as_bytes();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n: u32 = 0;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::try_from(value(*c)?).ok()? << (18 - 6 * i);
        }
        let [_, a, b, c] = n.to_be_bytes();
        out.extend_from_slice(&[a, b, c][..chunk.len() - 1]);
    }
    Some(out)
}

// ----- the signing key -----

/// An RSA-2048 key that signs webhook tokens with RS256, and its public half as a
/// JWKS. Every emulator has one (see [`Emulator::webhook_signer`](crate::Emulator::webhook_signer));
/// tests can make others to forge tokens a receiver must refuse (a wrong key, an
/// unknown `kid`, an expired `exp`, another `alg`).
///
/// Cloning is cheap and keeps the same key. `Debug` shows the `kid` only.
///
/// ```
/// use kinde_meter_emulator::WebhookSigner;
///
/// let signer = WebhookSigner::generate()?;
/// let token = signer.sign(&serde_json::json!({"type": "customer.plan_changed"}));
/// assert_eq!(token.split('.').count(), 3);
/// assert_eq!(signer.jwks_json()["keys"][0]["kid"], signer.kid());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct WebhookSigner {
    key: Arc<RsaKeyPair>,
    kid: String,
    n: Vec<u8>,
    e: Vec<u8>,
}

impl fmt::Debug for WebhookSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl WebhookSigner {
    /// A fresh RSA-2048 key with a random `kid` (`emulator_<16 hex>`).
    ///
    /// # Errors
    /// When the key cannot be generated.
    pub fn generate() -> io::Result<WebhookSigner> {
        let key = RsaKeyPair::generate(KeySize::Rsa2048)
            .map_err(|_| io::Error::other("the RSA key could not be generated"))?;
        let (n, e) = rsa_public_components(key.public_key().as_ref())
            .ok_or_else(|| io::Error::other("the RSA public key could not be read"))?;
        Ok(WebhookSigner {
            key: Arc::new(key),
            kid: format!("emulator_{:016x}", fastrand::u64(..)),
            n,
            e,
        })
    }

    /// The key id, put in every token's header and in the JWKS.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The modulus, big-endian without leading zeros.
    pub fn modulus(&self) -> &[u8] {
        &self.n
    }

    /// The public exponent, big-endian without leading zeros.
    pub fn exponent(&self) -> &[u8] {
        &self.e
    }

    /// The public key as one JWK: `{"kty":"RSA","alg":"RS256","use":"sig","kid","n","e"}`.
    pub fn jwk(&self) -> Value {
        json!({
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": self.kid,
            "n": base64url_encode(&self.n),
            "e": base64url_encode(&self.e),
        })
    }

    /// The JWKS the emulator serves at `GET /.well-known/jwks`: `{"keys": [jwk]}`.
    pub fn jwks_json(&self) -> Value {
        json!({ "keys": [self.jwk()] })
    }

    /// A compact JWS of `claims` with the header `{"alg":"RS256","typ":"JWT","kid":<kid>}`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(
            &json!({"alg": "RS256", "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }

    /// A compact JWS `b64url(header).b64url(claims).b64url(signature)`, signed with
    /// RS256 whatever the header says (to forge a token that claims another `alg` or
    /// `kid`). Should signing ever fail, the signature part is empty, so the token
    /// never verifies.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            base64url_encode(header.to_string().as_bytes()),
            base64url_encode(claims.to_string().as_bytes())
        );
        let mut signature = vec![0; self.key.public_modulus_len()];
        let signature = match self.key.sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            input.as_bytes(),
            &mut signature,
        ) {
            Ok(()) => base64url_encode(&signature),
            Err(_) => String::new(),
        };
        format!("{input}.{signature}")
    }
}

/// `n` and `e` of a DER `RSAPublicKey` (RFC 8017): `SEQUENCE { INTEGER, INTEGER }`.
fn rsa_public_components(der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (tag, body, _) = der_tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag_n, n, rest) = der_tlv(body)?;
    let (tag_e, e, _) = der_tlv(rest)?;
    if tag_n != 0x02 || tag_e != 0x02 {
        return None;
    }
    let strip = |v: &[u8]| {
        let start = v.iter().position(|b| *b != 0).unwrap_or(v.len());
        v[start..].to_vec()
    };
    Some((strip(n), strip(e)))
}

/// One DER tag-length-value: (tag, value, the bytes after it).
fn der_tlv(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[count..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

// ----- deliveries -----

/// One billing event sent (or being sent) to the webhook URL.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WebhookDelivery {
    /// The `webhook-id` header: the same on every attempt.
    pub webhook_id: String,
    /// The `event_id` claim: `event_<32 hex>`.
    pub event_id: String,
    /// The `type` claim, e.g. `customer.plan_changed`.
    pub event_type: String,
    /// The billing customer the event is about.
    pub customer_id: String,
    /// The `data` claim.
    pub data: Value,
    /// The URL it goes to.
    pub url: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// The status of the last answer; `None` before the first or when the last attempt got none.
    pub last_status: Option<u16>,
    /// Why the last attempt got no answer (connection refused, timeout, ...).
    pub last_error: Option<String>,
    /// Whether an attempt got a 200.
    pub delivered: bool,
    /// Whether it is over: delivered, or every attempt failed.
    pub finished: bool,
}

/// A delivery handed to the sending task.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) index: usize,
    pub(crate) epoch: u64,
    pub(crate) customer_id: String,
    pub(crate) webhook_id: String,
    pub(crate) url: String,
    /// `type`, `event_id`, `event_timestamp`, `source` and `data`; `timestamp`, `iat`
    /// and `exp` are added at each attempt.
    pub(crate) claims: Value,
    pub(crate) retry_delays: Vec<Duration>,
}

/// Checks a webhook URL: `http://host:port/path` (no TLS).
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    split_url(url).map(|_| ())
}

/// (authority, path-and-query) of an `http://` URL.
fn split_url(url: &str) -> Result<(&str, &str), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!(
            "the webhook URL must start with http:// (the emulator does not speak TLS), got `{url}`"
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') || authority.contains(char::is_whitespace) {
        return Err(format!(
            "the webhook URL needs a host and port (http://127.0.0.1:PORT/path), got `{url}`"
        ));
    }
    if !authority.contains(':') {
        return Err(format!(
            "the webhook URL needs an explicit port (http://127.0.0.1:PORT/path), got `{url}`"
        ));
    }
    Ok((authority, path))
}

/// One POST; the status of the answer.
pub(crate) async fn post(url: &str, webhook_id: &str, body: String) -> Result<u16, String> {
    let (authority, path) = split_url(url)?;
    let attempt = async {
        let stream = TcpStream::connect(authority)
            .await
            .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {authority} failed: {e}"))?;
        let connection = tokio::spawn(connection);
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/jwt")
            .header("webhook-id", webhook_id)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("no answer from {authority}: {e}"))?;
        let status = response.status().as_u16();
        let _ = response.into_body().collect().await;
        connection.abort();
        Ok(status)
    };
    tokio::time::timeout(ATTEMPT_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer from {authority} within {ATTEMPT_TIMEOUT:?}"
            ))
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn base64url_round_trips() {
        assert_eq!(base64url_encode(b""), "");
        assert_eq!(base64url_encode(b"f"), "Zg");
        assert_eq!(base64url_encode(b"fo"), "Zm8");
        assert_eq!(base64url_encode(b"foo"), "Zm9v");
        assert_eq!(base64url_encode(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64url_encode(&[1, 0, 1]), "AQAB");
        for len in 0..40u8 {
            let bytes: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(base64url_decode(&base64url_encode(&bytes)), Some(bytes));
        }
        assert_eq!(base64url_decode("Zg=="), None);
        assert_eq!(base64url_decode("Z"), None);
        assert_eq!(base64url_decode("Z+8"), None);
    }

    #[test]
    fn urls_must_be_plain_http_with_a_port() {
        assert_eq!(
            split_url("http://127.0.0.1:9/hooks?x=1"),
            Ok(("127.0.0.1:9", "/hooks?x=1"))
        );
        assert_eq!(split_url("http://127.0.0.1:9"), Ok(("127.0.0.1:9", "/")));
        for bad in [
            "https://127.0.0.1:9/",
            "127.0.0.1:9",
            "http:///x",
            "http://host/x",
        ] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn der_public_key_is_read() {
        // SEQUENCE { INTEGER 0x00ff01, INTEGER 0x010001 }
        let der = [
            0x30, 0x0a, 0x02, 0x03, 0x00, 0xff, 0x01, 0x02, 0x03, 0x01, 0x00, 0x01,
        ];
        assert_eq!(
            rsa_public_components(&der),
            Some((vec![0xff, 0x01], vec![0x01, 0x00, 0x01]))
        );
        assert_eq!(rsa_public_components(&der[..5]), None);
    }
}
