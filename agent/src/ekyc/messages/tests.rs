//! Golden vectors for the EKYC messages: the text's shapes byte for byte, and every kind of
//! poison with what of the request survives into its reply. (Kafka hands over whole records, so
//! there is no split read to test here.)

use super::*;

const ID: &str = "67460e74-02e3-11e8-b443-00163e990bdb";
const MAX: usize = 1 << 20;
const PIXELS: u64 = 48_000_000;

fn mtcnn(value: &str) -> Result<MtcnnRequest, Poison> {
    mtcnn_request(Some(ID.as_bytes()), value.as_bytes(), MAX, PIXELS)
}

fn poison(value: &str) -> Poison {
    mtcnn(value).expect_err("poison")
}

#[test]
fn a_raw_bgr_request_parses_with_its_shape() {
    // 1x2 BGR: blue, red; base64 of ff 00 00 00 00 ff.
    let r = mtcnn(
        r#"{"request_api_type": "compare_face", "client_id": 124, "image_shape": [1, 2, 3], "image": "/wAAAAD/"}"#,
    )
    .unwrap();
    assert_eq!(r.request_id, ID);
    assert_eq!(r.api, ApiType::CompareFace);
    assert_eq!(r.client_id, serde_json::json!(124));
    assert_eq!(
        r.picture,
        Picture::Bgr {
            height: 1,
            width: 2,
            data: vec![0xff, 0, 0, 0, 0, 0xff]
        }
    );
    let mut rgb = vec![0xff, 0, 0, 0, 0, 0xff];
    swap_bgr_rgb(&mut rgb);
    assert_eq!(rgb, [0, 0, 0xff, 0xff, 0, 0]);
}

#[test]
fn an_encoded_picture_is_told_by_its_magic_bytes() {
    // A PNG signature; its size is checked against image_shape once decoded.
    let png = B64.encode(b"\x89PNG\r\n\x1a\nrest");
    let r = mtcnn(&format!(
        r#"{{"request_api_type": "register_face", "client_id": "c-7", "image_shape": [948, 1616, 3], "image": "{png}"}}"#
    ))
    .unwrap();
    assert!(matches!(
        r.picture,
        Picture::Encoded {
            height: 948,
            width: 1616,
            ..
        }
    ));
    assert_eq!(r.client_id, serde_json::json!("c-7"));
    let jpeg = B64.encode([0xff, 0xd8, 0xff, 0xe0, 1, 2]);
    let r = mtcnn(&format!(
        r#"{{"request_api_type": "register_license", "client_id": 1, "image_shape": [2, 2, 3], "image": "{jpeg}"}}"#
    ))
    .unwrap();
    assert!(matches!(r.picture, Picture::Encoded { .. }));
}

