//! Configuration: one TOML file plus sorted `conf.d/*.toml` drop-ins beside it, read into serde
//! structs whose defaults are documented on each field. [`Config::validate`] collects every
//! problem instead of stopping at the first, so `camgate check-config` can print them all.

mod merge;

use std::collections::HashSet;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::channel::frame::CrcScope;
use crate::channel::tls::{self, TlsConfig};
use crate::event::KNOWN_EVENTS;
use crate::outbox::OutboxConfig;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of this gateway in forwarded data. Default: the host name.
    #[serde(default)]
    pub gateway_id: Option<String>,
    #[serde(default)]
    pub outbox: OutboxConfig,
    #[serde(default)]
    pub intake: IntakeConfig,
    #[serde(default)]
    pub sinks: SinksConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    #[serde(default)]
    pub hook: HookConfig,
    /// `[kafka]`: forward every stored event to Kafka. Absent: no Kafka sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<crate::sinks::KafkaConfig>,
    /// `[mqtt]`: the MQTT forwarding sink; absent disables it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<crate::sinks::MqttConfig>,
    #[serde(default)]
    pub cameras: Vec<CameraConfig>,
}

/// `[hook]`: the HTTP callback receiver for cameras in `mode = "hook"` (DECISIONS §4).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HookConfig {
    /// Start the receiver even with no hook-mode camera. Default false (it starts whenever a
    /// camera has `mode = "hook"`).
    pub enabled: bool,
    /// Address the receiver listens on. Default `0.0.0.0:8080`.
    pub listen: String,
    /// Largest callback body accepted; larger ones get 413. Default 262144 (256 KiB).
    pub max_body_bytes: usize,
    /// Requests processed at once; more wait (up to `request_timeout_secs`) then get 503. Default 64.
    pub max_concurrency: usize,
    /// How far a callback's `timestamp` may be from local time, seconds. Default 300.
    pub sign_window_secs: u64,
    /// Time allowed to receive one request's headers and body, seconds. Default 10.
    pub request_timeout_secs: u64,
    /// Bound of the replay cache of `(app_id, random, timestamp)`. Default 100000.
    pub replay_max_entries: usize,
    /// The URL cameras are told to post to (`http_callback` of hook/add), e.g.
    /// `http://192.168.0.100:8080/camgate/hook`. Default none (a camera's own `callback_url`
    /// may give it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// How often each hook-mode camera's subscriptions are checked against `events` (and
    /// repaired), seconds; they are also reconciled at start-up. Default 300.
    pub recheck_secs: u64,
    /// Delete each hook camera's subscriptions to our callback URL when camgate stops.
    /// Default false: callbacks a camera posts while camgate restarts are then retried by the
    /// camera rather than lost (unsubscribing makes the camera drop events until the next
    /// start-up re-subscribes). Note that the camera's `hook/delete` takes no URL, so other
    /// subscribers of the same events lose their subscription too.
    pub unsubscribe_on_shutdown: bool,
    /// Serve HTTPS instead of HTTP: the receiver's certificate chain and private key (PEM).
    /// Both or neither. Default none (plain HTTP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
}

impl Default for HookConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: "0.0.0.0:8080".into(),
            max_body_bytes: 256 * 1024,
            max_concurrency: 64,
            sign_window_secs: 300,
            request_timeout_secs: 10,
            replay_max_entries: 100_000,
            callback_url: None,
            recheck_secs: 300,
            unsubscribe_on_shutdown: false,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl Config {
    /// Whether the callback receiver runs: `hook.enabled`, or any camera in hook mode.
    pub fn hook_active(&self) -> bool {
        self.hook.enabled || self.cameras.iter().any(|c| c.mode == CameraMode::Hook)
    }
}

/// How a camera delivers its events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraMode {
    /// camgate keeps a Message Channel session to the camera (DECISIONS §2, §3).
    #[default]
    Channel,
    /// The camera POSTs callbacks to camgate's receiver (`[hook]`, DECISIONS §4).
    Hook,
}

/// `[intake]`: de-duplication of `(sn, event_id)` (DECISIONS §3: within 24 h).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IntakeConfig {
    /// Seconds a `(sn, event_id)` is remembered. Default 86400.
    pub dedupe_window_secs: u64,
    /// Most remembered pairs; the oldest are forgotten first. Default 200000 (~20 MB worst case).
    pub dedupe_max_entries: usize,
}

