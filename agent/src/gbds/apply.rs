//! Carrying out a decision: the gallery change, the linked unsolved entries, the notifications,
//! then the new state. Each part can be done again after a crash without doing it twice.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use tracing::warn;

use super::run::Gbds;
use super::tx::{Change, Effect, Tx};
use super::GbdsError;
use crate::gallery::{Gallery, NewTemplate};
use crate::notice::NoticeRecord;
use crate::outbox::OutboxError;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

impl Gbds {
    pub(super) async fn carry_out(&self, mut tx: Tx) -> Result<(), GbdsError> {
        let Some(plan) = tx.plan.clone() else {
            return Ok(());
        };
        let gallery = self.gallery.clone();
        let owner = tx.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = gallery.lock().unwrap_or_else(|p| p.into_inner());
            apply_effect(&mut g, &owner, plan.effect)
        })
        .await
        .map_err(|e| GbdsError::Internal(e.to_string()))??;
        for (i, n) in plan.notices.iter().enumerate() {
            let mut rec = NoticeRecord::new(tx.notices + i as u32, self.clock.now_ms(), n.clone());
            rec.extra = extra_of(&tx);
            self.store_notice(&rec).await?;
        }
        let now = self.clock.now_ms();
        tx.notices += plan.notices.len() as u32;
        tx.status = plan.status;
        tx.history.push(Change {
            status: plan.status,
            at_ms: now,
        });
        tx.updated_at_ms = now;
        tx.work = None;
        tx.plan = None;
        self.save(&tx)?;
        // The faces are kept in the state: a review or a treatment needs no pictures.
        self.files.drop_images(&tx.tguid);
        Ok(())
    }

    /// Appends a notification unless it is already stored; waits for room rather than lose it.
    async fn store_notice(&self, rec: &NoticeRecord) -> Result<(), GbdsError> {
        let key = rec.key();
        if self
            .stored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key)
        {
            return Ok(());
        }
        let data =
            Bytes::from(serde_json::to_vec(rec).map_err(|e| GbdsError::Internal(e.to_string()))?);
        let mut warned = false;
        loop {
            match self.outbox.append(data.clone()).await {
                Ok(_) => break,
                Err(e @ (OutboxError::Full { .. } | OutboxError::Io { .. })) => {
                    if !warned {
                        warn!(key = %key, error = %e, "notification waits for room in the outbox");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.stored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key);
        Ok(())
    }
}

/// What endpoints with `extra_fields = true` also receive.
fn extra_of(tx: &Tx) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    if let Some(k) = &tx.key {
        m.insert("key".into(), k.clone().into());
    }
    if !tx.candidates.is_empty() {
        m.insert(
            "candidates".into(),
            serde_json::to_value(&tx.candidates).unwrap_or_default(),
        );
    }
    if let Some(r) = &tx.reason {
        m.insert("reason".into(), r.clone().into());
    }
    m
}

/// The transaction's faces as gallery templates, each marked with the `tguid` (so that a replay
/// recognises what it already did).
fn templates(tx: &Tx) -> Vec<NewTemplate> {
    tx.faces
        .iter()
        .map(|f| {
            let mut quality = f.quality.clone();
            if let Some(m) = quality.as_object_mut() {
                m.insert("tguid".into(), tx.tguid.clone().into());
            }
            NewTemplate {
                model: f.model.clone(),
                embedding: f.embedding.clone(),
                quality: Some(quality),
                crop: f.crop.as_deref().and_then(|c| B64.decode(c).ok()),
            }
        })
        .collect()
}

/// How many of the person `key`'s templates came from transaction `tguid`, and how many it has.
fn marked(g: &Gallery, key: &str, tguid: &str) -> (usize, usize) {
    let Some(p) = g.person(key) else {
        return (0, 0);
    };
    let from_tx = p
        .templates
        .iter()
        .filter(|t| {
            t.data
                .quality
                .as_ref()
                .is_some_and(|q| q.value()["tguid"] == tguid)
        })
        .count();
    (from_tx, p.templates.len())
}

fn apply_effect(g: &mut Gallery, tx: &Tx, effect: Effect) -> Result<(), GbdsError> {
    g.refresh()?;
    let own = tx.key.clone().unwrap_or_default();
    let target = match effect {
        Effect::None => return Ok(()),
        Effect::MergeIntoMatched => tx
            .exception
            .as_ref()
            .map(|e| e.matched.key.clone())
            .unwrap_or_default(),
        _ => own.clone(),
    };
    let (done, all) = marked(g, &target, &tx.tguid);
    let already = match effect {
        Effect::ReplaceOwn => done > 0 && done == all,
        _ => done > 0,
    };
    if !already {
        match effect {
            Effect::Enroll => {
                let attrs = (!tx.attributes.is_empty()).then(|| tx.attributes.clone());
                g.enroll(&target, attrs, templates(tx))?;
            }
            Effect::MergeIntoMatched => {
                let mut attrs: BTreeMap<String, String> =
                    g.person(&target).map(|p| p.attrs()).unwrap_or_default();
                for (k, v) in &tx.attributes {
                    attrs.entry(k.clone()).or_insert_with(|| v.clone());
                }
                g.enroll(&target, Some(attrs), templates(tx))?;
            }
            Effect::AddToOwn => {
                g.enroll(&target, None, templates(tx))?;
            }
            Effect::ReplaceOwn => g.replace_templates(&target, templates(tx))?,
            Effect::None => {}
        }
    }
    // The strangers this face matched become part of the person it is now enrolled as.
    for u in &tx.uguids {
        g.link_unknown(u, &target)?;
    }
    Ok(())
}

impl Gbds {
    /// Forgets the oldest finished transactions beyond `keep_finished`.
    pub(super) fn prune(&self) {
        let keep = self.cfg.keep_finished;
        let mut book = self.book();
        let done = |t: &&Tx| t.status.is_final() && t.work.is_none();
        // Pruning in batches keeps the sort (and the copies) off the path of every transaction.
        if book.txs.values().filter(done).count() <= keep + keep / 10 {
            return;
        }
        let mut finished: Vec<(u64, String)> = book
            .txs
            .values()
            .filter(done)
            .map(|t| (t.updated_at_ms, t.tguid.clone()))
            .collect();
        finished.sort();
        let excess = finished.len() - keep;
        for (_, tguid) in finished.into_iter().take(excess) {
            book.txs.remove(&tguid);
            self.files.remove(&tguid);
        }
    }
}
