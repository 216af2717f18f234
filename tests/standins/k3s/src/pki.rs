//! The stand-in server's certificates: a self-signed CA kept under
//! `<data-dir>/server/tls/` (its PEM bytes are what the token hash pins), a serving
//! certificate for the supervisor port, and the admin client certificate that goes
//! into the kubeconfig. Generating and signing is `standin_pki`'s; this module names
//! the files and the subjects as K3s does.

pub use standin_pki::{Ca, Error, KUBERNETES_SANS, Pair};

/// File names under `<data-dir>/server/tls/`, as K3s names them.
pub const CA_CERT_FILE: &str = "server-ca.crt";
pub const CA_KEY_FILE: &str = "server-ca.key";
pub const SERVING_CERT_FILE: &str = "serving-kube-apiserver.crt";
pub const SERVING_KEY_FILE: &str = "serving-kube-apiserver.key";
pub const ADMIN_CERT_FILE: &str = "client-admin.crt";
pub const ADMIN_KEY_FILE: &str = "client-admin.key";

/// A serving certificate for the supervisor with these DNS names and IPs.
pub fn issue_serving(ca: &Ca, sans: &[String]) -> Result<Pair, Error> {
    ca.issue_serving("k3s", Some("k3s"), sans)
}

/// The admin client certificate of the kubeconfig (`system:admin`, group
/// `system:masters`, as in K3s).
pub fn issue_admin(ca: &Ca) -> Result<Pair, Error> {
    ca.issue_client("system:admin", Some("system:masters"))
}
