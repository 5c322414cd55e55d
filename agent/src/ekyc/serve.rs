//! What each request is answered with (DECISIONS §5), given the face pipeline: the records to
//! produce, in order. No Kafka here; the worker produces them and commits.
//!
//! Which side sends the web side's result (`EKYC_RESULT`): the one that makes the features. In
//! `inline` mode that is this detector; in `split` mode the embedding side, which alone sees both
//! features of a `compare_face`. A request that fails before that (no usable face, a picture that
//! cannot be read) gets its result from the side that failed it.

use std::sync::Mutex;

use camgate_vision::embed::cosine;
use camgate_vision::image::RgbImage;
use camgate_vision::pipeline::{Face, FaceEngine};
use serde_json::Value;

use super::config::{EkycConfig, Mode};
use super::licenses::{LicenseError, Licenses};
use super::messages::{
    self as msg, AlignedBgr, ApiType, InsightfaceRequest, MtcnnRequest, Picture, Poison,
};

/// Where a reply goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    InsightfaceRequest,
    InsightfaceReply,
    Result,
    /// The group's shared licenses (`topics.licenses`), keyed by the client id.
    License,
}

/// A record to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub topic: Topic,
    /// The record's key when it is not the request id.
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

/// A request's replies and, when it failed, why (counted and logged by the worker).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub replies: Vec<Reply>,
    pub error: Option<String>,
}

impl Answer {
    fn ok(replies: Vec<Reply>) -> Answer {
        Answer {
            replies,
            error: None,
        }
    }
}

pub struct Services {
    mode: Mode,
    min_face_px: f32,
    licenses: Mutex<Licenses>,
}

fn reply(topic: Topic, value: Vec<u8>) -> Reply {
    Reply {
        topic,
        key: None,
        value,
    }
}

/// A client's license as the shared record: the client id as JSON text, the aligned BGR face.
fn license_record(client_id: &Value, face: &AlignedBgr) -> Reply {
    Reply {
        topic: Topic::License,
        key: Some(client_id.to_string().into_bytes()),
        value: face.0.clone(),
    }
}

fn result(id: &str, api: Option<ApiType>, success: bool, rate: Option<f32>) -> Reply {
    reply(Topic::Result, msg::result_value(id, api, success, rate))
}

/// The answer to a message that could not be read: the detector-side reply when its type and
/// client are known, and a failed result when its id is.
pub fn poison_answer(p: &Poison) -> Answer {
    let mut replies = Vec::new();
    if let (Some(api), Some(client)) = (p.api, &p.client_id) {
        replies.push(reply(
            Topic::InsightfaceReply,
            msg::detector_reply_value(api, client),
        ));
    }
    if let Some(id) = &p.request_id {
        replies.push(result(id, p.api, false, None));
    }
    Answer {
        replies,
        error: Some(p.error.to_string()),
    }
}

fn rgb_of(a: &AlignedBgr) -> RgbImage {
    let mut data = a.0.clone();
    msg::swap_bgr_rgb(&mut data);
    let side = msg::ALIGNED_SIDE as u32;
    RgbImage::from_raw(side, side, data).expect("an AlignedBgr holds 112x112x3 bytes")
}

fn bgr_of(face: &Face) -> Option<AlignedBgr> {
    let mut data = face.aligned.as_ref()?.data.clone();
    msg::swap_bgr_rgb(&mut data);
    Some(AlignedBgr(data))
}

/// The picture as the pipeline's RGB, its size checked against `image_shape`.
fn decode(engine: &FaceEngine, p: Picture) -> Result<RgbImage, String> {
    match p {
        Picture::Bgr {
            height,
            width,
            mut data,
        } => {
            msg::swap_bgr_rgb(&mut data);
            RgbImage::from_raw(width, height, data).map_err(|e| e.to_string())
        }
        Picture::Encoded {
            height,
            width,
            data,
        } => {
            let img = engine.decode(&data).map_err(|e| e.to_string())?;
            if (img.height, img.width) != (height, width) {
                return Err(format!(
                    "image_shape says [{height}, {width}, 3] but the picture is {}x{}",
                    img.height, img.width
                ));
            }
            Ok(img)
        }
    }
}

