//! The key vault on the wire: what sessions do with agents' reports, and the Admin
//! calls `ListSealingKeys`, `ExportSealingKeys` and `ExportSealingKeysStream`.
//!
//! Owns turning reports and requests into vault calls, events and statuses; the
//! decisions (what to keep, how it is encrypted) are `crate::vault`'s.

use std::pin::Pin;
use std::sync::Arc;

use elysium_proto::{MAX_MESSAGE_BYTES, v1 as pb};
use tokio_stream::Stream;
use tonic::Status;

use super::status::{blocking, internal};
use crate::drill;
use crate::state::Coordinator;
use crate::store::{DrillRecord, NodeRecord};
use crate::vault::{
    Accepted, ClusterToken, DropError, Export, ExportError, Refused, describe_dropped, short_id,
    token_fingerprint,
};

/// Bytes of the keys file per `ExportSealingKeysChunk`: well under the message limit
/// (`MAX_MESSAGE_BYTES`), large enough that a vault of hundreds of keys is a few chunks.
pub(crate) const EXPORT_CHUNK_BYTES: usize = 256 * 1024;

/// What `ExportSealingKeysStream` answers with.
pub(crate) type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportSealingKeysChunk, Status>> + Send>>;

/// A `SealingKeyReport` from a node's session.
pub(crate) async fn on_sealing_key(c: &Arc<Coordinator>, node: &NodeRecord, report: pb::SealingKeyReport) {
    let (cc, n) = (c.clone(), node.clone());
    let what = format!("{}/{}", report.namespace, report.name);
    let result =
        blocking(move || cc.vault.accept_sealing_key(cc.store.as_ref(), &n, &report, cc.now())).await;
    let result = match result {
        Ok(r) => r,
        Err(status) => {
            tracing::warn!(node = %node.name, key = %what, %status, "could not back up a sealing key");
            return;
        }
    };
    match result {
        Ok(Accepted::New) => {
            c.event("vault.key", &node.name, &format!("sealed-secrets key {what} backed up"));
            // The drill may have been red for want of this key: check again now.
            c.drill_kick.notify_one();
        }
        Ok(Accepted::Changed) => {
            tracing::info!(node = %node.name, key = %what, "sealing key metadata changed");
            // `active` → `compromised` changes which keys a restored controller loads.
            c.drill_kick.notify_one();
        }
        Ok(Accepted::Seen | Accepted::Unchanged) => {
            tracing::debug!(node = %node.name, key = %what, "sealing key seen again");
        }
        Err(e) => refused(c, node, "key", &what, &e),
    }
}

/// The K3s server token from a node's `K3sReport` (every server may send it).
pub(crate) async fn on_k3s_token(c: &Arc<Coordinator>, node: &NodeRecord, token: &str) {
    if token.is_empty() {
        return;
    }
    let (cc, n, t) = (c.clone(), node.clone(), zeroize::Zeroizing::new(token.to_owned()));
    let accepted = blocking(move || {
        let k3s = cc.cluster.borrow().k3s.clone();
        let cluster = ClusterToken {
            known: k3s.server_token.as_deref(),
            from_first_server: k3s.first_server_id.as_deref() == Some(n.id.as_str()),
        };
        cc.vault.accept_k3s_token(cc.store.as_ref(), &n, &t, cluster, cc.now())
    });
    match accepted.await {
        Ok(Ok(Accepted::New)) => c.event("vault.k3s-token", &node.name, "K3s server token backed up"),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => refused(c, node, "token", "the K3s token", &e),
        Err(status) => tracing::warn!(node = %node.name, %status, "could not back up the K3s token"),
    }
}

/// Logs and records a refusal: the 1st, 10th, 100th… of each kind from a node,
/// with the count, so that a node repeating a refused report (every new session,
/// or a flood) cannot fill the log.
fn refused(c: &Coordinator, node: &NodeRecord, class: &'static str, what: &str, e: &Refused) {
    let detail = std::error::Error::source(e).map(|s| format!(": {s}")).unwrap_or_default();
    match e {
        Refused::Store(_) | Refused::Vault(_) => {
            tracing::error!(node = %node.name, item = %what, error = %e, detail, "the key vault failed");
        }
        _ => {
            let count = c.vault.count_refusal(&node.name, class, e);
            if !is_power_of_ten(count) {
                tracing::debug!(node = %node.name, item = %what, error = %e, count, "key vault report refused");
                return;
            }
            tracing::warn!(node = %node.name, item = %what, error = %e, detail, count, "key vault report refused");
            let times =
                if count == 1 { String::new() } else { format!(" ({count} refusals of this kind so far)") };
            c.event("vault.refused", &node.name, &format!("{what}: {e}{detail}{times}"));
        }
    }
}

