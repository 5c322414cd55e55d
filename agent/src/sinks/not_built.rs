//! Config sections of sinks left out of this build (cargo features `kafka`, `mqtt`). The section
//! still parses, so that `camgate check-config` names the missing feature instead of calling the
//! key unknown, and validation refuses it: a config asking for forwarding never runs without it.

use serde::{Deserialize, Serialize};

macro_rules! not_built {
    ($name:ident, $section:literal) => {
        #[doc = concat!("`[", $section, "]` in a build without the `", $section, "` feature.")]
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(toml::Table);

        impl $name {
            pub fn validate(&self, errs: &mut Vec<String>) {
                errs.push(
                    concat!(
                        $section,
                        ": this camgate was built without the `",
                        $section,
                        "` feature; remove the section or use a build with it"
                    )
                    .into(),
                );
            }
        }
    };
}

#[cfg(not(feature = "kafka"))]
not_built!(KafkaConfig, "kafka");
#[cfg(not(feature = "mqtt"))]
not_built!(MqttConfig, "mqtt");

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn a_section_of_a_sink_left_out_of_the_build_is_refused_by_name() {
        let cfg = Config::from_toml(
            "[kafka]\nbrokers = \"127.0.0.1:9092\"\n[mqtt]\nhost = \"127.0.0.1\"\n",
        )
        .expect("the sections still parse");
        let err = cfg.validate().expect_err("refused").to_string();
        for (section, built) in [
            ("kafka", cfg!(feature = "kafka")),
            ("mqtt", cfg!(feature = "mqtt")),
        ] {
            let named = err.contains(&format!("built without the `{section}` feature"));
            assert_eq!(named, !built, "{section}: {err}");
        }
    }
}
