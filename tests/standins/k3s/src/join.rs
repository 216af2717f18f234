//! The client side of joining: fetch the cluster CA from `<server>/cacerts` without
//! verification, check it against the token's CA hash, then talk to the server with
//! verification against that CA (docs/reference/k3s.md#tokens; upstream
//! `clientaccess.ParseAndValidateToken`). Error texts follow upstream's.

use std::sync::Arc;

use rustls::ClientConfig;

use crate::http::{self, ClientError, Response, Target};
use crate::log;
use crate::token::{self, Token};

/// Joining failed; the caller logs it and retries, as upstream does.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("failed to get CA certs")]
    GetCaCerts(#[source] ClientError),
    #[error("CA cert validation failed")]
    CaValidation(#[source] ClientError),
    #[error("token CA hash does not match the Cluster CA certificate hash: {expected} != {actual}")]
    HashMismatch { expected: String, actual: String },
    #[error("{url}: {status}")]
    Status { url: String, status: String },
    #[error(transparent)]
    Request(#[from] ClientError),
    #[error("could not set up TLS")]
    Tls(#[source] rustls::Error),
    #[error("{url}: unexpected response body")]
    Body { url: String },
}

/// A server whose CA has been fetched and checked.
#[derive(Debug, Clone)]
pub struct Validated {
    pub target: Target,
    pub ca_pem: Vec<u8>,
    /// Trusts exactly the fetched CA.
    pub tls: Arc<ClientConfig>,
}

impl Validated {
    /// `GET path`, verified; a non-2xx status is an error, like upstream's `get`.
    pub async fn get_ok(&self, path: &str, auth: Option<(&str, &str)>) -> Result<Response, JoinError> {
        let resp = http::get(&self.target, path, Some(self.tls.clone()), auth).await?;
        ok_status(&self.target, path, resp)
    }
}

fn ok_status(target: &Target, path: &str, resp: Response) -> Result<Response, JoinError> {
    if (200..300).contains(&resp.status) {
        Ok(resp)
    } else {
        let scheme = if target.https { "https" } else { "http" };
        Err(JoinError::Status {
            url: format!("{scheme}://{}:{}{path}", target.host, target.port),
            status: format!("{} {}", resp.status, status_text(resp.status)),
        })
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Fetches `/cacerts`, checks it against the token's hash, and checks the server's
/// certificate against it.
pub async fn validate(target: &Target, token: &Token) -> Result<Validated, JoinError> {
    let insecure = http::client_insecure().map_err(JoinError::Tls)?;
    let resp = http::get(target, "/cacerts", Some(insecure), None).await.map_err(JoinError::GetCaCerts)?;
    let ca_pem = ok_status(target, "/cacerts", resp)?.body;

    // Same order as upstream: the fetched bundle must validate the server's own
    // certificate, then it is compared with the hash.
    let tls = http::client_trusting(&ca_pem).map_err(JoinError::Tls)?;
    http::get(target, "/cacerts", Some(tls.clone()), None).await.map_err(JoinError::CaValidation)?;

    let actual = token::ca_hash(&ca_pem);
    match &token.ca_hash {
        Some(expected) if *expected != actual => {
            return Err(JoinError::HashMismatch { expected: expected.clone(), actual });
        }
        Some(_) => {}
        None => log::warn(
            "Cluster CA certificate is not trusted by the host CA bundle, but the token does not include a CA hash. \
             Use the full token from the server's node-token file to enable Cluster CA validation.",
        ),
    }
    Ok(Validated { target: target.clone(), ca_pem, tls })
}

/// `GET /ping` must answer `pong`.
pub async fn ping(server: &Validated) -> Result<(), JoinError> {
    let resp = server.get_ok("/ping", None).await?;
    if resp.body_text().trim() == "pong" { Ok(()) } else { Err(JoinError::Body { url: "/ping".into() }) }
}
