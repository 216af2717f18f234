//! `Admin`: tokens, nodes, the cluster spec and events. Only a registered admin
//! certificate may call it (`auth::AdminGate`).

use std::sync::Arc;

use elysium_proto::v1 as pb;
use elysium_spec::ClusterSpec;
use tonic::{Request, Response, Status};

use super::admins;
use super::auth::require_admin;
use super::status::{blocking, internal};
use super::vault;
use crate::convert;
use crate::driver;
use crate::rollout::{self, Effect, Phase, Rollout};
use crate::state::{Coordinator, ParsedSpec};
use crate::store::{SecretRecord, SpecWriteError};
use crate::tokens::{DEFAULT_TTL_SECONDS, DEFAULT_USES, JoinToken};

/// Longest token lifetime we issue: a join token is meant to be short-lived.
const MAX_TTL_SECONDS: u64 = 30 * 24 * 3600;
const MAX_EVENTS_PER_PAGE: u32 = 1000;
/// Auth keys, storage keys and SAS URLs are well under this.
const MAX_SECRET_BYTES: usize = 16 * 1024;

pub(crate) struct AdminService {
    coordinator: Arc<Coordinator>,
}

impl AdminService {
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }
}

impl AdminService {
    /// The rollout `upgrade start` would run now (target from the request or the
    /// `[upgrade]` section, a channel resolved through the channel server).
    async fn plan_rollout(&self, version: &str) -> Result<Rollout, Status> {
        let c = &self.coordinator;
        let spec = c.cluster.borrow().spec.clone();
        let (Some(upgrade), Some(k3s)) = (&spec.parsed().upgrade, &spec.parsed().k3s) else {
            return Err(Status::failed_precondition(
                "the cluster spec has no [upgrade] section; add one (see docs/examples/cluster.toml)",
            ));
        };
        let target = if !version.is_empty() {
            version.to_owned()
        } else if let Some(v) = &upgrade.version {
            v.clone()
        } else {
            let channel = upgrade.channel.clone().unwrap_or_else(|| "stable".into());
            resolve_channel(&channel, &k3s.channel_url).await?
        };
        let store = c.store.clone();
        let nodes = blocking(move || store.list_nodes_brief()).await?.map_err(internal)?;
        let views = c.node_views(&nodes);
        let now = c.now();
        let id = format!("r{now}");
        rollout::plan(&id, &target, &views, upgrade, now)
            .map_err(|e| Status::failed_precondition(e.to_string()))
    }

    async fn control(
        &self,
        admin: &str,
        verb: &str,
        f: impl FnOnce(&mut Rollout, i64) -> Result<Vec<Effect>, String>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let c = &self.coordinator;
        let _guard = c.rollout_lock.lock().await;
        let current =
            c.cluster.borrow().rollout.clone().ok_or_else(|| Status::not_found("no rollout yet"))?;
        let mut next = Rollout::clone(&current);
        let effects = f(&mut next, c.now()).map_err(Status::failed_precondition)?;
        c.save_rollout(next.clone()).await.map_err(internal)?;
        c.event(&format!("upgrade.{verb}"), &next.id, &format!("by {admin}"));
        let store = c.store.clone();
        let nodes = blocking(move || store.list_nodes_brief()).await?.map_err(internal)?;
        driver::execute(c, &mut next, &nodes, effects);
        c.rollout_kick.notify_one();
        Ok(Response::new(self.rollout_view(&next)))
    }

    fn rollout_view(&self, r: &Rollout) -> pb::Rollout {
        let c = &self.coordinator;
        let now = c.now();
        let state = c.cluster.borrow();
        pb::Rollout {
            id: r.id.clone(),
            target_version: r.target.clone(),
            state: r.state.as_str().into(),
            reason: r.reason.clone(),
            created_unix: r.created_unix,
            updated_unix: r.updated_unix,
            nodes: r
                .nodes
                .iter()
                .map(|n| pb::RolloutNode {
                    name: n.name.clone(),
                    role: n.role.as_str().into(),
                    from_version: n.from_version.clone(),
                    phase: n.phase.as_str().into(),
                    reason: n.reason.clone(),
                    started_unix: n.started_unix,
                    finished_unix: n.finished_unix,
                })
                .collect(),
            window_open: state.window_open(now),
            next_window_unix: state.next_window(now).unwrap_or(0),
        }
    }

