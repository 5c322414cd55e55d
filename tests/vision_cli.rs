//! `camgate face detect|embed|compare` as a user runs them: the real binary, the committed models
//! and photos, JSON on stdout, one clear line on stderr when an input is bad.
#![cfg(feature = "vision")]

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::{Command, Output};

use base64::Engine as _;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_camgate");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn photo(name: &str) -> PathBuf {
    root().join("tests/fixtures/faces").join(name)
}

/// `camgate face <args> --models <repo>/models`, run from a directory without `models/` so the
/// default lookup cannot be what makes it pass.
fn face(args: &[&str], files: &[PathBuf]) -> Output {
    let cwd = tempfile::tempdir().unwrap();
    Command::new(BIN)
        .current_dir(cwd.path())
        .env_remove("CAMGATE_MODELS")
        .arg("face")
        .args(args)
        .arg("--models")
        .arg(root().join("models"))
        .args(files)
        .output()
        .unwrap()
}

fn stdout_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn detect_reports_faces_per_image_and_a_bad_file_in_its_own_entry() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jpg");
    let truncated = dir.path().join("truncated.jpg");
    std::fs::write(
        &truncated,
        &std::fs::read(photo("obama2.jpg")).unwrap()[..600],
    )
    .unwrap();
    // A Latin-1 name, not valid UTF-8: still one entry of valid JSON, not cut-short output.
    let latin1 = dir.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9.jpg"));
    std::fs::write(&latin1, b"not an image").unwrap();
    let files = [
        photo("obama.jpg"),
        missing,
        truncated,
        photo("group3.jpg"),
        latin1,
    ];
    let v = stdout_json(&face(&["detect"], &files));
    let entries = v.as_array().unwrap();
    assert_eq!(entries.len(), 5, "{v}");

    // Face counts as in tests/fixtures/vision/reference.json (the onnxruntime reference).
    for (entry, name, n) in [
        (&entries[0], "obama.jpg", 2),
        (&entries[3], "group3.jpg", 3),
    ] {
        assert!(entry["image"].as_str().unwrap().ends_with(name), "{entry}");
        let faces = entry["faces"].as_array().unwrap();
        assert_eq!(faces.len(), n, "{name}: {entry}");
        for f in faces {
            let b: Vec<f64> = f["bbox"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            assert!(
                b[2] > b[0] + 20.0 && b[3] > b[1] + 20.0,
                "{name}: box {b:?}"
            );
            assert_eq!(f["landmarks"].as_array().unwrap().len(), 5);
            assert!(f["score"].as_f64().unwrap() > 0.7);
            assert!(
                f["quality"].is_object() && f.get("embedding").is_none(),
                "{f}"
            );
        }
        assert!(entry["timings_ms"]["total_ms"].as_f64().unwrap() > 0.0);
    }

    let err = entries[1]["error"].as_str().unwrap();
    assert!(
        err.contains("missing.jpg") && err.contains("No such file"),
        "{err}"
    );
    assert!(entries[1].get("faces").is_none());
    let err = entries[2]["error"].as_str().unwrap();
    assert!(
        !err.is_empty() && entries[2].get("faces").is_none(),
        "{}",
        entries[2]
    );
    assert!(
        entries[4]["image"].as_str().unwrap().contains("caf"),
        "{}",
        entries[4]
    );
    assert!(
        entries[4]["error"].as_str().unwrap().contains("decode"),
        "{}",
        entries[4]
    );
}

#[test]
fn embed_json_and_base64_carry_the_same_unit_vector() {
    let json = stdout_json(&face(
        &["embed", "--format", "json"],
        &[photo("obama2.jpg")],
    ));
    let f = &json["faces"][0];
    assert_eq!(
        json["faces"].as_array().unwrap().len(),
        1,
        "largest face only: {json}"
    );
    let dim = f["dim"].as_u64().unwrap() as usize;
    assert_eq!(dim, 192, "MobileFaceNet's output size");
    let from_json: Vec<f32> = f["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(from_json.len(), dim);
    let norm: f32 = from_json.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "L2 norm {norm}");

    let out = face(&["embed", "--format", "base64"], &[photo("obama2.jpg")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim_end())
        .unwrap();
    assert_eq!(bytes.len(), dim * 4);
    let from_b64: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    // Same engine, same photo, same thread count: the same bits.
    assert_eq!(from_b64, from_json);

    let all = stdout_json(&face(&["embed", "--all"], &[photo("group3.jpg")]));
    assert_eq!(all["faces"].as_array().unwrap().len(), 3, "{all}");
}

#[test]
fn compare_decides_at_the_threshold_and_prints_it_as_given() {
    let v = stdout_json(&face(
        &["compare"],
        &[photo("obama.jpg"), photo("obama2.jpg")],
    ));
    assert_eq!(v["same_person"], true, "{v}");
    assert!(v["similarity"].as_f64().unwrap() > 0.7, "{v}");
    // The text, not only the value: 0.52, not 0.5199999809265137.
    let out = face(
        &["compare", "--threshold", "0.3"],
        &[photo("obama2.jpg"), photo("biden.jpg")],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("\"threshold\":0.3,"), "{text}");
    let v = stdout_json(&out);
    assert_eq!(v["same_person"], false, "{v}");
    assert!(v["similarity"].as_f64().unwrap() < 0.3, "{v}");
    let out = face(&["compare"], &[photo("obama2.jpg"), photo("biden.jpg")]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"threshold\":0.52,"));
}

#[test]
fn compare_with_a_missing_file_fails_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nobody.jpg");
    let out = face(&["compare"], &[photo("obama.jpg"), missing]);
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("camgate: ") && err.contains("nobody.jpg"),
        "{err}"
    );
    // The OS reason once, not once per layer of the error chain.
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
