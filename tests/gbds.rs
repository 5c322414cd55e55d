//! GBDS-style transactions through the real processor: the shipped models on the repo's photos,
//! a real gallery and outbox on disk, and the notifier POSTing to a real local HTTP endpoint that
//! answers 500, 204 and hangs before it takes them; every notification checked field by field
//! and in order, both in the outbox and as the endpoint received it.

#![cfg(feature = "vision")]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use camgate::gallery::{Gallery, GalleryConfig};
use camgate::gbds::run::{notice_keys, Gbds};
use camgate::gbds::service::{ServiceError, Submission, Transactions};
use camgate::gbds::GbdsConfig;
use camgate::notice::Notification;
use camgate::outbox::{Outbox, OutboxConfig};
use camgate::results::Stored;
use camgate::sinks::notifier::{self, EndpointConfig};
use camgate::sinks::SinkStatus;
use camgate::vision::{FaceEngine, VisionConfig, VisionPool};
use common::endpoint::{Endpoint, Reply};
use tokio_util::sync::CancellationToken;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn photo(name: &str) -> Vec<u8> {
    std::fs::read(root().join("tests/fixtures/faces").join(name)).unwrap()
}

struct Rig {
    gbds: Arc<Gbds>,
    outbox: Outbox,
    outbox_dir: PathBuf,
    endpoint: Endpoint,
    stop: CancellationToken,
    /// The processor and the notifier.
    task: tokio::task::JoinHandle<()>,
}

fn pool() -> VisionPool {
    let cfg = VisionConfig {
        models_dir: Some(root().join("models")),
        ..VisionConfig::default()
    };
    VisionPool::new(Arc::new(FaceEngine::new(cfg).unwrap()))
}

async fn rig(dir: &Path, pool: VisionPool, gcfg: GbdsConfig) -> Rig {
    let endpoint = Endpoint::start(
        &[Reply::Status(500), Reply::Status(204), Reply::Hang],
        Reply::Status(200),
    )
    .await;
    rig_on(dir, pool, gcfg, endpoint).await
}

/// A rig whose notifier POSTs to `endpoint` (kept across a restart).
async fn rig_on(dir: &Path, pool: VisionPool, gcfg: GbdsConfig, endpoint: Endpoint) -> Rig {
    let ocfg = OutboxConfig {
        dir: dir.join("outbox"),
        ..OutboxConfig::default()
    };
    let outbox = Outbox::open(&ocfg).await.unwrap();
    let stored = notice_keys(&Outbox::dump(&ocfg.dir).unwrap());
    let gallery = GalleryConfig {
        dir: dir.join("gallery"),
        ..GalleryConfig::default()
    };
    let gallery = Gallery::open(&gallery, camgate::clock::system()).unwrap();
    let gbds = Arc::new(
        Gbds::open(
            &gcfg,
            Arc::new(Mutex::new(gallery)),
            outbox.clone(),
            pool,
            camgate::clock::system(),
            stored,
        )
        .unwrap(),
    );
    let stop = CancellationToken::new();
    let site = EndpointConfig {
        name: Some("site".into()),
        timeout_ms: 300,
        retry_min_ms: 20,
        retry_max_ms: 60,
        ..EndpointConfig::new(&endpoint.url)
    };
    let sink = notifier::run(
        outbox.clone(),
        site,
        false,
        camgate::clock::system(),
        Arc::new(SinkStatus::default()),
        stop.clone(),
    );
    let (g, s) = (gbds.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let (processed, notified) = tokio::join!(g.run(s), sink);
        processed.unwrap();
        notified.unwrap();
    });
    Rig {
        gbds,
        outbox,
        outbox_dir: ocfg.dir,
        endpoint,
        stop,
        task,
    }
}