impl Default for IntakeConfig {
    fn default() -> Self {
        Self {
            dedupe_window_secs: 86_400,
            dedupe_max_entries: 200_000,
        }
    }
}

/// `[sinks]`: consumers of the outbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    pub jsonl: JsonlSinkConfig,
}

/// `[sinks.jsonl]`: every stored event as one JSON line, so camgate is useful with no broker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JsonlSinkConfig {
    /// Default true.
    pub enabled: bool,
    /// File to append to, or `-` for stdout. Default `/var/lib/camgate/events.jsonl`.
    pub path: PathBuf,
    /// Size at which the file is rotated to `<path>.1` (one old file kept). Default 16 MiB.
    pub max_file_bytes: u64,
}

impl Default for JsonlSinkConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: PathBuf::from("/var/lib/camgate/events.jsonl"),
            max_file_bytes: 16 * 1024 * 1024,
        }
    }
}

/// `[health]`: the file `camgate health` reads (OTA commit check).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Default `/run/camgate/health.json`.
    pub file: PathBuf,
    /// How often the daemon rewrites it, seconds. Default 5.
    pub interval_secs: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            file: PathBuf::from("/run/camgate/health.json"),
            interval_secs: 5,
        }
    }
}

/// `[shutdown]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Seconds allowed for draining after SIGTERM; keep below systemd's TimeoutStopSec. Default 10.
    pub grace_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { grace_secs: 10 }
    }
}

/// `[[cameras]]`: one camera and its Message Channel session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Unique name, used in logs and forwarded data.
    pub name: String,
    /// `channel` (camgate connects to the camera) or `hook` (the camera posts callbacks to
    /// `[hook]`). Default `channel`.
    #[serde(default)]
    pub mode: CameraMode,
    /// Hook mode: the URL this camera is told to post to, if not `hook.callback_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// Hook mode: the camera's serial number. When set, a callback signed with this camera's
    /// app_id/secret must carry this `sn` in its payload (else 401 `sn_mismatch`), so that a
    /// camera sharing a developer app cannot post events in another camera's name. Default
    /// none (any `sn` is accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sn: Option<String>,
    /// `host:port` of the camera's Message Channel (port 10021 on real cameras); in hook mode,
    /// of its HTTPS API (port 443).
    pub address: String,
    pub app_id: String,
    /// The app secret inline, or...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// ...a file holding it (e.g. a systemd credential; relative paths are looked up in
    /// `$CREDENTIALS_DIRECTORY`). Trailing newlines are ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// Events to subscribe to. Default both known events.
    #[serde(default = "default_events")]
    pub events: Vec<String>,
    /// Heartbeat period, seconds. Default 30.
    #[serde(default = "default_keep_alive")]
    pub keep_alive: u64,
    #[serde(default)]
    pub tls: TlsConfig,
    /// What the frame CRC covers. Default `payload` (the text); some firmware uses `frame`.
    #[serde(default)]
    pub crc_scope: CrcScope,
    /// Seconds allowed for TCP connect + TLS handshake, and for CONNACK. Default 10.
    #[serde(default = "default_timeout")]
    pub connect_timeout: u64,
    /// Seconds allowed for SUBACK. Default 10.
    #[serde(default = "default_timeout")]
    pub subscribe_timeout: u64,
    /// Reconnect backoff floor and cap, seconds. Defaults 1 and 60.
    #[serde(default = "default_backoff_min")]
    pub backoff_min: u64,
    #[serde(default = "default_backoff_max")]
    pub backoff_max: u64,
}

fn default_events() -> Vec<String> {
    KNOWN_EVENTS.iter().map(|s| s.to_string()).collect()
}
const fn default_keep_alive() -> u64 {
    30
}
const fn default_timeout() -> u64 {
    10
}
const fn default_backoff_min() -> u64 {
    1
}
const fn default_backoff_max() -> u64 {
    60
}

impl CameraConfig {
    /// Hook mode: the URL this camera posts to (its own, else `hook.callback_url`).
    pub fn effective_callback_url<'a>(&'a self, hook: &'a HookConfig) -> Option<&'a str> {
        self.callback_url
            .as_deref()
            .or(hook.callback_url.as_deref())
    }

