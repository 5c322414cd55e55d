//! `[api]`: the local transactions API's settings, with their defaults in one place.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::net::credentials;

/// Where operators and the CLI expect the API when nothing else is said.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8470";
/// The systemd credential of `camgate.service` holding the bearer token.
pub const DEFAULT_TOKEN_FILE: &str = "/run/credentials/camgate.service/api.token";
/// Tokens shorter than this are refused: the token is the API's only protection.
pub const MIN_TOKEN_LEN: usize = 16;

/// `[api]`: the local HTTP API for GBDS transactions (enroll, update, search, treatments,
/// reviews). Absent: no API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to listen on; required. The usual value is `127.0.0.1:8470` (loopback only:
    /// the API is for systems on the gateway itself, or behind a reverse proxy with TLS).
    pub listen: String,
    /// File holding the bearer token every request must carry (at least 16 characters; a
    /// relative path is looked up in `$CREDENTIALS_DIRECTORY`). Default
    /// `/run/credentials/camgate.service/api.token`.
    #[serde(default = "default_token_file")]
    pub token_file: PathBuf,
    /// Largest request body; larger ones get 413 (refused as soon as they pass the bound,
    /// never buffered whole). Default 25165824 (24 MiB: five 8 MiB-ish pictures in base64 fit).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest picture, after base64 decoding; larger ones get 413. Default 8388608 (8 MiB).
    #[serde(default = "default_max_image_bytes")]
    pub max_image_bytes: usize,
    /// Most pictures in one request; more get 413. Default 5.
    #[serde(default = "default_max_images")]
    pub max_images: usize,
    /// Requests whose bodies are read and handled at once; more wait (up to the body timeout)
    /// then get 503. Bounds the memory the API can hold. Default 4.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Time allowed to receive a request's headers, seconds. Default 10.
    #[serde(default = "default_header_timeout_secs")]
    pub header_timeout_secs: u64,
    /// Time allowed to receive a request's body, seconds; slower ones get 408. Default 60.
    #[serde(default = "default_body_timeout_secs")]
    pub body_timeout_secs: u64,
}

fn default_token_file() -> PathBuf {
    PathBuf::from(DEFAULT_TOKEN_FILE)
}
fn default_max_body_bytes() -> usize {
    24 * 1024 * 1024
}
fn default_max_image_bytes() -> usize {
    8 * 1024 * 1024
}
fn default_max_images() -> usize {
    5
}
fn default_max_concurrency() -> usize {
    4
}
fn default_header_timeout_secs() -> u64 {
    10
}
fn default_body_timeout_secs() -> u64 {
    60
}

impl ApiConfig {
    /// `[api]` listening on `listen` with every other setting at its default.
    pub fn new(listen: &str) -> Self {
        ApiConfig {
            listen: listen.to_owned(),
            token_file: default_token_file(),
            max_body_bytes: default_max_body_bytes(),
            max_image_bytes: default_max_image_bytes(),
            max_images: default_max_images(),
            max_concurrency: default_max_concurrency(),
            header_timeout_secs: default_header_timeout_secs(),
            body_timeout_secs: default_body_timeout_secs(),
        }
    }

    /// Appends every problem of `[api]` to `errs` (the token file is read: a daemon that
    /// cannot read it would refuse to start).
    pub fn validate(&self, errs: &mut Vec<String>) {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            errs.push(format!(
                "api.listen: {:?} is not an IP address and port",
                self.listen
            ));
        }
        if let Err(e) = self.token() {
            errs.push(format!("api.token_file: {e}"));
        }
        if !(1024..=1024 * 1024 * 1024).contains(&self.max_body_bytes) {
            errs.push(format!(
                "api.max_body_bytes: {} is outside 1024..=1073741824",
                self.max_body_bytes
            ));
        }
        if self.max_image_bytes == 0 || self.max_image_bytes > self.max_body_bytes {
            errs.push(format!(
                "api.max_image_bytes: {} must be at least 1 and at most max_body_bytes",
                self.max_image_bytes
            ));
        }
        if !(1..=64).contains(&self.max_images) {
            errs.push(format!(
                "api.max_images: {} is outside 1..=64",
                self.max_images
            ));
        }
        if self.max_concurrency == 0 {
            errs.push("api.max_concurrency: must be at least 1".into());
        }
        if self.header_timeout_secs == 0 {
            errs.push("api.header_timeout_secs: must be at least 1".into());
        }
        if self.body_timeout_secs == 0 {
            errs.push("api.body_timeout_secs: must be at least 1".into());
        }
    }

    /// The bearer token from `token_file`.
    pub fn token(&self) -> Result<String, String> {
        let t = credentials::read_secret_file(&self.token_file, "token_file")?;
        if t.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "the token in {} is shorter than {MIN_TOKEN_LEN} characters",
                credentials::credential_path(&self.token_file).display()
            ));
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_required_listen() {
        let c: ApiConfig = toml::from_str("listen = \"127.0.0.1:8470\"").unwrap();
        assert_eq!(c, ApiConfig::new(DEFAULT_LISTEN));
        assert_eq!(c.max_body_bytes, 24 * 1024 * 1024);
        assert_eq!(c.max_image_bytes, 8 * 1024 * 1024);
        assert_eq!(c.max_images, 5);
        assert!(toml::from_str::<ApiConfig>("max_images = 3").is_err());
        assert!(toml::from_str::<ApiConfig>("listen = \"a:1\"\nbogus = 1").is_err());
    }

    #[test]
    fn every_error_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.token");
        std::fs::write(&short, "tiny\n").unwrap();
        let c = ApiConfig {
            listen: "nowhere".into(),
            token_file: short,
            max_body_bytes: 10,
            max_image_bytes: 0,
            max_images: 0,
            max_concurrency: 0,
            header_timeout_secs: 0,
            body_timeout_secs: 0,
        };
        let mut errs = Vec::new();
        c.validate(&mut errs);
        let all = errs.join("\n");
        for needle in [
            "api.listen",
            "shorter than 16",
            "api.max_body_bytes",
            "api.max_image_bytes",
            "api.max_images",
            "api.max_concurrency",
            "api.header_timeout_secs",
            "api.body_timeout_secs",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        let good = dir.path().join("good.token");
        std::fs::write(&good, "0123456789abcdef0123\n").unwrap();
        let c = ApiConfig {
            token_file: good,
            ..ApiConfig::new(DEFAULT_LISTEN)
        };
        let mut errs = Vec::new();
        c.validate(&mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(c.token().unwrap(), "0123456789abcdef0123");
    }

    #[test]
    fn the_section_is_validated_with_the_rest_of_the_file() {
        use crate::config::Config;
        let c = Config::from_toml("[api]\nlisten = \"nowhere\"\ntoken_file = \"/nonexistent\"\n")
            .unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("api.listen"), "{err}");
        assert!(err.contains("api.token_file: cannot read"), "{err}");
        assert!(
            Config::from_toml("[api]\nmax_images = 2\n").is_err(),
            "listen is required"
        );
        assert_eq!(Config::from_toml("").unwrap().api, None);
    }
}
