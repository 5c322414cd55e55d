//! Five-point alignment onto the ArcFace 112×112 template.

use super::image::{warp_affine, RgbImage};

/// Side of the aligned crop the embedder takes.
pub const ALIGNED_SIZE: u32 = 112;

/// The standard ArcFace template for 112×112 crops: left eye, right eye, nose, left and right mouth.
pub const ARCFACE_TEMPLATE: [[f64; 2]; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// Least-squares similarity transform (rotation, uniform scale, translation) mapping `src` onto `dst`.
///
/// This is Umeyama's estimator specialised to 2-D, where the SVD has a closed form: with centred points
/// the optimal `s·R = [[a, −b], [b, a]]`, `a = Σ(x·u + y·v) / Σ|p|²`, `b = Σ(x·v − y·u) / Σ|p|²`. It is
/// always a proper rotation, as Umeyama's reflection correction guarantees. Returns a 2×3 matrix, or
/// `None` if all source points coincide.
pub fn similarity_transform(src: &[[f64; 2]], dst: &[[f64; 2]]) -> Option<[[f64; 3]; 2]> {
    let n = src.len().min(dst.len());
    if n < 2 {
        return None;
    }
    let mean = |p: &[[f64; 2]]| {
        let (sx, sy) = p[..n]
            .iter()
            .fold((0.0, 0.0), |a, q| (a.0 + q[0], a.1 + q[1]));
        [sx / n as f64, sy / n as f64]
    };
    let (ms, md) = (mean(src), mean(dst));
    let (mut num_a, mut num_b, mut den) = (0.0, 0.0, 0.0);
    for k in 0..n {
        let (x, y) = (src[k][0] - ms[0], src[k][1] - ms[1]);
        let (u, v) = (dst[k][0] - md[0], dst[k][1] - md[1]);
        num_a += x * u + y * v;
        num_b += x * v - y * u;
        den += x * x + y * y;
    }
    if !(den.is_finite() && den > 1e-9) {
        return None;
    }
    let (a, b) = (num_a / den, num_b / den);
    let tx = md[0] - (a * ms[0] - b * ms[1]);
    let ty = md[1] - (b * ms[0] + a * ms[1]);
    Some([[a, -b, tx], [b, a, ty]])
}

/// Warps the face given by its 5 landmarks (source pixels) into a 112×112 aligned crop.
pub fn align_face(img: &RgbImage, landmarks: &[[f32; 2]; 5]) -> Option<RgbImage> {
    let src = landmarks.map(|p| [f64::from(p[0]), f64::from(p[1])]);
    let m = similarity_transform(&src, &ARCFACE_TEMPLATE)?;
    warp_affine(img, &m, ALIGNED_SIZE, ALIGNED_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_known_similarity() {
        // dst = 2·R(30°)·src + (5, −3)
        let (c, s) = (
            30f64.to_radians().cos() * 2.0,
            30f64.to_radians().sin() * 2.0,
        );
        let src = [[1.0, 2.0], [3.0, -1.0], [0.5, 0.5], [-2.0, 4.0], [7.0, 1.0]];
        let dst: Vec<[f64; 2]> = src
            .iter()
            .map(|p| [c * p[0] - s * p[1] + 5.0, s * p[0] + c * p[1] - 3.0])
            .collect();
        let m = similarity_transform(&src, &dst).unwrap();
        let want = [[c, -s, 5.0], [s, c, -3.0]];
        for r in 0..2 {
            for k in 0..3 {
                assert!((m[r][k] - want[r][k]).abs() < 1e-9, "{m:?}");
            }
        }
    }

    #[test]
    fn degenerate_landmarks_have_no_transform() {
        assert!(similarity_transform(&[[1.0, 1.0]; 5], &ARCFACE_TEMPLATE).is_none());
    }
}
