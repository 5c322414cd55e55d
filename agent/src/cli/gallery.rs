//! `camgate gallery ...`: the gateway's own gallery from the command line. Every command reads
//! the daemon's configuration (`[gallery]`, and `[vision]` for the models); they are safe while
//! the daemon runs (the gallery log is appended under a lock and the daemon picks changes up
//! before its next search). Output is JSON.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::clock;
use crate::config::{Config, ConfigError};
use crate::gallery::calibrate::Labelled;
use crate::gallery::{Decision, Gallery, GalleryError, NewTemplate, MOBILEFACENET};
use crate::stage::run::{best_usable, quality_of, template_of, vision_config};
use crate::stage::StageConfig;
use crate::vision::pipeline::Face;
use crate::vision::{FaceEngine, VisionError};

#[derive(Debug, thiserror::Error)]
pub enum GalleryCliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Gallery(#[from] GalleryError),
    #[error(transparent)]
    Vision(#[from] VisionError),
    #[error("{0}")]
    Usage(String),
}

#[derive(clap::Args, Debug, Clone)]
pub struct GalleryArgs {
    /// The daemon's configuration file (its `[gallery]` and `[vision]`).
    #[arg(long, short, default_value = "/etc/camgate/camgate.toml")]
    pub config: PathBuf,
    /// Models directory, instead of `[vision] models_dir`.
    #[arg(long, value_name = "DIR")]
    pub models: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
pub enum GalleryCommand {
    /// Enroll (or add templates to) a person from one or more photos.
    Enroll {
        #[command(flatten)]
        args: GalleryArgs,
        #[arg(long)]
        key: String,
        /// Attribute `name=value` (repeatable); replaces the person's attributes when given.
        #[arg(long = "attr", value_name = "K=V")]
        attrs: Vec<String>,
        /// Photos, or folders of photos (a progress bar on a terminal).
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Every enrolled person.
    List {
        #[command(flatten)]
        args: GalleryArgs,
    },
    /// One person with its templates.
    Show {
        #[command(flatten)]
        args: GalleryArgs,
        key: String,
    },
    /// Remove a person and its templates.
    Delete {
        #[command(flatten)]
        args: GalleryArgs,
        key: String,
    },
    /// Who is in this photo (1:N), or is it KEY (1:1 with --key).
    Search {
        #[command(flatten)]
        args: GalleryArgs,
        image: PathBuf,
        #[arg(long)]
        key: Option<String>,
    },
    /// The unsolved entries (strangers the cameras saw), with counts and first/last seen.
    Unknowns {
        #[command(flatten)]
        args: GalleryArgs,
    },
    /// Record that the face in IMG is not KEY: lowers KEY's matches to look-alikes of it.
    Reject {
        #[command(flatten)]
        args: GalleryArgs,
        key: String,
        image: PathBuf,
    },
    /// Enroll an unsolved entry (its kept faces) as the person KEY.
    Promote {
        #[command(flatten)]
        args: GalleryArgs,
        uguid: String,
        #[arg(long)]
        key: String,
    },
    /// Genuine/impostor score distributions of the gallery's own templates, FMR/FNMR at
    /// candidate thresholds, and the threshold for a target false-match rate.
    Calibrate {
        #[command(flatten)]
        args: GalleryArgs,
        #[arg(long, default_value_t = 1e-3)]
        target_fmr: f64,
        /// Labelled photos too: one folder per person (the folder name is the label).
        #[arg(long, value_name = "DIR")]
        pairs: Option<PathBuf>,
        /// Write `[gallery] match_threshold = …` to this conf.d drop-in.
        #[arg(long, value_name = "FILE")]
        write: Option<PathBuf>,
    },
    /// Embed the kept crops of templates made by another model with the current one (after a
    /// model change; nobody re-enrols).
    Reembed {
        #[command(flatten)]
        args: GalleryArgs,
    },
    /// Rewrite a damaged gallery log without its damaged records (the original is kept beside
    /// it); the way back when `check-config` or start-up names a damaged record.
    Repair {
        #[command(flatten)]
        args: GalleryArgs,
    },
}

fn print_json(v: &impl serde::Serialize) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, v)
        .and_then(|_| writeln!(out).map_err(serde_json::Error::io));
}

struct Ctx {
    stage: StageConfig,
    gallery: Gallery,
}

fn open(args: &GalleryArgs) -> Result<Ctx, GalleryCliError> {
    let cfg = Config::load_valid(&args.config)?;
    let mut stage = cfg.vision.clone().unwrap_or_default();
    if let Some(m) = &args.models {
        stage.models_dir = m.clone();
    }
    let gallery = Gallery::open(&cfg.gallery, clock::system())?;
    Ok(Ctx { stage, gallery })
}

/// The largest face of a photo that passes the quality bars.
fn best_face(engine: &FaceEngine, stage: &StageConfig, path: &Path) -> Result<Face, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let (faces, _) = engine.process(&bytes, true).map_err(|e| e.to_string())?;
    let n = faces.len();
    best_usable(faces, &stage.quality).ok_or_else(|| match n {
        0 => "no face found".to_string(),
        n => format!("{n} face(s) found, none passes the quality bars ([vision.quality])"),
    })
}

