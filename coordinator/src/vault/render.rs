//! The export format: what `kubectl get secret -l sealedsecrets.bitnami.com/sealed-secrets-key
//! -o yaml` prints, a `v1 List` of `kubernetes.io/tls` Secrets, which `elysium-node recover
//! --sealed-secrets-keys` reads (`elysium_recovery::keys`). Without `resourceVersion`, `uid`,
//! `creationTimestamp` and `managedFields`: a restore creates the Secrets anew, and the API
//! server refuses a create that carries a resourceVersion
//! (docs/reference/kubernetes.md#objects-from-backups).

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use zeroize::Zeroizing;

/// Label on every sealed-secrets key Secret (`SealedSecretsKeyLabel`,
/// bitnami-labs/sealed-secrets pkg/controller/keys.go).
pub const KEY_LABEL: &str = "sealedsecrets.bitnami.com/sealed-secrets-key";
/// `v1.SecretTypeTLS`.
const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// One key Secret to write.
pub struct KeySecret<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub tls_crt: &'a [u8],
    pub tls_key: &'a [u8],
    /// Tells apart two keys that would get the same name (see [`keys_list`]).
    pub id_hash: &'a str,
}

// By hand: never format the key.
impl std::fmt::Debug for KeySecret<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySecret")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The keys file for `keys`, in their order. `recover` refuses two Secrets of the same
/// name (even in different namespaces): a later one keeps its key under
/// `NAME-<8 hex of its id>`, since losing a key is worse than renaming it (the
/// controller finds keys by label, not by name). `header` becomes a YAML comment.
pub fn keys_list(keys: &[KeySecret<'_>], header: &str) -> Zeroizing<String> {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut taken = BTreeSet::new();
    let items: Vec<serde_json::Value> = keys
        .iter()
        .map(|k| {
            let mut name = k.name.to_owned();
            if !taken.insert(name.clone()) {
                name = format!("{}-{}", k.name, &k.id_hash[..k.id_hash.len().min(8)]);
                taken.insert(name.clone());
            }
            serde_json::json!({
                "apiVersion": "v1",
                "data": { "tls.crt": b64(k.tls_crt), "tls.key": b64(k.tls_key) },
                "kind": "Secret",
                "metadata": { "labels": k.labels, "name": name, "namespace": k.namespace },
                "type": TLS_SECRET_TYPE,
            })
        })
        .collect();
    let list = serde_json::json!({
        "apiVersion": "v1",
        "items": items,
        "kind": "List",
        "metadata": { "resourceVersion": "" },
    });
    let mut out = Zeroizing::new(String::new());
    for line in header.lines() {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
    // A tree of strings, maps and lists always serialises.
    out.push_str(&Zeroizing::new(serde_yaml_ng::to_string(&list).unwrap_or_default()));
    out
}
