//! Configuration: one TOML file plus sorted `conf.d/*.toml` drop-ins beside it, read into serde
//! structs whose defaults are documented on each field. [`Config::validate`] collects every
//! problem instead of stopping at the first, so `camgate check-config` can print them all.

mod merge;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::api::ApiConfig;
pub use crate::camera::{CameraConfig, CameraMode};
pub use crate::ekyc::EkycConfig;
pub use crate::gallery::GalleryConfig;
pub use crate::gbds::GbdsConfig;
pub use crate::hook::HookConfig;
pub use crate::intake::IntakeConfig;
pub use crate::ops::HealthConfig;
pub use crate::outbox::OutboxConfig;
pub use crate::sinks::{JsonlSinkConfig, KafkaConfig, MqttConfig, NotifierConfig, SinksConfig};
pub use crate::stage::StageConfig;

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
    pub kafka: Option<KafkaConfig>,
    /// `[mqtt]`: the MQTT forwarding sink; absent disables it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttConfig>,
    /// `[notifier]`: POST the GBDS notifications to site systems; absent disables it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifier: Option<NotifierConfig>,
    /// `[vision]`: faces on the live path (the vision stage). Absent: no face work, events are
    /// forwarded as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vision: Option<StageConfig>,
    /// `[gallery]`: enrolled persons and unsolved entries (read by the vision stage and the
    /// `camgate gallery` commands).
    #[serde(default)]
    pub gallery: GalleryConfig,
    /// `[gbds]`: the transactions' quality bars, search and queue settings (used when `[api]`
    /// is set) and `notify_camera_matches` (used by the notifier).
    #[serde(default)]
    pub gbds: GbdsConfig,
    /// `[api]`: the local transactions API. Absent: no API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiConfig>,
    /// `[ekyc]`: the MTCNN and InsightFace services of the MI EKYC back end over Kafka.
    /// Absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ekyc: Option<EkycConfig>,
    #[serde(default)]
    pub cameras: Vec<CameraConfig>,
}

impl Config {
    /// Whether the callback receiver runs: `hook.enabled`, or any camera in hook mode.
    pub fn hook_active(&self) -> bool {
        self.hook.enabled || self.cameras.iter().any(|c| c.mode == CameraMode::Hook)
    }

    /// This gateway's name in forwarded data, the one rule for every sink: `gateway_id`, else
    /// the host name, else `camgate`. (`[mqtt] gateway_id` may still override it for MQTT.)
    pub fn gateway_id(&self) -> String {
        self.gateway_id
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(host_name)
            .unwrap_or_else(|| "camgate".to_owned())
    }
}

fn host_name() -> Option<String> {
    let h = nix::unistd::gethostname().ok()?.into_string().ok()?;
    Some(h.trim().to_owned()).filter(|h| !h.is_empty())
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

    /// Every problem at once: each section checks itself and appends to one list.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        self.outbox.validate(&mut errs);
        self.intake.validate(&mut errs);
        self.sinks.jsonl.validate(&mut errs);
        self.health.validate(&mut errs);
        self.hook.validate(&self.cameras, &mut errs);
        if let Some(k) = &self.kafka {
            k.validate(&mut errs);
        }
        if let Some(m) = &self.mqtt {
            m.validate(&mut errs);
        }
        if let Some(n) = &self.notifier {
            n.validate(&mut errs);
        }
        if let Some(v) = &self.vision {
            v.validate(&mut errs);
        }
        self.gallery.validate(&mut errs);
        self.gbds.validate(&mut errs);
        if let Some(a) = &self.api {
            a.validate(&mut errs);
            if self.vision.is_none() {
                errs.push(
                    "api: transactions need the face pipeline: add a [vision] section".into(),
                );
            }
            if !cfg!(feature = "vision") {
                errs.push("api: this build has no face pipeline (cargo feature `vision`)".into());
            }
        }
        if let Some(e) = &self.ekyc {
            e.validate(&mut errs);
            if self.vision.is_none() {
                errs.push(
                    "ekyc: the services need the face pipeline: add a [vision] section".into(),
                );
            }
            if !cfg!(all(feature = "vision", feature = "kafka")) {
                errs.push(
                    "ekyc: this camgate was built without the `vision` and `kafka` features the services need"
                        .into(),
                );
            }
        }
        let mut names = HashSet::new();
        for (i, c) in self.cameras.iter().enumerate() {
            if !c.name.is_empty() && !names.insert(c.name.as_str()) {
                errs.push(format!(
                    "cameras[{i}] ({}).name: duplicate camera name",
                    c.name
                ));
            }
            c.validate(i, &mut errs);
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errs))
        }
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
    use crate::net::tls::TlsConfig;

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
    fn gateway_id_falls_back_to_the_host_name() {
        let with = |g: Option<&str>| {
            Config {
                gateway_id: g.map(str::to_owned),
                ..Config::default()
            }
            .gateway_id()
        };
        assert_eq!(with(Some("gw-1")), "gw-1");
        assert!(!with(None).is_empty());
        assert_eq!(with(Some("")), with(None));
    }

    #[test]
    fn host_of_address() {
        let mut c = CameraConfig::new("a", "10.0.0.2:10021", "x", "y", TlsConfig::default());
        assert_eq!(c.host(), "10.0.0.2");
        c.address = "[::1]:10021".into();
        assert_eq!(c.host(), "::1");
    }
}
