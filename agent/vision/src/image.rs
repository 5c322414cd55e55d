//! Bounded image decoding and the resamplers the pipeline needs.
//!
//! Decoding goes through the `image` crate with explicit limits checked against the header before any
//! pixel buffer is allocated, so a 20k×20k PNG bomb is a [`VisionError::TooLarge`], not an OOM. Every
//! colour type (grey, grey+alpha, RGB, RGBA, 16-bit) is converted to 8-bit RGB; alpha is dropped as
//! OpenCV's `IMREAD_COLOR` does, which keeps parity with the reference.

use std::io::Cursor;

use super::VisionError;

/// Default limit on each side of a decoded image.
pub const DEFAULT_MAX_SIDE: u32 = 8192;
/// Default limit on width × height (a 48 MP frame is already far beyond any camera we gate).
pub const DEFAULT_MAX_PIXELS: u64 = 48_000_000;

/// An 8-bit RGB image, rows top to bottom, pixels interleaved (`[r, g, b, r, g, b, ...]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl RgbImage {
    /// Wraps a buffer, checking its length so later indexing cannot go out of bounds.
    pub fn from_raw(width: u32, height: u32, data: Vec<u8>) -> Result<Self, VisionError> {
        if width == 0 || height == 0 {
            return Err(VisionError::Empty { width, height });
        }
        if data.len() as u64 != u64::from(width) * u64::from(height) * 3 {
            return Err(VisionError::Decode(format!(
                "raw buffer of {} bytes does not hold {width}x{height} RGB",
                data.len()
            )));
        }
        Ok(RgbImage {
            width,
            height,
            data,
        })
    }

    #[inline]
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}

/// Limits applied while decoding.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    pub max_side: u32,
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_side: DEFAULT_MAX_SIDE,
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

/// Decodes JPEG or PNG bytes into RGB8 with the default limits.
pub fn decode(bytes: &[u8]) -> Result<RgbImage, VisionError> {
    decode_with_limits(bytes, DecodeLimits::default())
}

/// Decodes JPEG or PNG bytes into RGB8, refusing images beyond `limits` before allocating them.
pub fn decode_with_limits(bytes: &[u8], limits: DecodeLimits) -> Result<RgbImage, VisionError> {
    use ::image::{ImageDecoder, ImageReader};
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| VisionError::Decode(e.to_string()))?;
    if reader.format().is_none() {
        return Err(VisionError::Decode("not a JPEG or PNG image".into()));
    }
    // Read the header first: the size check must happen before the decoder allocates the frame.
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| VisionError::Decode(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(VisionError::Empty {
            width: w,
            height: h,
        });
    }
    let pixels = u64::from(w) * u64::from(h);
    if w > limits.max_side || h > limits.max_side || pixels > limits.max_pixels {
        return Err(VisionError::TooLarge {
            width: w.into(),
            height: h.into(),
            max_side: limits.max_side,
            max_pixels: limits.max_pixels,
        });
    }
    let mut l = ::image::Limits::default();
    l.max_image_width = Some(limits.max_side);
    l.max_image_height = Some(limits.max_side);
    // Decoded frame (up to 16-bit RGBA = 8 B/px) plus the decoder's own working memory.
    l.max_alloc = Some(pixels.saturating_mul(8).saturating_add(64 << 20));
    decoder
        .set_limits(l)
        .map_err(|e| VisionError::Decode(e.to_string()))?;
    let img = ::image::DynamicImage::from_decoder(decoder)
        .map_err(|e| VisionError::Decode(e.to_string()))?;
    let rgb = img.into_rgb8();
    let (w, h) = rgb.dimensions();
    RgbImage::from_raw(w, h, rgb.into_raw())
}

/// One output sample of a separable resampler: `(source index, weight)` pairs.
type Taps = Vec<(usize, f32)>;

/// OpenCV `INTER_AREA` weights along one axis (`computeResizeAreaTab` when shrinking, and the
/// `INTER_AREA`-flavoured linear taps when enlarging), so crops match the reference to the rounding.
fn area_taps(ssize: usize, dsize: usize, shrinking: bool) -> Vec<Taps> {
    let scale = ssize as f64 / dsize as f64;
    let mut out = Vec::with_capacity(dsize);
    for dx in 0..dsize {
        let mut taps = Taps::new();
        if shrinking {
            let fsx1 = dx as f64 * scale;
            let fsx2 = fsx1 + scale;
            let cell = scale.min(ssize as f64 - fsx1);
            let mut sx1 = fsx1.ceil() as isize;
            let sx2 = (fsx2.floor() as isize).min(ssize as isize - 1);
            sx1 = sx1.min(sx2);
            if sx1 as f64 - fsx1 > 1e-3 && sx1 >= 1 {
                taps.push(((sx1 - 1) as usize, ((sx1 as f64 - fsx1) / cell) as f32));
            }
            for sx in sx1..sx2 {
                taps.push((sx as usize, (1.0 / cell) as f32));
            }
            if fsx2 - sx2 as f64 > 1e-3 {
                taps.push((
                    sx2 as usize,
                    ((fsx2 - sx2 as f64).min(1.0).min(cell) / cell) as f32,
                ));
            }
        } else {
            let inv = dsize as f64 / ssize as f64;
            let sx = (dx as f64 * scale).floor() as isize;
            let mut fx = (dx as f64 + 1.0) - (sx as f64 + 1.0) * inv;
            fx = if fx <= 0.0 { 0.0 } else { fx - fx.floor() };
            let clamp = |i: isize| i.clamp(0, ssize as isize - 1) as usize;
            taps.push((clamp(sx), (1.0 - fx) as f32));
            taps.push((clamp(sx + 1), fx as f32));
        }
        out.push(taps);
    }
    out
}

