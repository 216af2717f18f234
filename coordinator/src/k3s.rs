//! The coordinator's side of K3s: which server initialises the cluster, where the
//! other nodes find it, and the cluster token.
//!
//! The flow (K3s's own, automated): the coordinator generates a secret for the
//! first server, which starts with `cluster-init`; once healthy, that server's
//! agent reports the full `K10<ca-hash>::server:<secret>` token from
//! `/var/lib/rancher/k3s/server/token`; every other node then receives that token
//! and the first server's URL. Before the report, joining nodes get no token and
//! wait: the secure token pins the cluster CA, the bare secret would not.

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

/// A new cluster record with a random init secret (hex: K3s tokens are passed
/// through config files and must not need quoting).
pub fn new_cluster() -> K3sCluster {
    K3sCluster { init_secret: hex::encode(rand::random::<[u8; 24]>()), ..Default::default() }
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
        });
    }
    // The string too, for agents that predate `k3s_role`.
    let (role, k3s_role) = match node.role {
        Role::Server => (ROLE_SERVER, pb::K3sRole::Server),
        Role::Agent => (ROLE_AGENT, pb::K3sRole::Agent),
    };
    Some(pb::K3sAssignment {
        role: role.into(),
        k3s_role: k3s_role.into(),
        server_url: k3s.server_url.clone().or_else(|| cluster.first_server_url.clone()).unwrap_or_default(),
        token: cluster.server_token.clone().unwrap_or_default(),
        version: String::new(),
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
        cluster.server_token = Some(format!("K10{}::server:{}", "a".repeat(64), cluster.init_secret));
        let agent = assignment(&node("a1", Role::Agent), &spec, &cluster).unwrap();
        assert_eq!(agent.server_url, "https://10.0.0.5:6443");
        assert!(agent.token.starts_with("K10"));
        let server = assignment(&node("s2", Role::Server), &spec, &cluster).unwrap();
        assert_eq!(server.role, ROLE_SERVER);
        let first = assignment(&node("s1", Role::Server), &spec, &cluster).unwrap();
        assert_eq!(first.token, cluster.init_secret, "the first server's token must never change");

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
    fn server_urls() {
        assert_eq!(server_url_from(&["fd7a::1".into()]).unwrap(), "https://[fd7a::1]:6443");
        assert!(server_url_from(&["127.0.0.1".into(), "not-an-ip".into()]).is_none());
    }
}
