//! `[notifier]`: the site systems that receive the GBDS notifications, one `[[notifier.endpoints]]`
//! each. Secrets are files (systemd credentials), read once when the sink starts.

use std::path::PathBuf;
use std::time::Duration;

use hyper::header::HeaderValue;
use hyper::Uri;
use serde::{Deserialize, Serialize};

use crate::net::credentials::read_secret_file;
use crate::net::tls::{self, ClientTls, TlsConfig};

/// Longest endpoint name: the outbox allows 64 characters in a consumer name, of which
/// `notifier-` takes 9.
pub const MAX_NAME_LEN: usize = 55;

/// `[notifier]`. An absent section disables the sink.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NotifierConfig {
    /// Where every notification is POSTed; each endpoint is served by its own task and cursor.
    pub endpoints: Vec<EndpointConfig>,
}

/// One `[[notifier.endpoints]]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointConfig {
    /// `http://` or `https://` URL the notifications are POSTed to. Required.
    pub url: String,
    /// Names the endpoint in `camgate status` (`notifier:<name>`) and its outbox cursor
    /// (`notifier-<name>`): `[A-Za-z0-9_.-]`, at most 55 characters, unique. Default: the URL's
    /// host, with `-<port>` when the URL gives a port. Renaming an endpoint starts a new cursor
    /// at the oldest stored record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// File holding a token sent as `Authorization: Bearer <token>` (relative paths are looked
    /// up in `$CREDENTIALS_DIRECTORY`). Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// File holding the HMAC-SHA256 key of the `X-Camgate-Signature` header. Default: none
    /// (unsigned).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hmac_secret_file: Option<PathBuf>,
    /// Trust in the endpoint's certificate (`ca_file` or `fingerprint_sha256`); required with
    /// `https://`, refused with `http://`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Send the record's extra fields (person key, candidates) beside the GBDS body.
    /// Default false: exactly the GBDS body.
    pub extra_fields: bool,
    /// Whole exchange (connect, TLS, request, answer), milliseconds. Default 10000.
    pub timeout_ms: u64,
    /// Largest answer body read; a larger one is a failed attempt. Default 65536.
    pub max_answer_bytes: usize,
    /// Retry backoff floor and cap (full jitter), milliseconds. Defaults 500 and 60000.
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            name: None,
            token_file: None,
            hmac_secret_file: None,
            tls: None,
            extra_fields: false,
            timeout_ms: 10_000,
            max_answer_bytes: 64 * 1024,
            retry_min_ms: 500,
            retry_max_ms: 60_000,
        }
    }
}

/// Where an endpoint's URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    pub host: String,
    /// `host:port`, the scheme's default port when the URL has none.
    pub authority: String,
    pub path_and_query: String,
    /// The port as written in the URL.
    pub explicit_port: Option<u16>,
}

/// Checks an endpoint URL: absolute `http(s)://host[:port]/path`, no user info.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let bad = || format!("{url:?} is not an absolute http:// or https:// URL");
    let uri: Uri = url.parse().map_err(|_| bad())?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad()),
    };
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(bad)?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(format!(
            "{url:?}: user info in the URL is not supported (use token_file)"
        ));
    }
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok(Target {
        https,
        host: host.to_owned(),
        authority: format!("{host}:{port}"),
        path_and_query: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        explicit_port: uri.port_u16(),
    })
}