/// A source sample the area resampler reads: 8-bit pixels or float crops.
pub trait Sample: Copy {
    fn to_f32(self) -> f32;
}

impl Sample for u8 {
    fn to_f32(self) -> f32 {
        f32::from(self)
    }
}

impl Sample for f32 {
    fn to_f32(self) -> f32 {
        self
    }
}

/// Resizes an interleaved `C`-channel image with OpenCV `INTER_AREA` semantics, to f32.
///
/// Separable, and linear in the source size, which is why the detector caps its working resolution
/// before building the pyramid. The channel count is a constant so that the per-tap channel loop
/// unrolls: this runs over the whole image once per pyramid level and over every R-Net and O-Net
/// crop, the detector's biggest cost outside the networks.
pub fn resize_area<const C: usize, S: Sample>(
    src: &[S],
    sw: usize,
    sh: usize,
    dw: usize,
    dh: usize,
) -> Vec<f32> {
    debug_assert_eq!(src.len(), sw * sh * C);
    // OpenCV takes the pure area path only when neither axis is enlarged.
    let shrinking = sw >= dw && sh >= dh;
    let tx = area_taps(sw, dw, shrinking);
    let ty = area_taps(sh, dh, shrinking);
    // The horizontal taps flattened once: (first tap, tap count) per output column.
    let mut spans = Vec::with_capacity(dw);
    let mut flat: Vec<(usize, f32)> = Vec::new();
    for taps in &tx {
        spans.push((flat.len(), taps.len()));
        flat.extend(taps.iter().map(|&(sx, w)| (sx * C, w)));
    }
    let stride = dw * C;
    let mut dst = vec![0f32; dh * stride];
    if shrinking {
        // Vertical pass first: it reads every source pixel once, as a contiguous multiply-add over
        // whole rows that the compiler vectorises; the horizontal gather then runs on `dh` rows
        // only. The sums are those of OpenCV's horizontal-first order, added in another order, so a
        // value can differ in the last bit (and an 8-bit result by 1 where it sits on .5).
        let mut acc = vec![0f32; sw * C];
        for (dy, taps) in ty.iter().enumerate() {
            acc.iter_mut().for_each(|v| *v = 0.0);
            for &(sy, w) in taps {
                let row = &src[sy * sw * C..(sy + 1) * sw * C];
                for (a, v) in acc.iter_mut().zip(row) {
                    *a += v.to_f32() * w;
                }
            }
            hpass::<C>(
                &acc,
                &spans,
                &flat,
                &mut dst[dy * stride..(dy + 1) * stride],
            );
        }
        return dst;
    }
    // Enlarging (small crops): horizontal pass over the source rows some output row reads, then
    // the vertical pass, OpenCV's order.
    let mut tmp = vec![0f32; sh * stride];
    let mut needed = vec![false; sh];
    for &(sy, _) in ty.iter().flatten() {
        needed[sy] = true;
    }
    let mut row = vec![0f32; sw * C];
    for y in (0..sh).filter(|&y| needed[y]) {
        for (r, v) in row.iter_mut().zip(&src[y * sw * C..(y + 1) * sw * C]) {
            *r = v.to_f32();
        }
        hpass::<C>(&row, &spans, &flat, &mut tmp[y * stride..(y + 1) * stride]);
    }
    for (dy, taps) in ty.iter().enumerate() {
        let out = &mut dst[dy * stride..(dy + 1) * stride];
        for &(sy, w) in taps {
            let row = &tmp[sy * stride..(sy + 1) * stride];
            for (o, v) in out.iter_mut().zip(row) {
                *o += v * w;
            }
        }
    }
    dst
}

