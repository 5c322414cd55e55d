//! A transaction and the rules of its life, without I/O: what each processing step, treatment
//! and review decides (DECISIONS §6), and the notifications each decision sends.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::notice::Notification;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Operation {
    Enroll,
    Update,
    Search,
    TreatException,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::Enroll => "ENROLL",
            Operation::Update => "UPDATE",
            Operation::Search => "SEARCH",
            Operation::TreatException => "TREAT_EXCEPTION",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Accepted, waiting for its turn (not notified: the text notifies outcomes).
    Queued,
    Pending,
    Exception,
    Enrolled,
    Failed,
    Match,
    NotMatch,
    PersonNotFound,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Queued => "QUEUED",
            Status::Pending => "PENDING",
            Status::Exception => "EXCEPTION",
            Status::Enrolled => "ENROLLED",
            Status::Failed => "FAILED",
            Status::Match => "MATCH",
            Status::NotMatch => "NOT_MATCH",
            Status::PersonNotFound => "PERSON_NOT_FOUND",
        }
    }

    /// No further change can happen.
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Queued | Status::Pending | Status::Exception)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Treatment {
    SameFingers,
    DifferentFingers,
    MergeTransactions,
    Recollect,
    IncorrectEnroll,
}

impl Treatment {
    pub const ALL: [Treatment; 5] = [
        Treatment::SameFingers,
        Treatment::DifferentFingers,
        Treatment::MergeTransactions,
        Treatment::Recollect,
        Treatment::IncorrectEnroll,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Treatment::SameFingers => "SAME_FINGERS",
            Treatment::DifferentFingers => "DIFFERENT_FINGERS",
            Treatment::MergeTransactions => "MERGE_TRANSACTIONS",
            Treatment::Recollect => "RECOLLECT",
            Treatment::IncorrectEnroll => "INCORRECT_ENROLL",
        }
    }

    pub fn parse(s: &str) -> Option<Treatment> {
        Treatment::ALL.into_iter().find(|t| t.name() == s)
    }
}

/// Which check raised an exception: an enroll that matched another person, or an update that
/// did not match its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExceptionKind {
    Enroll,
    Update,
}

/// What a decision does to the gallery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    None,
    /// The transaction's templates (and attributes) enrolled under its key.
    Enroll,
    /// Attributes and templates merged into the matched person.
    MergeIntoMatched,
    /// The templates added to the person of the transaction's key.
    AddToOwn,
    /// The person's templates replaced by the transaction's.
    ReplaceOwn,
}

/// The outcome of a treatment (DECISIONS §6), or `None` where the text gives the treatment no
/// meaning for that kind of exception (an enroll exception has no reference to call incorrect;
/// an update exception has no second transaction to merge).
pub fn treatment_outcome(kind: ExceptionKind, t: Treatment) -> Option<(Status, Effect)> {
    use Treatment::*;
    Some(match (kind, t) {
        (ExceptionKind::Enroll, SameFingers) => (Status::Failed, Effect::None),
        (ExceptionKind::Enroll, DifferentFingers) => (Status::Enrolled, Effect::Enroll),
        (ExceptionKind::Enroll, MergeTransactions) => (Status::Enrolled, Effect::MergeIntoMatched),
        (ExceptionKind::Enroll, Recollect) => (Status::Failed, Effect::None),
        (ExceptionKind::Update, SameFingers) => (Status::Enrolled, Effect::AddToOwn),
        (ExceptionKind::Update, DifferentFingers) => (Status::Failed, Effect::None),
        (ExceptionKind::Update, Recollect) => (Status::Failed, Effect::None),
        (ExceptionKind::Update, IncorrectEnroll) => (Status::Enrolled, Effect::ReplaceOwn),
        (ExceptionKind::Enroll, IncorrectEnroll) | (ExceptionKind::Update, MergeTransactions) => {
            return None
        }
    })
}

/// A candidate of a search or the person an exception is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub key: String,
    pub pguid: String,
    pub score: f32,
}

/// A face kept with the transaction, so that a review or a treatment days later needs neither
/// the pictures nor the models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Face {
    pub model: String,
    pub embedding: Vec<f32>,
    /// The face's measures (`size`, `blur`, `pose`, `score`, `ok`).
    pub quality: serde_json::Value,
    /// The aligned 112×112 RGB crop, base64 (the gallery keeps it with the template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop: Option<String>,
}

