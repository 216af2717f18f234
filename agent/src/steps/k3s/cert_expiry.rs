//! `K3s/Certificates`: how soon the K3s server's own certificates expire.
//!
//! K3s's client and server certificates live a year, and K3s renews one only when
//! it starts within 90 days of its expiry (docs/reference/k3s.md#certificates): a
//! server that runs for a year without a restart has its API server, etcd and
//! kubelet certificates expire under it. This reads every certificate under
//! `/var/lib/rancher/k3s/server/tls/` (and its `etcd/`) on server nodes and reports
//! the soonest expiry: status True while more than 90 days remain, True with reason
//! `RenewalDue` within 90 days (a restart renews it), False within 14 days or
//! once expired. Observe (read the files) and judge (pure, [`judge`]) are apart so
//! the thresholds are tested at chosen dates.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use elysium_host::RootFs;

use crate::reconcile::SubCondition;

/// The sub-condition's type.
pub const CERTIFICATES: &str = "K3s/Certificates";
/// Where a K3s server keeps its certificates (docs/reference/k3s.md#certificates).
pub const TLS_DIR: &str = "/var/lib/rancher/k3s/server/tls";
/// Subdirectories of [`TLS_DIR`] with certificates of the same lifetime.
const TLS_SUBDIRS: &[&str] = &["etcd"];
/// K3s renews a certificate at start when it expires within this.
pub const WARN_WITHIN: Duration = Duration::from_secs(90 * 86400);
/// Too close to wait for the next planned restart.
pub const FAIL_WITHIN: Duration = Duration::from_secs(14 * 86400);

/// One certificate's expiry: the file it is in, as on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertExpiry {
    pub file: PathBuf,
    pub not_after_unix: i64,
}

/// What the certificate directory holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// The soonest expiry of each file (a file may hold a chain).
    pub certs: Vec<CertExpiry>,
    /// Files that could not be read or parsed, with why.
    pub unreadable: Vec<(PathBuf, String)>,
}

/// Reads every `*.crt` in [`TLS_DIR`] and its [`TLS_SUBDIRS`] through the node's
/// root. `None` when the directory does not exist (K3s has not started as a
/// server here yet).
pub fn observe(fs: &RootFs) -> Option<Observed> {
    let dir = Path::new(TLS_DIR);
    if !fs.exists(dir) {
        return None;
    }
    let mut observed = Observed::default();
    for d in std::iter::once(dir.to_path_buf()).chain(TLS_SUBDIRS.iter().map(|s| dir.join(s))) {
        // Read-only listing through the seam's root; a missing subdirectory is normal.
        let Ok(entries) = std::fs::read_dir(fs.resolve(&d)) else { continue };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".crt"))
            .collect();
        names.sort();
        for name in names {
            let path = d.join(&name);
            match fs.read(&path).map_err(|e| e.to_string()).and_then(|b| soonest_not_after(&b)) {
                Ok(not_after_unix) => observed.certs.push(CertExpiry { file: path, not_after_unix }),
                Err(why) => observed.unreadable.push((path, why)),
            }
        }
    }
    Some(observed)
}

/// The earliest NotAfter of the certificates in a PEM file.
fn soonest_not_after(pem: &[u8]) -> Result<i64, String> {
    let mut soonest: Option<i64> = None;
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| format!("not PEM: {e}"))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        let cert = block.parse_x509().map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let t = cert.validity().not_after.timestamp();
        soonest = Some(soonest.map_or(t, |s| s.min(t)));
    }
    soonest.ok_or_else(|| "holds no certificate".to_owned())
}

