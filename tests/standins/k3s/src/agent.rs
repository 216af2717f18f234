//! `k3s agent`: requires `server` (https) and a token, joins as upstream does (fetch
//! `/cacerts` unverified, check the token's CA hash, then `/ping` and the
//! authenticated `/v1-k3s/readyz` verified against that CA), retrying every failure
//! for as long as systemd lets it run, then serves kubelet healthz and sends `READY=1`.
//!
//! A CA hash mismatch is retried too, exactly as upstream: the unit never becomes
//! active and the journal repeats "token CA hash does not match …". The agent does not
//! watch the server after it is up.

use std::convert::Infallible;
use std::time::Duration;

use crate::artifact::Behaviour;
use crate::config::Flags;
use crate::http::Target;
use crate::join::{self, JoinError, Validated};
use crate::log;
use crate::node::{self, Context, RunError};
use crate::server::READYZ_PATH;
use crate::token::{self, NODE_USER, Token};

/// Upstream's interval between token validation attempts.
const VALIDATE_RETRY: Duration = Duration::from_secs(2);
/// Upstream's interval between attempts to get the agent configuration.
const CONFIG_RETRY: Duration = Duration::from_secs(5);

/// Runs the agent role until the process is told to stop.
pub async fn run(ctx: &Context, flags: &Flags) -> Result<Infallible, RunError> {
    let raw_token =
        node::configured_token(ctx, flags, "token", "token-file").await?.ok_or(RunError::TokenRequired)?;
    let url = flags.get("server").ok_or(RunError::ServerRequired)?;
    let target = Target::parse(url).filter(|t| t.https).ok_or_else(|| RunError::ServerUrl(url.to_owned()))?;
    node::mkdir(&ctx.data_dir(flags).join("agent"), 0o700)?;
    node::write_report(ctx, flags, "agent")?;

    if ctx.stamp.behaviour == Behaviour::NeverReady {
        log::info("Waiting to retrieve agent configuration (stand-in behaviour never-ready: it never will)");
        return std::future::pending().await;
    }

    let server = loop {
        // Parsing is inside the loop, as upstream's ParseAndValidateToken is.
        let attempt = match token::parse(&raw_token) {
            Ok(token) => join::validate(&target, &token).await.map(|v| (v, token)).map_err(RunError::from),
            Err(e) => Err(RunError::from(e)),
        };
        match attempt {
            Ok(ok) => break ok,
            Err(e) => {
                log::error(&crate::error_chain(&e));
                tokio::time::sleep(VALIDATE_RETRY).await;
            }
        }
    };
    let (server, token) = server;

    while let Err(e) = check_server(&server, &token).await {
        log::info(&format!(
            "Waiting to retrieve agent configuration; server is not ready: {}",
            crate::error_chain(&e)
        ));
        tokio::time::sleep(CONFIG_RETRY).await;
    }
    log::info(&format!("Connected to the supervisor at {url}"));

    node::run_until_killed(ctx, flags, true, "k3s agent").await
}

/// `/ping`, then the authenticated readiness endpoint (401 for a wrong password).
async fn check_server(server: &Validated, token: &Token) -> Result<(), JoinError> {
    join::ping(server).await?;
    server.get_ok(READYZ_PATH, Some((NODE_USER, &token.password))).await?;
    Ok(())
}
