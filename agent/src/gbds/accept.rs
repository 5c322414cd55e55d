//! [`Transactions`] on the processor: what the local API calls. Each call that queues work
//! returns only once the work is on disk (fsynced), and refuses with `Busy` before writing
//! anything when the queue is full.

use super::run::Gbds;
use super::service::{Accepted, ServiceError, Submission, Transactions};
use super::tx::{check_treatment, Operation, Status, Treatment, Tx, Work};
use super::GbdsError;

fn internal(e: GbdsError) -> ServiceError {
    match &e {
        GbdsError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
            ServiceError::Busy(format!("the disk is full: {e}"))
        }
        _ => ServiceError::Internal(e.to_string()),
    }
}

fn accepted(tguid: &str) -> Accepted {
    Accepted {
        tguid: tguid.to_owned(),
        status: Status::Queued.name().into(),
    }
}

impl Gbds {
    /// Queues `work` on an existing transaction after `check` approves its state.
    fn queue_work(
        &self,
        tguid: &str,
        work: Work,
        check: impl FnOnce(&Tx) -> Result<(), ServiceError>,
    ) -> Result<Accepted, ServiceError> {
        let mut book = self.book();
        if book.queue.len() >= self.cfg.queue_capacity {
            return Err(ServiceError::Busy("the transaction queue is full".into()));
        }
        let mut tx = book
            .txs
            .get(tguid)
            .cloned()
            .ok_or_else(|| ServiceError::NotFound(format!("no transaction {tguid}")))?;
        check(&tx)?;
        tx.work = Some(work);
        tx.seq = book.next_seq;
        self.files.save(&tx).map_err(internal)?;
        book.next_seq += 1;
        book.queue.insert(tx.seq, tx.tguid.clone());
        book.txs.insert(tx.tguid.clone(), tx);
        drop(book);
        self.wake.notify_one();
        Ok(accepted(tguid))
    }

    fn person_json(&self, p: &crate::gallery::Person) -> serde_json::Value {
        serde_json::json!({
            "key": &*p.key,
            "pguid": &*p.pguid,
            "attributes": p.attrs(),
            "templates": p.templates.len(),
            "created_at_ms": p.created_ms,
            "seen_before": p.seen_before,
        })
    }
}

impl Transactions for Gbds {
    fn submit(&self, s: Submission) -> Result<Accepted, ServiceError> {
        let (op, key, images, attrs) = match s {
            Submission::Enroll {
                key,
                images,
                attributes,
            } => (Operation::Enroll, Some(key), images, attributes),
            Submission::Update { key, images } => {
                (Operation::Update, Some(key), images, Default::default())
            }
            Submission::Search { key, images } => {
                (Operation::Search, key, images, Default::default())
            }
        };
        if images.is_empty() {
            return Err(ServiceError::Invalid("at least one image is needed".into()));
        }
        if key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err(ServiceError::Invalid("the key must not be empty".into()));
        }
        let mut book = self.book();
        if book.queue.len() >= self.cfg.queue_capacity {
            return Err(ServiceError::Busy("the transaction queue is full".into()));
        }
        let tguid = uuid::Uuid::new_v4().to_string();
        let tx = Tx::new(
            tguid.clone(),
            op,
            book.next_seq,
            key,
            attrs,
            self.clock.now_ms(),
        );
        // Under the lock: arrival order is the order on disk, and the bound is exact.
        self.files.save_images(&tguid, &images).map_err(internal)?;
        if let Err(e) = self.files.save(&tx) {
            self.files.remove(&tguid);
            return Err(internal(e));
        }
        book.next_seq += 1;
        book.queue.insert(tx.seq, tguid.clone());
        book.txs.insert(tguid.clone(), tx);
        drop(book);
        self.wake.notify_one();
        Ok(accepted(&tguid))
    }

    fn treat(&self, tguid: &str, treatment: &str) -> Result<Accepted, ServiceError> {
        let t = Treatment::parse(treatment).ok_or_else(|| {
            ServiceError::Invalid(format!(
                "unknown treatment {treatment:?} (SAME_FINGERS, DIFFERENT_FINGERS, MERGE_TRANSACTIONS, RECOLLECT, INCORRECT_ENROLL)"
            ))
        })?;
        self.queue_work(tguid, Work::Treat(t), |tx| {
            check_treatment(tx, t)
                .map(|_| ())
                .map_err(ServiceError::Conflict)
        })
    }

    fn review(&self, tguid: &str, approve: bool) -> Result<Accepted, ServiceError> {
        self.queue_work(tguid, Work::Review(approve), |tx| {
            if tx.status == Status::Pending && tx.work.is_none() {
                Ok(())
            } else {
                Err(ServiceError::Conflict(format!(
                    "transaction {tguid} is {}, not PENDING",
                    tx.status.name()
                )))
            }
        })
    }

    fn transaction(&self, tguid: &str) -> Result<serde_json::Value, ServiceError> {
        self.book()
            .txs
            .get(tguid)
            .map(Tx::view)
            .ok_or_else(|| ServiceError::NotFound(format!("no transaction {tguid}")))
    }

    fn people(&self) -> Result<serde_json::Value, ServiceError> {
        let mut g = self.gallery();
        g.refresh()
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let people: Vec<_> = g.persons().map(|p| self.person_json(p)).collect();
        Ok(serde_json::json!({ "people": people }))
    }

    fn person(&self, key: &str) -> Result<serde_json::Value, ServiceError> {
        let mut g = self.gallery();
        g.refresh()
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        g.person(key)
            .map(|p| self.person_json(p))
            .ok_or_else(|| ServiceError::NotFound(format!("no person with key {key:?}")))
    }

    fn delete_person(&self, key: &str) -> Result<serde_json::Value, ServiceError> {
        let mut g = self.gallery();
        match g.delete(key) {
            Ok(p) => Ok(self.person_json(&p)),
            Err(crate::gallery::GalleryError::NoPerson(k)) => {
                Err(ServiceError::NotFound(format!("no person with key {k:?}")))
            }
            Err(e) => Err(ServiceError::Internal(e.to_string())),
        }
    }
}
