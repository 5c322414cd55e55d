//! Bad and unusual inputs: always a typed error or a correct result, never a panic or a huge allocation.
#![cfg(feature = "vision")]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use camgate::vision::image::{decode_with_limits, DecodeLimits};
use camgate::vision::{decode, FaceEngine, VisionConfig, VisionError, VisionPool};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn engine() -> &'static Arc<FaceEngine> {
    static E: OnceLock<Arc<FaceEngine>> = OnceLock::new();
    E.get_or_init(|| {
        let cfg = VisionConfig {
            models_dir: Some(root().join("models")),
            ..VisionConfig::default()
        };
        Arc::new(FaceEngine::new(cfg).unwrap())
    })
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(root().join("tests/fixtures/faces").join(name)).unwrap()
}

/// A PNG whose header claims `w`×`h` (8-bit RGB) with an empty, truncated image stream.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |ty: &[u8], data: &[u8]| {
        v.extend((data.len() as u32).to_be_bytes());
        let mut c = ty.to_vec();
        c.extend(data);
        v.extend(&c);
        v.extend(crc32fast::hash(&c).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c]);
    chunk(b"IEND", &[]);
    v
}

fn encode_png<P: image::PixelWithColorType>(
    img: &image::ImageBuffer<P, Vec<P::Subpixel>>,
) -> Vec<u8>
where
    [P::Subpixel]: image::EncodableLayout,
{
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

#[test]
fn not_an_image() {
    for bytes in [
        &b""[..],
        b"hello world",
        b"\xff\xd8\xff",
        b"GIF89a....",
        &[0u8; 1024],
    ] {
        assert!(
            matches!(engine().process(bytes, true), Err(VisionError::Decode(_))),
            "{bytes:?}"
        );
    }
}

#[test]
fn truncated_jpeg_is_an_error_or_decodes_partially() {
    let full = fixture("obama2.jpg");
    for cut in [10, 200, 2000, full.len() / 2, full.len() - 10] {
        match engine().process(&full[..cut], true) {
            Ok(_) | Err(VisionError::Decode(_)) => {}
            Err(e) => panic!("cut at {cut}: unexpected {e}"),
        }
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    let mut bytes = fixture("obama2.jpg");
    for i in (600..bytes.len()).step_by(997) {
        bytes[i] ^= 0x5a;
    }
    let _ = engine().process(&bytes, true);
}

#[test]
fn zero_sized_png() {
    let r = decode(&png_header_only(0, 0));
    assert!(
        matches!(
            r,
            Err(VisionError::Empty { .. }) | Err(VisionError::Decode(_))
        ),
        "{r:?}"
    );
}

#[test]
fn huge_png_is_refused_before_allocating() {
    let r = decode(&png_header_only(20_000, 20_000));
    assert!(
        matches!(
            r,
            Err(VisionError::TooLarge {
                width: 20_000,
                height: 20_000,
                ..
            })
        ),
        "{r:?}"
    );
    // Within the side limit but above the pixel budget.
    let r = decode_with_limits(
        &png_header_only(8000, 8000),
        DecodeLimits {
            max_side: 8192,
            max_pixels: 10_000_000,
        },
    );
    assert!(matches!(r, Err(VisionError::TooLarge { .. })), "{r:?}");
}

#[test]
fn rgba_png_finds_the_face() {
    let (faces, _) = engine().process(&fixture("32bit.png"), true).unwrap();
    assert_eq!(faces.len(), 1);
    assert_eq!(
        faces[0].embedding.as_ref().unwrap().len(),
        engine().embedding_dim()
    );
}

#[test]
fn grey_and_16_bit_pngs_are_converted() {
    let rgb = decode(&fixture("obama2.jpg")).unwrap();
    let img = image::RgbImage::from_raw(rgb.width, rgb.height, rgb.data.clone()).unwrap();
    let grey = image::DynamicImage::ImageRgb8(img.clone()).into_luma8();
    let (faces, _) = engine().process(&encode_png(&grey), true).unwrap();
    assert_eq!(faces.len(), 1, "grey");
    let deep = image::DynamicImage::ImageRgb8(img.clone()).into_rgb16();
    let (faces16, _) = engine().process(&encode_png(&deep), true).unwrap();
    assert_eq!(faces16.len(), 1, "16-bit");
    let grey16 = image::DynamicImage::ImageRgb8(img).into_luma16();
    let d = decode(&encode_png(&grey16)).unwrap();
    assert_eq!((d.width, d.height), (rgb.width, rgb.height));
}

#[test]
fn tiny_and_flat_images_have_no_faces() {
    for (w, h) in [(1, 1), (5, 3), (11, 40), (12, 12), (64, 48)] {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([120, 130, 140]));
        let (faces, _) = engine().process(&encode_png(&img), true).unwrap();
        assert!(faces.is_empty(), "{w}x{h}");
    }
}

#[test]
fn bad_config_is_reported_whole() {
    let mut cfg = VisionConfig {
        models_dir: Some(root().join("models")),
        workers: 0,
        ..VisionConfig::default()
    };
    cfg.detector.min_face_size = 0.0;
    match FaceEngine::new(cfg) {
        Err(VisionError::Config(msg)) => assert!(
            msg.contains("workers") && msg.contains("min_face_size"),
            "{msg}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_models_dir_is_a_model_error() {
    let cfg = VisionConfig {
        models_dir: Some(root().join("no-such-dir")),
        ..VisionConfig::default()
    };
    assert!(matches!(
        FaceEngine::new(cfg),
        Err(VisionError::Model { .. })
    ));
}

#[test]
fn pool_runs_off_the_runtime_and_bounds_concurrency() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pool = VisionPool::new(engine().clone());
    rt.block_on(async {
        let a = pool.process(fixture("biden.jpg"), true);
        let b = pool.process(b"junk".to_vec(), true);
        let (a, b) = tokio::join!(a, b);
        assert_eq!(a.unwrap().0.len(), 1);
        assert!(matches!(b, Err(VisionError::Decode(_))));
    });
}
