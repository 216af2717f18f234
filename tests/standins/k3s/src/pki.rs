//! The stand-in server's certificates: a self-signed CA kept under
//! `<data-dir>/server/tls/` (its PEM bytes are what the token hash pins), a serving
//! certificate for the supervisor port, and the admin client certificate that goes
//! into the kubeconfig. ECDSA P-256, like K3s's own CAs.
//!
//! Certificates use rcgen's default validity (1975–4096): a stand-in has no rotation
//! to model, and wide validity keeps tests independent of the clock.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};

/// File names under `<data-dir>/server/tls/`, as K3s names them.
pub const CA_CERT_FILE: &str = "server-ca.crt";
pub const CA_KEY_FILE: &str = "server-ca.key";
pub const SERVING_CERT_FILE: &str = "serving-kube-apiserver.crt";
pub const SERVING_KEY_FILE: &str = "serving-kube-apiserver.key";
pub const ADMIN_CERT_FILE: &str = "client-admin.crt";
pub const ADMIN_KEY_FILE: &str = "client-admin.key";

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Pair").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

/// The cluster CA.
pub struct Ca {
    pair: Pair,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA named like K3s's (`k3s-server-ca@<unix time>`).
    pub fn generate() -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        params.distinguished_name = dn(&format!("k3s-server-ca@{now}"), None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key)?;
        Self::load(&Pair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// A CA from its PEM files.
    pub fn load(pair: &Pair) -> Result<Self, rcgen::Error> {
        let key = KeyPair::from_pem(&pair.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&pair.cert_pem, key)?;
        Ok(Self { pair: pair.clone(), issuer })
    }

    pub fn pair(&self) -> &Pair {
        &self.pair
    }

    pub fn cert_pem(&self) -> &str {
        &self.pair.cert_pem
    }

    /// A serving certificate for the supervisor with these DNS names and IPs.
    pub fn issue_serving(&self, sans: &[String]) -> Result<Pair, rcgen::Error> {
        let mut params = CertificateParams::new(sans.to_vec())?;
        params.distinguished_name = dn("k3s", Some("k3s"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// The admin client certificate of the kubeconfig (`system:admin`, group
    /// `system:masters`, as in K3s).
    pub fn issue_admin(&self) -> Result<Pair, rcgen::Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("system:admin", Some("system:masters"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, mut params: CertificateParams) -> Result<Pair, rcgen::Error> {
        let key = KeyPair::generate()?;
        let serial: [u8; 16] = rand::random();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[&[0x01], &serial[..]].concat()));
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

fn dn(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(org) = org {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}
