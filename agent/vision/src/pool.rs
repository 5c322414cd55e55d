//! A bounded pool of blocking threads for inference.
//!
//! tract runs synchronously and takes tens to hundreds of milliseconds per frame; on the async runtime
//! that would stall every camera session. Work goes to tokio's blocking threads instead, with a
//! semaphore bounding how many run at once (CPU-bound work gains nothing past the core count, and each
//! in-flight frame holds its decoded pixels in memory).

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::pipeline::{Face, FaceEngine, StageTimes};
use super::VisionError;

#[derive(Clone, Debug)]
pub struct VisionPool {
    engine: Arc<FaceEngine>,
    permits: Arc<Semaphore>,
}

impl VisionPool {
    pub fn new(engine: Arc<FaceEngine>) -> Self {
        let n = engine.config.workers.max(1);
        VisionPool {
            engine,
            permits: Arc::new(Semaphore::new(n)),
        }
    }

    pub fn engine(&self) -> &Arc<FaceEngine> {
        &self.engine
    }

    /// Decodes and runs the pipeline on a blocking thread; waits for a free worker first, so callers
    /// queue (back-pressure) instead of piling up threads.
    pub async fn process(
        &self,
        bytes: Vec<u8>,
        with_embeddings: bool,
    ) -> Result<(Vec<Face>, StageTimes), VisionError> {
        self.run(move |engine| engine.process(&bytes, with_embeddings))
            .await?
    }

    /// Runs `work` with the engine on a blocking thread, once a worker is free.
    pub async fn run<T, F>(&self, work: F) -> Result<T, VisionError>
    where
        T: Send + 'static,
        F: FnOnce(&FaceEngine) -> T + Send + 'static,
    {
        let _permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| VisionError::Pool(e.to_string()))?;
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || work(&engine))
            .await
            .map_err(|e| VisionError::Pool(e.to_string()))
    }
}