/// Work queued on a transaction, done in order of arrival with all other work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "work", content = "arg")]
pub enum Work {
    /// The submission itself (pictures → faces → decision).
    Process,
    Treat(Treatment),
    Review(bool),
}

/// A decision written down before anything is done about it: replaying it after a crash does
/// the same again (the gallery change is recognised by the `tguid` its templates carry; the
/// outbox skips notifications already stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub status: Status,
    pub effect: Effect,
    pub notices: Vec<Notification>,
}

/// One change of status, as listed in the transaction's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub status: Status,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExceptionInfo {
    pub kind: ExceptionKind,
    pub matched: Candidate,
}

/// A transaction as stored (`<dir>/tx/<tguid>.json`) and as `GET /v1/transactions/{tguid}`
/// shows it (less the faces' embeddings and crops).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tx {
    pub tguid: String,
    pub operation: Operation,
    /// Arrival order: work is done in this order across all transactions.
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    pub status: Status,
    pub accepted_at_ms: u64,
    pub updated_at_ms: u64,
    pub history: Vec<Change>,
    /// Notifications stored so far (the next one's `seq`).
    pub notices: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faces: Vec<Face>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<Candidate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception: Option<ExceptionInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub treatment: Option<Treatment>,
    /// Why the transaction is `PENDING` or `FAILED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unsolved entries this transaction's face matched (reverse latent matches).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uguids: Vec<String>,
    /// Queued work not yet done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work: Option<Work>,
    /// A decision made and not yet fully carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
}

impl Tx {
    pub fn new(
        tguid: String,
        operation: Operation,
        seq: u64,
        key: Option<String>,
        attributes: BTreeMap<String, String>,
        now_ms: u64,
    ) -> Tx {
        Tx {
            tguid,
            operation,
            seq,
            key,
            attributes,
            status: Status::Queued,
            accepted_at_ms: now_ms,
            updated_at_ms: now_ms,
            history: vec![Change {
                status: Status::Queued,
                at_ms: now_ms,
            }],
            notices: 0,
            faces: Vec::new(),
            candidates: Vec::new(),
            exception: None,
            treatment: None,
            reason: None,
            uguids: Vec::new(),
            work: Some(Work::Process),
            plan: None,
        }
    }

    /// A stored transaction, read back.
    pub fn parse(bytes: &[u8]) -> Result<Tx, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// The notification of a status change of this transaction. PENDING and EXCEPTION, and
    /// every outcome of a treated exception, say `ENROLL` even for an update (the text).
    pub fn notice(&self, status: Status) -> Notification {
        let operation = match (self.operation, status) {
            (Operation::Update, Status::Pending | Status::Exception) => Operation::Enroll,
            (Operation::Update, _) if self.treatment.is_some() => Operation::Enroll,
            (op, _) => op,
        };
        Notification {
            operation: operation.name().into(),
            tguid: self.tguid.clone(),
            status: status.name().into(),
            treatment: None,
            uguid: None,
        }
    }

    pub fn treatment_notice(&self, t: Treatment) -> Notification {
        Notification {
            operation: Operation::TreatException.name().into(),
            tguid: self.tguid.clone(),
            status: "OK".into(),
            treatment: Some(t.name().into()),
            uguid: None,
        }
    }

    pub fn latent_notice(&self, uguid: &str) -> Notification {
        Notification {
            operation: Operation::Enroll.name().into(),
            tguid: self.tguid.clone(),
            status: "REVERSE_LATENT_MATCH".into(),
            treatment: None,
            uguid: Some(uguid.into()),
        }
    }

    /// The state the API shows: embeddings and crops left out (they are large and biometric).
    pub fn view(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(m) = v.as_object_mut() {
            m.remove("faces");
            m.remove("plan");
            m.insert("faces_kept".into(), self.faces.len().into());
        }
        v
    }
}