    /// A camera with every optional field at its default.
    pub fn new(name: &str, address: &str, app_id: &str, secret: &str, tls: TlsConfig) -> Self {
        CameraConfig {
            name: name.into(),
            mode: CameraMode::Channel,
            callback_url: None,
            sn: None,
            address: address.into(),
            app_id: app_id.into(),
            secret: Some(secret.into()),
            secret_file: None,
            events: default_events(),
            keep_alive: default_keep_alive(),
            tls,
            crc_scope: CrcScope::Payload,
            connect_timeout: default_timeout(),
            subscribe_timeout: default_timeout(),
            backoff_min: default_backoff_min(),
            backoff_max: default_backoff_max(),
        }
    }

    /// The host part of `address` (for SNI / certificate names).
    pub fn host(&self) -> &str {
        let a = self.address.as_str();
        let host = a.rsplit_once(':').map_or(a, |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    }

    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.keep_alive)
    }

    /// The secret, read from `secret_file` if that is how it is given.
    pub fn resolve_secret(&self) -> Result<String, String> {
        match (&self.secret, &self.secret_file) {
            (Some(s), None) => Ok(s.clone()),
            (None, Some(p)) => {
                let path = resolve_credential_path(p);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read secret_file {}: {e}", path.display()))?;
                let s = text.trim_end_matches(['\n', '\r']).to_owned();
                if s.is_empty() {
                    return Err(format!("secret_file {} is empty", path.display()));
                }
                Ok(s)
            }
            _ => Err("give exactly one of secret, secret_file".into()),
        }
    }
}

pub(crate) fn resolve_credential_path(p: &Path) -> PathBuf {
    if p.is_relative() {
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            return PathBuf::from(dir).join(p);
        }
    }
    p.to_owned()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

impl Config {
    /// Reads `path`, then merges `conf.d/*.toml` from the same directory in name order: tables
    /// merge key by key, arrays (e.g. `[[cameras]]`) are appended, other values replaced.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let mut table = read_table(path)?;
        let dropin_dir = path.parent().unwrap_or(Path::new(".")).join("conf.d");
        if let Ok(entries) = std::fs::read_dir(&dropin_dir) {
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            for f in files {
                merge::merge(&mut table, read_table(&f)?);
            }
        }
        Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Parses one TOML text (no drop-ins).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })
    }

    /// Loads and validates.
    pub fn load_valid(path: &Path) -> Result<Config, ConfigError> {
        let c = Config::load(path)?;
        c.validate()?;
        Ok(c)
    }

    /// Every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        let o = &self.outbox;
        if o.dir.as_os_str().is_empty() {
            errs.push("outbox.dir: must not be empty".to_string());
        }
        if o.segment_bytes < 4096 {
            errs.push(format!(
                "outbox.segment_bytes: {} is below 4096",
                o.segment_bytes
            ));
        }
        if o.max_bytes < o.segment_bytes.saturating_mul(2) {
            errs.push(format!(
                "outbox.max_bytes: {} must be at least twice segment_bytes ({})",
                o.max_bytes, o.segment_bytes
            ));
        }
        if o.max_batch == 0 {
            errs.push("outbox.max_batch: must be at least 1".into());
        }
        if self.intake.dedupe_max_entries == 0 {
            errs.push("intake.dedupe_max_entries: must be at least 1".into());
        }
        if self.sinks.jsonl.enabled && self.sinks.jsonl.path.as_os_str().is_empty() {
            errs.push("sinks.jsonl.path: must not be empty (use \"-\" for stdout)".into());
        }
        if self.health.interval_secs == 0 {
            errs.push("health.interval_secs: must be at least 1".into());
        }
        self.validate_hook(&mut errs);
        if let Some(k) = &self.kafka {
            k.validate(&mut errs);
        }
        if let Some(m) = &self.mqtt {
            m.validate(&mut errs);
        }
        let mut names = HashSet::new();
        for (i, c) in self.cameras.iter().enumerate() {
            let at = if c.name.is_empty() {
                format!("cameras[{i}]")
            } else {
                format!("cameras[{i}] ({})", c.name)
            };
            if c.name.is_empty() {
                errs.push(format!("{at}.name: must not be empty"));
            } else if !names.insert(c.name.as_str()) {
                errs.push(format!("{at}.name: duplicate camera name"));
            }
            match c.address.rsplit_once(':') {
                Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0) => {
                    // Names are resolved at connect time; a literal that fails to parse is an error now.
                    if h.chars().all(|ch| ch.is_ascii_digit() || ch == '.')
                        && c.address.to_socket_addrs().is_err()
                    {
                        errs.push(format!(
                            "{at}.address: {:?} is not a valid IPv4 address and port",
                            c.address
                        ));
                    }
                }
                _ => errs.push(format!("{at}.address: {:?} must be host:port", c.address)),
            }
            if c.app_id.is_empty() {
                errs.push(format!("{at}.app_id: must not be empty"));
            }
            if let Err(e) = c.resolve_secret() {
                errs.push(format!("{at}.secret: {e}"));
            }
            if c.events.is_empty() {
                errs.push(format!("{at}.events: subscribe to at least one event"));
            }
            for e in &c.events {
                if !KNOWN_EVENTS.contains(&e.as_str()) {
                    errs.push(format!(
                        "{at}.events: unknown event {e:?} (known: {})",
                        KNOWN_EVENTS.join(", ")
                    ));
                }
            }
            if !(5..=3600).contains(&c.keep_alive) {
                errs.push(format!(
                    "{at}.keep_alive: {} s is outside 5..=3600",
                    c.keep_alive
                ));
            }
            if c.connect_timeout == 0 || c.subscribe_timeout == 0 {
                errs.push(format!(
                    "{at}: connect_timeout and subscribe_timeout must be at least 1 s"
                ));
            }
            if c.backoff_min == 0 || c.backoff_max < c.backoff_min {
                errs.push(format!(
                    "{at}: need 1 <= backoff_min <= backoff_max (got {} and {})",
                    c.backoff_min, c.backoff_max
                ));
            }
            errs.extend(c.tls.problems().into_iter().map(|p| format!("{at}.tls{p}")));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errs))
        }
    }
}

