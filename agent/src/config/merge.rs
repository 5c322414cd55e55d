//! Merging drop-in tables into the main one (as Azure IoT Edge's config-common does).

/// Tables merge key by key, arrays are appended (a drop-in per camera adds a `[[cameras]]`),
/// any other value is replaced by the later file's.
pub fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (k, v) in overlay {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (Some(toml::Value::Array(b)), toml::Value::Array(o)) => b.extend(o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn merge_rules() {
        let mut a: toml::Table = "x = 1\n[t]\na = 1\nb = 2\n[[arr]]\nn = 1\n"
            .parse()
            .unwrap();
        let b: toml::Table = "x = 2\n[t]\nb = 3\n[[arr]]\nn = 2\n".parse().unwrap();
        super::merge(&mut a, b);
        assert_eq!(a["x"].as_integer(), Some(2));
        assert_eq!(a["t"]["a"].as_integer(), Some(1));
        assert_eq!(a["t"]["b"].as_integer(), Some(3));
        assert_eq!(a["arr"].as_array().unwrap().len(), 2);
    }
}
