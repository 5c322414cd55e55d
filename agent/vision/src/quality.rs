//! Per-face quality measures, computed once so that later stages (gallery, Kafka) can gate on them.

use super::align::ARCFACE_TEMPLATE;
use super::image::RgbImage;
use super::mtcnn::Detection;

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Quality {
    /// Shorter side of the detection box, source pixels.
    pub box_size: f32,
    /// O-Net score.
    pub score: f32,
    /// Variance of the 4-neighbour Laplacian of the aligned crop's luma; low means blurred.
    pub blur_var: f32,
    /// Pose estimate from the landmarks. Yaw: the nose's horizontal offset from the eye/mouth midline,
    /// in units of half the eye distance (0 frontal, about ±1 at profile). Pitch: nose height between
    /// the eye line (0) and the mouth line (1), minus the template's ratio (0 frontal). Roll: eye-line
    /// angle in degrees.
    pub yaw: f32,
    pub pitch: f32,
    pub roll_deg: f32,
}

/// `source` is the size of the picture the face was aligned from: the blur measure leaves out
/// what the alignment filled in from outside it (black), whose hard edge would read as sharpness
/// on a face cut by the picture's border.
pub fn measure(det: &Detection, aligned: Option<&RgbImage>, source: Option<(u32, u32)>) -> Quality {
    let [x1, y1, x2, y2] = det.bbox;
    let l = det.landmarks;
    let (le, re, nose, lm, rm) = (l[0], l[1], l[2], l[3], l[4]);
    let eye_mid = [(le[0] + re[0]) / 2.0, (le[1] + re[1]) / 2.0];
    let mouth_mid = [(lm[0] + rm[0]) / 2.0, (lm[1] + rm[1]) / 2.0];
    let ex = re[0] - le[0];
    let ey = re[1] - le[1];
    let eye_dist = (ex * ex + ey * ey).sqrt().max(1e-3);
    let roll = ey.atan2(ex);
    // Express the nose in the face's own frame (undo roll) relative to the eye/mouth midline.
    let (c, s) = (roll.cos(), roll.sin());
    let rel = |p: [f32; 2]| {
        let (dx, dy) = (p[0] - eye_mid[0], p[1] - eye_mid[1]);
        [c * dx + s * dy, -s * dx + c * dy]
    };
    let n = rel(nose);
    let m = rel(mouth_mid);
    let mid_x = m[0] * (n[1] / m[1].max(1e-3));
    let yaw = ((n[0] - mid_x) / (eye_dist / 2.0)).clamp(-2.0, 2.0);
    let t = ARCFACE_TEMPLATE;
    let t_eye = (t[0][1] + t[1][1]) / 2.0;
    let t_ratio = ((t[2][1] - t_eye) / ((t[3][1] + t[4][1]) / 2.0 - t_eye)) as f32;
    let pitch = if m[1].abs() > 1e-3 {
        n[1] / m[1] - t_ratio
    } else {
        0.0
    };
    Quality {
        box_size: (x2 - x1).min(y2 - y1),
        score: det.score,
        blur_var: aligned
            .map(
                |a| match source.and_then(|s| inside_source(&det.landmarks, s, a)) {
                    Some(inside) => laplacian_variance_where(a, &inside),
                    None => laplacian_variance(a),
                },
            )
            .unwrap_or(0.0),
        yaw,
        pitch,
        roll_deg: roll.to_degrees(),
    }
}

/// Which pixels of the aligned crop come from inside the `(width, height)` source picture (with
/// the whole bilinear footprint), by the same transform the alignment used.
fn inside_source(
    landmarks: &[[f32; 2]; 5],
    (w, h): (u32, u32),
    crop: &RgbImage,
) -> Option<Vec<bool>> {
    let src = landmarks.map(|p| [f64::from(p[0]), f64::from(p[1])]);
    let m = super::align::similarity_transform(&src, &ARCFACE_TEMPLATE)?;
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    if !det.is_finite() || det.abs() < 1e-12 {
        return None;
    }
    let (a, b, c, d) = (m[1][1] / det, -m[0][1] / det, -m[1][0] / det, m[0][0] / det);
    let (tx, ty) = (-(a * m[0][2] + b * m[1][2]), -(c * m[0][2] + d * m[1][2]));
    let (wf, hf) = (f64::from(w) - 1.0, f64::from(h) - 1.0);
    let mut out = Vec::with_capacity((crop.width * crop.height) as usize);
    for y in 0..crop.height {
        for x in 0..crop.width {
            let (x, y) = (f64::from(x), f64::from(y));
            let (sx, sy) = (a * x + b * y + tx, c * x + d * y + ty);
            // The tolerance only absorbs rounding of the transform (an exact fit lands on 111.0000001).
            const E: f64 = 1e-6;
            out.push(sx >= -E && sy >= -E && sx <= wf + E && sy <= hf + E);
        }
    }
    Some(out)
}

