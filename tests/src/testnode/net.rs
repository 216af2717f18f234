//! Networking of test nodes: link and namespace names, the choice of a free link-local subnet, the
//! node's network namespace and veth into the bridge, and deleting links and namespaces. The bridge's
//! lifetime belongs to `TestNet` (mod.rs).

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Result, anyhow, bail};

use super::TestNode;
use super::cmd::run;

pub(super) const NETNS_DIR: &str = "/run/netns";

pub(super) fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

pub(super) fn delete_link(name: &str) -> Result<()> {
    if link_exists(name) {
        // May vanish concurrently (a veth dies with its netns): only an existing link is an error.
        if let Err(e) = run("ip", ["link", "del", name])
            && link_exists(name)
        {
            return Err(e);
        }
    }
    Ok(())
}

pub(super) fn delete_netns(name: &str) -> Result<()> {
    if Path::new(NETNS_DIR).join(name).exists() {
        run("ip", ["netns", "del", name])?;
    }
    Ok(())
}

pub(super) fn link_name(kind: char, pid: u32, seq: u32) -> Result<String> {
    let name = format!("ely{pid}{kind}{seq}");
    if name.len() > 15 {
        bail!("interface name {name} exceeds 15 characters");
    }
    Ok(name)
}

/// Owner pid of `ely{pid}b{seq}` / `ely{pid}h{seq}`.
pub(super) fn owner_of_link(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("ely")?;
    let split = rest.find(['b', 'h'])?;
    let (pid, seq) = (&rest[..split], &rest[split + 1..]);
    if pid.is_empty() || seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Picks X for `169.254.X.0/24`: starts from a value derived from pid and sequence, skips subnets already
/// present on the host (addresses or routes more specific than /16) and X = 0, 169 (cloud metadata
/// 169.254.169.254) and 255. Must be called with the runtime lock held so the choice and the bridge
/// creation are atomic with respect to other test processes.
pub(super) fn pick_subnet(pid: u32, seq: u32) -> Result<u8> {
    let mut used = [false; 256];
    used[0] = true;
    used[169] = true;
    used[255] = true;
    for args in [&["-4", "-o", "addr", "show"][..], &["-4", "route", "show", "table", "all"][..]] {
        let out = run("ip", args)?;
        for token in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            mark_link_local(token, &mut used);
        }
    }
    let start = (pid as usize).wrapping_mul(7).wrapping_add(seq as usize * 13) % 254;
    (0..254)
        .map(|i| 1 + (start + i) % 254)
        .find(|x| !used[*x])
        .and_then(|x| u8::try_from(x).ok())
        .ok_or_else(|| anyhow!("no free 169.254.X.0/24 subnet left on this host"))
}

/// Marks the third octets covered by `token` if it is a 169.254.0.0/16 address or prefix longer than /16.
pub(super) fn mark_link_local(token: &str, used: &mut [bool; 256]) {
    let (ip, len) = match token.split_once('/') {
        Some((ip, len)) => match len.parse::<u32>() {
            Ok(len) => (ip, len),
            Err(_) => return,
        },
        None => (token, 32),
    };
    let Ok(ip) = ip.parse::<Ipv4Addr>() else { return };
    let o = ip.octets();
    if o[0] != 169 || o[1] != 254 || len <= 16 || len > 32 {
        return;
    }
    let span = 1usize << 24u32.saturating_sub(len).min(8);
    let first = usize::from(o[2]) & !(span - 1);
    for slot in used.iter_mut().skip(first).take(span) {
        *slot = true;
    }
}

impl TestNode {
    /// Network namespace with `lo` and `eth0` (veth peer of the host end enslaved to `bridge`).
    pub(super) fn setup_network(&mut self, bridge: &str) -> Result<()> {
        let ns = self.netns.clone();
        let veth = self.veth.clone();
        run("ip", ["netns", "add", ns.as_str()])?;
        self.have_netns = true;
        run(
            "ip",
            ["link", "add", veth.as_str(), "type", "veth", "peer", "name", "eth0", "netns", ns.as_str()],
        )?;
        self.have_veth = true;
        run("ip", ["link", "set", veth.as_str(), "master", bridge])?;
        run("ip", ["link", "set", veth.as_str(), "up"])?;
        let cidr = format!("{}/24", self.addr);
        run("ip", ["-n", ns.as_str(), "link", "set", "lo", "up"])?;
        run("ip", ["-n", ns.as_str(), "addr", "add", cidr.as_str(), "dev", "eth0"])?;
        run("ip", ["-n", ns.as_str(), "link", "set", "eth0", "up"])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_and_subnets() {
        assert_eq!(owner_of_link("ely1234h7"), Some(1234));
        assert_eq!(owner_of_link("ely1234b12"), Some(1234));
        assert_eq!(owner_of_link("ely1234x7"), None);
        assert_eq!(owner_of_link("eth0"), None);
        assert_eq!(link_name('h', 4_194_304, 9999).unwrap().len(), 15);
        assert!(link_name('h', 4_194_304, 10_000).is_err());
        let mut used = [false; 256];
        mark_link_local("169.254.8.1/24", &mut used);
        mark_link_local("169.254.0.0/16", &mut used);
        mark_link_local("169.254.64.0/22", &mut used);
        assert!(used[8] && used[64] && used[67] && !used[68] && !used[9] && !used[0]);
    }
}
