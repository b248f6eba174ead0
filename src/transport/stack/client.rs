//! Who the client is when nothing authenticates it: the peer address, or with
//! `rate_limit.trusted_proxies` the address the trusted hops forwarded (`X-Forwarded-For`
//! walked from the right over every line, else RFC 7239 `Forwarded`), canonical, so one
//! client has one key however its address is spelled.
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request};
use http::HeaderName;

use crate::core::auth::Principal;

/// The de-facto header proxies append the client's address to.
pub(super) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client's address: the peer's, or, when the peer is a trusted proxy, what the chain of
/// trusted proxies says. Every `X-Forwarded-For` line is read, joined in order (proxies such
/// as HAProxy append a line of their own rather than extend the client's), else every
/// `Forwarded` line's `for=`; the list is walked from the right, since only what our own
/// proxies appended can be believed: a trusted address is one more of ours (keep walking), the
/// first untrusted one is the client. An entry that does not parse (a port, `unknown`, an
/// obfuscated name, garbage) ends the walk at the last trusted hop: skipping it would let
/// whatever the client wrote to its left choose the answer.
pub(super) fn client_ip(req: &Request, trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    // Canonical (an IPv4-mapped IPv6 address as IPv4), so one client has one bucket and one
    // form to match against `server.trusted_proxies` and `auth.health_details_from`.
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()?
        .0
        .ip()
        .to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let headers = req.headers();
    let hops: Vec<Option<IpAddr>> = if headers.contains_key(&X_FORWARDED_FOR) {
        headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .flat_map(|line| match line.to_str() {
                Ok(line) => line.split(',').map(|e| e.trim().parse().ok()).collect(),
                Err(_) => vec![None],
            })
            .collect()
    } else {
        // RFC 7239: `for=192.0.2.60;proto=http, for="[2001:db8::1]:4711"`. A small reader
        // rather than a crate: only `for` is used, and an element without a readable
        // address ends the walk like any unreadable entry.
        headers
            .get_all(http::header::FORWARDED)
            .iter()
            .flat_map(|line| match line.to_str() {
                Ok(line) => line.split(',').map(forwarded_for).collect(),
                Err(_) => vec![None],
            })
            .collect()
    };
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        match hop.map(|ip| ip.to_canonical()) {
            Some(ip) if is_trusted(&ip) => client = ip,
            Some(ip) => return Some(ip),
            None => return Some(client),
        }
    }
    Some(client)
}

/// The address in one `Forwarded` element's `for=` (a port after it is allowed there), or
/// `None` when it has none or it is not an address.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("for")
            .then(|| v.trim().trim_matches('"'))
    })?;
    let host = match value.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => value.split(':').next()?,
    };
    host.parse().ok()
}

/// Whose bucket and share a request takes from: a value rather than a formatted string
/// (formatting the address cost about 1.9K instructions per request, #26).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum ClientKey {
    /// An authenticated principal: how it authenticated (`api_key`, `jwt`, ...) and its id.
    Principal(&'static str, std::sync::Arc<str>),
    /// An unauthenticated client's address ([`client_ip`]).
    Ip(IpAddr),
    /// No address known (a connection without one, as in tests).
    Unknown,
}

impl ClientKey {
    /// The key of an address, or of no address.
    pub(super) fn of_ip(ip: Option<IpAddr>) -> Self {
        ip.map_or(Self::Unknown, Self::Ip)
    }
}

/// The bucket's key: the authenticated principal, else the client's address. Nothing an
/// unauthenticated client sends (a header, an unknown key) selects a bucket.
pub(super) fn client_key(req: &Request, trusted: &[ipnet::IpNet]) -> ClientKey {
    if let Some(p) = req.extensions().get::<Principal>()
        && p.is_authenticated()
    {
        return ClientKey::Principal(p.authtype, p.id.clone());
    }
    ClientKey::of_ip(client_ip(req, trusted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// `client_ip` for a request from `peer` carrying `headers` (name, value; a name may come
    /// several times), with 127.0.0.0/8 and 10.0.0.0/8 trusted.
    fn client_of(peer: &str, headers: &[(&str, &str)]) -> IpAddr {
        let mut req = Request::new(axum::body::Body::empty());
        for (k, v) in headers {
            req.headers_mut().append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let peer: SocketAddr = format!("{peer}:4000").parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(peer));
        let trusted = [
            "127.0.0.0/8".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        client_ip(&req, &trusted).unwrap()
    }

    #[test]
    fn the_forwarded_walk_believes_only_trusted_hops() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let xff = "x-forwarded-for";
        // An untrusted peer's headers say nothing.
        assert_eq!(
            client_of("192.0.2.1", &[(xff, "198.51.100.1")]),
            ip("192.0.2.1")
        );
        // Every line, in order: the proxy's own line is the last one.
        let lines = [(xff, "198.51.100.1"), (xff, "203.0.113.7")];
        assert_eq!(client_of("127.0.0.1", &lines), ip("203.0.113.7"));
        // Trusted hops are walked past; the first untrusted one is the client.
        let chain = [
            (xff, "198.51.100.1, 203.0.113.7, 10.1.1.1"),
            (xff, "10.2.2.2"),
        ];
        assert_eq!(client_of("127.0.0.1", &chain), ip("203.0.113.7"));
        // An unreadable entry ends the walk at the last trusted hop, never skipped.
        for bad in ["203.0.113.7:5555", "unknown", "", "not an address"] {
            let h = [(xff, format!("198.51.100.1, {bad}, 10.1.1.1"))];
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert_eq!(client_of("127.0.0.1", &h), ip("10.1.1.1"), "{bad:?}");
        }
        // All trusted: the leftmost.
        assert_eq!(client_of("127.0.0.1", &[(xff, "10.9.9.9")]), ip("10.9.9.9"));
        // No header: the peer.
        assert_eq!(client_of("127.0.0.1", &[]), ip("127.0.0.1"));
        // Forwarded, every line, ports allowed there; an element with no address stops.
        let fwd = [
            ("forwarded", "for=198.51.100.1"),
            ("forwarded", "for=\"[2001:db8::1]:4711\";proto=https"),
        ];
        assert_eq!(client_of("127.0.0.1", &fwd), ip("2001:db8::1"));
        let fwd = [(
            "forwarded",
            "for=198.51.100.1, for=_hidden, for=10.1.1.1:80",
        )];
        assert_eq!(client_of("127.0.0.1", &fwd), ip("10.1.1.1"));
        // X-Forwarded-For wins when both are there.
        let both = [("forwarded", "for=198.51.100.1"), (xff, "203.0.113.7")];
        assert_eq!(client_of("127.0.0.1", &both), ip("203.0.113.7"));
    }
}
