//! The sealing keys a server node sees, between the watcher and the session: the
//! watcher publishes the whole set (a `watch` channel in the [`StepLink`]), each
//! session sends what the coordinator may not have. Level-triggered: a new session
//! sends every key again, and every [`REFRESH`] the session sends them all once more
//! so the coordinator's last-seen times mean "still in the cluster". The coordinator
//! keeps each distinct key once, so resending costs a few kilobytes and no writes.
//!
//! [`StepLink`]: crate::link::StepLink

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use elysium_proto::v1 as pb;
use k8s_openapi::api::core::v1::Secret;
use tokio::sync::watch;

/// Label on every sealed-secrets key Secret (`SealedSecretsKeyLabel`,
/// bitnami-labs/sealed-secrets pkg/controller/keys.go); its value is `active` or
/// `compromised`.
pub const KEY_LABEL: &str = elysium_recovery::keys::KEY_LABEL;
/// How often a session sends every key again although nothing changed.
pub const REFRESH: Duration = Duration::from_secs(6 * 3600);

/// namespace, name.
type KeyRef = (String, String);

/// The sealing keys in the cluster now, by namespace and name. `Debug` shows the
/// names only: the reports hold private keys.
#[derive(Clone, Default, PartialEq)]
pub struct KeySet(BTreeMap<KeyRef, Arc<pb::SealingKeyReport>>);

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys().map(|(ns, n)| format!("{ns}/{n}"))).finish()
    }
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds or replaces a key; whether anything changed.
    pub fn insert(&mut self, report: pb::SealingKeyReport) -> bool {
        let at = (report.namespace.clone(), report.name.clone());
        if self.0.get(&at).is_some_and(|r| **r == report) {
            return false;
        }
        self.0.insert(at, Arc::new(report));
        true
    }

    pub fn remove(&mut self, namespace: &str, name: &str) -> bool {
        self.0.remove(&(namespace.to_owned(), name.to_owned())).is_some()
    }

    pub fn names(&self) -> impl Iterator<Item = String> + '_ {
        self.0.keys().map(|(ns, n)| format!("{ns}/{n}"))
    }
}

/// Why a labelled Secret is not a key worth sending. Names the Secret, never its data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAKey {
    #[error("{0} has type {1:?}, not kubernetes.io/tls; `recover` would refuse it")]
    NotTls(String, String),
    #[error("{0} has no data.{1}")]
    Missing(String, &'static str),
}

/// The report for a key Secret; `Ok(None)` for one without a namespace or name
/// (the API server always sets both).
pub fn report(secret: &Secret) -> Result<Option<pb::SealingKeyReport>, NotAKey> {
    let meta = &secret.metadata;
    let (Some(namespace), Some(name)) = (meta.namespace.clone(), meta.name.clone()) else {
        return Ok(None);
    };
    let at = format!("{namespace}/{name}");
    let secret_type = secret.type_.as_deref().unwrap_or("Opaque");
    if secret_type != elysium_recovery::keys::TLS_SECRET_TYPE {
        return Err(NotAKey::NotTls(at, secret_type.to_owned()));
    }
    let field = |f: &'static str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(f))
            .map(|b| b.0.clone())
            .ok_or_else(|| NotAKey::Missing(at.clone(), f))
    };
    Ok(Some(pb::SealingKeyReport {
        tls_crt: field(elysium_recovery::keys::TLS_CRT)?,
        tls_key: field(elysium_recovery::keys::TLS_KEY)?,
        namespace,
        name,
        uid: meta.uid.clone().unwrap_or_default(),
        resource_version: meta.resource_version.clone().unwrap_or_default(),
        labels: meta.labels.clone().unwrap_or_default().into_iter().collect(),
        created_unix: meta.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(0),
    }))
}

/// One session's end of the key set: yields the keys this session has not sent.
#[derive(Debug)]
pub(crate) struct KeySender {
    rx: watch::Receiver<KeySet>,
    sent: BTreeMap<KeyRef, Arc<pb::SealingKeyReport>>,
    refresh: tokio::time::Interval,
}

