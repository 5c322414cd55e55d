//! A camera as configured (`[[cameras]]`): who it is, where it is, how camgate trusts it and how
//! it delivers its events (a Message Channel session, or HTTP callbacks). The channel driver, the
//! hook client and receiver, and the picture fetch all read this one struct.

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::KNOWN_EVENTS;
use crate::net::credentials;
use crate::net::tls::TlsConfig;

/// What the frame CRC covers (DECISIONS §2). The text says the payload; some firmware of the
/// same vendor covers the whole frame — a property of the camera, so it is configured here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrcScope {
    #[default]
    Payload,
    Frame,
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
    /// Hook mode: the URL this camera posts to (its own, else `default`: `hook.callback_url`).
    pub fn effective_callback_url<'a>(&'a self, default: Option<&'a str>) -> Option<&'a str> {
        self.callback_url.as_deref().or(default)
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
                let s = credentials::read_secret_file(p, "secret_file")?;
                if s.is_empty() {
                    let path = credentials::credential_path(p);
                    return Err(format!("secret_file {} is empty", path.display()));
                }
                Ok(s)
            }
            _ => Err("give exactly one of secret, secret_file".into()),
        }
    }

    /// Appends every problem of this camera (the `i`th) to `errs`; the hook-mode fields are
    /// checked with `[hook]` (see `hook::HookConfig::validate`).
    pub fn validate(&self, i: usize, errs: &mut Vec<String>) {
        let at = if self.name.is_empty() {
            format!("cameras[{i}]")
        } else {
            format!("cameras[{i}] ({})", self.name)
        };
        if self.name.is_empty() {
            errs.push(format!("{at}.name: must not be empty"));
        }
        match self.address.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0) => {
                // Names are resolved at connect time; a literal that fails to parse is an error now.
                if h.chars().all(|ch| ch.is_ascii_digit() || ch == '.')
                    && self.address.to_socket_addrs().is_err()
                {
                    errs.push(format!(
                        "{at}.address: {:?} is not a valid IPv4 address and port",
                        self.address
                    ));
                }
            }
            _ => errs.push(format!(
                "{at}.address: {:?} must be host:port",
                self.address
            )),
        }
        if self.app_id.is_empty() {
            errs.push(format!("{at}.app_id: must not be empty"));
        }
        if let Err(e) = self.resolve_secret() {
            errs.push(format!("{at}.secret: {e}"));
        }
        if self.events.is_empty() {
            errs.push(format!("{at}.events: subscribe to at least one event"));
        }
        for e in &self.events {
            if !KNOWN_EVENTS.contains(&e.as_str()) {
                errs.push(format!(
                    "{at}.events: unknown event {e:?} (known: {})",
                    KNOWN_EVENTS.join(", ")
                ));
            }
        }
        if !(5..=3600).contains(&self.keep_alive) {
            errs.push(format!(
                "{at}.keep_alive: {} s is outside 5..=3600",
                self.keep_alive
            ));
        }
        if self.connect_timeout == 0 || self.subscribe_timeout == 0 {
            errs.push(format!(
                "{at}: connect_timeout and subscribe_timeout must be at least 1 s"
            ));
        }
        if self.backoff_min == 0 || self.backoff_max < self.backoff_min {
            errs.push(format!(
                "{at}: need 1 <= backoff_min <= backoff_max (got {} and {})",
                self.backoff_min, self.backoff_max
            ));
        }
        errs.extend(
            self.tls
                .problems()
                .into_iter()
                .map(|p| format!("{at}.tls{p}")),
        );
    }
}