fn date(unix: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// What to do, in every message that asks for something.
const WHAT_TO_DO: &str = "K3s renews its certificates only when it starts within 90 days of their expiry: restart K3s on this node (`systemctl restart k3s`, one server at a time), or rotate them now with K3s stopped (`k3s certificate rotate`, then start K3s); see https://docs.k3s.io/cli/certificate";

/// The condition for what [`observe`] found, at `now`.
pub fn judge(observed: &Observed, now: SystemTime) -> SubCondition {
    let now = unix(now);
    let condition = |ok: bool, reason: &str, message: String| SubCondition {
        kind: CERTIFICATES.into(),
        ok,
        reason: reason.into(),
        message,
    };
    let Some(soonest) = observed.certs.iter().min_by_key(|c| c.not_after_unix) else {
        let what = match observed.unreadable.first() {
            Some((path, why)) => format!("{}: {why}", path.display()),
            None => format!("no certificate in {TLS_DIR}"),
        };
        return condition(false, "Unreadable", format!("could not read K3s's certificates: {what}"));
    };
    let left = soonest.not_after_unix - now;
    let days = left.div_euclid(86400);
    let file = soonest.file.display();
    let when = date(soonest.not_after_unix);
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    if left <= 0 {
        return condition(
            false,
            "Expired",
            format!(
                "K3s certificate {file} expired on {when}; the cluster's TLS fails with it. {WHAT_TO_DO}"
            ),
        );
    }
    if left <= secs(FAIL_WITHIN) {
        return condition(
            false,
            "ExpiresSoon",
            format!("K3s certificate {file} expires on {when} (in {days} days). {WHAT_TO_DO}"),
        );
    }
    if left <= secs(WARN_WITHIN) {
        return condition(
            true,
            "RenewalDue",
            format!("K3s certificate {file} expires on {when} (in {days} days). {WHAT_TO_DO}"),
        );
    }
    let mut message = format!("the soonest, {file}, expires on {when} (in {days} days)");
    if let Some((path, why)) = observed.unreadable.first() {
        message.push_str(&format!("; could not read {}: {why}", path.display()));
    }
    condition(true, "Valid", message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    const DAY: i64 = 86400;
    /// 2026-01-01T00:00:00Z.
    const NOW: i64 = 1_767_225_600;

    fn at(unix: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix as u64)
    }

    /// A self-signed certificate valid until `not_after` (Unix seconds).
    fn cert_pem(not_after: i64) -> String {
        let mut params = CertificateParams::new(vec!["k3s".into()]).unwrap();
        params.not_before = time::OffsetDateTime::from_unix_timestamp(not_after - 365 * DAY).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        params.self_signed(&KeyPair::generate().unwrap()).unwrap().pem()
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel.trim_start_matches('/'));
        elysium_host::fs::create_dir_all(path.parent().unwrap(), 0o700).unwrap();
        elysium_host::fs::write_atomic(&path, text.as_bytes(), 0o644).unwrap();
    }

    #[test]
    fn the_soonest_certificate_decides_and_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = RootFs::new(tmp.path());
        assert_eq!(observe(&fs), None, "no condition before K3s ran as a server");
        // A CA (ten years), a chain whose leaf expires in 60 days, an etcd
        // certificate in 200 days, a key (ignored) and a file that is not a certificate.
        write(tmp.path(), &format!("{TLS_DIR}/server-ca.crt"), &cert_pem(NOW + 3650 * DAY));
        let chain = format!("{}{}", cert_pem(NOW + 60 * DAY), cert_pem(NOW + 3650 * DAY));
        write(tmp.path(), &format!("{TLS_DIR}/serving-kube-apiserver.crt"), &chain);
        write(tmp.path(), &format!("{TLS_DIR}/etcd/server-client.crt"), &cert_pem(NOW + 200 * DAY));
        write(tmp.path(), &format!("{TLS_DIR}/serving-kube-apiserver.key"), "not read");
        write(tmp.path(), &format!("{TLS_DIR}/broken.crt"), "garbage");

        let observed = observe(&fs).unwrap();
        assert_eq!(observed.certs.len(), 3, "{observed:?}");
        assert_eq!(observed.unreadable.len(), 1);
        assert!(observed.unreadable[0].0.ends_with("broken.crt"));
        let c = judge(&observed, at(NOW));
        assert_eq!((c.kind.as_str(), c.ok, c.reason.as_str()), (CERTIFICATES, true, "RenewalDue"));
        assert!(
            c.message
                .contains("/var/lib/rancher/k3s/server/tls/serving-kube-apiserver.crt expires on 2026-03-02"),
            "{}",
            c.message
        );
        assert!(
            c.message.contains("in 60 days") && c.message.contains("k3s certificate rotate"),
            "{}",
            c.message
        );
        assert!(c.message.contains("systemctl restart k3s"), "{}", c.message);
    }

    #[test]
    fn thresholds_warn_at_90_days_and_fail_at_14() {
        let observed = |left: i64| Observed {
            certs: vec![
                CertExpiry { file: format!("{TLS_DIR}/client-admin.crt").into(), not_after_unix: NOW + left },
                CertExpiry {
                    file: format!("{TLS_DIR}/server-ca.crt").into(),
                    not_after_unix: NOW + 3650 * DAY,
                },
            ],
            unreadable: vec![],
        };
        let verdict = |left: i64| {
            let c = judge(&observed(left), at(NOW));
            (c.ok, c.reason)
        };
        assert_eq!(verdict(365 * DAY), (true, "Valid".into()));
        assert_eq!(verdict(90 * DAY + 1), (true, "Valid".into()));
        assert_eq!(verdict(90 * DAY), (true, "RenewalDue".into()));
        assert_eq!(verdict(14 * DAY + 1), (true, "RenewalDue".into()));
        assert_eq!(verdict(14 * DAY), (false, "ExpiresSoon".into()));
        assert_eq!(verdict(1), (false, "ExpiresSoon".into()));
        assert_eq!(verdict(0), (false, "Expired".into()));
        assert_eq!(verdict(-DAY), (false, "Expired".into()));
        let failing = judge(&observed(3 * DAY), at(NOW));
        assert!(failing.message.contains("client-admin.crt expires on 2026-01-04"), "{}", failing.message);
        let valid = judge(&observed(365 * DAY), at(NOW));
        assert!(valid.message.contains("client-admin.crt"), "{}", valid.message);
    }

    #[test]
    fn nothing_readable_is_a_failure_that_says_which_file() {
        let observed = Observed {
            certs: vec![],
            unreadable: vec![(format!("{TLS_DIR}/x.crt").into(), "not PEM".into())],
        };
        let c = judge(&observed, at(NOW));
        assert_eq!((c.ok, c.reason.as_str()), (false, "Unreadable"));
        assert!(c.message.contains("x.crt: not PEM"), "{}", c.message);
    }
}
