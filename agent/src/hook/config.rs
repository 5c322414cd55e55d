//! `[hook]`: the callback receiver's settings, with their defaults in one place (the
//! receiver's own [`super::ReceiverConfig`] is built from them).

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::camera::{CameraConfig, CameraMode};
use crate::net::tls;

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

fn valid_callback_url(u: &str) -> bool {
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace))
}

impl HookConfig {
    /// Appends every problem of `[hook]` and of the hook-mode fields of `cameras` to `errs`.
    pub fn validate(&self, cameras: &[CameraConfig], errs: &mut Vec<String>) {
        let h = self;
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
        self.validate_cameras(cameras, errs);
    }

    /// The hook-mode fields of each camera, against this `[hook]`.
    fn validate_cameras(&self, cameras: &[CameraConfig], errs: &mut Vec<String>) {
        let h = self;
        let https = h.tls_cert_file.is_some();
        let mut serials = HashSet::new();
        for (i, c) in cameras.iter().enumerate() {
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
            if let (true, CameraMode::Hook, Some(u)) = (
                https,
                c.mode,
                c.effective_callback_url(h.callback_url.as_deref()),
            ) {
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