/// One row through the horizontal taps: `spans[dx]` = (first tap in `flat`, tap count).
fn hpass<const C: usize>(
    row: &[f32],
    spans: &[(usize, usize)],
    flat: &[(usize, f32)],
    out: &mut [f32],
) {
    for (o, &(first, n)) in out.chunks_exact_mut(C).zip(spans) {
        let mut acc = [0f32; C];
        for &(base, w) in &flat[first..first + n] {
            let px = &row[base..base + C];
            for c in 0..C {
                acc[c] += px[c] * w;
            }
        }
        o.copy_from_slice(&acc);
    }
}

/// `resize_area` for an 8-bit RGB image, rounded back to 8 bits as OpenCV does for `uint8` input.
pub fn resize_area_u8(img: &RgbImage, dw: u32, dh: u32) -> Result<RgbImage, VisionError> {
    if dw == 0 || dh == 0 {
        return Err(VisionError::Empty {
            width: dw,
            height: dh,
        });
    }
    let out = resize_area::<3, _>(
        &img.data,
        img.width as usize,
        img.height as usize,
        dw as usize,
        dh as usize,
    );
    let data = out
        .iter()
        .map(|v| v.round_ties_even().clamp(0.0, 255.0) as u8)
        .collect();
    RgbImage::from_raw(dw, dh, data)
}

/// Warps `src` into a `dw`×`dh` RGB8 image with the 2×3 affine `m` mapping source → destination,
/// sampling bilinearly, black outside the source (OpenCV `warpAffine`, `INTER_LINEAR`, constant 0).
pub fn warp_affine(src: &RgbImage, m: &[[f64; 3]; 2], dw: u32, dh: u32) -> Option<RgbImage> {
    // Invert the 2×2 part; a degenerate transform (all landmarks on one point) has no warp.
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    if !det.is_finite() || det.abs() < 1e-12 {
        return None;
    }
    let (a, b, c, d) = (m[1][1] / det, -m[0][1] / det, -m[1][0] / det, m[0][0] / det);
    let (tx, ty) = (-(a * m[0][2] + b * m[1][2]), -(c * m[0][2] + d * m[1][2]));
    let (w, h) = (src.width as i64, src.height as i64);
    let mut data = vec![0u8; dw as usize * dh as usize * 3];
    let px = |x: i64, y: i64, ch: usize| -> f64 {
        if x < 0 || y < 0 || x >= w || y >= h {
            0.0
        } else {
            f64::from(src.data[((y * w + x) as usize) * 3 + ch])
        }
    };
    for y in 0..dh as usize {
        for x in 0..dw as usize {
            let sx = a * x as f64 + b * y as f64 + tx;
            let sy = c * x as f64 + d * y as f64 + ty;
            if !sx.is_finite()
                || !sy.is_finite()
                || sx < -1.0
                || sy < -1.0
                || sx > w as f64
                || sy > h as f64
            {
                continue;
            }
            // OpenCV quantises the fractional part to 1/32 pixel; doing the same keeps crops identical.
            let x0 = sx.floor();
            let y0 = sy.floor();
            let fx = ((sx - x0) * 32.0).round() / 32.0;
            let fy = ((sy - y0) * 32.0).round() / 32.0;
            let (x0, y0) = (x0 as i64, y0 as i64);
            for ch in 0..3 {
                let v = px(x0, y0, ch) * (1.0 - fx) * (1.0 - fy)
                    + px(x0 + 1, y0, ch) * fx * (1.0 - fy)
                    + px(x0, y0 + 1, ch) * (1.0 - fx) * fy
                    + px(x0 + 1, y0 + 1, ch) * fx * fy;
                data[(y * dw as usize + x) * 3 + ch] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    Some(RgbImage {
        width: dw,
        height: dh,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_shrink_by_two_is_box_average() {
        let src: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let out = resize_area::<1, f32>(&src, 4, 4, 2, 2);
        assert_eq!(out, vec![2.5, 4.5, 10.5, 12.5]);
    }

    #[test]
    fn area_weights_sum_to_one() {
        for (s, d) in [(100, 37), (37, 24), (13, 24), (24, 24), (1, 48)] {
            for taps in area_taps(s, d, s >= d) {
                let sum: f32 = taps.iter().map(|t| t.1).sum();
                assert!((sum - 1.0).abs() < 1e-4, "{s}->{d}: {sum}");
                assert!(taps.iter().all(|t| t.0 < s));
            }
        }
    }

    #[test]
    fn identity_warp_keeps_pixels() {
        let img = RgbImage::from_raw(4, 4, (0..48).map(|v| v as u8).collect()).unwrap();
        let out = warp_affine(&img, &[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], 4, 4).unwrap();
        assert_eq!(out, img);
    }

    #[test]
    fn garbage_is_a_decode_error() {
        assert!(matches!(
            decode(b"definitely not an image"),
            Err(VisionError::Decode(_))
        ));
        assert!(matches!(decode(&[]), Err(VisionError::Decode(_))));
    }
}
