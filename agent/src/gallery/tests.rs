//! The gallery on a real directory: durability, torn and damaged logs, two processes' handles,
//! clustering of strangers, expiry and eviction with a manual clock, compaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::log::LOG_FILE;
use super::*;
use crate::clock::{ManualClock, SharedClock};

const T0: u64 = 1_796_280_000_000;

fn unit(seed: u32, dim: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..dim)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761) ^ seed.wrapping_mul(40503)) % 1000) as f32 - 500.0
        })
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

/// `base` moved a little towards `other` (still the same person/stranger).
fn near(base: &[f32], other: &[f32], t: f32) -> Vec<f32> {
    let v: Vec<f32> = base
        .iter()
        .zip(other)
        .map(|(a, b)| a * (1.0 - t) + b * t)
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

fn tmpl(e: Vec<f32>) -> NewTemplate {
    NewTemplate {
        model: MOBILEFACENET.into(),
        embedding: e,
        quality: None,
        crop: Some(vec![7; 112 * 112 * 3]),
    }
}

fn setup() -> (tempfile::TempDir, GalleryConfig, Arc<ManualClock>) {
    let d = tempfile::tempdir().unwrap();
    let cfg = GalleryConfig {
        dir: d.path().join("gallery"),
        ..GalleryConfig::default()
    };
    (d, cfg, ManualClock::new(T0))
}

fn open(cfg: &GalleryConfig, clock: &Arc<ManualClock>) -> Gallery {
    Gallery::open(cfg, clock.clone() as SharedClock).unwrap()
}

#[test]
fn enrolled_people_survive_a_reopen_and_are_identified() {
    let (_d, cfg, clock) = setup();
    let (alice, bob) = (unit(1, 128), unit(2, 128));
    let mut g = open(&cfg, &clock);
    let attrs = BTreeMap::from([("dept".to_string(), "r&d".to_string())]);
    let e = g
        .enroll("alice", Some(attrs), vec![tmpl(alice.clone())])
        .unwrap();
    assert!(e.created && e.templates == 1);
    g.enroll("bob", None, vec![tmpl(bob.clone())]).unwrap();
    let again = g
        .enroll("alice", None, vec![tmpl(near(&alice, &bob, 0.1))])
        .unwrap();
    assert_eq!(
        (again.pguid.as_str(), again.created, again.templates),
        (e.pguid.as_str(), false, 2)
    );
    drop(g);

    let mut g = open(&cfg, &clock);
    let p = g.person("alice").unwrap();
    assert_eq!((p.templates.len(), p.attr("dept").unwrap()), (2, "r&d"));
    let crop = p.templates[0].data.crop.clone().unwrap();
    assert_eq!(g.crop(&crop).unwrap().len(), 112 * 112 * 3);
    let (d, ranked) = g.identify(&near(&alice, &unit(9, 128), 0.2), MOBILEFACENET);
    assert!(
        matches!(d, Decision::Match(ref c) if c.key == "alice"),
        "{d:?} {ranked:?}"
    );
    let (d, _) = g.identify(&unit(3, 128), MOBILEFACENET);
    assert!(
        matches!(d, Decision::Unknown(_)),
        "a stranger is nobody: {d:?}"
    );
    // Another embedding space is never compared.
    assert!(g.search(&alice, "other-net", 5).is_empty());
    let all = g.search(&alice, MOBILEFACENET, usize::MAX);
    assert_eq!(all.len(), 2);
    assert!(all[0].key == "alice" && all[0].score > all[1].score);
    assert_eq!(g.search(&alice, MOBILEFACENET, 1).len(), 1);
    g.delete("alice").unwrap();
    assert!(g.person("alice").is_none());
    assert!(open(&cfg, &clock).person("alice").is_none());
}

#[test]
fn a_torn_last_line_is_dropped_and_cut_by_the_next_write() {
    let (_d, cfg, clock) = setup();
    let mut g = open(&cfg, &clock);
    g.enroll("alice", None, vec![tmpl(unit(1, 64))]).unwrap();
    drop(g);
    let path = cfg.dir.join(LOG_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let whole = bytes.len();
    // A crash in the middle of the next append.
    bytes.extend_from_slice(b"0badc0de {\"op\":\"person\",\"pgu");
    std::fs::write(&path, &bytes).unwrap();
    let mut g = open(&cfg, &clock);
    assert_eq!(g.persons().count(), 1);
    g.enroll("bob", None, vec![tmpl(unit(2, 64))]).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("0badc0de"), "the torn tail was cut");
    assert!(text.len() > whole);
    assert_eq!(open(&cfg, &clock).persons().count(), 2);
}

#[test]
fn a_damaged_record_in_the_middle_refuses_to_load_naming_it() {
    let (_d, cfg, clock) = setup();
    let mut g = open(&cfg, &clock);
    g.enroll("alice", None, vec![tmpl(unit(1, 64))]).unwrap();
    g.enroll("bob", None, vec![tmpl(unit(2, 64))]).unwrap();
    drop(g);
    let path = cfg.dir.join(LOG_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    let damaged = text.replacen("\"alice\"", "\"alicf\"", 1);
    std::fs::write(&path, damaged).unwrap();
    let err = Gallery::open(&cfg, clock.clone() as SharedClock).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, GalleryError::Corrupt { line: 2, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("gallery.log") && msg.contains("record 2") && msg.contains("CRC"),
        "{msg}"
    );
    // The documented recovery: drop the damaged record, keep a copy of the log as it was.
    let r = log::repair(&cfg.dir, T0).unwrap();
    assert_eq!(r.dropped.len(), 1);
    assert_eq!(r.dropped[0].0, 2);
    assert!(r.copy.exists());
    let g = open(&cfg, &clock);
    let keys: Vec<&str> = g.persons().map(|p| &*p.key).collect();
    assert_eq!(keys, ["bob"], "alice's person record was the damaged one");
}

#[test]
fn a_newer_format_is_refused_and_unknown_operations_are_skipped() {
    let (_d, cfg, clock) = setup();
    open(&cfg, &clock)
        .enroll("alice", None, vec![tmpl(unit(1, 64))])
        .unwrap();
    let path = cfg.dir.join(LOG_FILE);
    // A later release's new operation, with a field this one does not know.
    let json = br#"{"op":"watchlist","pguid":"x","level":3}"#;
    let mut line = format!("{:08x} ", crc32fast::hash(json)).into_bytes();
    line.extend_from_slice(json);
    line.push(b'\n');
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&line);
    std::fs::write(&path, &bytes).unwrap();
    let g = open(&cfg, &clock);
    assert_eq!((g.persons().count(), g.skipped_ops), (1, 1));
    let text = String::from_utf8(bytes).unwrap();
    std::fs::write(&path, text.replacen("\"version\":1", "\"version\":2", 1)).unwrap();
    let msg = Gallery::open(&cfg, clock.clone() as SharedClock)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("newer camgate"), "{msg}");
}