fn is_power_of_ten(mut n: u64) -> bool {
    while n >= 10 && n.is_multiple_of(10) {
        n /= 10;
    }
    n == 1
}

/// `DropVaultItem`: drops an item, or lets a dropped one back. Evented.
pub(crate) async fn drop_item(
    c: &Arc<Coordinator>,
    admin: &str,
    request: pb::DropVaultItemRequest,
) -> Result<pb::DropVaultItemResponse, Status> {
    let cc = c.clone();
    let (id, undo) = (request.id.clone(), request.undo);
    let outcome = blocking(move || {
        if undo {
            cc.vault.undrop_item(cc.store.as_ref(), &id)
        } else {
            cc.vault.drop_item(cc.store.as_ref(), &id, cc.now())
        }
    })
    .await?
    .map_err(|e| match e {
        DropError::NotFound(_) => Status::not_found(e.to_string()),
        DropError::Ambiguous { .. } => Status::invalid_argument(e.to_string()),
        DropError::AlreadyDropped(_) | DropError::NotDropped(_) => Status::failed_precondition(e.to_string()),
        DropError::Store(e) => internal(e),
    })?;
    let (kind, verb) = if undo { ("vault.undropped", "let back") } else { ("vault.dropped", "dropped") };
    c.event(kind, &outcome.id, &format!("{} {verb} by {admin}", outcome.what));
    if !undo {
        // The drill judged the vault with that key.
        c.drill_kick.notify_one();
    }
    Ok(pb::DropVaultItemResponse { id: outcome.id, what: outcome.what })
}

/// `ListSealingKeys`: metadata only, newest certificate first, and the last drill.
pub(crate) async fn list(c: &Arc<Coordinator>) -> Result<pb::ListSealingKeysResponse, Status> {
    let store = c.store.clone();
    let (mut records, drill) = blocking(move || -> Result<_, crate::store::StoreError> {
        Ok((store.list_vault()?, store.get_drill()?))
    })
    .await?
    .map_err(internal)?;
    records.sort_by_key(|r| std::cmp::Reverse(r.sealing_key.as_ref().map(|m| m.not_before_unix)));
    let (dropped, records): (Vec<_>, Vec<_>) = records.into_iter().partition(|r| r.is_dropped());
    let token = records.iter().filter(|r| r.is_k3s_token()).max_by_key(|r| r.last_seen_unix);
    Ok(pb::ListSealingKeysResponse {
        dropped: dropped
            .iter()
            .map(|r| pb::DroppedVaultItem {
                id: short_id(&r.id),
                what: describe_dropped(r),
                dropped_unix: r.dropped_unix,
                first_reported_by: r.first_reported_by.clone(),
                reported_by: r.reported_by.clone(),
                last_seen_unix: r.last_seen_unix,
            })
            .collect(),
        keys: records
            .iter()
            .filter_map(|r| {
                let m = r.sealing_key.as_ref()?;
                Some(pb::SealingKeyInfo {
                    namespace: m.namespace.clone(),
                    name: m.name.clone(),
                    labels: m.labels.clone().into_iter().collect(),
                    fingerprint: m.fingerprint.clone(),
                    not_before_unix: m.not_before_unix,
                    not_after_unix: m.not_after_unix,
                    created_unix: m.created_unix,
                    first_seen_unix: r.first_seen_unix,
                    last_seen_unix: r.last_seen_unix,
                    reported_by: r.reported_by.clone(),
                    id: short_id(&r.id),
                    first_reported_by: r.first_reported_by.clone(),
                })
            })
            .collect(),
        k3s_token: Some(match token {
            Some(r) => pb::K3sTokenInfo {
                backed_up: true,
                fingerprint: token_fingerprint(r),
                reported_by: r.reported_by.clone(),
                first_seen_unix: r.first_seen_unix,
                last_seen_unix: r.last_seen_unix,
                id: short_id(&r.id),
                first_reported_by: r.first_reported_by.clone(),
            },
            None => pb::K3sTokenInfo::default(),
        }),
        now_unix: c.now(),
        drill: Some(drill_view(c, drill.as_ref())),
    })
}

