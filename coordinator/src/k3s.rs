//! The coordinator's side of K3s: which server initialises the cluster, where the
//! other nodes find it, and the cluster tokens.
//!
//! The flow (K3s's own, automated): the coordinator generates a secret for the
//! first server, which starts with `cluster-init`; once healthy, that server's
//! agent reports the full `K10<ca-hash>::server:<secret>` token from
//! `/var/lib/rancher/k3s/server/token`; every other server then receives that
//! token and the first server's URL. Before the report, joining nodes get no
//! token and wait: the secure token pins the cluster CA, the bare secret would not.
//!
//! Agents never see the server token: whoever holds it can join as a server and
//! read etcd (docs/reference/k3s.md#tokens). The coordinator generates a second
//! secret, every server configures it as K3s's `agent-token`, and agent-role
//! nodes receive `K10<ca-hash>::node:<agent secret>`, the secure form K3s writes
//! to `server/agent-token`, with the CA hash of the reported server token. They
//! receive it only once the first server reported that agent token, i.e. runs
//! with it; until then they wait as they wait for the server token.

use elysium_proto::v1 as pb;
use elysium_spec::ClusterSpec;

use crate::store::{K3sCluster, NodeRecord};
use crate::tokens::Role;

/// K3s's supervisor and API port.
pub const K3S_PORT: u16 = 6443;

/// Role strings of `K3sAssignment.role`.
pub const ROLE_SERVER_INIT: &str = "server-init";
pub const ROLE_SERVER: &str = "server";
pub const ROLE_AGENT: &str = "agent";

/// K3s's username in agent tokens (upstream `clientaccess.WithUser("node")`).
pub const AGENT_TOKEN_USER: &str = "node";

/// A random secret, hex: K3s tokens are passed through files and config and
/// must not need quoting.
fn random_secret() -> String {
    hex::encode(rand::random::<[u8; 24]>())
}

/// A new cluster record with random init and agent secrets.
pub fn new_cluster() -> K3sCluster {
    K3sCluster { init_secret: random_secret(), agent_secret: random_secret(), ..Default::default() }
}

/// Gives a record written before agent tokens existed its agent secret.
/// Returns whether it changed (the caller stores it).
pub fn ensure_agent_secret(cluster: &mut K3sCluster) -> bool {
    if !cluster.agent_secret.is_empty() {
        return false;
    }
    cluster.agent_secret = random_secret();
    cluster.agent_token_active = false;
    true
}

/// The CA hash of a secure token (`K10<hash>::…`), when it has one.
fn ca_hash(token: &str) -> Option<&str> {
    let (hash, _) = token.strip_prefix("K10")?.split_once("::")?;
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hash)
}

/// The secure agent token (`K10<ca-hash>::node:<agent secret>`), once the server
/// token's CA hash is known.
pub fn agent_token(cluster: &K3sCluster) -> Option<String> {
    let hash = ca_hash(cluster.server_token.as_deref()?)?;
    (!cluster.agent_secret.is_empty())
        .then(|| format!("K10{hash}::{AGENT_TOKEN_USER}:{}", cluster.agent_secret))
}

/// Whether a reported `server/agent-token` is our agent secret: the first server
/// runs with `agent-token` set (without it, K3s links that file to the server token).
pub fn is_our_agent_token(cluster: &K3sCluster, reported: &str) -> bool {
    ca_hash(reported).is_some()
        && !cluster.agent_secret.is_empty()
        && reported.split_once("::").is_some_and(|(_, creds)| {
            creds.strip_prefix(AGENT_TOKEN_USER).and_then(|r| r.strip_prefix(':'))
                == Some(cluster.agent_secret.as_str())
        })
}

/// `https://ADDR:6443` for the first usable address a node reported.
pub fn server_url_from(addresses: &[String]) -> Option<String> {
    let addr = addresses.iter().find(|a| a.parse::<std::net::IpAddr>().is_ok_and(|ip| !ip.is_loopback()))?;
    Some(if addr.contains(':') {
        format!("https://[{addr}]:{K3S_PORT}")
    } else {
        format!("https://{addr}:{K3S_PORT}")
    })
}