/// The CLI and the daemon each hold a handle: each sees the other's writes.
#[test]
fn two_handles_see_each_others_writes() {
    let (_d, cfg, clock) = setup();
    let mut daemon = open(&cfg, &clock);
    let mut cli = open(&cfg, &clock);
    cli.enroll("alice", None, vec![tmpl(unit(1, 64))]).unwrap();
    assert!(daemon.person("alice").is_none());
    assert!(daemon.refresh().unwrap());
    assert!(daemon.person("alice").is_some());
    let u = daemon
        .file_unknown(tmpl(unit(5, 64)), Seen::default())
        .unwrap();
    // The CLI's next change applies the daemon's first, then its own.
    cli.enroll("bob", None, vec![tmpl(unit(2, 64))]).unwrap();
    assert!(cli.unknown(&u).is_some());
    cli.forget(&u).unwrap();
    daemon.refresh().unwrap();
    assert!(daemon.unknown(&u).is_none() && daemon.person("bob").is_some());
}

#[test]
fn the_same_stranger_is_one_entry_with_every_sighting() {
    let (_d, cfg, clock) = setup();
    let mut g = open(&cfg, &clock);
    let (stranger, other) = (unit(11, 128), unit(12, 128));
    let mut ids = Vec::new();
    for i in 0..10 {
        clock.advance_ms(1000);
        let seen = Seen {
            camera: "door-1".into(),
            sn: "SN".into(),
            event_id: i,
        };
        let probe = near(&stranger, &unit(100 + i as u32, 128), 0.15);
        ids.push(g.file_unknown(tmpl(probe), seen).unwrap());
    }
    assert!(ids.iter().all(|u| *u == ids[0]), "{ids:?}");
    let second = g.file_unknown(tmpl(other), Seen::default()).unwrap();
    assert_ne!(second, ids[0]);
    let u = g.unknown(&ids[0]).unwrap();
    assert_eq!((u.count, u.exemplars.len()), (10, state::MAX_EXEMPLARS));
    assert_eq!((u.first_ms, u.last_ms), (T0 + 1000, T0 + 10_000));
    assert_eq!(u.sightings.back().unwrap().1.event_id, 9);
    let reopened = open(&cfg, &clock);
    assert_eq!(reopened.unknown(&ids[0]).unwrap(), u);
}

