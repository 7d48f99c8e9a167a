//! The default REPLICA_URL: this host's first usable address and the bound
//! port, read from the kernel's tables in `/proc/net` (no packet is sent).
//!
//! Owns: choosing the address. An IPv6 address that is neither loopback,
//! link-local, multicast nor still tentative comes first (Railway's private
//! network is IPv6 in every environment, IPv4 only in newer ones), then a
//! non-loopback, non-link-local IPv4 one; a HOST bound to one family keeps
//! to it, and a HOST bound to one address is that address.
//!
//! Does not own: REPLICA_URL when set (`config`), or registering the URL
//! (`registry`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::{parse_upstream_url, UpstreamUrl};

/// `ifa_flags` bits of `/proc/net/if_inet6` that make an address unusable
/// for others to reach: IFA_F_DADFAILED, IFA_F_DEPRECATED, IFA_F_TENTATIVE.
const UNUSABLE_FLAGS: u32 = 0x08 | 0x20 | 0x40;

/// The URL the other replicas reach this one at, for a listener bound to
/// `bound`; `None` when the host has no usable address (then only a set
/// REPLICA_URL makes this replica reachable).
pub fn detect(bound: SocketAddr) -> Option<UpstreamUrl> {
    let ip = match bound.ip() {
        IpAddr::V6(ip) if ip.is_unspecified() => {
            let v6 = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
            let v4 = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
            first_ipv6(&v6)
                .map(IpAddr::V6)
                .or_else(|| first_ipv4(&v4).map(IpAddr::V4))?
        }
        IpAddr::V4(ip) if ip.is_unspecified() => {
            let v4 = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
            IpAddr::V4(first_ipv4(&v4)?)
        }
        ip => ip,
    };
    origin(SocketAddr::new(ip, bound.port()))
}

/// `http://addr:port` (brackets around IPv6) as an [`UpstreamUrl`].
pub fn origin(addr: SocketAddr) -> Option<UpstreamUrl> {
    parse_upstream_url(&format!("http://{addr}"))
}

/// The first usable address in `/proc/net/if_inet6`: lines of
/// `address(32 hex) ifindex prefixlen scope flags name`.
fn first_ipv6(table: &str) -> Option<Ipv6Addr> {
    table.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let hex = fields.next()?;
        let flags = u32::from_str_radix(fields.nth(3)?, 16).ok()?;
        if hex.len() != 32 || flags & UNUSABLE_FLAGS != 0 {
            return None;
        }
        let ip = Ipv6Addr::from(u128::from_str_radix(hex, 16).ok()?);
        let link_local = ip.segments()[0] & 0xffc0 == 0xfe80;
        let usable = !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || link_local);
        usable.then_some(ip)
    })
}

/// The first usable local address in `/proc/net/fib_trie`: an address line
/// (`|-- 10.1.2.3`) followed by `/32 host LOCAL`.
fn first_ipv4(trie: &str) -> Option<Ipv4Addr> {
    let mut last: Option<Ipv4Addr> = None;
    for line in trie.lines() {
        let line = line.trim();
        if let Some(address) = line.strip_prefix("|-- ") {
            last = address.trim().parse().ok();
        } else if line.starts_with("/32 host LOCAL") {
            if let Some(ip) = last.take() {
                if !(ip.is_loopback() || ip.is_link_local() || ip.is_unspecified()) {
                    return Some(ip);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const IF_INET6: &str = "\
00000000000000000000000000000001 01 80 10 80       lo
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
fd120000000000000000000000000007 04 40 00 c0     eth0
fd000000000000000000000000000002 04 40 00 82     eth0
";

    const FIB_TRIE: &str = "\
Local:
  +-- 0.0.0.0/0 3 0 5
     +-- 127.0.0.0/8 2 0 2
           |-- 127.0.0.1
              /32 host LOCAL
     +-- 192.0.2.0/24 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
";

    #[test]
    fn ipv6_skips_loopback_link_local_and_tentative() {
        // fd12::7 carries IFA_F_TENTATIVE (0x40): not yet usable.
        assert_eq!(first_ipv6(IF_INET6), Some("fd00::2".parse().unwrap()));
        assert_eq!(first_ipv6("garbage\n\n"), None);
    }

    #[test]
    fn ipv4_takes_the_first_local_host_address() {
        assert_eq!(first_ipv4(FIB_TRIE), Some(Ipv4Addr::new(192, 0, 2, 2)));
        assert_eq!(first_ipv4(""), None);
    }

    #[test]
    fn a_bound_address_is_the_url() {
        let url = detect("127.0.0.1:9000".parse().unwrap()).unwrap();
        assert_eq!(url.to_string(), "http://127.0.0.1:9000");
        let url = origin("[fd12::1]:80".parse().unwrap()).unwrap();
        assert_eq!(url.connect_to, "[fd12::1]:80");
    }
}
