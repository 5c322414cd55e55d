//! `camgate bench quality [--pairs DIR]`: where the `[gbds]` enrolment bars sit on labelled
//! photos. Every photo that has another photo of the same person is degraded (scaled so that its
//! face is N px, or blurred with a Gaussian of sigma S, then JPEG-encoded as a camera would) and
//! compared with the person's other photos (genuine) and with every other person (impostor),
//! with the f16 models the daemon uses. The reference is the same comparison undegraded, in the
//! same run. Pose and detection score cannot be synthesised this way: for them the bench lists
//! each genuine pair's pose and score next to its similarity.

use std::path::{Path, PathBuf};

use camgate_vision::embed::cosine;
use camgate_vision::image::{resize_area_u8, RgbImage};
use camgate_vision::pipeline::{Face, FaceEngine};

use super::{median, BenchError};
use crate::stage::run::quality_of;
use crate::stage::QualityBars;

#[derive(Debug, Clone, clap::Args)]
pub struct QualityBenchArgs {
    /// Labelled photos, one folder per person; the largest face of each photo counts [default:
    /// the repo's fixtures: obama.jpg and obama2.jpg as one person, biden.jpg as another].
    #[arg(long)]
    pub pairs: Option<PathBuf>,
    /// Face sizes (shorter side of the box, px) the probes are scaled down to.
    #[arg(long, value_delimiter = ',', default_value = "112,80,64,48,40,32,24")]
    pub sizes: Vec<u32>,
    /// Gaussian blur sigmas (px of the photo as given).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4,5,6,8")]
    pub sigmas: Vec<f32>,
    /// Match threshold the genuine scores are counted against (`gallery.match_threshold`).
    #[arg(long, default_value_t = 0.52)]
    pub threshold: f32,
}

struct Photo {
    person: String,
    name: String,
    img: RgbImage,
    face: Face,
}

/// What one degradation did to one probe: its face (if still found) and its scores.
struct Probe {
    name: String,
    size: f32,
    blur: f32,
    genuine: Vec<f32>,
    impostor_max: f32,
}

#[derive(Clone, Copy)]
enum Degrade {
    None,
    FacePx(u32),
    Sigma(f32),
}

impl std::fmt::Display for Degrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Degrade::None => write!(f, "as is"),
            Degrade::FacePx(px) => write!(f, "face {px} px"),
            Degrade::Sigma(s) => write!(f, "blur sigma {s}"),
        }
    }
}

pub fn run(args: QualityBenchArgs) -> Result<(), BenchError> {
    let engine = super::faces::engine()
        .ok_or_else(|| BenchError::Other("the models in models/ could not be loaded".into()))?;
    let photos = match &args.pairs {
        Some(d) => load(&engine, d)?,
        None => {
            let tmp = fixture_pairs()?;
            let photos = load(&engine, &tmp);
            let _ = std::fs::remove_dir_all(&tmp);
            photos?
        }
    };
    let bars = gbds_bars();
    print_originals(&photos, &bars);
    let probes: Vec<usize> = (0..photos.len())
        .filter(|&i| genuine_refs(&photos, i).next().is_some())
        .collect();
    if probes.is_empty() {
        return Err(BenchError::Other(
            "no person has two photos with a face; nothing to compare".into(),
        ));
    }
    println!(
        "\n{} probes (photos with another photo of the same person); threshold {}; bars (the [gbds] defaults): face >= {} px, blur <= {}",
        probes.len(),
        args.threshold,
        bars.min_size,
        bars.max_blur
    );
    println!(
        "{:<16} {:>7} {:>8} {:>6} {:>22} {:>10} {:>13} {:>9} {:>7}",
        "probe",
        "found",
        "face px",
        "blur",
        "genuine min/p50/max",
        ">= thresh",
        "impostor max",
        "pass bars",
        "missed"
    );
    println!(
        "(missed: genuine pairs under the threshold whose probe passes the size and blur bars)"
    );
    let levels = std::iter::once(Degrade::None)
        .chain(args.sizes.iter().map(|&p| Degrade::FacePx(p)))
        .chain(args.sigmas.iter().map(|&s| Degrade::Sigma(s)));
    for level in levels {
        let results: Vec<Option<Probe>> = probes
            .iter()
            .filter_map(|&i| degrade(&photos[i], level).map(|img| (i, img)))
            .map(|(i, img)| probe(&engine, &photos, i, &img))
            .collect::<Result<_, _>>()?;
        print_level(level, &results, &args, &bars);
    }
    print_pose_and_score(&photos, &probes);
    Ok(())
}

