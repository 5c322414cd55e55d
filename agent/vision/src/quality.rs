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

pub fn measure(det: &Detection, aligned: Option<&RgbImage>) -> Quality {
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
        blur_var: aligned.map(laplacian_variance).unwrap_or(0.0),
        yaw,
        pitch,
        roll_deg: roll.to_degrees(),
    }
}

/// Variance of the Laplacian over the image's interior (luma, BT.601).
pub fn laplacian_variance(img: &RgbImage) -> f32 {
    let (w, h) = (img.width as usize, img.height as usize);
    if w < 3 || h < 3 {
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
            let v =
                f64::from(luma[i - 1] + luma[i + 1] + luma[i - w] + luma[i + w] - 4.0 * luma[i]);
            sum += v;
            sq += v * v;
            n += 1.0;
        }
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
        let q = measure(&det, None);
        assert!(
            q.yaw.abs() < 0.05 && q.pitch.abs() < 0.01 && q.roll_deg.abs() < 0.5,
            "{q:?}"
        );
    }

    #[test]
    fn flat_image_has_no_detail() {
        let img = RgbImage::from_raw(8, 8, vec![128; 192]).unwrap();
        assert_eq!(laplacian_variance(&img), 0.0);
    }
}
