//! The compact JWS of a webhook body: `b64url(header).b64url(claims).b64url(signature)`,
//! its header, and the RS256 signature check. What the claims mean is `claims.rs`'s.

use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use serde::Deserialize;

use super::base64url;
use super::error::WebhookError;
use super::jwks::Key;

/// A token split and decoded, its signature not checked yet.
pub(super) struct Token<'a> {
    /// `header.claims` as sent: what the signature covers.
    signed: &'a [u8],
    /// The header's `kid`.
    pub(super) kid: Option<String>,
    /// The claims, decoded from base64url (not parsed yet).
    pub(super) claims: Vec<u8>,
    pub(super) signature: Vec<u8>,
}

/// The header fields this reads. Others (`typ`, `cty`) are ignored, and so are `jku`,
/// `x5u` and `jwk` on purpose: a key or key address chosen by the sender proves nothing.
#[derive(Deserialize)]
struct Header {
    alg: Option<serde_json::Value>,
    kid: Option<serde_json::Value>,
    crit: Option<serde_json::Value>,
}

/// Splits and decodes `body`, and checks the header: RS256, no critical extension.
pub(super) fn parse(body: &[u8]) -> Result<Token<'_>, WebhookError> {
    // A trailing line break is how a body pasted or piped through a tool often ends.
    let body = body.trim_ascii();
    let mut parts = body.split(|&b| b == b'.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(WebhookError::malformed(
            "the body is not three base64url parts separated by dots (header.claims.signature); \
             Kinde posts a signed JWT (`application/jwt`): check that nothing in front of this \
             handler rewrites the body",
        ));
    };
    let header = base64url::decode(header)
        .ok_or_else(|| WebhookError::malformed("the token's header is not base64url"))?;
    let header: Header = serde_json::from_slice(&header).map_err(|e| {
        WebhookError::malformed(format!("the token's header is not a JSON object ({e})"))
    })?;
    let alg = match header.alg {
        Some(serde_json::Value::String(alg)) => alg,
        _ => {
            return Err(WebhookError::malformed(
                "the token's header has no `alg` string",
            ));
        }
    };
    // Exactly RS256, case included: the algorithm is Kinde's, never the sender's choice.
    if alg != "RS256" {
        return Err(WebhookError::UnsupportedAlgorithm { alg });
    }
    if header.crit.is_some() {
        // RFC 7515 §4.1.11: extensions listed as critical must be understood, and none is.
        return Err(WebhookError::malformed(
            "the token's header lists critical extensions (`crit`), which are not supported",
        ));
    }
    let kid = match header.kid {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(kid)) => Some(kid),
        Some(_) => return Err(WebhookError::malformed("the token's `kid` is not a string")),
    };
    let claims_len = body.len() - signature.len() - 1;
    let claims = base64url::decode(claims)
        .ok_or_else(|| WebhookError::malformed("the token's claims are not base64url"))?;
    let signature = base64url::decode(signature)
        .ok_or_else(|| WebhookError::malformed("the token's signature is not base64url"))?;
    if signature.is_empty() {
        return Err(WebhookError::malformed("the token has no signature"));
    }
    Ok(Token {
        signed: &body[..claims_len],
        kid,
        claims,
        signature,
    })
}

impl Token<'_> {
    /// Checks the RS256 signature (PKCS #1 v1.5, SHA-256) with `key`.
    pub(super) fn verify(&self, key: &Key) -> Result<(), WebhookError> {
        RsaPublicKeyComponents {
            n: &key.n,
            e: &key.e,
        }
        .verify(&RSA_PKCS1_2048_8192_SHA256, self.signed, &self.signature)
        .map_err(|_| WebhookError::BadSignature {
            kid: self.kid.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(header: &str, claims: &str, signature: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            base64url::encode(header.as_bytes()),
            base64url::encode(claims.as_bytes()),
            base64url::encode(signature)
        )
    }

    #[test]
    fn a_well_formed_token_is_split() {
        let body = token(r#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#, "{}", b"sig");
        let sent = format!("{body}\r\n");
        let parsed = parse(sent.as_bytes()).expect("parses");
        assert_eq!(parsed.kid.as_deref(), Some("k1"));
        assert_eq!(parsed.claims, b"{}");
        assert_eq!(parsed.signature, b"sig");
        let (signed, _) = body.rsplit_once('.').expect("dots");
        assert_eq!(parsed.signed, signed.as_bytes());
    }

    #[test]
    fn other_algorithms_are_refused_before_anything_else() {
        for alg in ["none", "HS256", "rs256", "RS512", "PS256", "ES256"] {
            let header = format!(r#"{{"alg":"{alg}"}}"#);
            // `alg: none` tokens come without a signature.
            for body in [token(&header, "{}", b""), token(&header, "{}", b"sig")] {
                let err = parse(body.as_bytes()).err().expect("refused");
                assert_eq!(
                    err,
                    WebhookError::UnsupportedAlgorithm {
                        alg: alg.to_owned()
                    }
                );
            }
        }
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let good = r#"{"alg":"RS256"}"#;
        for (body, why) in [
            (String::new(), "three base64url parts"),
            ("a.b".to_owned(), "three base64url parts"),
            ("a.b.c.d".to_owned(), "three base64url parts"),
            ("!!.e30.c2ln".to_owned(), "header is not base64url"),
            (token("not json", "{}", b"s"), "header is not a JSON object"),
            (token("[1]", "{}", b"s"), "header is not a JSON object"),
            (token("{}", "{}", b"s"), "no `alg`"),
            (token(r#"{"alg":7}"#, "{}", b"s"), "no `alg`"),
            (
                token(r#"{"alg":"RS256","kid":7}"#, "{}", b"s"),
                "`kid` is not a string",
            ),
            (
                token(r#"{"alg":"RS256","crit":["exp"]}"#, "{}", b"s"),
                "critical",
            ),
            (
                format!("{}.e30=.c2ln", base64url::encode(good.as_bytes())),
                "claims are not base64url",
            ),
            (
                format!("{}.e30.c2ln=", base64url::encode(good.as_bytes())),
                "signature is not base64url",
            ),
            (token(good, "{}", b""), "no signature"),
        ] {
            let err = parse(body.as_bytes()).err().expect("refused");
            assert!(
                matches!(err, WebhookError::Malformed { .. }),
                "{body}: {err}"
            );
            assert!(err.to_string().contains(why), "{body}: {err}");
        }
    }
}
