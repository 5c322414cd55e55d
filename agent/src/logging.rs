//! Logs go to journald (structured fields: camera, sn, event_id, ...) when the journal socket
//! is there, else to stderr. `RUST_LOG` overrides the level: `warn`, `info,camgate::sinks=debug`
//! (levels per target; tracing-subscriber's `Targets`, which needs no regex engine in the binary).

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Journald,
    Stderr,
}

/// `RUST_LOG` when it parses, else `default_level` (which falls back to `info` if it does not).
fn filter_from(rust_log: Option<&str>, default_level: &str) -> Targets {
    rust_log
        .and_then(|s| s.parse().ok())
        .or_else(|| default_level.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO))
}

/// Installs the global subscriber; returns where logs go. `default_level` applies without RUST_LOG.
pub fn init(default_level: &str, prefer_stderr: bool) -> Target {
    let filter = filter_from(std::env::var("RUST_LOG").ok().as_deref(), default_level);
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

#[cfg(test)]
mod tests {
    use super::filter_from;
    use tracing::Level;

    #[test]
    fn rust_log_wins_when_it_parses_else_the_default_level() {
        let f = filter_from(Some("warn,camgate::sinks=debug"), "info");
        assert!(f.would_enable("camgate::sinks::kafka", &Level::DEBUG));
        assert!(!f.would_enable("camgate::daemon", &Level::INFO));
        let f = filter_from(Some("not a=level=filter"), "debug");
        assert!(f.would_enable("camgate::daemon", &Level::DEBUG));
        let f = filter_from(None, "camgate=notalevel");
        assert!(f.would_enable("x", &Level::INFO) && !f.would_enable("x", &Level::DEBUG));
    }
}