#[test]
fn strangers_expire_and_the_oldest_makes_room() {
    let (_d, mut cfg, clock) = setup();
    cfg.max_unknowns = 3;
    cfg.unknown_ttl_hours = 1;
    let mut g = open(&cfg, &clock);
    let mut ids = Vec::new();
    for i in 0..4 {
        clock.advance_ms(1000);
        ids.push(
            g.file_unknown(tmpl(unit(20 + i, 128)), Seen::default())
                .unwrap(),
        );
    }
    assert_eq!(g.unknowns().count(), 3);
    assert!(
        g.unknown(&ids[0]).is_none(),
        "the one seen longest ago went"
    );
    clock.advance_ms(3_600_001);
    // Filing the next one forgets the expired ones.
    let fresh = g
        .file_unknown(tmpl(unit(30, 128)), Seen::default())
        .unwrap();
    let left: Vec<&str> = g.unknowns().map(|u| u.uguid.as_str()).collect();
    assert_eq!(left, [fresh.as_str()]);
}

#[test]
fn compaction_keeps_the_state_and_other_handles_follow() {
    let (_d, cfg, clock) = setup();
    let mut g = open(&cfg, &clock);
    let mut other = open(&cfg, &clock);
    g.enroll("alice", None, vec![tmpl(unit(1, 64))]).unwrap();
    let u = g.file_unknown(tmpl(unit(5, 64)), Seen::default()).unwrap();
    for i in 0..1200 {
        g.file_unknown(
            tmpl(near(&unit(5, 64), &unit(6, 64), 0.01)),
            Seen {
                event_id: i,
                ..Seen::default()
            },
        )
        .unwrap();
    }
    let before = g.unknown(&u).unwrap().clone();
    assert!(g.maybe_compact().unwrap());
    let lines = std::fs::read_to_string(cfg.dir.join(LOG_FILE))
        .unwrap()
        .lines()
        .count();
    assert!(lines < 50, "{lines} lines after compaction");
    let again = open(&cfg, &clock);
    assert_eq!(again.unknown(&u).unwrap().count, before.count);
    assert_eq!(again.unknown(&u).unwrap().last_ms, before.last_ms);
    assert!(again.person("alice").is_some());
    other.refresh().unwrap();
    assert_eq!(other.unknown(&u).unwrap().count, 1201);
}

/// The golden log of format version 1 (tests/fixtures/gallery): what an older release left on a
/// gateway must read to the same state forever.
#[test]
fn the_v1_golden_log_reads_as_it_always_has() {
    let (_d, cfg, clock) = setup();
    std::fs::create_dir_all(&cfg.dir).unwrap();
    let golden = include_bytes!("../../../tests/fixtures/gallery/v1.log");
    std::fs::write(cfg.dir.join(LOG_FILE), golden).unwrap();
    let mut g = open(&cfg, &clock);
    let keys: Vec<&str> = g.persons().map(|p| &*p.key).collect();
    assert_eq!(keys, ["alice", "bob"], "carol was deleted");
    let alice = g.person("alice").unwrap();
    assert_eq!(&*alice.pguid, "11111111-1111-4111-8111-111111111111");
    assert_eq!(alice.attr("dept"), Some("r&d"));
    assert_eq!(alice.templates[0].data.embedding[..], [0.6, 0.8, 0.0, 0.0]);
    assert_eq!(alice.negatives.len(), 1);
    let u = g.unknown("33333333-3333-4333-8333-333333333333").unwrap();
    assert_eq!(
        (u.count, u.first_ms, u.last_ms),
        (5, 1796280000005, 1796280000007)
    );
    assert!(g.unknown("44444444-4444-4444-8444-444444444444").is_none());
    let (d, ranked) = g.identify(&[0.6, 0.8, 0.0, 0.0], MOBILEFACENET);
    assert!(
        matches!(d, Decision::Match(ref c) if c.key == "alice"),
        "{ranked:?}"
    );
    // A probe like alice's negative example is pushed off her.
    let (d, _) = g.identify(&[0.0, 1.0, 0.0, 0.0], MOBILEFACENET);
    assert!(matches!(d, Decision::Unknown(_)), "{d:?}");
}

