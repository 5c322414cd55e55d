//! The transaction processor: accepts work durably, does it one item at a time in order of
//! arrival, and stores each status change as a notification in the outbox.
//!
//! Crash safety: a decision is written into the transaction's file (`plan`) before anything is
//! done about it; carrying it out again after a crash does the same. The gallery change is
//! recognised by the `tguid` its templates carry, and notifications already in the outbox (their
//! keys are learnt at start-up) are not stored twice. So no status change is ever notified
//! twice; a notification may be POSTed twice when the notifier itself crashes after the POST.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::config::GbdsConfig;
use super::store::TxFiles;
use super::tx::{
    treatment_outcome, Candidate, Effect, ExceptionInfo, ExceptionKind, Face, Operation, Plan,
    Status, Treatment, Tx, Work,
};
use super::GbdsError;
use crate::clock::SharedClock;
use crate::gallery::{Gallery, MOBILEFACENET};
use crate::outbox::{Outbox, Record};
use crate::results::Stored;
use crate::stage::config::QualityBars;
use crate::stage::run::quality_of;
use crate::vision::VisionPool;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Keys (`<tguid>/<seq>`) of the notifications stored in `records`.
pub fn notice_keys<'a>(records: impl IntoIterator<Item = &'a Record>) -> HashSet<String> {
    records
        .into_iter()
        .filter_map(|r| match Stored::parse(&r.data) {
            Ok(Stored::Notice(n)) => Some(n.key()),
            _ => None,
        })
        .collect()
}

#[derive(Default)]
pub(super) struct Book {
    pub(super) txs: HashMap<String, Tx>,
    /// Work to do: position → tguid.
    pub(super) queue: BTreeMap<u64, String>,
    pub(super) next_seq: u64,
}

pub struct Gbds {
    pub(super) cfg: GbdsConfig,
    pub(super) files: TxFiles,
    book: Mutex<Book>,
    pub(super) wake: Notify,
    pub(super) clock: SharedClock,
    pub(super) gallery: Arc<Mutex<Gallery>>,
    pub(super) outbox: Outbox,
    pool: VisionPool,
    pub(super) stored: Mutex<HashSet<String>>,
}

impl Gbds {
    /// Reads the transactions of `cfg.dir`; those with work left are queued again in order.
    /// `stored` holds the keys of the notifications already in the outbox ([`notice_keys`]).
    pub fn open(
        cfg: &GbdsConfig,
        gallery: Arc<Mutex<Gallery>>,
        outbox: Outbox,
        pool: VisionPool,
        clock: SharedClock,
        stored: HashSet<String>,
    ) -> Result<Gbds, GbdsError> {
        let (files, txs) = TxFiles::open(&cfg.dir)?;
        let mut book = Book::default();
        for tx in txs {
            book.next_seq = book.next_seq.max(tx.seq + 1);
            if tx.work.is_some() || tx.plan.is_some() {
                book.queue.insert(tx.seq, tx.tguid.clone());
            }
            book.txs.insert(tx.tguid.clone(), tx);
        }
        if !book.queue.is_empty() {
            info!(queued = book.queue.len(), "transactions resumed");
        }
        Ok(Gbds {
            cfg: cfg.clone(),
            files,
            book: Mutex::new(book),
            wake: Notify::new(),
            clock,
            gallery,
            outbox,
            pool,
            stored: Mutex::new(stored),
        })
    }

    pub(super) fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn gallery(&self) -> MutexGuard<'_, Gallery> {
        self.gallery.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Transactions accepted and waiting (for `camgate status`).
    pub fn queued(&self) -> usize {
        self.book().queue.len()
    }

