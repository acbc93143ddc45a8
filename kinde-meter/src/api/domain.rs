//! The Kinde business domain the client talks to, and the credentials it uses.

use std::fmt;
use std::net::IpAddr;

use reqwest::Url;

/// A Kinde business domain: the base URL of the Management API, such as
/// `https://acme.kinde.com`.
///
/// Parsed from what users write in `KINDE_DOMAIN`: with or without a scheme (`https` is
/// assumed), with or without a trailing slash. Any path other than `/` is refused, since
/// the API paths are fixed.
///
/// ```
/// use kinde_meter::api::Domain;
///
/// assert_eq!(Domain::parse("acme.kinde.com")?.as_str(), "https://acme.kinde.com");
/// assert_eq!(Domain::parse("https://acme.kinde.com/")?.as_str(), "https://acme.kinde.com");
/// assert!(Domain::parse("http://127.0.0.1:8080")?.is_loopback());
/// assert!(Domain::parse("ftp://acme.kinde.com").is_err());
/// # Ok::<(), kinde_meter::api::InvalidDomain>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Domain {
    base: String,
    https: bool,
    loopback: bool,
}

/// Why a domain could not be parsed.
///
/// Shows the input it refused, except a user name and password, which are masked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidDomain {
    /// The input, never with its userinfo: see [`mask_userinfo`].
    input: String,
    reason: String,
}

/// What to do about a domain with a user name or password in it.
const USERINFO: &str = "it must not contain a user name or password; remove the user name and password \
                        from the URL (KINDE_DOMAIN is the domain alone: the client id and secret go in \
                        KINDE_MANAGEMENT_CLIENT_ID and KINDE_MANAGEMENT_CLIENT_SECRET)";

/// `input` with everything between its scheme and its last `@` replaced by `***`, or
/// `None` when it has no `@` after the scheme, hence no userinfo.
///
/// Deliberately cruder than a URL parser: it must not echo a password even from an input
/// the parser refuses, and a password may hold `/`, `?`, `#` or `@`. An `@` in a path is
/// masked too, at the cost of hiding that path from the message. The two characters
/// that IDNA maps to `@` count as `@`: the parser would refuse them in a host, and the
/// message must not show what comes before them either.
fn mask_userinfo(input: &str) -> Option<String> {
    // A scheme only when it looks like one (`u:p://x@host` has none, and `u:p` is secret).
    let start = input
        .find("://")
        .filter(|&i| {
            let scheme = input[..i].trim_start();
            !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        })
        .map_or(0, |i| i + 3);
    let at = start + input[start..].rfind(['@', '\u{FF20}', '\u{FE6B}'])?;
    Some(format!("{}***{}", &input[..start], &input[at..]))
}

impl fmt::Display for InvalidDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a Kinde domain: {}; write it like `acme.kinde.com` or `https://acme.kinde.com`",
            self.input, self.reason
        )
    }
}

impl std::error::Error for InvalidDomain {}

impl Domain {
    /// Parses a domain, with or without `https://` and a trailing slash.
    pub fn parse(input: &str) -> Result<Self, InvalidDomain> {
        // First, so that no other error, its parser's included, can show a password.
        if let Some(masked) = mask_userinfo(input) {
            return Err(InvalidDomain {
                input: masked,
                reason: USERINFO.to_owned(),
            });
        }
        let fail = |reason: &str| InvalidDomain {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(fail("it is empty"));
        }
        let with_scheme = if trimmed.contains("://") {
            trimmed.to_owned()
        } else {
            format!("https://{trimmed}")
        };
        let url = Url::parse(&with_scheme).map_err(|e| fail(&e.to_string()))?;
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(fail(&format!("the scheme `{other}` is not http or https"))),
        };
        if !url.username().is_empty() || url.password().is_some() {
            // Unreachable (userinfo needs an `@`), but kept so the rule never depends on
            // `mask_userinfo` alone; the input is masked all the same.
            return Err(InvalidDomain {
                input: "***".to_owned(),
                reason: USERINFO.to_owned(),
            });
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(fail("it must not contain a query or fragment"));
        }
        if url.path() != "/" {
            return Err(fail("it must not contain a path"));
        }
        let host = url.host_str().ok_or_else(|| fail("it has no host"))?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = bare.eq_ignore_ascii_case("localhost")
            || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        let base = match url.port() {
            Some(port) => format!("{}://{host}:{port}", url.scheme()),
            None => format!("{}://{host}", url.scheme()),
        };
        Ok(Self {
            base,
            https,
            loopback,
        })
    }

    /// The base URL, without a trailing slash.
    pub fn as_str(&self) -> &str {
        &self.base
    }

    /// Whether the scheme is `https`.
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// Whether the host is a loopback address (`127.0.0.0/8`, `::1`, `localhost`).
    pub fn is_loopback(&self) -> bool {
        self.loopback
    }

    /// `<base>/api`, the audience of Management API tokens.
    pub fn audience(&self) -> String {
        format!("{}/api", self.base)
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.base, f)
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