fn template(f: Face, stage: &StageConfig) -> NewTemplate {
    let q = quality_of(&f, &stage.quality);
    template_of(f, q)
}

fn parse_attrs(attrs: &[String]) -> Result<Option<BTreeMap<String, String>>, GalleryCliError> {
    if attrs.is_empty() {
        return Ok(None);
    }
    attrs
        .iter()
        .map(|a| {
            a.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| GalleryCliError::Usage(format!("--attr {a:?}: expected name=value")))
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

/// Runs one `camgate gallery` command.
pub fn run(cmd: GalleryCommand) -> Result<(), GalleryCliError> {
    match cmd {
        GalleryCommand::Enroll {
            args,
            key,
            attrs,
            images,
        } => enroll(&args, &key, &attrs, &images),
        GalleryCommand::List { args } => {
            let ctx = open(&args)?;
            let list: Vec<_> = ctx.gallery.persons().map(person_json).collect();
            print_json(&list);
            Ok(())
        }
        GalleryCommand::Show { args, key } => {
            let ctx = open(&args)?;
            let p = ctx
                .gallery
                .person(&key)
                .ok_or_else(|| GalleryError::NoPerson(key.clone()))?;
            print_json(&person_json(p));
            Ok(())
        }
        GalleryCommand::Delete { args, key } => {
            let mut ctx = open(&args)?;
            let p = ctx.gallery.delete(&key)?;
            print_json(
                &serde_json::json!({"deleted": &*p.key, "pguid": &*p.pguid, "templates": p.templates.len()}),
            );
            Ok(())
        }
        GalleryCommand::Search { args, image, key } => search(&args, &image, key.as_deref()),
        GalleryCommand::Reject { args, key, image } => {
            let mut ctx = open(&args)?;
            let engine = FaceEngine::new(vision_config(&ctx.stage))?;
            let f = best_face(&engine, &ctx.stage, &image).map_err(GalleryCliError::Usage)?;
            ctx.gallery
                .reject(&key, MOBILEFACENET, f.embedding.unwrap_or_default())?;
            let negatives = ctx.gallery.person(&key).map_or(0, |p| p.negatives.len());
            print_json(&serde_json::json!({"key": key, "negatives": negatives}));
            Ok(())
        }
        GalleryCommand::Promote { args, uguid, key } => {
            let mut ctx = open(&args)?;
            let e = ctx.gallery.promote(&uguid, &key)?;
            print_json(
                &serde_json::json!({"promoted": uguid, "key": e.key, "pguid": e.pguid,
                "created": e.created, "templates_added": e.templates_added.len()}),
            );
            Ok(())
        }
        GalleryCommand::Calibrate {
            args,
            target_fmr,
            pairs,
            write,
        } => calibrate(&args, target_fmr, pairs.as_deref(), write.as_deref()),
        GalleryCommand::Reembed { args } => {
            let mut ctx = open(&args)?;
            let engine = FaceEngine::new(vision_config(&ctx.stage))?;
            let (added, no_crop) = ctx.gallery.reembed(MOBILEFACENET, |crop| {
                let img =
                    crate::vision::RgbImage::from_raw(112, 112, crop).map_err(|e| e.to_string())?;
                engine.embed_aligned(&img).map_err(|e| e.to_string())
            })?;
            print_json(
                &serde_json::json!({"model": MOBILEFACENET, "templates_added": added, "without_crop": no_crop}),
            );
            Ok(())
        }
        GalleryCommand::Repair { args } => {
            let cfg = Config::load_valid(&args.config)?;
            let r = crate::gallery::log::repair(&cfg.gallery.dir, clock::unix_now_ms())?;
            print_json(&r);
            Ok(())
        }
        GalleryCommand::Unknowns { args } => {
            let ctx = open(&args)?;
            let list: Vec<_> = ctx
                .gallery
                .unknowns()
                .map(|u| {
                    let last = u.sightings.back().map(|s| &s.1);
                    serde_json::json!({
                        "uguid": u.uguid, "count": u.count, "exemplars": u.exemplars.len(),
                        "first_seen_ms": u.first_ms, "last_seen_ms": u.last_ms,
                        "last_camera": last.map(|p| p.camera.as_str()),
                        "last_event": last.map(|p| format!("{}/{}", p.sn, p.event_id)),
                    })
                })
                .collect();
            print_json(&list);
            Ok(())
        }
    }
}

fn person_json(p: &crate::gallery::Person) -> serde_json::Value {
    serde_json::json!({
        "key": &*p.key, "pguid": &*p.pguid, "attrs": p.attrs(), "created_ms": p.created_ms,
        "negatives": p.negatives.len(),
        "templates": p.templates.iter().map(|t| serde_json::json!({
            "tid": t.tid, "model": t.data.model, "dim": t.data.embedding.len(),
            "quality": t.data.quality, "crop": t.data.crop, "at_ms": t.data.at_ms,
        })).collect::<Vec<_>>(),
    })
}

fn enroll(
    args: &GalleryArgs,
    key: &str,
    attrs: &[String],
    images: &[PathBuf],
) -> Result<(), GalleryCliError> {
    let attrs = parse_attrs(attrs)?;
    let mut ctx = open(args)?;
    let engine = FaceEngine::new(vision_config(&ctx.stage))?;
    let images = expand(images)?;
    let mut templates = Vec::new();
    let mut report = Vec::new();
    let bar = progress(images.len() as u64);
    for path in &images {
        bar.inc(1);
        match best_face(&engine, &ctx.stage, path) {
            Ok(f) => {
                report.push(serde_json::json!({"image": path.display().to_string(), "ok": true, "quality": quality_of(&f, &ctx.stage.quality)}));
                templates.push(template(f, &ctx.stage));
            }
            Err(e) => report.push(
                serde_json::json!({"image": path.display().to_string(), "ok": false, "error": e}),
            ),
        }
    }
    bar.finish_and_clear();
    if templates.is_empty() {
        print_json(&serde_json::json!({"key": key, "images": report}));
        return Err(GalleryCliError::Usage(format!(
            "no usable face in any of the {} image(s); nothing enrolled",
            images.len()
        )));
    }
    let e = ctx.gallery.enroll(key, attrs, templates)?;
    print_json(&serde_json::json!({
        "key": e.key, "pguid": e.pguid, "created": e.created,
        "templates_added": e.templates_added.len(), "templates": e.templates, "images": report,
    }));
    Ok(())
}

fn search(args: &GalleryArgs, image: &Path, key: Option<&str>) -> Result<(), GalleryCliError> {
    let mut ctx = open(args)?;
    let engine = FaceEngine::new(vision_config(&ctx.stage))?;
    let face = best_face(&engine, &ctx.stage, image).map_err(GalleryCliError::Usage)?;
    let probe = face.embedding.clone().unwrap_or_default();
    let threshold = ctx.gallery.config().match_threshold;
    let (decision, _) = ctx.gallery.identify(&probe, MOBILEFACENET);
    let ranked = ctx.gallery.search(
        &probe,
        MOBILEFACENET,
        if key.is_some() { usize::MAX } else { 5 },
    );
    let out = match key {
        Some(k) => {
            let c = ranked
                .iter()
                .find(|c| c.key == k)
                .ok_or_else(|| GalleryError::NoPerson(k.into()))?;
            serde_json::json!({"key": k, "score": c.score, "best": c.best, "trimmed_mean": c.trimmed_mean,
                "threshold": threshold, "match": c.score >= threshold})
        }
        None => {
            let identity = match &decision {
                Decision::Match(c) => {
                    serde_json::json!({"key": c.key, "pguid": c.pguid, "score": c.score})
                }
                Decision::Unknown(_) => serde_json::Value::Null,
            };
            serde_json::json!({"identity": identity, "threshold": threshold,
                "margin": ctx.gallery.config().margin,
                "candidates": ranked})
        }
    };
    print_json(&out);
    Ok(())
}

/// Embeddings of the photos under `dir/<person>/`, labelled with the folder name.
fn labelled_photos(
    engine: &FaceEngine,
    stage: &StageConfig,
    dir: &Path,
) -> Result<Vec<Labelled>, GalleryCliError> {
    let io = |e: std::io::Error| GalleryCliError::Usage(format!("{}: {e}", dir.display()));
    let mut paths = Vec::new();
    for person in std::fs::read_dir(dir).map_err(io)? {
        let person = person.map_err(io)?.path();
        if person.is_dir() {
            for f in std::fs::read_dir(&person).map_err(io)? {
                paths.push((person.clone(), f.map_err(io)?.path()));
            }
        }
    }
    paths.sort();
    let bar = progress(paths.len() as u64);
    let mut out = Vec::new();
    for (person, path) in paths {
        bar.inc(1);
        match best_face(engine, stage, &path) {
            Ok(f) => out.push(Labelled {
                person: person
                    .file_name()
                    .map_or(String::new(), |n| n.to_string_lossy().into_owned()),
                embedding: f.embedding.unwrap_or_default(),
            }),
            Err(e) => bar.println(format!("{}: {e}; left out", path.display())),
        }
    }
    bar.finish_and_clear();
    Ok(out)
}

/// The files given, a folder standing for the files in it (sorted).
fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, GalleryCliError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| GalleryCliError::Usage(format!("{}: {e}", p.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file())
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// A progress bar on a terminal (stderr), nothing otherwise.
fn progress(n: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(n);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} ({eta})")
    {
        bar.set_style(style);
    }
    bar
}

fn calibrate(
    args: &GalleryArgs,
    target_fmr: f64,
    pairs: Option<&Path>,
    write: Option<&Path>,
) -> Result<(), GalleryCliError> {
    let ctx = open(args)?;
    let mut items: Vec<Labelled> = ctx
        .gallery
        .persons()
        .flat_map(|p| {
            p.templates
                .iter()
                .filter(|t| t.data.model == MOBILEFACENET)
                .map(|t| Labelled {
                    person: format!("gallery:{}", p.key),
                    embedding: t.data.embedding.to_vec(),
                })
        })
        .collect();
    if let Some(dir) = pairs {
        let engine = FaceEngine::new(vision_config(&ctx.stage))?;
        items.extend(labelled_photos(&engine, &ctx.stage, dir)?);
    }
    let c = crate::gallery::calibrate::calibrate(&items, target_fmr);
    print_json(&c);
    if let Some(path) = write {
        let t = c.threshold.ok_or_else(|| {
            GalleryCliError::Usage("no impostor pairs: nothing to calibrate against".into())
        })?;
        let text = format!(
            "# written by `camgate gallery calibrate` ({} genuine, {} impostor pairs, target FMR {target_fmr})\n[gallery]\nmatch_threshold = {t}\n",
            c.genuine_pairs, c.impostor_pairs
        );
        std::fs::write(path, text)
            .map_err(|e| GalleryCliError::Usage(format!("{}: {e}", path.display())))?;
        eprintln!("wrote match_threshold = {t} to {}", path.display());
    }
    Ok(())
}