#[test]
fn every_poison_keeps_what_could_be_read() {
    let p = poison("not json");
    assert_eq!((p.request_id.as_deref(), p.api), (Some(ID), None));
    assert!(matches!(p.error, MessageError::NotJson(_)));
    let p = poison(r#"{"request_api_type": "compare_face", "client_id": 1, "image_sh"#);
    assert!(
        matches!(p.error, MessageError::NotJson(_)),
        "truncated: {p:?}"
    );
    assert!(matches!(poison("[1, 2]").error, MessageError::NotJson(_)));
    let p = poison(r#"{"client_id": 5}"#);
    assert_eq!(p.error, MessageError::Missing("request_api_type"));
    assert_eq!(p.client_id, Some(serde_json::json!(5)));
    let p = poison(r#"{"request_api_type": "delete_face", "client_id": 5}"#);
    assert_eq!(p.error, MessageError::UnknownApi("delete_face".into()));
    let p = poison(r#"{"request_api_type": "register_face"}"#);
    assert_eq!(
        (p.api, &p.error),
        (
            Some(ApiType::RegisterFace),
            &MessageError::Missing("client_id")
        )
    );
    let head = r#""request_api_type": "register_face", "client_id": 9"#;
    for (body, field) in [
        (format!(r#"{{{head}, "image": "AAAA"}}"#), "image_shape"),
        (format!(r#"{{{head}, "image_shape": [1, 1, 3]}}"#), "image"),
        (
            format!(r#"{{{head}, "image_shape": [1, 1, 3], "image": null}}"#),
            "image",
        ),
    ] {
        let p = poison(&body);
        assert_eq!(p.error, MessageError::Missing(field), "{body}");
        assert_eq!(p.client_id, Some(serde_json::json!(9)));
        assert_eq!(p.api, Some(ApiType::RegisterFace));
    }
    for (body, field, needle) in [
        (
            r#""image_shape": [1, 1, 3], "image": "!!!""#,
            "image",
            "bad base64",
        ),
        (
            r#""image_shape": [1, 2, 3], "image": "AAAA""#,
            "image",
            "needs 6",
        ),
        (
            r#""image_shape": [1, 1, 4], "image": "AAAA""#,
            "image_shape",
            "4 channels",
        ),
        (
            r#""image_shape": [0, 1, 3], "image": "AAAA""#,
            "image_shape",
            "not [height, width, 3]",
        ),
        (
            r#""image_shape": [1, 1], "image": "AAAA""#,
            "image_shape",
            "not [height, width, 3]",
        ),
        (
            r#""image_shape": "948,1616,3", "image": "AAAA""#,
            "image_shape",
            "not [height",
        ),
        (
            r#""image_shape": [100000, 100000, 3], "image": "AAAA""#,
            "image_shape",
            "over the limit",
        ),
        (
            r#""image_shape": [1, 1, 3], "image": 7"#,
            "image",
            "a number where",
        ),
    ] {
        let p = poison(&format!("{{{head}, {body}}}"));
        match &p.error {
            MessageError::Invalid(f, why) => {
                assert_eq!(*f, field, "{body}");
                assert!(why.contains(needle), "{body}: {why}");
            }
            e => panic!("{body}: {e:?}"),
        }
    }
}

#[test]
fn the_key_is_the_request_id_and_the_size_is_bounded() {
    let body = r#"{"request_api_type": "register_face", "client_id": 9, "image_shape": [1, 1, 3], "image": "AAAA"}"#;
    let p = mtcnn_request(None, body.as_bytes(), MAX, PIXELS).unwrap_err();
    assert_eq!(
        (p.request_id, p.error),
        (None, MessageError::Missing("key"))
    );
    let p = mtcnn_request(Some(b"\xff\xfe"), body.as_bytes(), MAX, PIXELS).unwrap_err();
    assert_eq!(p.request_id, None, "a key that is not text is no id");
    let p = mtcnn_request(Some(ID.as_bytes()), body.as_bytes(), 10, PIXELS).unwrap_err();
    assert_eq!(p.error, MessageError::TooLarge(body.len(), 10));
    assert_eq!(
        p.request_id.as_deref(),
        Some(ID),
        "an oversize value is still answered"
    );
}

#[test]
fn insightface_requests_carry_exactly_the_faces_of_their_type() {
    let face = AlignedBgr(vec![7; ALIGNED_BYTES]);
    let id = AlignedBgr(vec![9; ALIGNED_BYTES]);
    let client = serde_json::json!(124);
    let v = insightface_request_value(ApiType::CompareFace, &client, Some(&id), Some(&face));
    let r = insightface_request(Some(ID.as_bytes()), &v, MAX).unwrap();
    assert_eq!((r.idface, r.face), (Some(id.clone()), Some(face.clone())));
    let v = insightface_request_value(ApiType::RegisterFace, &client, None, Some(&face));
    let text: serde_json::Value = serde_json::from_slice(&v).unwrap();
    let keys: Vec<&str> = text
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["client_id", "face", "request_api_type"]);
    let r = insightface_request(Some(ID.as_bytes()), &v, MAX).unwrap();
    assert_eq!(
        (r.api, r.idface, r.face),
        (ApiType::RegisterFace, None, Some(face))
    );
    // A register_license without its idface, and a face of the wrong size.
    let p = insightface_request(
        Some(ID.as_bytes()),
        &v.clone().replace_type("register_license"),
        MAX,
    )
    .unwrap_err();
    assert_eq!(p.error, MessageError::Missing("idface"));
    let small = format!(
        r#"{{"request_api_type": "register_face", "client_id": 1, "face": "{}"}}"#,
        B64.encode([0u8; 300])
    );
    let p = insightface_request(Some(ID.as_bytes()), small.as_bytes(), MAX).unwrap_err();
    assert!(matches!(p.error, MessageError::Invalid("face", ref w) if w.contains("300 bytes")));
}

trait ReplaceType {
    fn replace_type(self, to: &str) -> Vec<u8>;
}

impl ReplaceType for Vec<u8> {
    fn replace_type(self, to: &str) -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_slice(&self).unwrap();
        v["request_api_type"] = to.into();
        serde_json::to_vec(&v).unwrap()
    }
}

#[test]
fn replies_are_the_texts_shapes_byte_for_byte() {
    let c = serde_json::json!(124);
    // [1.0, -0.5] as little-endian float32: 00 00 80 3f 00 00 00 bf.
    assert_eq!(feature_base64(&[1.0, -0.5]), "AACAPwAAAL8=");
    let cases: [(Vec<u8>, &str); 8] = [
        (
            insightface_reply_value(ApiType::CompareFace, &c, Some(&[1.0]), Some(&[-0.5])),
            r#"{"client_id":124,"face_feature":"AAAAvw==","idface_feature":"AACAPw==","request_api_type":"compare_face"}"#,
        ),
        (
            insightface_reply_value(ApiType::RegisterFace, &c, None, Some(&[1.0])),
            r#"{"client_id":124,"face_feature":"AACAPw==","request_api_type":"register_face"}"#,
        ),
        (
            insightface_reply_value(ApiType::RegisterLicense, &c, None, None),
            r#"{"client_id":124,"idface_feature":null,"request_api_type":"register_license"}"#,
        ),
        (
            insightface_reply_value(ApiType::CompareFace, &c, None, None),
            r#"{"client_id":124,"face_feature":null,"idface_feature":null,"request_api_type":"compare_face"}"#,
        ),
        (
            detector_reply_value(ApiType::RegisterLicense, &c),
            r#"{"client_id":124,"request_api_type":"register_license"}"#,
        ),
        (
            result_value(ID, Some(ApiType::CompareFace), true, Some(0.7)),
            r#"{"rate":0.699999988079071,"request_api_type":"compare_face","request_id":"67460e74-02e3-11e8-b443-00163e990bdb","status":0}"#,
        ),
        (
            result_value(ID, Some(ApiType::RegisterLicense), false, None),
            r#"{"request_api_type":"register_license","request_id":"67460e74-02e3-11e8-b443-00163e990bdb","status":1}"#,
        ),
        (
            result_value(ID, None, false, Some(0.9)),
            r#"{"request_api_type":null,"request_id":"67460e74-02e3-11e8-b443-00163e990bdb","status":1}"#,
        ),
    ];
    for (got, want) in cases {
        assert_eq!(String::from_utf8(got).unwrap(), want);
    }
    let failed = result_value(ID, Some(ApiType::CompareFace), false, Some(0.9));
    let v: serde_json::Value = serde_json::from_slice(&failed).unwrap();
    assert_eq!(
        (v["status"].as_u64(), v["rate"].as_f64()),
        (Some(1), Some(0.0))
    );
    let over = result_value(ID, Some(ApiType::CompareFace), true, Some(1.2));
    let v: serde_json::Value = serde_json::from_slice(&over).unwrap();
    assert_eq!(v["rate"].as_f64(), Some(1.0), "rate is clamped to [0, 1]");
}