impl std::str::FromStr for Domain {
    type Err = InvalidDomain;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A secret string (client secret, access token). Its `Debug` and `Display` print
/// `"***"`, so it cannot leak through logs or error messages by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself. Call this only where it is sent.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// How the client authenticates to the Management API.
///
/// ```
/// use kinde_meter::api::Credentials;
///
/// let creds = Credentials::client_credentials("my-client-id", "my-secret");
/// assert!(!format!("{creds:?}").contains("my-secret"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub enum Credentials {
    /// A machine-to-machine application: tokens are minted with the client-credentials
    /// grant, cached, and renewed 60 s before they expire.
    ClientCredentials {
        /// The application's client id.
        client_id: String,
        /// The application's client secret.
        client_secret: Secret,
    },
    /// A bearer token obtained elsewhere, used as is (never renewed).
    AccessToken(Secret),
}

impl Credentials {
    /// A machine-to-machine application's id and secret.
    pub fn client_credentials(
        client_id: impl Into<String>,
        client_secret: impl Into<Secret>,
    ) -> Self {
        Credentials::ClientCredentials {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
        }
    }

    /// A static bearer token.
    pub fn access_token(token: impl Into<Secret>) -> Self {
        Credentials::AccessToken(token.into())
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::ClientCredentials {
                client_id,
                client_secret,
            } => f
                .debug_struct("ClientCredentials")
                .field("client_id", client_id)
                .field("client_secret", client_secret)
                .finish(),
            Credentials::AccessToken(t) => f.debug_tuple("AccessToken").field(t).finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_in_the_forms_users_write() {
        for (input, base) in [
            ("acme.kinde.com", "https://acme.kinde.com"),
            ("acme.kinde.com/", "https://acme.kinde.com"),
            ("https://acme.kinde.com", "https://acme.kinde.com"),
            ("https://acme.kinde.com/", "https://acme.kinde.com"),
            ("  https://ACME.kinde.com  ", "https://acme.kinde.com"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://[::1]:9/", "http://[::1]:9"),
            ("http://localhost:3000", "http://localhost:3000"),
        ] {
            assert_eq!(Domain::parse(input).expect(input).as_str(), base, "{input}");
        }
        assert!(
            Domain::parse("http://127.0.0.2")
                .expect("loopback")
                .is_loopback()
        );
        assert!(
            !Domain::parse("http://acme.kinde.com")
                .expect("parses")
                .is_loopback()
        );
        assert_eq!(
            Domain::parse("acme.kinde.com").expect("parses").audience(),
            "https://acme.kinde.com/api"
        );
    }

    #[test]
    fn malformed_domains_say_why() {
        for (input, why) in [
            ("", "empty"),
            ("ftp://acme.kinde.com", "scheme"),
            ("https://acme.kinde.com/api", "path"),
            ("https://acme.kinde.com?x=1", "query"),
            ("https://user:pw@acme.kinde.com", "user name"),
            ("https://", "empty host"),
            ("acme kinde", "invalid"),
        ] {
            let err = Domain::parse(input).expect_err(input).to_string();
            assert!(err.contains(why), "{input:?}: {err}");
        }
    }

    #[test]
    fn userinfo_is_masked_in_every_shape() {
        for (input, masked) in [
            (
                "https://user:pw@acme.kinde.com",
                "https://***@acme.kinde.com",
            ),
            ("user:pw@acme.kinde.com", "***@acme.kinde.com"),
            ("https://:pw@acme.kinde.com", "https://***@acme.kinde.com"),
            (
                "https://u:p/w?x#y@acme.kinde.com",
                "https://***@acme.kinde.com",
            ),
            ("https://u:p@w@acme.kinde.com", "https://***@acme.kinde.com"),
            ("u:p://w@acme.kinde.com", "***@acme.kinde.com"),
            (" ftp://u:p@host", " ftp://***@host"),
            ("https://acme.kinde.com/a@b", "https://***@b"),
            (
                "https://u:p\u{FF20}acme.kinde.com",
                "https://***\u{FF20}acme.kinde.com",
            ),
        ] {
            assert_eq!(mask_userinfo(input).as_deref(), Some(masked), "{input}");
            let e = Domain::parse(input).expect_err(input);
            let shown = format!("{e} {e:?}");
            assert!(shown.contains(masked), "{shown}");
            assert!(!shown.contains("u:p") && !shown.contains(":pw"), "{shown}");
            assert!(
                shown.contains("remove the user name and password"),
                "{shown}"
            );
        }
        for plain in [
            "acme.kinde.com",
            "https://acme.kinde.com",
            "http://[::1]:9/",
        ] {
            assert_eq!(mask_userinfo(plain), None, "{plain}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** \"***\"");
        let c = Credentials::access_token("tok_abc");
        assert!(!format!("{c:?}").contains("tok_abc"));
    }
}
