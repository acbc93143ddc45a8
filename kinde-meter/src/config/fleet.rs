//! Fleet mode's options (feature `fleet`): what [`Config::fleet`](super::Config) and
//! `KINDE_METER_REDIS_URL` set. What they do is in [`crate::fleet`].

use std::fmt;
use std::time::Duration;

use super::ConfigError;

/// The fleet options of a [`Config`](crate::Config).
#[derive(Clone)]
pub(crate) struct FleetSettings {
    pub(crate) url: String,
    pub(crate) namespace: String,
    pub(crate) lease: Duration,
    pub(crate) gather: Option<Duration>,
    pub(crate) deliver: bool,
    pub(crate) marker_ttl: Duration,
    pub(crate) redis_timeout: Duration,
    /// What set the URL, for errors: the variable, or the builder method.
    pub(crate) source: &'static str,
}

impl FleetSettings {
    pub(crate) fn new(url: String) -> Self {
        Self {
            url,
            namespace: "kinde-meter".to_owned(),
            lease: Duration::from_secs(60),
            gather: None,
            deliver: true,
            marker_ttl: Duration::from_secs(24 * 3600),
            redis_timeout: Duration::from_secs(2),
            source: "Config::fleet",
        }
    }

    /// Checks what `init` needs: a URL redis can open, a usable namespace, a lease
    /// longer than a request.
    pub(crate) fn validate(&self, request_timeout: Duration) -> Result<(), ConfigError> {
        redis::Client::open(self.url.as_str()).map_err(|e| ConfigError::Malformed {
            var: self.source,
            reason: format!(
                "not a Redis URL ({}): expected redis://[:password@]host[:port][/db]",
                e.category()
            ),
        })?;
        if self.namespace.is_empty()
            || !self
                .namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return Err(ConfigError::InvalidOption {
                option: "fleet_namespace",
                reason: format!(
                    "must be 1 or more ASCII letters, digits, `_`, `-` or `.` (got {:?})",
                    self.namespace
                ),
            });
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(30 * 86_400)).contains(&self.marker_ttl) {
            return Err(ConfigError::InvalidOption {
                option: "fleet_marker_ttl",
                reason: "must be from 1 s to 30 days".to_owned(),
            });
        }
        if self.lease < request_timeout + Duration::from_secs(1) {
            return Err(ConfigError::InvalidOption {
                option: "fleet_lease",
                reason: format!(
                    "must be at least `request_timeout` plus 1 s ({:?}), so that a send ends before its lease",
                    request_timeout + Duration::from_secs(1)
                ),
            });
        }
        Ok(())
    }
}

impl fmt::Debug for FleetSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetSettings")
            .field("url", &redacted(&self.url))
            .field("namespace", &self.namespace)
            .field("lease", &self.lease)
            .field("gather", &self.gather)
            .field("deliver", &self.deliver)
            .finish_non_exhaustive()
    }
}

/// `url` without its password.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://<redacted>@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let settings = FleetSettings::new("redis://:hunter2@127.0.0.1:6379/0".to_owned());
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("127.0.0.1:6379/0"), "{shown}");
    }

    #[test]
    fn a_bad_url_names_the_variable() {
        let mut settings = FleetSettings::new("http://127.0.0.1".to_owned());
        settings.source = "KINDE_METER_REDIS_URL";
        let e = settings.validate(Duration::from_secs(10)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("KINDE_METER_REDIS_URL is malformed"),
            "{e}"
        );
    }

    #[test]
    fn the_lease_outlasts_a_request() {
        let mut settings = FleetSettings::new("redis://127.0.0.1".to_owned());
        settings.lease = Duration::from_secs(5);
        let e = settings.validate(Duration::from_secs(10)).unwrap_err();
        assert!(e.to_string().contains("fleet_lease"), "{e}");
    }
}