/// The last drill as `keys status` shows it, with whether one is configured now.
fn drill_view(c: &Coordinator, last: Option<&DrillRecord>) -> pb::RecoveryDrill {
    let section = c.cluster.borrow().spec.parsed().drill().cloned();
    let interval = section.as_ref().map_or(0, |d| d.interval().as_secs());
    let mut view =
        pb::RecoveryDrill { configured: section.is_some(), interval_seconds: interval, ..Default::default() };
    if let Some(d) = &section {
        (view.repository, view.branch, view.path) = (d.repository.clone(), d.branch.clone(), d.path.clone());
    }
    let Some(r) = last else { return view };
    let next_unix = if section.is_some() {
        r.started_unix.saturating_add(i64::try_from(interval).unwrap_or(i64::MAX))
    } else {
        0
    };
    pb::RecoveryDrill {
        configured: section.is_some(),
        ran: true,
        passed: r.passed,
        summary: if r.passed { drill::passed_message(r) } else { drill::failed_message(r) },
        repository: r.repository.clone(),
        branch: r.branch.clone(),
        path: r.path.clone(),
        commit: r.commit.clone().unwrap_or_default(),
        started_unix: r.started_unix,
        finished_unix: r.finished_unix,
        duration_ms: r.duration_ms,
        since_unix: r.since_unix,
        next_unix,
        keys: r.keys,
        sealed_secrets: r.sealed_secrets,
        sealed_secrets_opened: r.sealed_secrets_opened,
        failures: r
            .failures
            .iter()
            .map(|f| pb::DrillFailure {
                check: f.check.clone(),
                subject: f.subject.clone(),
                detail: f.detail.clone(),
            })
            .collect(),
        warnings: r.warnings.clone(),
        interval_seconds: interval,
    }
}

/// The decrypted keys file (and token), for either export call.
async fn open_export(c: &Arc<Coordinator>, request: &pb::ExportSealingKeysRequest) -> Result<Export, Status> {
    let cc = c.clone();
    let include_k3s_token = request.include_k3s_token;
    blocking(move || cc.vault.export(cc.store.as_ref(), include_k3s_token, cc.now())).await?.map_err(|e| {
        match e {
            ExportError::Store(e) => internal(e),
            ExportError::Vault(e) => {
                tracing::error!(error = %e, "key vault export failed");
                Status::data_loss(e.to_string())
            }
        }
    })
}

/// `ExportSealingKeys`: the decrypted keys file (and token) in one message. The caller
/// has been checked to hold the admin certificate.
pub(crate) async fn export(
    c: &Arc<Coordinator>,
    admin: &str,
    request: pb::ExportSealingKeysRequest,
) -> Result<pb::ExportSealingKeysResponse, Status> {
    let export = open_export(c, &request).await?;
    // Leave room for the response's framing and the token.
    if export.keys_yaml.len() + 4096 > MAX_MESSAGE_BYTES {
        return Err(Status::resource_exhausted(format!(
            "{} keys do not fit in one response ({} bytes): use ExportSealingKeysStream \
             (`elysium-node keys export` of this version does)",
            export.keys,
            export.keys_yaml.len()
        )));
    }
    c.event("vault.exported", admin, &format!("{} sealing keys exported", export.keys));
    Ok(pb::ExportSealingKeysResponse {
        keys_yaml: export.keys_yaml.to_string(),
        keys: export.keys as u32,
        k3s_server_token: export.k3s_token.as_deref().map(|t| t.to_string()).unwrap_or_default(),
    })
}

/// `ExportSealingKeysStream`: the same export in chunks of [`EXPORT_CHUNK_BYTES`], cut
/// lazily from the one decrypted copy, which is wiped when the stream is dropped
/// (finished or abandoned by the client).
pub(crate) async fn export_stream(
    c: &Arc<Coordinator>,
    admin: &str,
    request: pb::ExportSealingKeysRequest,
) -> Result<ExportStream, Status> {
    let export = Arc::new(open_export(c, &request).await?);
    c.event("vault.exported", admin, &format!("{} sealing keys exported", export.keys));
    let total = export.keys_yaml.len();
    // At least one chunk, so that the first carries the counts even for an empty file.
    let chunks = total.div_ceil(EXPORT_CHUNK_BYTES).max(1);
    tracing::info!(keys = export.keys, bytes = total, chunks, "streaming the key vault export");
    let pieces = (0..chunks).map(move |i| {
        let start = i * EXPORT_CHUNK_BYTES;
        let end = (start + EXPORT_CHUNK_BYTES).min(total);
        let first = i == 0;
        Ok(pb::ExportSealingKeysChunk {
            keys_yaml: export.keys_yaml.as_bytes()[start..end].to_vec(),
            keys: if first { export.keys as u32 } else { 0 },
            total_bytes: if first { total as u64 } else { 0 },
            k3s_server_token: match (&export.k3s_token, first) {
                (Some(t), true) => t.to_string(),
                _ => String::new(),
            },
        })
    });
    Ok(Box::pin(tokio_stream::iter(pieces)))
}
