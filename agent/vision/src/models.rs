//! Model files, loaded and parsed once; optimised tract plans cached per concrete input shape.
//!
//! tract optimises best with fully known input shapes (it can then pick kernels and pre-pack weights),
//! so each network keeps one plan per shape it has seen: one per pyramid level for P-Net (stable for a
//! camera's fixed frame size), one per batch size for R-Net, O-Net and MobileFaceNet. The cache is
//! bounded so that a stream of odd-sized images cannot grow it without limit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;

use super::VisionError;

/// One network output: its shape and its values, flattened.
pub type Output = (Vec<usize>, Vec<f32>);

/// Which weights to run.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum ModelVariant {
    /// The float32 files as shipped by their packages.
    #[default]
    Float,
    /// `*.f16.onnx`: weights stored as float16 and widened at load, compute in float32. Half the
    /// file size at float speed; embeddings within cosine 0.9999 of float (see the vision tests).
    F16,
    /// `*.int8.onnx`: static int8 calibration (see `models/rebuild.py`). tract runs it 4–7x slower
    /// than float on one x86_64 host and 35x on another (AVX2 only), and drifts from onnxruntime's
    /// int8 (cosine 0.92–0.99); kept for measurement.
    Int8,
}

impl ModelVariant {
    fn suffix(self) -> &'static str {
        match self {
            ModelVariant::Float => "",
            ModelVariant::F16 => ".f16",
            ModelVariant::Int8 => ".int8",
        }
    }
}

impl std::fmt::Display for ModelVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModelVariant::Float => "float",
            ModelVariant::F16 => "f16",
            ModelVariant::Int8 => "int8",
        })
    }
}

impl std::str::FromStr for ModelVariant {
    type Err = VisionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "float" | "f32" => Ok(ModelVariant::Float),
            "f16" | "float16" => Ok(ModelVariant::F16),
            "int8" | "i8" => Ok(ModelVariant::Int8),
            other => Err(VisionError::Config(format!(
                "unknown model variant {other:?} (float, f16, int8)"
            ))),
        }
    }
}

/// Which file each network is loaded from.
#[derive(Clone, Debug)]
pub struct ModelSet {
    pub dir: PathBuf,
    /// Variant of the three MTCNN nets.
    pub detector: ModelVariant,
    /// Variant of MobileFaceNet.
    pub embedder: ModelVariant,
}

impl ModelSet {
    /// `CAMGATE_MODELS` if set, else `models/` relative to the current directory.
    pub fn default_dir() -> PathBuf {
        std::env::var_os("CAMGATE_MODELS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("models"))
    }

    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ModelSet {
            dir: dir.into(),
            detector: ModelVariant::Float,
            embedder: ModelVariant::Float,
        }
    }

    fn path(&self, net: &str, variant: ModelVariant) -> PathBuf {
        self.dir.join(format!("{net}{}.onnx", variant.suffix()))
    }
}

type Plan = Arc<TypedRunnableModel>;

/// Upper bound on cached plans per network (a pyramid has ~10 levels; batches are bucketed).
const MAX_PLANS: usize = 48;

/// One network: parsed once, planned per input shape.
pub struct Net {
    pub name: &'static str,
    path: PathBuf,
    model: InferenceModel,
    plans: Mutex<HashMap<Vec<usize>, Plan>>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("name", &self.name)
            .field("path", &self.path)
            .finish()
    }
}

impl Net {
    pub fn load(name: &'static str, path: &Path) -> Result<Self, VisionError> {
        let bytes = std::fs::read(path).map_err(|e| VisionError::Model {
            path: path.to_owned(),
            reason: format!("{e} (set --models DIR or CAMGATE_MODELS)"),
        })?;
        let model = super::graph_rewrite::parse(&bytes).map_err(|e| VisionError::Model {
            path: path.to_owned(),
            reason: format!("{e:#}"),
        })?;
        Ok(Net {
            name,
            path: path.to_owned(),
            model,
            plans: Mutex::new(HashMap::new()),
        })
    }

    /// The optimised plan for this exact input shape, built on first use.
    pub fn plan(&self, shape: &[usize]) -> Result<Plan, VisionError> {
        // A poisoned lock only means another thread panicked mid-insert; the map itself is still valid.
        if let Some(p) = self
            .plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(shape)
        {
            return Ok(p.clone());
        }
        let plan = self
            .model
            .clone()
            .with_input_fact(0, f32::fact(shape).into())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| VisionError::Model {
                path: self.path.clone(),
                reason: format!("{e:#}"),
            })?;
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if plans.len() >= MAX_PLANS {
            plans.clear();
        }
        plans.insert(shape.to_vec(), plan.clone());
        Ok(plan)
    }

    /// Runs the network on one f32 input of `shape`; returns every output as a flat f32 vector + shape.
    pub fn run(&self, shape: &[usize], data: Vec<f32>) -> Result<Vec<Output>, VisionError> {
        let plan = self.plan(shape)?;
        let input = tract_ndarray::ArrayD::from_shape_vec(shape, data)
            .map_err(|e| VisionError::inference(self.name, e))?;
        let outputs = plan
            .run(tvec!(Tensor::from(input).into_tvalue()))
            .map_err(|e| VisionError::inference(self.name, e))?;
        outputs
            .iter()
            .map(|t| {
                let v = t
                    .to_plain_array_view::<f32>()
                    .map_err(|e| VisionError::inference(self.name, e))?;
                Ok((v.shape().to_vec(), v.iter().copied().collect()))
            })
            .collect()
    }

    pub fn cached_plans(&self) -> usize {
        self.plans.lock().map(|p| p.len()).unwrap_or(0)
    }
}

/// The four networks of the pipeline.
#[derive(Debug)]
pub struct Models {
    pub pnet: Net,
    pub rnet: Net,
    pub onet: Net,
    pub embedder: Net,
    /// Embedding size read from the model's output (192 for the shipped MobileFaceNet).
    pub embedding_dim: usize,
    pub set: ModelSet,
}

impl Models {
    /// Loads and checks every network; plans the fixed-shape ones (R-Net, O-Net, embedder at batch 1).
    pub fn load(set: &ModelSet) -> Result<Self, VisionError> {
        let pnet = Net::load("pnet", &set.path("pnet", set.detector))?;
        let rnet = Net::load("rnet", &set.path("rnet", set.detector))?;
        let onet = Net::load("onet", &set.path("onet", set.detector))?;
        let embedder = Net::load("mobilefacenet", &set.path("mobilefacenet", set.embedder))?;
        // Planning at start-up both warms the cache and fails early on a wrong file.
        rnet.plan(&[1, 24, 24, 3])?;
        onet.plan(&[1, 48, 48, 3])?;
        let plan = embedder.plan(&[1, 3, 112, 112])?;
        let fact = plan
            .model()
            .output_fact(0)
            .map_err(|e| VisionError::inference("mobilefacenet", e))?;
        let embedding_dim = match fact.shape.as_concrete() {
            Some([1, d]) if *d > 0 => *d,
            other => {
                return Err(VisionError::Model {
                    path: set.path("mobilefacenet", set.embedder),
                    reason: format!("expected an output of shape [1, D], got {other:?}"),
                })
            }
        };
        Ok(Models {
            pnet,
            rnet,
            onet,
            embedder,
            embedding_dim,
            set: set.clone(),
        })
    }
}