/// What K3s this node should run, or `None` when the spec does not manage K3s.
pub fn assignment(node: &NodeRecord, spec: &ClusterSpec, cluster: &K3sCluster) -> Option<pb::K3sAssignment> {
    let k3s = spec.k3s.as_ref()?;
    if cluster.first_server_id.as_deref() == Some(node.id.as_str()) {
        // Always the init secret, also after the secure token is known: the first
        // server's token file must not change, or K3s would restart for nothing.
        return Some(pb::K3sAssignment {
            role: ROLE_SERVER_INIT.into(),
            k3s_role: pb::K3sRole::ServerInit.into(),
            server_url: String::new(),
            token: cluster.init_secret.clone(),
            version: String::new(),
            agent_token: cluster.agent_secret.clone(),
        });
    }
    let server_url = k3s.server_url.clone().or_else(|| cluster.first_server_url.clone()).unwrap_or_default();
    // The string too, for agents that predate `k3s_role`.
    Some(match node.role {
        // Every server, not only the first: K3s rewrites the `node` password
        // from its own `agent-token` setting at each start, falling back to the
        // server token, so a server without it would undo the agent token
        // (docs/reference/k3s.md#tokens).
        Role::Server => pb::K3sAssignment {
            role: ROLE_SERVER.into(),
            k3s_role: pb::K3sRole::Server.into(),
            server_url,
            token: cluster.server_token.clone().unwrap_or_default(),
            version: String::new(),
            agent_token: cluster.agent_secret.clone(),
        },
        Role::Agent => pb::K3sAssignment {
            role: ROLE_AGENT.into(),
            k3s_role: pb::K3sRole::Agent.into(),
            server_url,
            // Never the server token: empty (the node waits) until K3s runs
            // with the agent token.
            token: if cluster.agent_token_active {
                agent_token(cluster).unwrap_or_default()
            } else {
                String::new()
            },
            version: String::new(),
            agent_token: String::new(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, role: Role) -> NodeRecord {
        NodeRecord::for_test(id, id, role)
    }

    #[test]
    fn first_server_initialises_and_others_wait_for_the_secure_token() {
        let spec = ClusterSpec::parse("[k3s]\nchannel = \"stable\"\n").unwrap();
        let mut cluster = new_cluster();
        cluster.first_server_id = Some("s1".into());
        let first = assignment(&node("s1", Role::Server), &spec, &cluster).unwrap();
        assert_eq!(
            (first.role.as_str(), first.token.as_str()),
            (ROLE_SERVER_INIT, cluster.init_secret.as_str())
        );
        let agent = assignment(&node("a1", Role::Agent), &spec, &cluster).unwrap();
        assert_eq!(agent.role, ROLE_AGENT);
        assert!(agent.token.is_empty(), "no token before the first server reports the secure one");

        cluster.first_server_url = server_url_from(&["127.0.0.1".into(), "10.0.0.5".into()]);
        let server_token = format!("K10{}::server:{}", "a".repeat(64), cluster.init_secret);
        cluster.server_token = Some(server_token.clone());
        let agent = assignment(&node("a1", Role::Agent), &spec, &cluster).unwrap();
        assert_eq!(agent.server_url, "https://10.0.0.5:6443");
        assert!(agent.token.is_empty(), "no agent token before the first server runs with it");
        let server = assignment(&node("s2", Role::Server), &spec, &cluster).unwrap();
        assert_eq!((server.role.as_str(), server.token.as_str()), (ROLE_SERVER, server_token.as_str()));
        assert_eq!(server.agent_token, cluster.agent_secret, "every server configures the agent token");

        // The first server reports K3s's agent-token file: agents get the secure
        // agent token, pinned to the same CA, and nothing of the server token.
        let reported = format!("K10{}::node:{}", "a".repeat(64), cluster.agent_secret);
        assert!(
            !is_our_agent_token(&cluster, &server_token),
            "an unset agent-token links to the server token"
        );
        assert!(is_our_agent_token(&cluster, &reported));
        cluster.agent_token_active = true;
        let agent = assignment(&node("a1", Role::Agent), &spec, &cluster).unwrap();
        assert_eq!(agent.token, reported);
        assert!(!agent.token.contains(&cluster.init_secret) && agent.agent_token.is_empty());
        let first = assignment(&node("s1", Role::Server), &spec, &cluster).unwrap();
        assert_eq!(first.token, cluster.init_secret, "the first server's token must never change");
        assert_eq!(first.agent_token, cluster.agent_secret);

        // The spec's server_url wins over the reported address.
        let spec =
            ClusterSpec::parse("[k3s]\nchannel = \"stable\"\nserver_url = \"https://k.lan:6443\"\n").unwrap();
        assert_eq!(
            assignment(&node("a1", Role::Agent), &spec, &cluster).unwrap().server_url,
            "https://k.lan:6443"
        );
        // No [k3s]: no assignment.
        assert!(assignment(&node("a1", Role::Agent), &ClusterSpec::default(), &cluster).is_none());
    }

    #[test]
    fn an_old_record_gets_an_agent_secret_once() {
        let mut old = new_cluster();
        old.agent_secret.clear();
        assert!(ensure_agent_secret(&mut old));
        assert_eq!(old.agent_secret.len(), 48);
        let kept = old.agent_secret.clone();
        assert!(!ensure_agent_secret(&mut old));
        assert_eq!(old.agent_secret, kept);
        assert_ne!(new_cluster().agent_secret, new_cluster().agent_secret);
        let dbg = format!("{old:?}");
        assert!(!dbg.contains(&old.init_secret) && !dbg.contains(&kept), "Debug leaks a K3s secret: {dbg}");
    }

    #[test]
    fn server_urls() {
        assert_eq!(server_url_from(&["fd7a::1".into()]).unwrap(), "https://[fd7a::1]:6443");
        assert!(server_url_from(&["127.0.0.1".into(), "not-an-ip".into()]).is_none());
    }
}