impl Services {
    pub fn open(cfg: &EkycConfig) -> Result<Services, LicenseError> {
        Ok(Services {
            mode: cfg.mode,
            min_face_px: cfg.min_face_px,
            licenses: Mutex::new(Licenses::open(&cfg.dir, cfg.max_clients)?),
        })
    }

    fn licenses(&self) -> std::sync::MutexGuard<'_, Licenses> {
        // A panic while holding it cannot leave the store half-written (files are renamed in).
        self.licenses.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a license another worker of the group registered (read from the shared topic).
    pub fn keep_license(&self, client_id: &Value, face: &AlignedBgr) -> Result<(), LicenseError> {
        self.licenses().put(client_id, face)
    }

    /// The usable faces, largest first.
    fn faces(&self, engine: &FaceEngine, img: &RgbImage) -> Result<Vec<Face>, String> {
        let inline = self.mode == Mode::Inline;
        let (faces, _) = engine.run(img, inline).map_err(|e| e.to_string())?;
        let mut faces: Vec<Face> = faces
            .into_iter()
            .filter(|f| f.aligned.is_some() && f.quality.box_size >= self.min_face_px)
            .filter(|f| !inline || f.embedding.is_some())
            .collect();
        faces.sort_by(|a, b| b.quality.box_size.total_cmp(&a.quality.box_size));
        Ok(faces)
    }

    /// An `MTCNN_REQUEST`: detect and align, then embed here (`inline`) or pass the aligned
    /// faces on (`split`).
    pub fn mtcnn(&self, engine: &FaceEngine, req: MtcnnRequest) -> Answer {
        let head = Head::of_mtcnn(&req);
        let faces = decode(engine, req.picture).and_then(|img| self.faces(engine, &img));
        let (id, face) = match faces.and_then(|f| self.pick(&head, f)) {
            Ok(p) => p,
            Err(why) => return head.detector_failed(why),
        };
        let license = match (head.api, id.aligned()) {
            (ApiType::RegisterLicense, Some(l)) => Some(license_record(&head.client_id, &l)),
            _ => None,
        };
        let mut answer = match self.mode {
            Mode::Inline => match id.feature(engine) {
                Ok(idf) => head.features(idf, face.and_then(|f| f.embedding)),
                Err(why) => head.features_failed(why),
            },
            Mode::Split => Answer::ok(vec![reply(
                Topic::InsightfaceRequest,
                msg::insightface_request_value(
                    head.api,
                    &head.client_id,
                    id.aligned().as_ref(),
                    face.as_ref().and_then(bgr_of).as_ref(),
                ),
            )]),
        };
        // Shared before the replies: the web side's next request may go to another worker.
        answer.replies.splice(0..0, license);
        answer
    }

    /// The faces the request's type takes (largest first: `face` the live one, `idface` the
    /// document, else the client's license); a `register_license` face is kept as the license.
    fn pick(&self, head: &Head, faces: Vec<Face>) -> Result<(Side, Option<Face>), String> {
        let mut faces = faces.into_iter();
        let (idface, face) = match head.api {
            ApiType::RegisterLicense => (faces.next(), None),
            ApiType::RegisterFace => (None, faces.next()),
            ApiType::CompareFace => {
                let live = faces.next();
                (faces.next(), live)
            }
        };
        let (need_id, need_face) = msg::faces_of(head.api);
        if (need_face && face.is_none())
            || (head.api == ApiType::RegisterLicense && idface.is_none())
        {
            return Err("no usable face".into());
        }
        let id = match idface {
            Some(f) => Side::Face(f),
            None if need_id => match self.licenses().get(&head.client_id) {
                Ok(Some(l)) => Side::License(l),
                Ok(None) => {
                    return Err(
                        "one face, and no register_license of this client to compare it with"
                            .into(),
                    )
                }
                Err(e) => return Err(e.to_string()),
            },
            None => Side::Absent,
        };
        if let (ApiType::RegisterLicense, Some(l)) = (head.api, id.aligned()) {
            self.licenses()
                .put(&head.client_id, &l)
                .map_err(|e| e.to_string())?;
        }
        Ok((id, face))
    }