/// Checks a treatment request against the transaction's state: the exception kind it applies to.
pub fn check_treatment(tx: &Tx, t: Treatment) -> Result<ExceptionKind, String> {
    let Some(e) = tx
        .exception
        .as_ref()
        .filter(|_| tx.status == Status::Exception)
    else {
        return Err(format!(
            "transaction {} is {}, not EXCEPTION",
            tx.tguid,
            tx.status.name()
        ));
    };
    if tx.work.is_some() {
        return Err(format!("transaction {} is already being treated", tx.tguid));
    }
    treatment_outcome(e.kind, t).map(|_| e.kind).ok_or_else(|| {
        format!(
            "{} does not apply to an {} exception",
            t.name(),
            match e.kind {
                ExceptionKind::Enroll => "enroll",
                ExceptionKind::Update => "update",
            }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn treatments_have_the_outcomes_of_the_decisions() {
        use ExceptionKind::*;
        use Treatment::*;
        let table = [
            (Enroll, SameFingers, Some(Status::Failed)),
            (Enroll, DifferentFingers, Some(Status::Enrolled)),
            (Enroll, MergeTransactions, Some(Status::Enrolled)),
            (Enroll, Recollect, Some(Status::Failed)),
            (Enroll, IncorrectEnroll, None),
            (Update, SameFingers, Some(Status::Enrolled)),
            (Update, DifferentFingers, Some(Status::Failed)),
            (Update, MergeTransactions, None),
            (Update, Recollect, Some(Status::Failed)),
            (Update, IncorrectEnroll, Some(Status::Enrolled)),
        ];
        for (k, t, want) in table {
            assert_eq!(treatment_outcome(k, t).map(|o| o.0), want, "{k:?} {t:?}");
        }
        assert_eq!(
            treatment_outcome(Enroll, MergeTransactions).unwrap().1,
            Effect::MergeIntoMatched
        );
        assert_eq!(
            treatment_outcome(Update, IncorrectEnroll).unwrap().1,
            Effect::ReplaceOwn
        );
    }

    #[test]
    fn an_update_says_enroll_when_pending_excepted_or_treated() {
        let mut tx = Tx::new(
            "t".into(),
            Operation::Update,
            1,
            Some("k".into()),
            BTreeMap::new(),
            0,
        );
        assert_eq!(tx.notice(Status::Enrolled).operation, "UPDATE");
        assert_eq!(tx.notice(Status::Exception).operation, "ENROLL");
        assert_eq!(tx.notice(Status::Pending).operation, "ENROLL");
        tx.treatment = Some(Treatment::SameFingers);
        assert_eq!(tx.notice(Status::Enrolled).operation, "ENROLL");
        let t = tx.treatment_notice(Treatment::SameFingers);
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"operation":"TREAT_EXCEPTION","tguid":"t","status":"OK","treatment":"SAME_FINGERS"}"#
        );
        assert_eq!(
            serde_json::to_string(&tx.latent_notice("u")).unwrap(),
            r#"{"operation":"ENROLL","tguid":"t","status":"REVERSE_LATENT_MATCH","uguid":"u"}"#
        );
    }

    #[test]
    fn a_treatment_needs_an_untreated_exception_of_its_kind() {
        let mut tx = Tx::new(
            "t".into(),
            Operation::Enroll,
            1,
            Some("k".into()),
            BTreeMap::new(),
            0,
        );
        assert!(check_treatment(&tx, Treatment::SameFingers).is_err());
        tx.status = Status::Exception;
        tx.work = None;
        tx.exception = Some(ExceptionInfo {
            kind: ExceptionKind::Enroll,
            matched: Candidate {
                key: "bob".into(),
                pguid: "p".into(),
                score: 0.8,
            },
        });
        assert_eq!(
            check_treatment(&tx, Treatment::SameFingers),
            Ok(ExceptionKind::Enroll)
        );
        assert!(check_treatment(&tx, Treatment::IncorrectEnroll).is_err());
        tx.work = Some(Work::Treat(Treatment::SameFingers));
        assert!(check_treatment(&tx, Treatment::SameFingers).is_err());
    }

    #[test]
    fn treatment_names_round_trip() {
        for t in Treatment::ALL {
            assert_eq!(Treatment::parse(t.name()), Some(t));
            assert_eq!(serde_json::to_value(t).unwrap(), t.name());
        }
        assert_eq!(Treatment::parse("same_fingers"), None);
    }
}