/// Appends read in pieces (another process mid-write): a line is applied once, when whole.
#[test]
fn split_reads_apply_each_line_once_when_complete() {
    let (_d, cfg, clock) = setup();
    let mut reader = open(&cfg, &clock);
    let line = log::encode(&ops::Op::Person {
        pguid: "p".into(),
        key: "k".into(),
        attrs: BTreeMap::new(),
        at_ms: 1,
    });
    let path = cfg.dir.join(LOG_FILE);
    for cut in [1, 9, line.len() / 2, line.len() - 1] {
        let before = std::fs::read(&path).unwrap();
        let mut partial = before.clone();
        partial.extend_from_slice(&line[..cut]);
        std::fs::write(&path, &partial).unwrap();
        assert!(
            !reader.refresh().unwrap(),
            "cut at {cut}: nothing whole yet"
        );
        std::fs::write(&path, &before).unwrap();
    }
    let mut whole = std::fs::read(&path).unwrap();
    whole.extend_from_slice(&line[..10]);
    std::fs::write(&path, &whole).unwrap();
    reader.refresh().unwrap();
    whole.extend_from_slice(&line[10..]);
    std::fs::write(&path, &whole).unwrap();
    assert!(reader.refresh().unwrap());
    assert!(reader.person("k").is_some());
    assert!(!reader.refresh().unwrap(), "applied once");
}

#[test]
fn non_finite_embeddings_are_refused() {
    let (_d, cfg, clock) = setup();
    let mut g = open(&cfg, &clock);
    let mut e = unit(1, 8);
    e[3] = f32::NAN;
    assert!(matches!(
        g.enroll("x", None, vec![tmpl(e)]),
        Err(GalleryError::Invalid(_))
    ));
    assert!(g.person("x").is_none());
    let s = log::scan(b"{\"format\":\"camgate-gallery\",\"version\":1}\n", false);
    assert_eq!((s.lines, s.ops.len(), s.torn_tail), (1, 0, false));
}

/// After a model change, kept crops are embedded again; nothing is re-enrolled, nothing twice.
#[test]
fn reembed_embeds_kept_crops_once() {
    let (_d, cfg, clock) = setup();
    let mut g = open(&cfg, &clock);
    let mut old = tmpl(unit(1, 16));
    old.model = "old-net".into();
    g.enroll("alice", None, vec![old]).unwrap();
    let mut calls = 0;
    let (added, no_crop) = g
        .reembed(MOBILEFACENET, |crop| {
            calls += 1;
            assert_eq!(crop.len(), 112 * 112 * 3);
            Ok(unit(2, 16))
        })
        .unwrap();
    assert_eq!((added, no_crop, calls), (1, 0, 1));
    let again = g.reembed(MOBILEFACENET, |_| Ok(unit(3, 16))).unwrap();
    assert_eq!(again, (0, 0), "already re-embedded");
    let (d, _) = g.identify(&unit(2, 16), MOBILEFACENET);
    assert!(matches!(d, Decision::Match(ref c) if c.key == "alice"));
}

/// Strangers keep one crop each, and a forgotten stranger's crop goes with it: the gallery's
/// disk use is bounded by `max_unknowns`.
#[test]
fn crops_of_strangers_are_one_each_and_go_with_them() {
    let (_d, mut cfg, clock) = setup();
    cfg.max_unknowns = 2;
    let mut g = open(&cfg, &clock);
    let crops =
        |cfg: &GalleryConfig| std::fs::read_dir(cfg.dir.join("crops")).map_or(0, |d| d.count());
    let base = unit(40, 64);
    for i in 0..4 {
        g.file_unknown(tmpl(near(&base, &unit(50 + i, 64), 0.1)), Seen::default())
            .unwrap();
    }
    assert_eq!(g.unknowns().count(), 1);
    assert_eq!(crops(&cfg), 1, "one crop for one stranger seen four times");
    for i in 0..5 {
        clock.advance_ms(1000);
        g.file_unknown(tmpl(unit(60 + i, 64)), Seen::default())
            .unwrap();
    }
    assert_eq!(g.unknowns().count(), 2);
    assert_eq!(crops(&cfg), 2, "evicted strangers' crops are deleted");
}