/// The enrolment bars' defaults, from the `[gbds]` config.
fn gbds_bars() -> QualityBars {
    let g = crate::gbds::GbdsConfig::default();
    QualityBars {
        min_size: g.quality_min_face_px,
        min_score: g.quality_min_score,
        max_blur: g.quality_max_blur,
        max_pose: g.quality_max_pose,
    }
}

/// The repo's fixtures laid out as `--pairs` wants them.
fn fixture_pairs() -> Result<PathBuf, BenchError> {
    let tmp = super::tempdir()?;
    let src = Path::new("tests/fixtures/faces");
    for (person, file) in [
        ("obama", "obama.jpg"),
        ("obama", "obama2.jpg"),
        ("biden", "biden.jpg"),
    ] {
        std::fs::create_dir_all(tmp.join(person))?;
        std::fs::copy(src.join(file), tmp.join(person).join(file))?;
    }
    Ok(tmp)
}

fn load(engine: &FaceEngine, dir: &Path) -> Result<Vec<Photo>, BenchError> {
    let mut paths = Vec::new();
    for person in sorted_entries(dir)? {
        if person.is_dir() {
            paths.extend(sorted_entries(&person)?.into_iter().filter(|p| p.is_file()));
        }
    }
    let mut out = Vec::new();
    for path in paths {
        let person = path.parent().and_then(Path::file_name);
        let person = person.map_or(String::new(), |n| n.to_string_lossy().into_owned());
        let name = path
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned());
        let bytes = std::fs::read(&path)?;
        let img = match engine.decode(&bytes) {
            Ok(img) => img,
            Err(e) => {
                eprintln!("{}: {e}; left out", path.display());
                continue;
            }
        };
        match largest(engine, &img)? {
            Some(face) => out.push(Photo {
                person,
                name,
                img,
                face,
            }),
            None => eprintln!("{}: no face; left out", path.display()),
        }
    }
    Ok(out)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    let err = |e: std::io::Error| BenchError::Other(format!("{}: {e}", dir.display()));
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(err)? {
        v.push(e.map_err(err)?.path());
    }
    v.sort();
    Ok(v)
}

/// The largest face that has an embedding, as the gbds gate picks it.
fn largest(engine: &FaceEngine, img: &RgbImage) -> Result<Option<Face>, BenchError> {
    let (faces, _) = engine.run(img, true).map_err(super::faces::other)?;
    Ok(faces
        .into_iter()
        .filter(|f| f.embedding.is_some())
        .max_by(|a, b| a.quality.box_size.total_cmp(&b.quality.box_size)))
}

fn genuine_refs(photos: &[Photo], i: usize) -> impl Iterator<Item = &Photo> {
    photos
        .iter()
        .enumerate()
        .filter(move |(j, p)| *j != i && p.person == photos[i].person)
        .map(|(_, p)| p)
}

/// The degraded picture as a camera would send it (JPEG, quality 90), decoded again; `None` when
/// the level does not apply (a face already smaller than the size asked for).
fn degrade(photo: &Photo, level: Degrade) -> Option<RgbImage> {
    let img = &photo.img;
    let out = match level {
        Degrade::None => return Some(img.clone()),
        Degrade::FacePx(px) => {
            let f = px as f32 / photo.face.quality.box_size;
            if f >= 1.0 {
                return None;
            }
            let (w, h) = (img.width as f32 * f, img.height as f32 * f);
            resize_area_u8(img, (w.round() as u32).max(1), (h.round() as u32).max(1)).ok()?
        }
        Degrade::Sigma(s) => {
            let buf = image::RgbImage::from_raw(img.width, img.height, img.data.clone())?;
            let b = image::imageops::blur(&buf, s);
            RgbImage::from_raw(b.width(), b.height(), b.into_raw()).ok()?
        }
    };
    let buf = image::RgbImage::from_raw(out.width, out.height, out.data)?;
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&buf)
        .ok()?;
    camgate_vision::image::decode(&jpeg).ok()
}

fn probe(
    engine: &FaceEngine,
    photos: &[Photo],
    i: usize,
    img: &RgbImage,
) -> Result<Option<Probe>, BenchError> {
    let Some(face) = largest(engine, img)? else {
        return Ok(None);
    };
    let q = quality_of(&face, &QualityBars::default());
    let e = face.embedding.as_deref().unwrap_or_default();
    let sim = |p: &Photo| cosine(e, p.face.embedding.as_deref().unwrap_or_default());
    let impostor_max = photos
        .iter()
        .filter(|p| p.person != photos[i].person)
        .map(sim)
        .fold(f32::NEG_INFINITY, f32::max);
    Ok(Some(Probe {
        name: format!("{}/{}", photos[i].person, photos[i].name),
        size: q.size,
        blur: q.blur,
        genuine: genuine_refs(photos, i).map(sim).collect(),
        impostor_max,
    }))
}