/// Whether `name` can be an endpoint name (and so part of an outbox consumer name).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl EndpointConfig {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// The given `name`, else the URL's host (and port), made a valid name.
    pub fn effective_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let Ok(t) = parse_url(&self.url) else {
            return "endpoint".into();
        };
        let mut n: String = t
            .host
            .trim_matches(['[', ']'])
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if let Some(p) = t.explicit_port {
            n = format!("{n}-{p}");
        }
        n.chars().take(MAX_NAME_LEN).collect()
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The bearer token, read from `token_file`.
    pub fn token(&self) -> Result<Option<String>, String> {
        self.token_file
            .as_ref()
            .map(|f| {
                let t = read_secret_file(f, "token_file")?.trim().to_owned();
                if t.is_empty() {
                    return Err(format!("token_file {} is empty", f.display()));
                }
                HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| format!("token_file {}: not a header value", f.display()))?;
                Ok(t)
            })
            .transpose()
    }

    /// The HMAC key, read from `hmac_secret_file`.
    pub fn hmac_secret(&self) -> Result<Option<Vec<u8>>, String> {
        self.hmac_secret_file
            .as_ref()
            .map(|f| {
                let s = read_secret_file(f, "hmac_secret_file")?.trim().to_owned();
                if s.is_empty() {
                    return Err(format!("hmac_secret_file {} is empty", f.display()));
                }
                Ok(s.into_bytes())
            })
            .transpose()
    }

    /// The TLS side for an `https://` URL (`None` for `http://`).
    pub fn client_tls(&self, target: &Target) -> Result<Option<ClientTls>, String> {
        match (target.https, &self.tls) {
            (false, None) => Ok(None),
            (false, Some(_)) => Err("tls is given for an http:// URL".into()),
            (true, None) => Err("an https:// URL needs tls (ca_file or fingerprint_sha256)".into()),
            (true, Some(t)) => tls::client_config(t, &target.host)
                .map(Some)
                .map_err(|e| e.to_string()),
        }
    }

    /// Appends every problem of endpoint `i` to `errs`.
    pub fn validate(&self, i: usize, errs: &mut Vec<String>) {
        let at = format!("notifier.endpoints[{i}]");
        match parse_url(&self.url) {
            Ok(t) => {
                if let Err(e) = self.client_tls(&t) {
                    errs.push(format!("{at}.tls: {e}"));
                }
            }
            Err(e) => errs.push(format!("{at}.url: {e}")),
        }
        if let Some(n) = &self.name {
            if !valid_name(n) {
                errs.push(format!(
                    "{at}.name: {n:?} must be 1..={MAX_NAME_LEN} characters of [A-Za-z0-9_.-]"
                ));
            }
        }
        if let Err(e) = self.token() {
            errs.push(format!("{at}.token_file: {e}"));
        }
        if let Err(e) = self.hmac_secret() {
            errs.push(format!("{at}.hmac_secret_file: {e}"));
        }
        if self.timeout_ms == 0 {
            errs.push(format!("{at}.timeout_ms: must be at least 1"));
        }
        if self.retry_min_ms == 0 || self.retry_max_ms < self.retry_min_ms {
            errs.push(format!(
                "{at}: need 1 <= retry_min_ms <= retry_max_ms (got {} and {})",
                self.retry_min_ms, self.retry_max_ms
            ));
        }
    }
}