impl Rig {
    /// The outbox holds exactly `want`, in order, and the endpoint received exactly these
    /// bodies in this order (first arrivals; the re-POSTs after its 500, 204 and hang aside).
    async fn assert_notified(&self, want: &[Notification]) {
        assert_eq!(notices(&self.outbox_dir), want, "in the outbox");
        let t0 = Instant::now();
        loop {
            let got = first_arrivals(&self.endpoint);
            if got.len() >= want.len() || t0.elapsed() > Duration::from_secs(30) {
                assert_eq!(got, want, "as POSTed");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Each notification the endpoint received, once, in order of first arrival.
fn first_arrivals(ep: &Endpoint) -> Vec<Notification> {
    let mut keys: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for r in ep.seen() {
        if !keys.iter().any(|k| k == r.key()) {
            keys.push(r.key().to_owned());
            out.push(serde_json::from_str(&r.body).unwrap());
        }
    }
    out
}

fn gbds_config(dir: &Path) -> GbdsConfig {
    GbdsConfig {
        dir: dir.join("gbds"),
        ..GbdsConfig::default()
    }
}

/// Waits until `tguid` is in one of `want`; returns its state.
async fn settled(g: &Gbds, tguid: &str, want: &[&str]) -> serde_json::Value {
    for _ in 0..600 {
        let v = g.transaction(tguid).unwrap();
        if want.contains(&v["status"].as_str().unwrap()) && v.get("work").is_none() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{tguid} never reached {want:?}: {}",
        g.transaction(tguid).unwrap()
    );
}

fn notices(outbox: &Path) -> Vec<Notification> {
    Outbox::dump(outbox)
        .unwrap()
        .iter()
        .filter_map(|r| match Stored::parse(&r.data) {
            Ok(Stored::Notice(n)) => Some(n.notification),
            _ => None,
        })
        .collect()
}

fn n(op: &str, tguid: &str, status: &str) -> Notification {
    Notification {
        operation: op.into(),
        tguid: tguid.into(),
        status: status.into(),
        treatment: None,
        uguid: None,
    }
}

fn treated(tguid: &str, t: &str) -> Notification {
    Notification {
        treatment: Some(t.into()),
        ..n("TREAT_EXCEPTION", tguid, "OK")
    }
}

fn enroll(key: &str, img: &str) -> Submission {
    Submission::Enroll {
        key: key.into(),
        images: vec![photo(img)],
        attributes: [("dept".to_string(), key.to_string())].into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_and_treatment_path_notifies_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let r = rig(dir.path(), pool(), gbds_config(dir.path())).await;
    let g = &r.gbds;

    let a = g.submit(enroll("obama", "obama.jpg")).unwrap().tguid;
    settled(g, &a, &["ENROLLED"]).await;
    // The same face under another key: a biometric exception, merged on treatment.
    let b = g.submit(enroll("barack", "obama2.jpg")).unwrap().tguid;
    let v = settled(g, &b, &["EXCEPTION"]).await;
    assert_eq!(v["exception"]["matched"]["key"], "obama");
    assert_eq!(
        g.treat(&b, "INCORRECT_ENROLL").unwrap_err().code(),
        "conflict",
        "INCORRECT_ENROLL has no meaning for an enroll exception"
    );
    g.treat(&b, "MERGE_TRANSACTIONS").unwrap();
    assert!(matches!(
        g.treat(&b, "RECOLLECT"),
        Err(ServiceError::Conflict(_))
    ));
    settled(g, &b, &["ENROLLED"]).await;
    let p = g.person("obama").unwrap();
    assert_eq!(p["templates"], 2, "{p}");
    assert!(matches!(g.person("barack"), Err(ServiceError::NotFound(_))));

    // An update with someone else's face: an exception that says ENROLL; treated as different.
    let c = g
        .submit(Submission::Update {
            key: "obama".into(),
            images: vec![photo("biden.jpg")],
        })
        .unwrap()
        .tguid;
    let v = settled(g, &c, &["EXCEPTION"]).await;
    assert_eq!(v["exception"]["kind"], "UPDATE");
    g.treat(&c, "DIFFERENT_FINGERS").unwrap();
    settled(g, &c, &["FAILED"]).await;

    // Searches: 1:1 match, 1:N no match, 1:1 of a key nobody has, and a picture with no face.
    let s1 = g
        .submit(Submission::Search {
            key: Some("obama".into()),
            images: vec![photo("obama2.jpg")],
        })
        .unwrap()
        .tguid;
    let sn = g
        .submit(Submission::Search {
            key: None,
            images: vec![photo("biden.jpg")],
        })
        .unwrap()
        .tguid;
    let s0 = g
        .submit(Submission::Search {
            key: Some("nobody".into()),
            images: vec![photo("biden.jpg")],
        })
        .unwrap()
        .tguid;
    let bad = g
        .submit(Submission::Search {
            key: None,
            images: vec![b"\xff\xd8 not a jpeg".to_vec()],
        })
        .unwrap()
        .tguid;
    let v = settled(g, &s1, &["MATCH"]).await;
    assert_eq!(v["candidates"][0]["key"], "obama");
    settled(g, &sn, &["NOT_MATCH"]).await;
    settled(g, &s0, &["PERSON_NOT_FOUND"]).await;
    let v = settled(g, &bad, &["FAILED"]).await;
    assert!(
        v["reason"].as_str().unwrap().contains("no usable face"),
        "{v}"
    );

    r.assert_notified(&[
        n("ENROLL", &a, "ENROLLED"),
        n("ENROLL", &b, "EXCEPTION"),
        treated(&b, "MERGE_TRANSACTIONS"),
        n("ENROLL", &b, "ENROLLED"),
        n("ENROLL", &c, "EXCEPTION"),
        treated(&c, "DIFFERENT_FINGERS"),
        n("ENROLL", &c, "FAILED"),
        n("SEARCH", &s1, "MATCH"),
        n("SEARCH", &sn, "NOT_MATCH"),
        n("SEARCH", &s0, "PERSON_NOT_FOUND"),
        n("SEARCH", &bad, "FAILED"),
    ])
    .await;
    r.stop.cancel();
    r.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_face_below_the_bar_waits_for_review_and_work_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let strict = GbdsConfig {
        quality_min_face_px: 4000.0,
        ..gbds_config(dir.path())
    };
    let pool = pool();
    let r = rig(dir.path(), pool.clone(), strict.clone()).await;
    let a = r.gbds.submit(enroll("obama", "obama.jpg")).unwrap().tguid;
    let v = settled(&r.gbds, &a, &["PENDING"]).await;
    assert!(
        v["reason"].as_str().unwrap().contains("below the bars"),
        "{v}"
    );
    assert!(matches!(
        r.gbds.treat(&a, "SAME_FINGERS"),
        Err(ServiceError::Conflict(_))
    ));
    let b = r.gbds.submit(enroll("biden", "biden.jpg")).unwrap().tguid;
    settled(&r.gbds, &b, &["PENDING"]).await;
    r.gbds.review(&a, true).unwrap();
    r.gbds.review(&b, false).unwrap();
    // Stopped before the reviews are done: they are on disk and are done after a restart.
    r.stop.cancel();
    r.task.await.unwrap();
    r.outbox.shutdown().await.unwrap();
    let r = rig_on(dir.path(), pool, strict, r.endpoint).await;
    settled(&r.gbds, &a, &["ENROLLED"]).await;
    settled(&r.gbds, &b, &["FAILED"]).await;
    r.assert_notified(&[
        n("ENROLL", &a, "PENDING"),
        n("ENROLL", &b, "PENDING"),
        n("ENROLL", &a, "ENROLLED"),
        n("ENROLL", &b, "FAILED"),
    ])
    .await;
    assert!(matches!(
        r.gbds.review(&a, true),
        Err(ServiceError::Conflict(_))
    ));
    r.stop.cancel();
    r.task.await.unwrap();
}

fn update(key: &str, img: &str) -> Submission {
    Submission::Update {
        key: key.into(),
        images: vec![photo(img)],
    }
}

/// Submits `s`, waits for EXCEPTION, treats it with `t`, waits for `outcome`; returns the tguid.
async fn treated_as(g: &Gbds, s: Submission, t: &str, outcome: &str) -> String {
    let tguid = g.submit(s).unwrap().tguid;
    settled(g, &tguid, &["EXCEPTION"]).await;
    g.treat(&tguid, t).unwrap();
    let v = settled(g, &tguid, &[outcome]).await;
    assert_eq!(v["treatment"], t, "{v}");
    tguid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_treatment_of_both_exception_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let r = rig(dir.path(), pool(), gbds_config(dir.path())).await;
    let g = &r.gbds;
    let a = g.submit(enroll("obama", "obama.jpg")).unwrap().tguid;
    settled(g, &a, &["ENROLLED"]).await;
    // A plain update: the person's own face.
    let u = g.submit(update("obama", "obama2.jpg")).unwrap().tguid;
    settled(g, &u, &["ENROLLED"]).await;
    assert_eq!(g.person("obama").unwrap()["templates"], 2);

    // Enroll exceptions (obama's face under other keys).
    let e1 = treated_as(g, enroll("k1", "obama2.jpg"), "SAME_FINGERS", "FAILED").await;
    let e2 = treated_as(g, enroll("k2", "obama2.jpg"), "RECOLLECT", "FAILED").await;
    let e3 = treated_as(
        g,
        enroll("k3", "obama2.jpg"),
        "DIFFERENT_FINGERS",
        "ENROLLED",
    )
    .await;
    assert_eq!(g.person("k3").unwrap()["attributes"]["dept"], "k3");
    assert!(matches!(g.person("k1"), Err(ServiceError::NotFound(_))));
    assert!(matches!(g.person("k2"), Err(ServiceError::NotFound(_))));
    g.delete_person("k3").unwrap();

    // Update exceptions (biden's face for obama).
    let u1 = treated_as(
        g,
        update("obama", "biden.jpg"),
        "DIFFERENT_FINGERS",
        "FAILED",
    )
    .await;
    let u2 = treated_as(g, update("obama", "biden.jpg"), "RECOLLECT", "FAILED").await;
    assert_eq!(g.person("obama").unwrap()["templates"], 2);
    let u3 = treated_as(
        g,
        update("obama", "biden.jpg"),
        "INCORRECT_ENROLL",
        "ENROLLED",
    )
    .await;
    let p = g.person("obama").unwrap();
    assert_eq!(p["templates"], 1, "the reference was replaced: {p}");
    assert_eq!(p["attributes"]["dept"], "obama", "attributes are kept: {p}");
    // Obama's own face now fails against the (wrong) reference; a human says it is the same.
    let u4 = treated_as(g, update("obama", "obama.jpg"), "SAME_FINGERS", "ENROLLED").await;
    assert_eq!(g.person("obama").unwrap()["templates"], 2);

    let mut want = vec![n("ENROLL", &a, "ENROLLED"), n("UPDATE", &u, "ENROLLED")];
    for (t, name, outcome) in [
        (&e1, "SAME_FINGERS", "FAILED"),
        (&e2, "RECOLLECT", "FAILED"),
        (&e3, "DIFFERENT_FINGERS", "ENROLLED"),
        (&u1, "DIFFERENT_FINGERS", "FAILED"),
        (&u2, "RECOLLECT", "FAILED"),
        (&u3, "INCORRECT_ENROLL", "ENROLLED"),
        (&u4, "SAME_FINGERS", "ENROLLED"),
    ] {
        want.push(n("ENROLL", t, "EXCEPTION"));
        want.push(treated(t, name));
        want.push(n("ENROLL", t, outcome));
    }
    r.assert_notified(&want).await;
    r.stop.cancel();
    r.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_the_cameras_saw_is_a_reverse_latent_match_and_becomes_history() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool();
    // A camera saw obama (another photo) twice before anyone enrolled him.
    let (faces, _) = pool.process(photo("obama2.jpg"), true).await.unwrap();
    let face = faces.into_iter().next().unwrap();
    let gcfg = GalleryConfig {
        dir: dir.path().join("gallery"),
        ..GalleryConfig::default()
    };
    let mut gallery = Gallery::open(&gcfg, camgate::clock::system()).unwrap();
    let mut uguid = String::new();
    for event_id in [7, 8] {
        let t = camgate::gallery::NewTemplate {
            model: camgate::gallery::MOBILEFACENET.into(),
            embedding: face.embedding.clone().unwrap(),
            quality: None,
            crop: None,
        };
        let seen = camgate::gallery::Seen {
            camera: "door-1".into(),
            sn: "SN1".into(),
            event_id,
        };
        uguid = gallery.file_unknown(t, seen).unwrap();
    }
    drop(gallery);

    let r = rig(dir.path(), pool, gbds_config(dir.path())).await;
    let a = r.gbds.submit(enroll("obama", "obama.jpg")).unwrap().tguid;
    let v = settled(&r.gbds, &a, &["ENROLLED"]).await;
    assert_eq!(v["uguids"][0], uguid.as_str(), "{v}");
    let latent = Notification {
        uguid: Some(uguid.clone()),
        ..n("ENROLL", &a, "REVERSE_LATENT_MATCH")
    };
    // The reverse latent match comes before the final status.
    r.assert_notified(&[latent, n("ENROLL", &a, "ENROLLED")])
        .await;
    let p = r.gbds.person("obama").unwrap();
    assert_eq!(
        p["seen_before"], 2,
        "the entry's sightings are the person's history: {p}"
    );
    let g = Gallery::open(&gcfg, camgate::clock::system()).unwrap();
    assert!(
        g.unknown(&uguid).is_none(),
        "the unsolved entry is linked, not kept"
    );
    let hist = &g.person("obama").unwrap().history;
    assert_eq!(
        hist.iter().map(|(_, p)| p.event_id).collect::<Vec<_>>(),
        [7, 8]
    );
    r.stop.cancel();
    r.task.await.unwrap();
}
