//! `camgate gallery ...` as an operator runs it: the real binary on the repository's photos, a
//! config file, JSON on stdout, exit codes; a damaged log named by `check-config` and repaired.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_camgate");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn photo(name: &str) -> PathBuf {
    root().join("tests/fixtures/faces").join(name)
}

fn config(dir: &Path) -> PathBuf {
    let text = format!(
        "[outbox]\ndir = \"{d}/outbox\"\n[sinks.jsonl]\npath = \"{d}/events.jsonl\"\n[health]\nfile = \"{d}/health.json\"\n[vision]\nmodels_dir = \"{m}\"\n[gallery]\ndir = \"{d}/gallery\"\n",
        d = dir.display(),
        m = root().join("models").display()
    );
    let path = dir.join("camgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn gallery(cfg: &Path, args: &[&str], files: &[PathBuf]) -> Output {
    Command::new(BIN)
        .arg("gallery")
        .arg(args[0])
        .arg("--config")
        .arg(cfg)
        .args(&args[1..])
        .args(files)
        .output()
        .unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn enroll_list_show_search_delete() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let not_an_image = dir.path().join("notes.jpg");
    std::fs::write(&not_an_image, b"not a picture").unwrap();
    // One usable photo, one that is not an image: the good one still counts.
    let out = json(&gallery(
        &cfg,
        &["enroll", "--key", "obama", "--attr", "dept=state"],
        &[photo("obama.jpg"), not_an_image.clone()],
    ));
    assert_eq!(out["templates_added"], 1);
    assert_eq!(out["created"], true);
    assert_eq!(out["images"][1]["ok"], false);
    let pguid = out["pguid"].as_str().unwrap().to_string();
    assert_eq!(pguid.len(), 36, "a UUID: {pguid}");
    // Nothing usable at all: a clear error, exit 1, nothing enrolled.
    let bad = gallery(&cfg, &["enroll", "--key", "nobody"], &[not_an_image]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no usable face"));

    let list = json(&gallery(&cfg, &["list"], &[]));
    assert_eq!(list.as_array().unwrap().len(), 1);
    let show = json(&gallery(&cfg, &["show", "obama"], &[]));
    assert_eq!(show["attrs"]["dept"], "state");
    assert_eq!(show["templates"][0]["dim"], 192);
    assert!(show["templates"][0]["crop"]
        .as_str()
        .unwrap()
        .starts_with("crops/"));

    let hit = json(&gallery(&cfg, &["search"], &[photo("obama2.jpg")]));
    assert_eq!(hit["identity"]["key"], "obama", "{hit}");
    assert_eq!(hit["identity"]["pguid"], pguid.as_str());
    let miss = json(&gallery(&cfg, &["search"], &[photo("biden.jpg")]));
    assert!(miss["identity"].is_null(), "{miss}");
    let one = json(&gallery(
        &cfg,
        &["search", "--key", "obama"],
        &[photo("biden.jpg")],
    ));
    assert_eq!(one["match"], false, "{one}");

    json(&gallery(&cfg, &["delete", "obama"], &[]));
    assert_eq!(json(&gallery(&cfg, &["list"], &[])), serde_json::json!([]));
    assert!(!gallery(&cfg, &["show", "obama"], &[]).status.success());
}

#[test]
fn a_damaged_gallery_is_named_by_check_config_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    json(&gallery(
        &cfg,
        &["enroll", "--key", "a"],
        &[photo("obama.jpg")],
    ));
    json(&gallery(
        &cfg,
        &["enroll", "--key", "b"],
        &[photo("biden.jpg")],
    ));
    let log = dir.path().join("gallery/gallery.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[1] = lines[1].replacen("\"a\"", "\"x\"", 1);
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();

    let check = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success());
    assert!(
        err.contains("gallery.log") && err.contains("record 2"),
        "{err}"
    );
    assert!(err.contains("camgate gallery repair"), "{err}");

    // The daemon refuses to start rather than run without the people it can no longer read.
    let run = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{err}");
    assert!(
        err.contains("gallery.log") && err.contains("record 2"),
        "{err}"
    );

    let r = json(&gallery(&cfg, &["repair"], &[]));
    assert_eq!(r["dropped"].as_array().unwrap().len(), 1, "{r}");
    let list = json(&gallery(&cfg, &["list"], &[]));
    let keys: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["b"]);
    assert!(Path::new(r["copy"].as_str().unwrap()).exists());
}