fn print_originals(photos: &[Photo], bars: &QualityBars) {
    let people: std::collections::BTreeSet<&str> =
        photos.iter().map(|p| p.person.as_str()).collect();
    println!(
        "{} photos of {} people (the largest face of each):",
        photos.len(),
        people.len()
    );
    println!(
        "{:<28} {:>7} {:>6} {:>6} {:>7} {:>10}",
        "person/photo", "face px", "blur", "pose", "score", "gbds bars"
    );
    let mut refused = [0usize; 4];
    for p in photos {
        let q = quality_of(&p.face, bars);
        let by = [
            q.size < bars.min_size,
            q.blur > bars.max_blur,
            q.pose > bars.max_pose,
            p.face.quality.score < bars.min_score,
        ];
        for (n, b) in refused.iter_mut().zip(by) {
            *n += usize::from(b);
        }
        println!(
            "{:<28} {:>7.0} {:>6.2} {:>6.2} {:>7.3} {:>10}",
            format!("{}/{}", p.person, p.name),
            q.size,
            q.blur,
            q.pose,
            p.face.quality.score,
            if q.ok { "pass" } else { "refused" }
        );
    }
    println!(
        "refused by face px < {}: {}, blur > {}: {}, pose > {}: {}, score < {}: {}",
        bars.min_size,
        refused[0],
        bars.max_blur,
        refused[1],
        bars.max_pose,
        refused[2],
        bars.min_score,
        refused[3]
    );
}

fn print_level(
    level: Degrade,
    results: &[Option<Probe>],
    args: &QualityBenchArgs,
    bars: &QualityBars,
) {
    let found: Vec<&Probe> = results.iter().flatten().collect();
    let mut genuine: Vec<f32> = found
        .iter()
        .flat_map(|p| p.genuine.iter().copied())
        .collect();
    genuine.sort_by(f32::total_cmp);
    let over = genuine.iter().filter(|&&g| g >= args.threshold).count();
    let imp = found
        .iter()
        .map(|p| p.impostor_max)
        .fold(f32::NEG_INFINITY, f32::max);
    let passes = |p: &&&Probe| p.size >= bars.min_size && p.blur <= bars.max_blur;
    let pass = found.iter().filter(passes).count();
    // What the bars are for: a reference they let through that then fails to match.
    let missed: Vec<String> = found
        .iter()
        .filter(passes)
        .flat_map(|p| p.genuine.iter().map(move |g| (p, g)))
        .filter(|(_, &g)| g < args.threshold)
        .map(|(p, g)| format!("{} ({:.0} px, blur {:.2}: {g:.3})", p.name, p.size, p.blur))
        .collect();
    let med = |v: Vec<f32>| median(v.into_iter().map(f64::from).collect());
    let fmt3 = |v: Option<&f32>| v.map_or("-".into(), |v| format!("{v:.3}"));
    println!(
        "{:<16} {:>7} {:>8.0} {:>6.2} {:>22} {:>10} {:>13} {:>9} {:>7}",
        level.to_string(),
        format!("{}/{}", found.len(), results.len()),
        med(found.iter().map(|p| p.size).collect()),
        med(found.iter().map(|p| p.blur).collect()),
        format!(
            "{}/{:.3}/{}",
            fmt3(genuine.first()),
            med(genuine.clone()),
            fmt3(genuine.last())
        ),
        format!("{over}/{}", genuine.len()),
        if imp.is_finite() {
            format!("{imp:.3}")
        } else {
            "-".into()
        },
        format!("{pass}/{}", found.len()),
        missed.len(),
    );
    for m in missed {
        println!("{:<16} missed: {m}", "");
    }
}

/// Pose and score cannot be degraded synthetically: each genuine pair as is, sorted by the
/// probe's pose, shows whether a turned head or a doubtful detection costs similarity.
fn print_pose_and_score(photos: &[Photo], probes: &[usize]) {
    let bars = QualityBars::default();
    let mut rows: Vec<(f32, f32, f32, String)> = Vec::new();
    for &i in probes {
        let p = &photos[i];
        let q = quality_of(&p.face, &bars);
        let e = p.face.embedding.as_deref().unwrap_or_default();
        for r in genuine_refs(photos, i) {
            let s = cosine(e, r.face.embedding.as_deref().unwrap_or_default());
            let name = format!("{}/{} -> {}", p.person, p.name, r.name);
            rows.push((q.pose, p.face.quality.score, s, name));
        }
    }
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("\ngenuine pairs as is, by the probe's pose (0 frontal .. 1 profile):");
    println!("{:>6} {:>7} {:>8}  pair", "pose", "score", "genuine");
    for (pose, score, s, name) in rows {
        println!("{pose:>6.2} {score:>7.3} {s:>8.3}  {name}");
    }
}
