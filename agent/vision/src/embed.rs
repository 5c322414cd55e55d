//! MobileFaceNet embeddings of aligned 112×112 crops.

use super::image::RgbImage;
use super::models::Models;
use super::VisionError;

/// Largest batch run at once (powers of two up to this, so the plan cache stays bounded). Measured with
/// tract 0.23 on x86_64: a batch of 4 took ~8x as long as one face, so faces go one at a time.
pub const MAX_EMBED_BATCH: usize = 1;

/// Embeds aligned crops; each result is L2-normalised and `models.embedding_dim` long.
pub fn embed(models: &Models, crops: &[&RgbImage]) -> Result<Vec<Vec<f32>>, VisionError> {
    let side = 112usize;
    let per = 3 * side * side;
    let dim = models.embedding_dim;
    let mut out = Vec::with_capacity(crops.len());
    for chunk in crops.chunks(MAX_EMBED_BATCH) {
        let n = chunk.len().next_power_of_two();
        let mut data = vec![0f32; n * per];
        for (k, crop) in chunk.iter().enumerate() {
            if crop.width as usize != side || crop.height as usize != side {
                return Err(VisionError::Config(format!(
                    "embedder wants 112x112 crops, got {}x{}",
                    crop.width, crop.height
                )));
            }
            // NCHW, RGB, (x − 127.5) / 128 as the model was trained.
            let dst = &mut data[k * per..(k + 1) * per];
            for (i, px) in crop.data.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    dst[c * side * side + i] = (f32::from(px[c]) - 127.5) / 128.0;
                }
            }
        }
        let outs = models.embedder.run(&[n, 3, side, side], data)?;
        let (shape, v) = outs
            .first()
            .ok_or_else(|| VisionError::inference("mobilefacenet", "no output"))?;
        if shape.as_slice() != [n, dim] {
            return Err(VisionError::inference(
                "mobilefacenet",
                format!("output shape {shape:?}, expected [{n}, {dim}]"),
            ));
        }
        for k in 0..chunk.len() {
            out.push(l2_normalize(&v[k * dim..(k + 1) * dim]));
        }
    }
    Ok(out)
}

pub fn l2_normalize(v: &[f32]) -> Vec<f32> {
    let n = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if n > 0.0 && n.is_finite() {
        v.iter().map(|x| (f64::from(*x) / n) as f32).collect()
    } else {
        v.to_vec()
    }
}

/// Cosine similarity; for normalised embeddings this is the dot product.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut d, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        d += f64::from(*x) * f64::from(*y);
        na += f64::from(*x) * f64::from(*x);
        nb += f64::from(*y) * f64::from(*y);
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    (d / (na.sqrt() * nb.sqrt())) as f32
}
