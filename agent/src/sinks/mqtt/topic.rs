//! Topic names. Camera names and event types come from configuration and from cameras, so they
//! may hold characters that MQTT gives a meaning to; each becomes exactly one topic level.

/// Makes `s` one safe topic level: `/` (level separator), `+` and `#` (wildcards, forbidden in
/// publish topics), NUL and other control characters become `_`; an empty string becomes `_`.
/// A leading `$` (reserved for broker topics such as `$SYS`) also becomes `_`. Distinct names can
/// map to the same level (`door/1` and `door_1`); the payload keeps the real name.
pub fn level(s: &str) -> String {
    if s.is_empty() {
        return "_".to_owned();
    }
    s.chars()
        .enumerate()
        .map(|(i, c)| match c {
            '/' | '+' | '#' => '_',
            '$' if i == 0 => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect()
}

/// Topics of one gateway.
#[derive(Debug, Clone)]
pub struct Topics {
    /// `<prefix>/<gateway>/`
    base: String,
}

impl Topics {
    /// `prefix` may span several levels (`site/camgate`); it is checked by config validation.
    pub fn new(prefix: &str, gateway: &str) -> Self {
        Self {
            base: format!("{}/{}/", prefix.trim_matches('/'), level(gateway)),
        }
    }

    /// `<prefix>/<gateway>/events/<camera>/<event_type>`
    pub fn event(&self, camera: &str, event_type: &str) -> String {
        format!(
            "{}events/{}/{}",
            self.base,
            level(camera),
            level(event_type)
        )
    }

    /// `<prefix>/<gateway>/faces/<camera>`: every face result of the camera.
    pub fn faces(&self, camera: &str) -> String {
        format!("{}faces/{}", self.base, level(camera))
    }

    /// `<prefix>/<gateway>/matches/<key>`: each result in which the person `key` was identified.
    pub fn matches(&self, key: &str) -> String {
        format!("{}matches/{}", self.base, level(key))
    }

    /// `<prefix>/<gateway>/status`, retained `online` / `offline`.
    pub fn status(&self) -> String {
        format!("{}status", self.base)
    }
}

/// Whether `p` can serve as a topic prefix as given (no wildcards, no empty levels).
pub fn valid_prefix(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('$')
        && p.split('/')
            .all(|l| !l.is_empty() && !l.contains(['+', '#']) && !l.chars().any(char::is_control))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_sanitised() {
        assert_eq!(level("door-1"), "door-1");
        assert_eq!(level("door/1"), "door_1");
        assert_eq!(level("a+b#c"), "a_b_c");
        assert_eq!(level(""), "_");
        assert_eq!(level("nul\0x"), "nul_x");
        assert_eq!(level("line\nbreak"), "line_break");
        assert_eq!(level("$SYS"), "_SYS");
        assert_eq!(level("a$b"), "a$b");
        assert_eq!(
            level("Eingang Süd"),
            "Eingang Süd",
            "spaces and UTF-8 are valid in topics"
        );
    }

    #[test]
    fn topics_have_fixed_levels() {
        let t = Topics::new("camgate", "gw/1");
        assert_eq!(
            t.event("door/1", "face_recog_event"),
            "camgate/gw_1/events/door_1/face_recog_event"
        );
        assert_eq!(t.event("", "#"), "camgate/gw_1/events/_/_");
        assert_eq!(t.status(), "camgate/gw_1/status");
        assert_eq!(t.faces("door/1"), "camgate/gw_1/faces/door_1");
        assert_eq!(t.matches("alice#"), "camgate/gw_1/matches/alice_");
        assert_eq!(Topics::new("site/cg/", "g").status(), "site/cg/g/status");
        for topic in [t.event("+/#", "\0"), t.status()] {
            assert_eq!(
                topic.split('/').count(),
                if topic.ends_with("status") { 3 } else { 5 }
            );
            assert!(!topic.contains(['+', '#', '\0']));
        }
    }

    #[test]
    fn prefixes() {
        assert!(valid_prefix("camgate"));
        assert!(valid_prefix("site/camgate"));
        for bad in ["", "/x", "x/", "a//b", "a/+", "#", "$SYS"] {
            assert!(!valid_prefix(bad), "{bad:?}");
        }
    }
}