    /// An `INSIGHTFACE_REQUEST`: embed the aligned faces it carries.
    pub fn insightface(&self, engine: &FaceEngine, req: InsightfaceRequest) -> Answer {
        let embed = |a: &Option<AlignedBgr>| -> Result<Option<Vec<f32>>, String> {
            a.as_ref()
                .map(|a| engine.embed_aligned(&rgb_of(a)).map_err(|e| e.to_string()))
                .transpose()
        };
        let features = (embed(&req.idface), embed(&req.face));
        let head = Head::of_insightface(&req);
        match features {
            (Ok(id), Ok(face)) => head.features(id, face),
            (Err(e), _) | (_, Err(e)) => head.features_failed(e),
        }
    }
}

/// The `idface` side of a request: a face of this picture, the client's stored license, or none.
enum Side {
    Face(Face),
    License(AlignedBgr),
    Absent,
}

impl Side {
    fn aligned(&self) -> Option<AlignedBgr> {
        match self {
            Side::Face(f) => bgr_of(f),
            Side::License(l) => Some(l.clone()),
            Side::Absent => None,
        }
    }

    fn feature(&self, engine: &FaceEngine) -> Result<Option<Vec<f32>>, String> {
        match self {
            Side::Face(f) => Ok(f.embedding.clone()),
            Side::License(l) => engine
                .embed_aligned(&rgb_of(l))
                .map(Some)
                .map_err(|e| e.to_string()),
            Side::Absent => Ok(None),
        }
    }
}

/// What every reply repeats: the request's id, type and client.
pub struct Head {
    request_id: String,
    api: ApiType,
    client_id: Value,
}

impl Head {
    pub fn of_mtcnn(r: &MtcnnRequest) -> Head {
        Head {
            request_id: r.request_id.clone(),
            api: r.api,
            client_id: r.client_id.clone(),
        }
    }

    pub fn of_insightface(r: &InsightfaceRequest) -> Head {
        Head {
            request_id: r.request_id.clone(),
            api: r.api,
            client_id: r.client_id.clone(),
        }
    }

    /// The embedding side's reply and the web side's result from the features made.
    fn features(&self, id: Option<Vec<f32>>, face: Option<Vec<f32>>) -> Answer {
        let rate = match (&id, &face) {
            (Some(a), Some(b)) => Some(cosine(a, b)),
            _ => None,
        };
        let (need_id, need_face) = msg::faces_of(self.api);
        let success = (!need_id || id.is_some()) && (!need_face || face.is_some());
        let value =
            msg::insightface_reply_value(self.api, &self.client_id, id.as_deref(), face.as_deref());
        self.answer(
            value,
            success,
            rate,
            (!success).then(|| "a feature could not be made".into()),
        )
    }

    /// The text's error messages on the embedding side: every feature of the type `null`.
    pub fn features_failed(&self, why: String) -> Answer {
        let value = msg::insightface_reply_value(self.api, &self.client_id, None, None);
        self.answer(value, false, None, Some(why))
    }

    /// The detector side's reply when it has no usable face: only the type and the client.
    pub fn detector_failed(&self, why: String) -> Answer {
        let value = msg::detector_reply_value(self.api, &self.client_id);
        self.answer(value, false, None, Some(why))
    }

    fn answer(
        &self,
        reply_value: Vec<u8>,
        success: bool,
        rate: Option<f32>,
        error: Option<String>,
    ) -> Answer {
        Answer {
            replies: vec![
                reply(Topic::InsightfaceReply, reply_value),
                result(&self.request_id, Some(self.api), success, rate),
            ],
            error,
        }
    }
}