fn valid_callback_url(u: &str) -> bool {
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace))
}

impl Config {
    fn validate_hook(&self, errs: &mut Vec<String>) {
        let h = &self.hook;
        if h.listen.parse::<std::net::SocketAddr>().is_err() {
            errs.push(format!(
                "hook.listen: {:?} is not an IP address and port",
                h.listen
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&h.max_body_bytes) {
            errs.push(format!(
                "hook.max_body_bytes: {} is outside 1024..=16777216",
                h.max_body_bytes
            ));
        }
        if h.max_concurrency == 0 {
            errs.push("hook.max_concurrency: must be at least 1".into());
        }
        if !(1..=86_400).contains(&h.sign_window_secs) {
            errs.push(format!(
                "hook.sign_window_secs: {} is outside 1..=86400",
                h.sign_window_secs
            ));
        }
        if h.request_timeout_secs == 0 {
            errs.push("hook.request_timeout_secs: must be at least 1".into());
        }
        if h.replay_max_entries == 0 {
            errs.push("hook.replay_max_entries: must be at least 1".into());
        }
        if h.recheck_secs < 10 {
            errs.push(format!("hook.recheck_secs: {} is below 10", h.recheck_secs));
        }
        if let Some(u) = &h.callback_url {
            if !valid_callback_url(u) {
                errs.push(format!(
                    "hook.callback_url: {u:?} must be an http:// or https:// URL"
                ));
            }
        }
        match (&h.tls_cert_file, &h.tls_key_file) {
            (Some(cert), Some(key)) => {
                if let Err(e) = tls::load_certs(cert) {
                    errs.push(format!("hook.tls_cert_file: {e}"));
                }
                if let Err(e) = tls::load_key(key) {
                    errs.push(format!("hook.tls_key_file: {e}"));
                }
            }
            (None, None) => {}
            _ => errs.push("hook: tls_cert_file and tls_key_file go together".into()),
        }
        let https = h.tls_cert_file.is_some();
        let mut serials = HashSet::new();
        for (i, c) in self.cameras.iter().enumerate() {
            let at = format!("cameras[{i}] ({})", c.name);
            match (&c.callback_url, c.mode) {
                (Some(_), CameraMode::Channel) => {
                    errs.push(format!("{at}.callback_url: only for mode = \"hook\""));
                }
                (Some(u), CameraMode::Hook) if !valid_callback_url(u) => {
                    errs.push(format!(
                        "{at}.callback_url: {u:?} must be an http:// or https:// URL"
                    ));
                }
                (None, CameraMode::Hook) if h.callback_url.is_none() => {
                    errs.push(format!(
                        "{at}.callback_url: a hook camera needs callback_url (or hook.callback_url): the URL it posts to"
                    ));
                }
                _ => {}
            }
            // A camera told to post plain HTTP to a receiver that only speaks TLS loses every event.
            if let (true, CameraMode::Hook, Some(u)) = (https, c.mode, c.effective_callback_url(h))
            {
                if u.starts_with("http://") {
                    errs.push(format!("{at}: callback URL {u:?} is http:// but the receiver serves HTTPS (hook.tls_cert_file)"));
                }
            }
            match (&c.sn, c.mode) {
                (Some(_), CameraMode::Channel) => {
                    errs.push(format!("{at}.sn: only for mode = \"hook\""))
                }
                (Some(sn), CameraMode::Hook) if sn.is_empty() => {
                    errs.push(format!("{at}.sn: must not be empty"))
                }
                (Some(sn), CameraMode::Hook) if !serials.insert(sn.as_str()) => {
                    errs.push(format!("{at}.sn: {sn:?} is given to another camera too"))
                }
                _ => {}
            }
        }
        // Callbacks are matched to cameras by app_id; one app_id with two secrets is allowed
        // (the verifying secret names the camera), so nothing more to check here.
    }
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTRACT: &str = r#"
[outbox]
dir = "/var/lib/camgate/outbox"
[[cameras]]
name = "door-1"
address = "127.0.0.1:10021"
app_id = "app"
secret = "s3cret"
events = ["face_recog_event", "dynamic_detect_event"]
keep_alive = 30
tls = { fingerprint_sha256 = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89" }
"#;

    #[test]
    fn the_contract_example_parses_and_validates() {
        let c = Config::from_toml(CONTRACT).unwrap();
        c.validate().unwrap();
        assert_eq!(c.cameras[0].keep_alive, 30);
        assert_eq!(c.cameras[0].backoff_max, 60);
        assert_eq!(c.outbox.max_bytes, 64 * 1024 * 1024);
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let text = r#"
[outbox]
dir = ""
[[cameras]]
name = "a"
address = "nowhere"
app_id = ""
events = ["bogus"]
keep_alive = 1
tls = { fingerprint_sha256 = "zz", insecure_skip_verify = true }
[[cameras]]
name = "a"
address = "1.2.3.4:10021"
app_id = "x"
secret = "y"
secret_file = "/nonexistent"
tls = { ca_file = "/nonexistent.pem" }
"#;
        let err = Config::from_toml(text).unwrap().validate().unwrap_err();
        let ConfigError::Invalid(list) = err else {
            panic!("{err}")
        };
        let all = list.join("\n");
        for needle in [
            "outbox.dir",
            ".address",
            ".app_id",
            "unknown event",
            "keep_alive",
            "exactly one of fingerprint",
            "32 bytes",
            "duplicate",
            "exactly one of secret",
            "ca_file",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(list.len() >= 10, "{all}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(Config::from_toml("[outbox]\ndri = \"x\"\n").is_err());
        assert!(Config::from_toml("bogus = 1\n").is_err());
    }

    #[test]
    fn dropins_merge_in_name_order_and_append_cameras() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("camgate.toml");
        std::fs::write(&main, CONTRACT).unwrap();
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        std::fs::write(
            dir.path().join("conf.d/20-outbox.toml"),
            "[outbox]\nmax_bytes = 1000000000\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("conf.d/10-outbox.toml"),
            "[outbox]\nmax_bytes = 5\nsegment_bytes = 65536\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("conf.d/30-cam.toml"),
            "[[cameras]]\nname = \"door-2\"\naddress = \"127.0.0.1:10022\"\napp_id = \"a\"\nsecret_file = \"door-2.secret\"\ntls = { insecure_skip_verify = true }\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("conf.d/ignored.txt"), "garbage").unwrap();
        std::fs::write(dir.path().join("door-2.secret"), "from-file\n").unwrap();
        let c = Config::load(&main).unwrap();
        assert_eq!(c.outbox.max_bytes, 1_000_000_000);
        assert_eq!(c.outbox.segment_bytes, 65536);
        assert_eq!(c.cameras.len(), 2);
        assert_eq!(c.cameras[1].name, "door-2");
        // Relative secret files are looked up in $CREDENTIALS_DIRECTORY (systemd credentials).
        let cam = CameraConfig {
            secret_file: Some(dir.path().join("door-2.secret")),
            ..c.cameras[1].clone()
        };
        assert_eq!(cam.resolve_secret().unwrap(), "from-file");
    }

    #[test]
    fn hook_section_and_camera_mode() {
        let text = format!(
            "{CONTRACT}\n[hook]\nlisten = \"127.0.0.1:9000\"\ncallback_url = \"http://10.0.0.1:9000/hook\"\n[[cameras]]\nname = \"gate\"\nmode = \"hook\"\naddress = \"127.0.0.1:443\"\napp_id = \"app\"\nsecret = \"s\"\ntls = {{ insecure_skip_verify = true }}\n"
        );
        let c = Config::from_toml(&text).unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.cameras[0].mode,
            CameraMode::Channel,
            "channel is the default"
        );
        assert_eq!(c.cameras[1].mode, CameraMode::Hook);
        assert!(c.hook_active());
        assert_eq!(c.hook.max_body_bytes, 256 * 1024);
        assert_eq!(c.hook.sign_window_secs, 300);
        assert!(!Config::from_toml(CONTRACT).unwrap().hook_active());
        assert!(Config::from_toml(
            "[[cameras]]\nname=\"a\"\nmode=\"carrier-pigeon\"\naddress=\"a:1\"\napp_id=\"a\"\n"
        )
        .is_err());
    }

    #[test]
    fn hook_errors_are_all_reported() {
        let text = format!(
            "{CONTRACT}\ncallback_url = \"ftp://x\"\n[hook]\nlisten = \"nowhere\"\nmax_body_bytes = 10\nmax_concurrency = 0\nsign_window_secs = 0\nrequest_timeout_secs = 0\nreplay_max_entries = 0\ncallback_url = \"/relative\"\n"
        );
        let err = Config::from_toml(&text).unwrap().validate().unwrap_err();
        let ConfigError::Invalid(list) = err else {
            panic!("{err}")
        };
        let all = list.join("\n");
        for needle in [
            "hook.listen",
            "hook.max_body_bytes",
            "hook.max_concurrency",
            "hook.sign_window_secs",
            "hook.request_timeout_secs",
            "hook.replay_max_entries",
            "hook.callback_url",
            "only for mode",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn hook_camera_without_a_callback_url_is_reported() {
        let text = "[[cameras]]\nname = \"gate\"\nmode = \"hook\"\naddress = \"127.0.0.1:443\"\napp_id = \"a\"\nsecret = \"s\"\ntls = { insecure_skip_verify = true }\n";
        let err = Config::from_toml(text).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("callback_url"), "{err}");
        let ok = format!("[hook]\ncallback_url = \"http://10.0.0.1:8080/h\"\n{text}");
        Config::from_toml(&ok).unwrap().validate().unwrap();
    }

    #[test]
    fn hook_tls_and_sn_are_checked() {
        let cam = "[[cameras]]\nname = \"gate\"\nmode = \"hook\"\naddress = \"127.0.0.1:443\"\napp_id = \"a\"\nsecret = \"s\"\nsn = \"SN1\"\ntls = { insecure_skip_verify = true }\n";
        let text = format!(
            "[hook]\ncallback_url = \"http://10.0.0.1:8080/h\"\ntls_cert_file = \"/nonexistent.pem\"\n{cam}{}{CONTRACT}sn = \"SN2\"\n",
            cam.replace("gate", "gate-2")
        );
        let err = Config::from_toml(&text).unwrap().validate().unwrap_err();
        let all = err.to_string();
        for needle in [
            "tls_cert_file and tls_key_file go together",
            "given to another camera",
            "sn: only for mode",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        let tls = format!("tls_cert_file = {cert:?}\ntls_key_file = {key:?}\n");
        let plain = format!("[hook]\ncallback_url = \"http://10.0.0.1:8080/h\"\n{tls}{cam}");
        let err = Config::from_toml(&plain).unwrap().validate().unwrap_err();
        assert!(
            err.to_string()
                .contains("is http:// but the receiver serves HTTPS"),
            "{err}"
        );
        let ok = plain.replace("http://", "https://");
        Config::from_toml(&ok).unwrap().validate().unwrap();
        let swapped = ok.replace("tls_key_file = ", "tls_key_file = \"/nonexistent.key\"\n#");
        let err = Config::from_toml(&swapped).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("hook.tls_key_file"), "{err}");
    }

    #[test]
    fn host_of_address() {
        let mut c = CameraConfig::new("a", "10.0.0.2:10021", "x", "y", TlsConfig::default());
        assert_eq!(c.host(), "10.0.0.2");
        c.address = "[::1]:10021".into();
        assert_eq!(c.host(), "::1");
    }
}