    fn in_use(&self, name: &str) -> bool {
        let state = self.coordinator.cluster.borrow();
        let spec = state.spec.parsed();
        spec.secret_refs().contains(name) || spec.coordinator_secret_refs().contains(name)
    }

    fn secret_info(&self, s: &SecretRecord) -> pb::SecretInfo {
        pb::SecretInfo {
            name: s.name.clone(),
            updated_unix: s.updated_unix,
            fingerprint: s.fingerprint(),
            bytes: u32::try_from(s.value.len()).unwrap_or(u32::MAX),
            in_use: self.in_use(&s.name),
        }
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    type ExportSealingKeysStreamStream = vault::ExportStream;

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let admin = require_admin(&request)?;
        let c = &self.coordinator;
        let req = request.into_inner();
        let ttl = if req.ttl_seconds == 0 { DEFAULT_TTL_SECONDS } else { req.ttl_seconds };
        if ttl > MAX_TTL_SECONDS {
            return Err(Status::invalid_argument(format!(
                "ttl must be at most {} days",
                MAX_TTL_SECONDS / 86400
            )));
        }
        for (k, v) in &req.labels {
            if k.is_empty() || k.len() > 253 || v.len() > 63 {
                return Err(Status::invalid_argument(format!(
                    "label {k:?}={v:?} is not a valid Kubernetes label"
                )));
            }
        }
        let uses = if req.uses == 0 { DEFAULT_USES } else { req.uses };
        let role = convert::role_from_pb(req.role);
        let labels = req.labels.into_iter().collect();
        let coordinator = c.clone();
        let (token, record) =
            blocking(move || coordinator.issue_token(ttl, uses, role, labels)).await?.map_err(internal)?;
        c.event(
            "token.created",
            &record.id,
            &format!(
                "by {admin}: role {}, {} use(s), expires in {ttl} s",
                record.role.as_str(),
                record.uses_allowed
            ),
        );
        Ok(Response::new(pb::CreateTokenResponse {
            token: token.expose(),
            info: Some(convert::token_to_pb(&record)),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        require_admin(&request)?;
        let store = self.coordinator.store.clone();
        let mut tokens = blocking(move || store.list_tokens()).await?.map_err(internal)?;
        tokens.sort_by_key(|t| t.created_unix);
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.iter().map(convert::token_to_pb).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let admin = require_admin(&request)?;
        let id = request.into_inner().id;
        // Accept a whole token too: operators paste what they have.
        let id = JoinToken::parse(&id).map(|t| t.id).unwrap_or(id);
        let store = self.coordinator.store.clone();
        let key = id.clone();
        let rec = blocking(move || store.revoke_token(&key)).await?.map_err(internal)?.ok_or_else(|| {
            Status::not_found(format!("no token with id {id:?}; see `elysium-node token list`"))
        })?;
        self.coordinator.event("token.revoked", &id, &format!("by {admin}"));
        Ok(Response::new(pb::RevokeTokenResponse { info: Some(convert::token_to_pb(&rec)) }))
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        require_admin(&request)?;
        let store = self.coordinator.store.clone();
        let nodes = blocking(move || store.list_nodes()).await?.map_err(internal)?;
        let nodes = nodes.iter().map(|n| self.coordinator.node_view(n)).collect();
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn get_node(
        &self,
        request: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::NodeRecord>, Status> {
        require_admin(&request)?;
        let name = request.into_inner().name;
        let store = self.coordinator.store.clone();
        let key = name.clone();
        let node = blocking(move || store.node_by_name(&key))
            .await?
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no node named {name:?}; see `elysium-node nodes`")))?;
        Ok(Response::new(self.coordinator.node_view(&node)))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let admin = require_admin(&request)?;
        let name = request.into_inner().name;
        let store = self.coordinator.store.clone();
        let key = name.clone();
        let node = blocking(move || store.remove_node(&key))
            .await?
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no node named {name:?}; see `elysium-node nodes`")))?;
        let view = self.coordinator.node_view(&node);
        // Its certificate stays cryptographically valid, but every session and
        // request looks the node up: end the open session now.
        if let Some(live) = self.coordinator.live().remove(&node.id) {
            live.end.notify_one();
        }
        self.coordinator.event("node.removed", &name, &format!("by {admin}"));
        Ok(Response::new(pb::RemoveNodeResponse { node: Some(view) }))
    }

    async fn get_cluster_spec(
        &self,
        request: Request<pb::GetClusterSpecRequest>,
    ) -> Result<Response<pb::ClusterSpec>, Status> {
        require_admin(&request)?;
        let spec = self.coordinator.cluster.borrow().spec.clone();
        Ok(Response::new(pb::ClusterSpec { generation: spec.generation(), toml: spec.toml().to_owned() }))
    }

    async fn set_cluster_spec(
        &self,
        request: Request<pb::SetClusterSpecRequest>,
    ) -> Result<Response<pb::ClusterSpec>, Status> {
        let admin = require_admin(&request)?;
        let req = request.into_inner();
        // Validate, but store the operator's document as written (comments included).
        let parsed = ClusterSpec::parse(&req.toml).map_err(|e| {
            let detail = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
            Status::invalid_argument(format!("{e}{detail}"))
        })?;
        let c = &self.coordinator;
        // A spec naming a secret that does not exist would leave nodes failing
        // with nothing to do about it there: refuse it here, with the fix.
        let missing: Vec<&str> = {
            let state = c.cluster.borrow();
            let refs = parsed.secret_refs().into_iter().chain(parsed.coordinator_secret_refs());
            refs.filter(|n| !state.secrets.contains_key(*n)).collect()
        };
        if !missing.is_empty() {
            return Err(Status::failed_precondition(format!(
                "the spec refers to secret(s) that are not set: {}; set each with `elysium-node secret set NAME --from-file FILE` first",
                missing.join(", ")
            )));
        }
        let store = c.store.clone();
        let expected = (req.expected_generation != 0).then_some(req.expected_generation);
        let text = req.toml;
        let stored = blocking(move || store.set_spec(&text, expected)).await?.map_err(|e| match e {
            SpecWriteError::Conflict { .. } => Status::aborted(e.to_string()),
            SpecWriteError::Store(e) => internal(e),
        })?;
        let reply = pb::ClusterSpec { generation: stored.generation, toml: stored.toml.clone() };
        // The parse that validated the document is the one every session uses.
        c.set_spec(ParsedSpec::new(stored, parsed));
        c.event("spec.set", "cluster", &format!("generation {} by {admin}", reply.generation));
        Ok(Response::new(reply))
    }

    async fn set_secret(
        &self,
        request: Request<pb::SetSecretRequest>,
    ) -> Result<Response<pb::SecretInfo>, Status> {
        let admin = require_admin(&request)?;
        let req = request.into_inner();
        elysium_spec::check_secret_name("name", &req.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if req.value.is_empty() || req.value.len() > MAX_SECRET_BYTES {
            return Err(Status::invalid_argument(format!(
                "secret {:?}: the value must be 1..={MAX_SECRET_BYTES} bytes, got {}",
                req.name,
                req.value.len()
            )));
        }
        let c = &self.coordinator;
        let record = SecretRecord { name: req.name, value: req.value, updated_unix: c.now() };
        let store = c.store.clone();
        let stored = record.clone();
        blocking(move || store.put_secret(&stored)).await?.map_err(internal)?;
        // Sessions push the new value to the nodes whose spec refers to it.
        c.cluster.send_modify(|s| {
            Arc::make_mut(&mut s.secrets).insert(record.name.clone(), record.clone());
        });
        c.event("secret.set", &record.name, &format!("by {admin}, fingerprint {}", record.fingerprint()));
        Ok(Response::new(self.secret_info(&record)))
    }

    async fn list_secrets(
        &self,
        request: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        require_admin(&request)?;
        let secrets: Vec<SecretRecord> =
            self.coordinator.cluster.borrow().secrets.values().cloned().collect();
        Ok(Response::new(pb::ListSecretsResponse {
            secrets: secrets.iter().map(|s| self.secret_info(s)).collect(),
        }))
    }

    async fn delete_secret(
        &self,
        request: Request<pb::DeleteSecretRequest>,
    ) -> Result<Response<pb::SecretInfo>, Status> {
        let admin = require_admin(&request)?;
        let name = request.into_inner().name;
        let c = &self.coordinator;
        if self.in_use(&name) {
            return Err(Status::failed_precondition(format!(
                "secret {name:?} is used by the cluster spec; change the spec first (`elysium-node spec get`)"
            )));
        }
        let store = c.store.clone();
        let key = name.clone();
        let removed =
            blocking(move || store.delete_secret(&key)).await?.map_err(internal)?.ok_or_else(|| {
                Status::not_found(format!("no secret named {name:?}; see `elysium-node secret list`"))
            })?;
        c.cluster.send_modify(|s| {
            Arc::make_mut(&mut s.secrets).remove(&name);
        });
        c.event("secret.deleted", &name, &format!("by {admin}"));
        Ok(Response::new(self.secret_info(&removed)))
    }

    async fn upgrade_plan(
        &self,
        request: Request<pb::UpgradePlanRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        require_admin(&request)?;
        let version = request.into_inner().version;
        let rollout = self.plan_rollout(&version).await?;
        let mut view = self.rollout_view(&rollout);
        view.state = "planned".into();
        view.reason = "a plan; nothing was started (`elysium-node upgrade start`)".into();
        Ok(Response::new(view))
    }

    async fn upgrade_start(
        &self,
        request: Request<pb::UpgradeStartRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let admin = require_admin(&request)?;
        let version = request.into_inner().version;
        let c = &self.coordinator;
        let _guard = c.rollout_lock.lock().await;
        if let Some(r) = c.cluster.borrow().rollout.clone()
            && !r.state.is_final()
        {
            return Err(Status::failed_precondition(format!(
                "rollout {} to {} is {}; resume or abort it first (`elysium-node upgrade status`)",
                r.id,
                r.target,
                r.state.as_str()
            )));
        }
        let rollout = self.plan_rollout(&version).await?;
        if rollout.nodes.iter().all(|n| n.phase == Phase::Skipped) {
            return Err(Status::failed_precondition(format!(
                "no node would be upgraded to {}: {}",
                rollout.target,
                rollout
                    .nodes
                    .iter()
                    .map(|n| format!("{} ({})", n.name, n.reason))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        c.event("upgrade.started", &rollout.id, &format!("to {} by {admin}", rollout.target));
        c.save_rollout(rollout.clone()).await.map_err(internal)?;
        c.rollout_kick.notify_one();
        Ok(Response::new(self.rollout_view(&rollout)))
    }

    async fn upgrade_status(
        &self,
        request: Request<pb::UpgradeStatusRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        require_admin(&request)?;
        let r = self.coordinator.cluster.borrow().rollout.clone().ok_or_else(|| {
            Status::not_found("no rollout yet; see `elysium-node upgrade plan`, then `upgrade start`")
        })?;
        Ok(Response::new(self.rollout_view(&r)))
    }

    async fn upgrade_pause(
        &self,
        request: Request<pb::UpgradeControlRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let admin = require_admin(&request)?;
        self.control(&admin, "paused", |r, now| rollout::pause(r, now).map(|()| vec![])).await
    }

    async fn upgrade_resume(
        &self,
        request: Request<pb::UpgradeControlRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let admin = require_admin(&request)?;
        self.control(&admin, "resumed", |r, now| rollout::resume(r, now).map(|()| vec![])).await
    }

    async fn upgrade_abort(
        &self,
        request: Request<pb::UpgradeControlRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let admin = require_admin(&request)?;
        self.control(&admin, "aborted", rollout::abort).await
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        require_admin(&request)?;
        let req = request.into_inner();
        let limit = if req.limit == 0 { 100 } else { req.limit.min(MAX_EVENTS_PER_PAGE) } as usize;
        let store = self.coordinator.store.clone();
        let events = blocking(move || store.list_events(req.after_seq, limit)).await?.map_err(internal)?;
        Ok(Response::new(pb::ListEventsResponse {
            events: events.into_iter().map(convert::event_to_pb).collect(),
        }))
    }

    async fn list_sealing_keys(
        &self,
        request: Request<pb::ListSealingKeysRequest>,
    ) -> Result<Response<pb::ListSealingKeysResponse>, Status> {
        require_admin(&request)?;
        vault::list(&self.coordinator).await.map(Response::new)
    }

    async fn export_sealing_keys(
        &self,
        request: Request<pb::ExportSealingKeysRequest>,
    ) -> Result<Response<pb::ExportSealingKeysResponse>, Status> {
        let admin = require_admin(&request)?;
        vault::export(&self.coordinator, &admin, request.into_inner()).await.map(Response::new)
    }

    async fn export_sealing_keys_stream(
        &self,
        request: Request<pb::ExportSealingKeysRequest>,
    ) -> Result<Response<Self::ExportSealingKeysStreamStream>, Status> {
        let admin = require_admin(&request)?;
        vault::export_stream(&self.coordinator, &admin, request.into_inner()).await.map(Response::new)
    }

    async fn create_admin(
        &self,
        request: Request<pb::CreateAdminRequest>,
    ) -> Result<Response<pb::CreateAdminResponse>, Status> {
        let admin = require_admin(&request)?;
        admins::create(&self.coordinator, &admin, request.into_inner()).await.map(Response::new)
    }

    async fn list_admins(
        &self,
        request: Request<pb::ListAdminsRequest>,
    ) -> Result<Response<pb::ListAdminsResponse>, Status> {
        require_admin(&request)?;
        Ok(Response::new(admins::list(&self.coordinator)))
    }

    async fn revoke_admin(
        &self,
        request: Request<pb::RevokeAdminRequest>,
    ) -> Result<Response<pb::AdminInfo>, Status> {
        let admin = require_admin(&request)?;
        admins::revoke(&self.coordinator, &admin, request.into_inner()).await.map(Response::new)
    }

    async fn renew_admin(
        &self,
        request: Request<pb::RenewAdminRequest>,
    ) -> Result<Response<pb::RenewAdminResponse>, Status> {
        let admin = require_admin(&request)?;
        let leaf = crate::services::auth::presented_leaf(&request)?;
        admins::renew(&self.coordinator, &admin, leaf, request.into_inner()).await.map(Response::new)
    }

    async fn drop_vault_item(
        &self,
        request: Request<pb::DropVaultItemRequest>,
    ) -> Result<Response<pb::DropVaultItemResponse>, Status> {
        let admin = require_admin(&request)?;
        vault::drop_item(&self.coordinator, &admin, request.into_inner()).await.map(Response::new)
    }
}

/// The version a channel points at now.
async fn resolve_channel(channel: &str, channel_url: &str) -> Result<String, Status> {
    use elysium_installer::download::{Fetcher, HttpOptions};
    use elysium_installer::k3s_release::{Arch, K3sRelease, VersionSelector};
    let fetcher = Fetcher::new(&HttpOptions::default()).map_err(|e| Status::internal(e.to_string()))?;
    let release = K3sRelease {
        version: VersionSelector::Channel(channel.to_owned()),
        channel_url: channel_url.to_owned(),
        release_url: String::new(),
        arch: Arch::host().unwrap_or(Arch::Amd64),
        pins: Default::default(),
    };
    elysium_installer::k3s_binary::resolve_version(&fetcher, &release).await.map(|v| v.to_string()).map_err(
        |e| Status::unavailable(format!("could not resolve channel {channel:?} at {channel_url}: {e}")),
    )
}