impl NotifierConfig {
    /// Appends every problem to `errs` (see `Config::validate`).
    pub fn validate(&self, errs: &mut Vec<String>) {
        if self.endpoints.is_empty() {
            errs.push("notifier.endpoints: give at least one endpoint".into());
        }
        let mut names = std::collections::HashSet::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            e.validate(i, errs);
            let n = e.effective_name();
            if !names.insert(n.clone()) {
                errs.push(format!(
                    "notifier.endpoints[{i}].name: {n:?} is already used by another endpoint (set a distinct name)"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};

    const CONTRACT: &str = r#"
[[notifier.endpoints]]
url = "https://hr.example/gbds/notify"
token_file = "@TOKEN@"
hmac_secret_file = "@SECRET@"
tls = { ca_file = "@CA@" }
extra_fields = false
"#;

    fn errors(text: &str) -> String {
        match Config::from_toml(text).unwrap().validate() {
            Ok(()) => String::new(),
            Err(ConfigError::Invalid(list)) => list.join("\n"),
            Err(e) => panic!("{e}"),
        }
    }

    fn ca_pem(dir: &std::path::Path) -> PathBuf {
        let cert = rcgen::generate_simple_self_signed(vec!["hr.example".into()]).unwrap();
        let p = dir.join("ca.pem");
        std::fs::write(&p, cert.cert.pem()).unwrap();
        p
    }

    #[test]
    fn the_contract_section_parses_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t"), "tok-1\n").unwrap();
        std::fs::write(dir.path().join("s"), "  key \n").unwrap();
        let text = CONTRACT
            .replace("@TOKEN@", &dir.path().join("t").display().to_string())
            .replace("@SECRET@", &dir.path().join("s").display().to_string())
            .replace("@CA@", &ca_pem(dir.path()).display().to_string());
        assert_eq!(errors(&text), "");
        let n = Config::from_toml(&text).unwrap().notifier.unwrap();
        let e = &n.endpoints[0];
        assert_eq!(e.effective_name(), "hr.example");
        assert_eq!((e.timeout_ms, e.max_answer_bytes), (10_000, 65_536));
        assert_eq!((e.retry_min_ms, e.retry_max_ms), (500, 60_000));
        assert_eq!(e.token().unwrap().as_deref(), Some("tok-1"));
        assert_eq!(e.hmac_secret().unwrap().as_deref(), Some(&b"key"[..]));
        let t = parse_url(&e.url).unwrap();
        assert_eq!(
            (t.https, t.authority.as_str(), t.path_and_query.as_str()),
            (true, "hr.example:443", "/gbds/notify")
        );
        assert!(Config::from_toml("").unwrap().notifier.is_none());
        assert!(
            Config::from_toml("[[notifier.endpoints]]\nurl = \"http://a/\"\nbogus = 1\n").is_err(),
            "unknown keys are refused"
        );
        assert!(
            Config::from_toml("[notifier]\nnotify_camera_matches = true\n").is_err(),
            "notify_camera_matches is a key of [gbds]"
        );
    }

    #[test]
    fn default_names_come_from_host_and_port() {
        for (url, name) in [
            ("http://127.0.0.1:8080/n", "127.0.0.1-8080"),
            ("https://Hr.Example/x", "Hr.Example"),
            ("http://[::1]:81/", "__1-81"),
        ] {
            assert_eq!(EndpointConfig::new(url).effective_name(), name, "{url}");
            assert!(valid_name(name));
        }
    }

    #[test]
    fn every_notifier_error_is_reported() {
        let text = r#"
[[notifier.endpoints]]
url = "ftp://x/"
name = "bad name/"
token_file = "/nonexistent/token"
hmac_secret_file = "/nonexistent/secret"
timeout_ms = 0
retry_min_ms = 10
retry_max_ms = 5
[[notifier.endpoints]]
url = "https://a.example/n"
[[notifier.endpoints]]
url = "http://a.example/n"
tls = { fingerprint_sha256 = "00" }
[[notifier.endpoints]]
url = "https://user:pw@b.example/"
[[notifier.endpoints]]
url = "http://c.example/"
name = "dup"
[[notifier.endpoints]]
url = "http://d.example/"
name = "dup"
"#;
        let all = errors(text);
        for needle in [
            "endpoints[0].url: \"ftp://x/\" is not an absolute",
            "endpoints[0].name: \"bad name/\" must be",
            "endpoints[0].token_file: cannot read token_file",
            "endpoints[0].hmac_secret_file: cannot read hmac_secret_file",
            "endpoints[0].timeout_ms",
            "endpoints[0]: need 1 <= retry_min_ms <= retry_max_ms (got 10 and 5)",
            "endpoints[1].tls: an https:// URL needs tls",
            "endpoints[2].tls: tls is given for an http:// URL",
            "endpoints[3].url: \"https://user:pw@b.example/\": user info",
            "endpoints[5].name: \"dup\" is already used",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(!all.contains("endpoints[4].name"), "{all}");
        assert_eq!(
            errors("[notifier]\n"),
            "notifier.endpoints: give at least one endpoint"
        );
    }

    #[test]
    fn default_names_must_be_unique_too() {
        let text = "[[notifier.endpoints]]\nurl = \"http://h/a\"\n[[notifier.endpoints]]\nurl = \"http://h/b\"\n";
        assert_eq!(
            errors(text),
            "notifier.endpoints[1].name: \"h\" is already used by another endpoint (set a distinct name)"
        );
    }

    #[test]
    fn empty_secret_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("empty");
        std::fs::write(&f, " \n").unwrap();
        let e = EndpointConfig {
            token_file: Some(f.clone()),
            hmac_secret_file: Some(f),
            ..EndpointConfig::new("http://h/")
        };
        assert!(e.token().unwrap_err().ends_with("is empty"));
        assert!(e.hmac_secret().unwrap_err().ends_with("is empty"));
    }
}
