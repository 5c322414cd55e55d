//! Logs go to journald (structured fields: camera, sn, event_id, ...) when the journal socket
//! is there, else to stderr. `RUST_LOG` overrides the level.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Journald,
    Stderr,
}

/// Installs the global subscriber; returns where logs go. `default_level` applies without RUST_LOG.
pub fn init(default_level: &str, prefer_stderr: bool) -> Target {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    if !prefer_stderr && std::path::Path::new(JOURNAL_SOCKET).exists() {
        // tracing-journald fails at start-up when the socket is missing or refuses; fall back.
        if let Ok(layer) = tracing_journald::layer() {
            // No "F_" prefix: operators filter with `journalctl CAMERA=door-1`.
            let layer = layer
                .with_syslog_identifier("camgate".into())
                .with_field_prefix(None);
            if tracing_subscriber::registry()
                .with(filter)
                .with(layer)
                .try_init()
                .is_ok()
            {
                return Target::Journald;
            }
            return Target::Stderr;
        }
    }
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init();
    Target::Stderr
}
