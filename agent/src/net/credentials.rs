//! Secrets given as files (systemd credentials): a relative path is looked up in
//! `$CREDENTIALS_DIRECTORY`, trailing newlines are not part of the secret.

use std::path::{Path, PathBuf};

/// Where a credential file named in the configuration is.
pub fn credential_path(p: &Path) -> PathBuf {
    if p.is_relative() {
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            return PathBuf::from(dir).join(p);
        }
    }
    p.to_owned()
}

/// The secret in file `p` (`what` names the field in the error), without trailing newlines.
/// Whether an empty one is allowed is the caller's rule.
pub fn read_secret_file(p: &Path, what: &str) -> Result<String, String> {
    let path = credential_path(p);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_newlines_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "s3cret\r\n\n").unwrap();
        assert_eq!(read_secret_file(&f, "secret_file").unwrap(), "s3cret");
        std::fs::write(&f, "\n").unwrap();
        assert_eq!(read_secret_file(&f, "password_file").unwrap(), "");
        let e = read_secret_file(&dir.path().join("none"), "password_file").unwrap_err();
        assert!(e.starts_with("cannot read password_file"), "{e}");
    }
}