impl KeySender {
    /// For a new session: everything in the set is yet to be sent.
    pub(crate) fn new(rx: &watch::Receiver<KeySet>, refresh: Duration) -> Self {
        let mut rx = rx.clone();
        rx.mark_changed();
        let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + refresh, refresh);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { rx, sent: BTreeMap::new(), refresh }
    }

    /// Waits until there is something to send. Cancel-safe: nothing is marked sent
    /// before it is returned. `None` when the watcher side is gone.
    pub(crate) async fn next(&mut self) -> Option<Vec<pb::AgentMessage>> {
        loop {
            tokio::select! {
                changed = self.rx.changed() => changed.ok()?,
                _ = self.refresh.tick() => self.sent.clear(),
            }
            let set = self.rx.borrow_and_update().clone();
            self.sent.retain(|at, _| set.0.contains_key(at));
            let mut batch = Vec::new();
            for (at, report) in &set.0 {
                if self.sent.get(at).is_some_and(|s| Arc::ptr_eq(s, report)) {
                    continue;
                }
                self.sent.insert(at.clone(), report.clone());
                batch.push(pb::AgentMessage {
                    msg: Some(pb::agent_message::Msg::SealingKey(pb::SealingKeyReport::clone(report))),
                });
            }
            if !batch.is_empty() {
                return Some(batch);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;

    use super::*;

    fn secret(name: &str, ty: &str, key: &[u8]) -> Secret {
        let mut s = Secret::default();
        s.metadata.namespace = Some("flux-system".into());
        s.metadata.name = Some(name.into());
        s.metadata.labels = Some([(KEY_LABEL.to_owned(), "active".to_owned())].into());
        s.type_ = Some(ty.into());
        s.data = Some(
            [
                ("tls.crt".to_owned(), ByteString(b"CRT".to_vec())),
                ("tls.key".to_owned(), ByteString(key.to_vec())),
            ]
            .into(),
        );
        s
    }

    fn names(batch: &[pb::AgentMessage]) -> Vec<String> {
        batch
            .iter()
            .map(|m| match &m.msg {
                Some(pb::agent_message::Msg::SealingKey(r)) => r.name.clone(),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn reports_only_tls_keys_and_never_shows_them() {
        let r = report(&secret("k1", "kubernetes.io/tls", b"KEYBYTES")).unwrap().unwrap();
        assert_eq!(
            (r.namespace.as_str(), r.name.as_str(), r.tls_key.as_slice()),
            ("flux-system", "k1", &b"KEYBYTES"[..])
        );
        assert_eq!(r.labels[KEY_LABEL], "active");
        let err = report(&secret("k2", "Opaque", b"KEYBYTES")).unwrap_err();
        assert_eq!(err, NotAKey::NotTls("flux-system/k2".into(), "Opaque".into()));
        let mut set = KeySet::default();
        assert!(set.insert(r.clone()));
        assert!(!set.insert(r), "the same report is no change");
        let debug = format!("{set:?}");
        assert!(debug.contains("flux-system/k1") && !debug.contains("KEYBYTES"), "{debug}");
    }

    #[tokio::test]
    async fn a_session_sends_each_key_once_then_again_on_refresh_or_change() {
        let (tx, rx) = watch::channel(KeySet::default());
        let report_of =
            |name: &str, key: &[u8]| report(&secret(name, "kubernetes.io/tls", key)).unwrap().unwrap();
        tx.send_modify(|s| {
            s.insert(report_of("k1", b"one"));
        });
        let refresh = Duration::from_millis(400);
        let mut sender = KeySender::new(&rx, refresh);
        assert_eq!(names(&sender.next().await.unwrap()), ["k1"]);
        tx.send_modify(|s| {
            s.insert(report_of("k2", b"two"));
        });
        assert_eq!(names(&sender.next().await.unwrap()), ["k2"], "only what this session has not sent");
        // A changed key is sent again; a removed one is forgotten.
        tx.send_modify(|s| {
            s.insert(report_of("k1", b"renamed-label"));
            s.remove("flux-system", "k2");
        });
        assert_eq!(names(&sender.next().await.unwrap()), ["k1"]);
        // Nothing new: only the refresh sends again, everything.
        let started = tokio::time::Instant::now();
        let waited = tokio::time::timeout(Duration::from_millis(100), sender.next()).await;
        assert!(waited.is_err(), "nothing to send before the refresh");
        assert_eq!(names(&sender.next().await.unwrap()), ["k1"]);
        assert!(started.elapsed() >= Duration::from_millis(200), "sent again before the refresh");
        // A new session starts from scratch.
        let mut second = KeySender::new(&rx, refresh);
        assert_eq!(names(&second.next().await.unwrap()), ["k1"]);
    }
}