/// Variance of the Laplacian over the image's interior (luma, BT.601).
pub fn laplacian_variance(img: &RgbImage) -> f32 {
    laplacian_variance_where(img, &vec![true; (img.width * img.height) as usize])
}

/// The same over the pixels whose whole 3×3 neighbourhood is `inside`; 0 (blurred) when under a
/// quarter of the crop is, as nothing sharp can be said of a face mostly outside its picture.
fn laplacian_variance_where(img: &RgbImage, inside: &[bool]) -> f32 {
    let (w, h) = (img.width as usize, img.height as usize);
    if w < 3 || h < 3 || inside.len() != w * h {
        return 0.0;
    }
    let luma: Vec<f32> = img
        .data
        .chunks_exact(3)
        .map(|p| 0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]))
        .collect();
    let (mut sum, mut sq, mut n) = (0f64, 0f64, 0f64);
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            let i = y * w + x;
            if !(inside[i - w - 1..=i - w + 1].iter().all(|&b| b)
                && inside[i - 1..=i + 1].iter().all(|&b| b)
                && inside[i + w - 1..=i + w + 1].iter().all(|&b| b))
            {
                continue;
            }
            let v =
                f64::from(luma[i - 1] + luma[i + 1] + luma[i - w] + luma[i + w] - 4.0 * luma[i]);
            sum += v;
            sq += v * v;
            n += 1.0;
        }
    }
    if n < (w * h / 4) as f64 {
        return 0.0;
    }
    let mean = sum / n;
    (sq / n - mean * mean) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_face_is_frontal() {
        let det = Detection {
            bbox: [0.0, 0.0, 112.0, 112.0],
            score: 1.0,
            landmarks: ARCFACE_TEMPLATE.map(|p| [p[0] as f32, p[1] as f32]),
        };
        let q = measure(&det, None, None);
        assert!(
            q.yaw.abs() < 0.05 && q.pitch.abs() < 0.01 && q.roll_deg.abs() < 0.5,
            "{q:?}"
        );
    }

    #[test]
    fn the_fill_beyond_a_cut_face_does_not_read_as_sharpness() {
        // A flat grey picture whose face sits so far left that a third of the crop lies outside.
        let img = RgbImage::from_raw(112, 112, vec![128; 112 * 112 * 3]).unwrap();
        let det = Detection {
            bbox: [-40.0, 0.0, 72.0, 112.0],
            score: 1.0,
            landmarks: ARCFACE_TEMPLATE.map(|p| [p[0] as f32 - 40.0, p[1] as f32]),
        };
        let crop = crate::align::align_face(&img, &det.landmarks).unwrap();
        assert!(laplacian_variance(&crop) > 100.0, "the black edge is there");
        assert_eq!(measure(&det, Some(&crop), Some((112, 112))).blur_var, 0.0);
        // Wholly inside a larger picture, the masked measure is the plain one.
        let det = Detection {
            landmarks: ARCFACE_TEMPLATE.map(|p| [p[0] as f32 + 56.0, p[1] as f32 + 56.0]),
            ..det
        };
        let data = (0..224 * 224 * 3).map(|i| (i * 7919 % 251) as u8).collect();
        let noisy = RgbImage::from_raw(224, 224, data).unwrap();
        let crop = crate::align::align_face(&noisy, &det.landmarks).unwrap();
        let q = measure(&det, Some(&crop), Some((224, 224)));
        assert_eq!(q.blur_var, laplacian_variance(&crop));
        assert!(q.blur_var > 0.0);
    }

    #[test]
    fn flat_image_has_no_detail() {
        let img = RgbImage::from_raw(8, 8, vec![128; 192]).unwrap();
        assert_eq!(laplacian_variance(&img), 0.0);
    }
}
