//! The stand-ins' certificates: a self-signed cluster CA named like K3s's, and the serving and client
//! certificates it signs. ECDSA P-256, like K3s's own CAs. Which names go into which certificate, the
//! file layout and TLS configuration belong to each stand-in.
//!
//! Certificates use rcgen's default validity (1975–4096), which keeps tests independent of the clock,
//! unless a leaf lifetime is set ([`Ca::with_leaf_validity`]): the K3s stand-in sets one from
//! `CATTLE_NEW_SIGNED_CERT_EXPIRATION_DAYS`, so tests can see certificates close to expiry.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};

/// What generating, loading or signing a certificate fails with.
pub use rcgen::Error;

/// The names K3s puts on the API server's serving certificate whatever the node: the in-cluster
/// service names and localhost.
pub const KUBERNETES_SANS: &[&str] = &[
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "localhost",
    "127.0.0.1",
];

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
    /// Lifetime of the certificates it signs from now; `None`: rcgen's default.
    leaf_validity: Option<std::time::Duration>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The certificate only: the key is in `pair`, which is not printed.
        f.debug_struct("Ca").field("cert_pem", &self.pair.cert_pem).finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA named like K3s's (`k3s-server-ca@<unix time>`).
    pub fn generate() -> Result<Self, Error> {
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

    /// A CA from its PEM certificate and key.
    pub fn load(pair: &Pair) -> Result<Self, Error> {
        let key = KeyPair::from_pem(&pair.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&pair.cert_pem, key)?;
        Ok(Self { pair: pair.clone(), issuer, leaf_validity: None })
    }

    /// Certificates signed from now on are valid from now for `validity`
    /// (`None`: rcgen's default, 1975–4096).
    pub fn with_leaf_validity(mut self, validity: Option<std::time::Duration>) -> Self {
        self.leaf_validity = validity;
        self
    }

    /// The CA's certificate and key.
    pub fn pair(&self) -> &Pair {
        &self.pair
    }

    pub fn cert_pem(&self) -> &str {
        &self.pair.cert_pem
    }

    /// A serving certificate for these DNS names and IPs, its subject `cn` (and organization `org`).
    pub fn issue_serving(&self, cn: &str, org: Option<&str>, sans: &[String]) -> Result<Pair, Error> {
        let mut params = CertificateParams::new(sans.to_vec())?;
        params.distinguished_name = dn(cn, org);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate: the user is the common name, the group the organization, as the
    /// Kubernetes API server reads them.
    pub fn issue_client(&self, user: &str, group: Option<&str>) -> Result<Pair, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(user, group);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    /// Signs `params` with a fresh key and a random positive 17-byte serial.
    fn issue(&self, mut params: CertificateParams) -> Result<Pair, Error> {
        let key = KeyPair::generate()?;
        let serial: [u8; 16] = rand::random();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[&[0x01], &serial[..]].concat()));
        if let Some(validity) = self.leaf_validity {
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now;
            params.not_after = now + validity;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::pem::parse_x509_pem;

    fn parse(pem: &str) -> x509_parser::pem::Pem {
        parse_x509_pem(pem.as_bytes()).expect("PEM").1
    }

    #[test]
    fn ca_signs_serving_and_client_certificates() {
        let ca = Ca::generate().unwrap();
        let ca_pem = parse(ca.cert_pem());
        let ca_cert = ca_pem.parse_x509().unwrap();
        assert!(ca_cert.subject().to_string().starts_with("CN=k3s-server-ca@"), "{}", ca_cert.subject());
        assert!(ca_cert.is_ca());

        let sans: Vec<String> = KUBERNETES_SANS.iter().map(|s| (*s).to_owned()).collect();
        let serving = ca.issue_serving("k3s", Some("k3s"), &sans).unwrap();
        let serving_pem = parse(&serving.cert_pem);
        let cert = serving_pem.parse_x509().unwrap();
        assert_eq!(cert.subject().to_string(), "CN=k3s, O=k3s");
        assert_eq!(cert.issuer(), ca_cert.subject());
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        let names = cert.subject_alternative_name().unwrap().unwrap().value.general_names.len();
        assert_eq!(names, KUBERNETES_SANS.len());

        let client = ca.issue_client("system:admin", Some("system:masters")).unwrap();
        let client_pem = parse(&client.cert_pem);
        let cert = client_pem.parse_x509().unwrap();
        assert_eq!(cert.subject().to_string(), "CN=system:admin, O=system:masters");
        assert!(cert.serial.bits() > 128, "serial {}", cert.serial);
        assert!(!format!("{client:?}").contains("PRIVATE KEY"));

        // A CA loaded from its PEM files signs as the generated one did.
        let again = Ca::load(ca.pair()).unwrap();
        let other = again.issue_client("alice", None).unwrap();
        let other_pem = parse(&other.cert_pem);
        other_pem.parse_x509().unwrap().verify_signature(Some(ca_cert.public_key())).unwrap();
    }

    #[test]
    fn a_leaf_lifetime_dates_the_certificates_it_signs() {
        let ca = Ca::generate().unwrap().with_leaf_validity(Some(std::time::Duration::from_secs(30 * 86400)));
        let pair = ca.issue_client("alice", None).unwrap();
        let pem = parse(&pair.cert_pem);
        let validity = pem.parse_x509().unwrap().validity().clone();
        let lifetime = validity.not_after.timestamp() - validity.not_before.timestamp();
        assert_eq!(lifetime, 30 * 86400);
        // Without one, rcgen's wide default.
        let wide = Ca::generate().unwrap().issue_client("bob", None).unwrap();
        let pem = parse(&wide.cert_pem);
        assert!(pem.parse_x509().unwrap().validity().not_after.timestamp() > 4_000_000_000);
    }
}