/// A log of many read chunks (the loader streams it): every person loads, and a damaged record
/// far into the file, wherever the chunks split it, is named exactly.
#[test]
fn a_log_longer_than_a_read_chunk_loads_whole_and_damage_is_found_anywhere() {
    let (_d, cfg, clock) = setup();
    let mut g = open(&cfg, &clock);
    for i in 0..600u32 {
        let mut t = tmpl(unit(i, 512));
        t.crop = None;
        g.enroll(&format!("p{i}"), None, vec![t]).unwrap();
    }
    drop(g);
    let path = cfg.dir.join(LOG_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.len() > 4 * 256 * 1024, "{} bytes", text.len());
    let g = open(&cfg, &clock);
    assert_eq!(g.persons().count(), 600);
    // Packed into shared blocks on the way in: every embedding is still its own.
    for i in [0u32, 1, 300, 599] {
        let p = g.person(&format!("p{i}")).unwrap();
        assert_eq!(p.templates.len(), 1);
        assert_eq!(p.templates[0].data.embedding[..], unit(i, 512)[..]);
    }
    drop(g);
    // Damage the person record of p450 (line 2 + 2*450: header, then person + template each).
    let damaged = text.replacen("\"p450\"", "\"p45x\"", 1);
    std::fs::write(&path, damaged).unwrap();
    let err = Gallery::open(&cfg, clock.clone() as SharedClock).unwrap_err();
    assert!(
        matches!(err, GalleryError::Corrupt { line: 902, .. }),
        "{err}"
    );
}

/// A person record that renames (same pguid, new key): the old key no longer finds anyone.
#[test]
fn a_renamed_person_is_found_by_the_new_key_only() {
    let mut s = state::State::default();
    let person = |key: &str| ops::Op::Person {
        pguid: "g1".into(),
        key: key.into(),
        attrs: BTreeMap::new(),
        at_ms: 1,
    };
    s.apply(person("alice"));
    s.apply(person("alice2"));
    assert!(s.person_by_key("alice").is_none());
    assert_eq!(&*s.person_by_key("alice2").unwrap().pguid, "g1");
    assert_eq!(s.persons.len(), 1);
}

/// Every file and directory under `dir` with its owner.
fn owners(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        out.push((p.clone(), m.uid(), m.gid()));
        if m.is_dir() {
            out.extend(owners(&p));
        }
    }
    out
}

/// The daemon (systemd's dynamic user) owns its gallery; an operator runs the CLI as root beside
/// it. What root writes there (log, lock, crops, a compacted log, a repair's copy) must stay the
/// daemon's, or the daemon could no longer append to its own log. CI runs as root.
#[test]
fn files_written_as_root_belong_to_the_gallery_owner() {
    if !super::log::is_root() {
        eprintln!(
            "files_written_as_root_belong_to_the_gallery_owner: needs root (CI runs as root)"
        );
        return;
    }
    let (d, cfg, clock) = setup();
    let daemon = (61_234, 61_235);
    std::os::unix::fs::chown(d.path(), Some(daemon.0), Some(daemon.1)).unwrap();
    let mut g = open(&cfg, &clock);
    g.enroll("alice", None, vec![tmpl(unit(1, 64))]).unwrap();
    for i in 0..1200 {
        let seen = Seen {
            event_id: i,
            ..Seen::default()
        };
        g.file_unknown(tmpl(near(&unit(5, 64), &unit(6, 64), 0.01)), seen)
            .unwrap();
    }
    assert!(g.maybe_compact().unwrap());
    super::log::repair(&cfg.dir, T0).unwrap();
    let all = owners(d.path());
    assert!(all.len() >= 6, "{all:?}");
    for (path, uid, gid) in all {
        assert_eq!((uid, gid), daemon, "{}", path.display());
    }
}