    /// Does the queued work in order until `stop`. A step that fails on the disk or the outbox
    /// is tried again (nothing is skipped: later work waits, as order is part of the contract).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) -> Result<u64, GbdsError> {
        let mut done = 0u64;
        let mut delay = Duration::from_millis(200);
        loop {
            let next = self
                .book()
                .queue
                .first_key_value()
                .map(|(s, t)| (*s, t.clone()));
            let Some((seq, tguid)) = next else {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(done),
                    _ = self.wake.notified() => continue,
                }
            };
            let step = tokio::select! {
                _ = stop.cancelled() => return Ok(done),
                r = self.step(&tguid) => r,
            };
            match step {
                Ok(()) => {
                    self.book().queue.remove(&seq);
                    done += 1;
                    delay = Duration::from_millis(200);
                    self.prune();
                }
                Err(e) => {
                    error!(tguid = %tguid, error = %e, "transaction step failed; trying again");
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(done),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    async fn step(&self, tguid: &str) -> Result<(), GbdsError> {
        let mut tx =
            self.book().txs.get(tguid).cloned().ok_or_else(|| {
                GbdsError::Internal(format!("queued transaction {tguid} is gone"))
            })?;
        if tx.plan.is_none() {
            let plan = match tx.work.unwrap_or(Work::Process) {
                Work::Process => self.process(&mut tx).await,
                Work::Treat(t) => treat_plan(&mut tx, t),
                Work::Review(approve) => self.review_plan(&mut tx, approve),
            };
            tx.plan = Some(plan);
            self.save(&tx)?;
        }
        self.carry_out(tx).await
    }

    pub(super) fn save(&self, tx: &Tx) -> Result<(), GbdsError> {
        self.files.save(tx)?;
        self.book().txs.insert(tx.tguid.clone(), tx.clone());
        Ok(())
    }
}

/// A plan of one status change.
fn plan(
    tx: &Tx,
    status: Status,
    effect: Effect,
    mut notices: Vec<crate::notice::Notification>,
) -> Plan {
    notices.push(tx.notice(status));
    Plan {
        status,
        effect,
        notices,
    }
}

fn failed(tx: &mut Tx, reason: String) -> Plan {
    tx.reason = Some(reason);
    plan(tx, Status::Failed, Effect::None, Vec::new())
}

fn treat_plan(tx: &mut Tx, t: Treatment) -> Plan {
    let outcome = tx
        .exception
        .as_ref()
        .and_then(|e| treatment_outcome(e.kind, t));
    let Some((status, effect)) = outcome else {
        return failed(tx, format!("{} cannot treat this transaction", t.name()));
    };
    tx.treatment = Some(t);
    let first = tx.treatment_notice(t);
    plan(tx, status, effect, vec![first])
}

impl Gbds {
    /// Pictures → the best face of each → the decision of the transaction's operation.
    async fn process(&self, tx: &mut Tx) -> Plan {
        // Persons enrolled or deleted by another process (`camgate gallery`) since the last
        // change count: every decision below reads the gallery without refreshing it.
        if let Err(e) = self.gallery().refresh() {
            return failed(tx, format!("the gallery could not be read: {e}"));
        }
        let key_missing = tx
            .key
            .as_deref()
            .is_some_and(|k| self.gallery().person(k).is_none());
        match tx.operation {
            Operation::Search if key_missing => {
                return plan(tx, Status::PersonNotFound, Effect::None, Vec::new())
            }
            Operation::Update if key_missing => {
                return failed(tx, "no person is enrolled with this key".into())
            }
            _ => {}
        }
        let images = match self.files.images(&tx.tguid) {
            Ok(i) => i,
            Err(e) => return failed(tx, format!("the pictures could not be read: {e}")),
        };
        let mut problems = Vec::new();
        tx.faces.clear();
        for (i, img) in images.into_iter().enumerate() {
            match self.pool.process(img, true).await {
                Ok((found, _)) => match self.best_face(found) {
                    Some(f) => tx.faces.push(f),
                    None => problems.push(format!("image {i}: no face")),
                },
                Err(e) => problems.push(format!("image {i}: {e}")),
            }
        }
        if tx.faces.is_empty() {
            return failed(tx, format!("no usable face ({})", problems.join("; ")));
        }
        match tx.operation {
            Operation::Search => self.search_plan(tx),
            _ => match below_bar(tx) {
                Some(reason) => {
                    tx.reason = Some(reason);
                    plan(tx, Status::Pending, Effect::None, Vec::new())
                }
                None => self.after_gate(tx),
            },
        }
    }

    /// The largest face with an embedding, with its measures against the enrolment bars.
    fn best_face(&self, faces: Vec<crate::vision::pipeline::Face>) -> Option<Face> {
        let bars = QualityBars {
            min_size: self.cfg.quality_min_face_px,
            min_score: self.cfg.quality_min_score,
            max_blur: self.cfg.quality_max_blur,
            max_pose: self.cfg.quality_max_pose,
        };
        let f = faces
            .into_iter()
            .filter(|f| f.embedding.is_some())
            .max_by(|a, b| a.quality.box_size.total_cmp(&b.quality.box_size))?;
        let q = quality_of(&f, &bars);
        Some(Face {
            model: MOBILEFACENET.into(),
            quality: serde_json::json!({
                "size": q.size, "blur": q.blur, "pose": q.pose,
                "score": f.quality.score, "ok": q.ok,
            }),
            crop: f.aligned.map(|c| B64.encode(c.data)),
            embedding: f.embedding.unwrap_or_default(),
        })
    }

    fn review_plan(&self, tx: &mut Tx, approve: bool) -> Plan {
        if let Err(e) = self.gallery().refresh() {
            return failed(tx, format!("the gallery could not be read: {e}"));
        }
        if approve {
            tx.reason = None;
            self.after_gate(tx)
        } else {
            failed(tx, "rejected in manual review".into())
        }
    }

    /// Reverse latent matches, then the exception check of an enroll or an update.
    fn after_gate(&self, tx: &mut Tx) -> Plan {
        let mut g = self.gallery();
        for f in &tx.faces {
            if let Ok(Some((u, _))) = g.best_unknown(&f.embedding, &f.model) {
                if !tx.uguids.contains(&u) {
                    tx.uguids.push(u);
                }
            }
        }
        let latents = tx.uguids.iter().map(|u| tx.latent_notice(u)).collect();
        let threshold = g.config().match_threshold;
        let key = tx.key.clone().unwrap_or_default();
        let (status, effect) = if tx.operation == Operation::Update {
            let own = best_of(&mut g, &tx.faces, |c| c.key == key);
            match own {
                Some(c) if c.score >= threshold => (Status::Enrolled, Effect::AddToOwn),
                own => {
                    tx.exception = Some(ExceptionInfo {
                        kind: ExceptionKind::Update,
                        matched: own.unwrap_or(Candidate {
                            key: key.clone(),
                            pguid: String::new(),
                            score: -1.0,
                        }),
                    });
                    (Status::Exception, Effect::None)
                }
            }
        } else {
            match best_of(&mut g, &tx.faces, |c| c.key != key) {
                Some(c) if c.score >= threshold => {
                    tx.exception = Some(ExceptionInfo {
                        kind: ExceptionKind::Enroll,
                        matched: c,
                    });
                    (Status::Exception, Effect::None)
                }
                _ => (Status::Enrolled, Effect::Enroll),
            }
        };
        drop(g);
        plan(tx, status, effect, latents)
    }

    fn search_plan(&self, tx: &mut Tx) -> Plan {
        let mut g = self.gallery();
        let threshold = g.config().match_threshold;
        let status = if let Some(key) = tx.key.clone() {
            let own = best_of(&mut g, &tx.faces, |c| c.key == key);
            let hit = own.as_ref().is_some_and(|c| c.score >= threshold);
            tx.candidates = own.into_iter().collect();
            if hit {
                Status::Match
            } else {
                Status::NotMatch
            }
        } else {
            let probe = &tx.faces[0];
            let (decision, _) = g.identify(&probe.embedding, &probe.model);
            let ranked = g.search(&probe.embedding, &probe.model, self.cfg.top_k);
            if matches!(decision, crate::gallery::Decision::Match(_)) {
                tx.candidates = ranked
                    .into_iter()
                    .filter(|c| c.score >= threshold)
                    .map(|c| Candidate {
                        key: c.key,
                        pguid: c.pguid,
                        score: c.score,
                    })
                    .collect();
                Status::Match
            } else {
                Status::NotMatch
            }
        };
        drop(g);
        plan(tx, status, Effect::None, Vec::new())
    }
}

/// The best-scoring person among those `keep` accepts, over every face of the transaction.
fn best_of(
    g: &mut Gallery,
    faces: &[Face],
    keep: impl Fn(&Candidate) -> bool,
) -> Option<Candidate> {
    faces
        .iter()
        .flat_map(|f| g.search(&f.embedding, &f.model, usize::MAX))
        .map(|c| Candidate {
            key: c.key,
            pguid: c.pguid,
            score: c.score,
        })
        .filter(|c| keep(c))
        .max_by(|a, b| a.score.total_cmp(&b.score))
}

/// Why the faces do not pass the enrolment bars, if they do not.
fn below_bar(tx: &Tx) -> Option<String> {
    let low: Vec<String> = tx
        .faces
        .iter()
        .enumerate()
        .filter(|(_, f)| f.quality["ok"] != true)
        .map(|(i, f)| format!("face {i}: quality below the bars {}", f.quality))
        .collect();
    (!low.is_empty()).then(|| low.join("; "))
}
