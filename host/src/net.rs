//! This machine's network addresses, from the kernel (getifaddrs).

use std::net::IpAddr;

/// Addresses of this machine's interfaces that other machines could use to reach
/// it: no loopback, no IPv6 link-local (useless without a scope). Deduplicated, in
/// interface order.
pub fn interface_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return out };
    for ifa in addrs {
        let ip = ifa.address.and_then(|a| {
            a.as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        });
        if let Some(ip) = ip
            && !ip.is_loopback()
            && !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}
