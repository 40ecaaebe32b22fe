//! Match rules for the XDP program and their text syntax.
//!
//! A filter is a list of rules; a frame is redirected to the AF_XDP socket when *any* rule
//! matches, and passed to the kernel otherwise. Inside a rule every term must hold.
//!
//! # Grammar (EBNF)
//!
//! ```text
//! filter    = rule , { ( "or" | "," | ";" ) , rule } ;
//! rule      = term , { [ "and" ] , term } ;
//! term      = "all"                                     (* every frame *)
//!           | "ip" | "ip4" | "ip6"                       (* IP version *)
//!           | "udp" | "tcp" | "sctp" | "icmp" | "icmp6"  (* IP protocol (implies IPv4 for icmp,
//!                                                            IPv6 for icmp6) *)
//!           | ( "proto" | "ip" "proto" ) , number        (* IP protocol number 0..255 *)
//!           | "ether" , "proto" , ( number | "ip" | "ip6" | "arp" )   (* EtherType *)
//!           | "vlan" , [ number ]                        (* 802.1Q/802.1ad tagged, VLAN id *)
//!           | dir , [ "host" | "net" ] , prefix          (* address or prefix *)
//!           | [ dir ] , "port" , portrange ;             (* without dir: src or dst *)
//! dir       = "src" | "dst" ;
//! prefix    = ipv4 [ "/" 0..32 ] | ipv6 [ "/" 0..128 ] ;
//! portrange = port , [ "-" , port ] ;                   (* inclusive; port = 0..65535 *)
//! number    = decimal | "0x" hex ;
//! ```
//!
//! Examples: `udp dst port 9000-9010`, `ip6 tcp src port 22`, `ip src 198.18.0.0/15 and udp`,
//! `ether proto 0x88b5`, `udp port 53 or tcp dst port 80`, `vlan 100 and udp`.
//!
//! Semantics: a rule with ports or a protocol but no IP version matches IPv4 and IPv6. A rule
//! with ports but no protocol matches UDP, TCP and SCTP.
//!
//! # What a frame is made of
//!
//! The XDP program, [`matches()`] and [`crate::packet::parse()`] read frames the same way (checked
//! against each other by the differential fuzz in `xdp::fuzz`):
//!
//! - **Ethernet and VLAN tags.** Up to two tags (TPID 0x8100 or 0x88a8, in any order: 802.1Q,
//!   or QinQ's 802.1ad outer tag and 802.1Q inner tag) are stepped over; the EtherType is the
//!   one after them. `vlan` requires a tag and `vlan N` compares the *outer* (first) tag's id.
//!   A third tag is not descended into: its TPID is then the EtherType, so the frame is not IP
//!   and only `all`, `vlan` and `vlan N` rules can match it. A frame that ends inside the
//!   Ethernet header or a tag matches no rule, not even `all`.
//! - **IP header.** `ip`/`ip6` (and everything implying them) need the fixed header in the
//!   frame and valid: IPv4 with EtherType 0x0800, 20 bytes, version 4 and IHL ≥ 5; IPv6 with
//!   EtherType 0x86dd, 40 bytes and version 6. Addresses and the protocol are then read from it
//!   even when the IP length fields are inconsistent (the parser flags that as malformed).
//! - **IPv6 extension headers.** Hop-by-hop (0), routing (43), fragment (44) and destination
//!   options (60) are walked, up to [`crate::packet::parse::IPV6_EXT_HEADERS`] (8) of them, the
//!   program unrolling the walk for the verifier. Each counts only if it lies entirely inside
//!   the payload length and the frame; where the walk stops (a header cut short, or a ninth
//!   extension header) that header's number is the protocol, so `proto 60` can match but no
//!   port rule does. Other headers (AH 51, ESP 50, mobility 135, ...) end the walk: they are
//!   the protocol.
//! - **Fragments.** The protocol of any fragment is known (`udp` matches all fragments of a UDP
//!   datagram); only the first fragment (IPv4 fragment offset 0, IPv6 fragment header offset
//!   0) can have ports.
//! - **Ports.** `port`, `src port` and `dst port` match only when the whole L4 header (UDP 8
//!   bytes, SCTP 12, TCP its data offset × 4, at least 20) lies inside the IP datagram — the
//!   IPv4 total length counted from the IP header, the IPv6 payload length counted from the
//!   end of the fixed header — and inside the frame. Bytes after the datagram (Ethernet padding
//!   or trailers) are never read as ports.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::{Error, Result};
use crate::packet::parse::{PacketMeta, FLAG_L4, FLAG_VLAN};

/// IP protocol numbers with names in the syntax.
pub const IPPROTO_ICMP: u8 = 1;
/// TCP.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;
/// SCTP.
pub const IPPROTO_SCTP: u8 = 132;
/// ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

/// IP version of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// An address prefix, e.g. `198.18.0.0/15` (host bits are cleared when parsed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub len: u8,
}

impl Prefix {
    /// Parse `198.18.0.0/15`, `2001:db8::/32` or a bare address (a full-length prefix); the error
    /// says which part is wrong, without naming the input (callers add their context).
    pub fn parse(s: &str) -> std::result::Result<Self, &'static str> {
        let (a, l) = match s.trim().split_once('/') {
            Some((a, l)) => (a.trim(), Some(l.trim())),
            None => (s.trim(), None),
        };
        let addr: IpAddr = a.parse().map_err(|_| "expected an IPv4 or IPv6 address")?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|&v| v <= max)
                .ok_or(if max == 32 {
                    "prefix length must be 0..32"
                } else {
                    "prefix length must be 0..128"
                })?,
            None => max,
        };
        Prefix::new(addr, len).map_err(|_| "prefix length is too long")
    }

    /// A prefix with host bits cleared; errors if `len` is too long for the address family.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(Error::invalid(format!(
                "prefix length /{len} is longer than {max} bits"
            )));
        }
        let addr = match addr {
            IpAddr::V4(a) => {
                let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
            }
            IpAddr::V6(a) => {
                let m = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
            }
        };
        Ok(Prefix { addr, len })
    }

    /// IP version of the prefix.
    pub fn version(&self) -> IpVersion {
        if self.addr.is_ipv4() {
            IpVersion::V4
        } else {
            IpVersion::V6
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.len == full {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.len)
        }
    }
}

/// VLAN condition of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Vlan {
    /// Tagged or untagged.
    #[default]
    Any,
    /// Tagged, any VLAN id.
    Tagged,
    /// Tagged with this VLAN id (0..4095).
    Id(u16),
}

/// One rule: every field that is set must match.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Rule {
    /// EtherType (after any VLAN tag), for non-IP protocols; set to 0x0800/0x86dd by `ip`/`ip6`
    /// through [`Rule::ip`] instead.
    pub ethertype: Option<u16>,
    /// IP version.
    pub ip: Option<IpVersion>,
    /// IP protocol number.
    pub proto: Option<u8>,
    /// Source prefix.
    pub src: Option<Prefix>,
    /// Destination prefix.
    pub dst: Option<Prefix>,
    /// Source port range (inclusive).
    pub sport: Option<(u16, u16)>,
    /// Destination port range (inclusive).
    pub dport: Option<(u16, u16)>,
    /// VLAN condition.
    pub vlan: Vlan,
}

/// One rule given field by field, as the Python `Rule` holds it: `ip` 4/6, `vlan` -1 for "any
/// tag", prefixes as text. [`RuleFields::build`] checks everything and returns the [`Rule`].
#[derive(Clone, Debug, Default)]
pub struct RuleFields<'a> {
    pub ip: Option<u8>,
    pub proto: Option<u8>,
    pub src: Option<&'a str>,
    pub dst: Option<&'a str>,
    pub sport: Option<(u16, u16)>,
    pub dport: Option<(u16, u16)>,
    pub ethertype: Option<u16>,
    pub vlan: Option<i32>,
}

impl RuleFields<'_> {
    /// The rule, or `InvalidArgument` naming the field and what to give instead.
    pub fn build(&self) -> Result<Rule> {
        let prefix = |what: &str, s: Option<&str>| -> Result<Option<Prefix>> {
            s.map(|s| {
                Prefix::parse(s).map_err(|why| {
                    Error::invalid(format!("{what}={s:?}: {why} (e.g. 198.18.0.0/15)"))
                })
            })
            .transpose()
        };
        let r = Rule {
            ip: match self.ip {
                None => None,
                Some(4) => Some(IpVersion::V4),
                Some(6) => Some(IpVersion::V6),
                Some(v) => return Err(Error::invalid(format!("ip={v} must be 4, 6 or None"))),
            },
            proto: self.proto,
            src: prefix("src", self.src)?,
            dst: prefix("dst", self.dst)?,
            sport: self.sport,
            dport: self.dport,
            ethertype: self.ethertype,
            vlan: match self.vlan {
                None => Vlan::Any,
                Some(-1) => Vlan::Tagged,
                Some(v) if (0..=4095).contains(&v) => Vlan::Id(v as u16),
                Some(v) => {
                    return Err(Error::invalid(format!(
                        "vlan={v} must be 0..4095, -1 (any tag) or None"
                    )))
                }
            },
        };
        if r.ethertype
            .is_some_and(|e| [0x0800, 0x86dd, 0x8100, 0x88a8].contains(&e))
        {
            return Err(Error::invalid(
                "ethertype 0x0800/0x86dd: use ip=4/6; VLAN EtherTypes: use vlan=",
            ));
        }
        r.validate()?;
        Ok(r)
    }
}

impl Rule {
    /// Check the rule is consistent (the parser and the Python `Rule` both end up here).
    pub fn validate(&self) -> Result<()> {
        for (name, p) in [("src", self.src), ("dst", self.dst)] {
            if let (Some(p), Some(v)) = (p, self.ip) {
                if p.version() != v {
                    return Err(Error::invalid(format!(
                        "{name} {p} is {:?} but the rule is {:?}: use matching versions",
                        p.version(),
                        v
                    )));
                }
            }
        }
        if let (Some(s), Some(d)) = (self.src, self.dst) {
            if s.version() != d.version() {
                return Err(Error::invalid(
                    "src and dst are different IP versions: split them into two rules",
                ));
            }
        }
        for (name, r) in [("src port", self.sport), ("dst port", self.dport)] {
            if let Some((lo, hi)) = r {
                if lo > hi {
                    return Err(Error::invalid(format!(
                        "{name} range {lo}-{hi} is empty: write the low port first"
                    )));
                }
            }
        }
        if self.sport.is_some() || self.dport.is_some() {
            if let Some(p) = self.proto {
                if ![IPPROTO_UDP, IPPROTO_TCP, IPPROTO_SCTP].contains(&p) {
                    return Err(Error::invalid(format!(
                        "ports need udp, tcp or sctp, not protocol {p}"
                    )));
                }
            }
        }
        if let Some(et) = self.ethertype {
            let l3 = self.ip.is_some()
                || self.proto.is_some()
                || self.src.is_some()
                || self.dst.is_some()
                || self.sport.is_some()
                || self.dport.is_some();
            if l3 {
                return Err(Error::invalid(format!(
                    "ether proto 0x{et:04x} cannot be combined with IP terms: use ip/ip6 instead"
                )));
            }
        }
        if let Vlan::Id(v) = self.vlan {
            if v > 4095 {
                return Err(Error::invalid(format!(
                    "VLAN id {v} is out of range 0..4095"
                )));
            }
        }
        Ok(())
    }

    /// The IP versions this rule has to look at (empty: no IP condition).
    pub fn versions(&self) -> Vec<IpVersion> {
        if let Some(v) = self.ip {
            return vec![v];
        }
        if let Some(p) = self.src.or(self.dst) {
            return vec![p.version()];
        }
        if self.proto.is_some() || self.sport.is_some() || self.dport.is_some() {
            return vec![IpVersion::V4, IpVersion::V6];
        }
        vec![]
    }
}

impl Rule {
    /// Whether this rule matches the frame `m` was parsed from ([`crate::packet::parse()`]):
    /// exactly what the compiled XDP program decides for it (see the module docs).
    pub fn matches(&self, m: &PacketMeta) -> bool {
        if m.l3_off == 0 {
            return false; // the Ethernet header or a VLAN tag is cut short
        }
        let tagged = m.flags & FLAG_VLAN != 0;
        match self.vlan {
            Vlan::Any => {}
            Vlan::Tagged if !tagged => return false,
            Vlan::Id(v) if !tagged || m.vlan != v => return false,
            Vlan::Tagged | Vlan::Id(_) => {}
        }
        if self.ethertype.is_some_and(|e| e != m.ethertype) {
            return false;
        }
        let vers = self.versions();
        if vers.is_empty() {
            return true;
        }
        let v = match m.ip_version {
            4 => IpVersion::V4,
            6 => IpVersion::V6,
            _ => return false,
        };
        if !vers.contains(&v) || self.proto.is_some_and(|p| p != m.proto) {
            return false;
        }
        let ports = self.sport.is_some() || self.dport.is_some();
        // FLAG_L4 is set for UDP, TCP and SCTP only.
        if ports && m.flags & FLAG_L4 == 0 {
            return false;
        }
        let in_prefix = |p: &Prefix, v4: u32, v6: &[u8; 16]| match p.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(p.len)).unwrap_or(0);
                v4 & mask == u32::from(a) & mask
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(p.len)).unwrap_or(0);
                u128::from_be_bytes(*v6) & mask == u128::from(a) & mask
            }
        };
        if self
            .src
            .is_some_and(|p| !in_prefix(&p, m.src_ip4, &m.src_ip6))
        {
            return false;
        }
        if self
            .dst
            .is_some_and(|p| !in_prefix(&p, m.dst_ip4, &m.dst_ip6))
        {
            return false;
        }
        let in_range = |r: Option<(u16, u16)>, v: u16| r.is_none_or(|(lo, hi)| lo <= v && v <= hi);
        in_range(self.sport, m.src_port) && in_range(self.dport, m.dst_port)
    }
}

/// The decision of the XDP program built from `rules` for the frame `m` was parsed from: true
/// means redirected to the AF_XDP socket. An empty list is the default program, which
/// redirects every frame.
///
/// ```
/// use kbypass_core::packet::parse;
/// use kbypass_core::xdp::{matches, parse_filter};
/// let rules = parse_filter("udp dst port 9000")?;
/// let frame = [0u8; 60]; // EtherType 0: not IP
/// assert!(!matches(&rules, &parse(&frame)));
/// # Ok::<(), kbypass_core::Error>(())
/// ```
pub fn matches(rules: &[Rule], m: &PacketMeta) -> bool {
    rules.is_empty() || rules.iter().any(|r| r.matches(m))
}

fn proto_name(p: u8) -> Option<&'static str> {
    Some(match p {
        IPPROTO_UDP => "udp",
        IPPROTO_TCP => "tcp",
        IPPROTO_SCTP => "sctp",
        IPPROTO_ICMP => "icmp",
        IPPROTO_ICMPV6 => "icmp6",
        _ => return None,
    })
}

fn fmt_range(r: (u16, u16)) -> String {
    if r.0 == r.1 {
        r.0.to_string()
    } else {
        format!("{}-{}", r.0, r.1)
    }
}

impl fmt::Display for Rule {
    /// The canonical text form; parsing it gives the same rule back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        match self.vlan {
            Vlan::Any => {}
            Vlan::Tagged => parts.push("vlan".into()),
            Vlan::Id(v) => parts.push(format!("vlan {v}")),
        }
        if let Some(et) = self.ethertype {
            parts.push(format!("ether proto 0x{et:04x}"));
        }
        match self.ip {
            Some(IpVersion::V4) => parts.push("ip".into()),
            Some(IpVersion::V6) => parts.push("ip6".into()),
            None => {}
        }
        if let Some(p) = self.proto {
            parts.push(proto_name(p).map_or_else(|| format!("proto {p}"), str::to_string));
        }
        if let Some(p) = self.src {
            parts.push(format!("src {p}"));
        }
        if let Some(p) = self.dst {
            parts.push(format!("dst {p}"));
        }
        if let Some(r) = self.sport {
            parts.push(format!("src port {}", fmt_range(r)));
        }
        if let Some(r) = self.dport {
            parts.push(format!("dst port {}", fmt_range(r)));
        }
        if parts.is_empty() {
            return f.write_str("all");
        }
        f.write_str(&parts.join(" "))
    }
}

#[derive(Debug, Clone, Copy)]
struct Tok<'a> {
    text: &'a str,
    col: usize,
}

fn tokenize(s: &str) -> Vec<Tok<'_>> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b',' || c == b';' {
            out.push(Tok {
                text: &s[i..i + 1],
                col: i,
            });
            i += 1;
        } else {
            let start = i;
            while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b',' && b[i] != b';' {
                i += 1;
            }
            out.push(Tok {
                text: &s[start..i],
                col: start,
            });
        }
    }
    out
}

struct Parser<'a> {
    src: &'a str,
    toks: Vec<Tok<'a>>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn err_at(&self, col: usize, width: usize, msg: impl fmt::Display) -> Error {
        let width = width.max(1);
        Error::invalid(format!(
            "filter error at column {}: {msg}\n  {}\n  {}{}",
            col + 1,
            self.src,
            " ".repeat(col),
            "^".repeat(width)
        ))
    }

    fn err_tok(&self, t: Tok<'_>, msg: impl fmt::Display) -> Error {
        self.err_at(
            t.col,
            t.text.chars().count(),
            format!("`{}`: {msg}", t.text),
        )
    }

    fn err_end(&self, msg: impl fmt::Display) -> Error {
        self.err_at(self.src.len(), 1, format!("unexpected end: {msg}"))
    }

    fn peek(&self) -> Option<Tok<'a>> {
        self.toks.get(self.pos).copied()
    }

    fn next(&mut self, expect: &str) -> Result<Tok<'a>> {
        let t = self
            .peek()
            .ok_or_else(|| self.err_end(format!("expected {expect}")))?;
        self.pos += 1;
        Ok(t)
    }

    fn is(&self, word: &str) -> bool {
        self.peek()
            .is_some_and(|t| t.text.eq_ignore_ascii_case(word))
    }

    fn number(&mut self, what: &str, max: u32) -> Result<u32> {
        let t = self.next(what)?;
        parse_number(t.text)
            .filter(|&v| v <= max)
            .ok_or_else(|| self.err_tok(t, format!("expected {what} (0..{max})")))
    }

    fn port_range(&mut self) -> Result<(u16, u16)> {
        let t = self.next("a port or port range like 9000-9010")?;
        let bad = || self.err_tok(t, "expected a port 0..65535 or a range like 9000-9010");
        let (lo, hi) = match t.text.split_once('-') {
            Some((a, b)) => (
                parse_number(a).ok_or_else(bad)?,
                parse_number(b).ok_or_else(bad)?,
            ),
            None => {
                let v = parse_number(t.text).ok_or_else(bad)?;
                (v, v)
            }
        };
        if lo > 65535 || hi > 65535 {
            return Err(bad());
        }
        if lo > hi {
            return Err(self.err_tok(t, "the range is empty: write the low port first"));
        }
        Ok((lo as u16, hi as u16))
    }

    fn prefix(&mut self) -> Result<(Prefix, Tok<'a>)> {
        let t = self.next("an address or prefix like 198.18.0.0/15")?;
        let p = Prefix::parse(t.text).map_err(|why| self.err_tok(t, why))?;
        Ok((p, t))
    }

    /// Parse one rule; returns one or two rules (`port` without a direction expands to src/dst).
    fn rule(&mut self) -> Result<Vec<Rule>> {
        let mut r = Rule::default();
        let mut any_port: Option<(u16, u16)> = None;
        let mut terms = 0;
        let start = self.pos;
        while let Some(t) = self.peek() {
            let w = t.text.to_ascii_lowercase();
            if w == "or" || w == "," || w == ";" {
                break;
            }
            if w == "and" {
                if terms == 0 {
                    return Err(self.err_tok(t, "`and` needs a term before it"));
                }
                self.pos += 1;
                continue;
            }
            self.pos += 1;
            terms += 1;
            let set_ip = |p: &Parser<'_>, r: &mut Rule, v: IpVersion| {
                if r.ip.is_some_and(|x| x != v) {
                    return Err(p.err_tok(
                        t,
                        "conflicts with the IP version given earlier in this rule",
                    ));
                }
                r.ip = Some(v);
                Ok(())
            };
            let set_proto = |p: &Parser<'_>, r: &mut Rule, v: u8| {
                if r.proto.is_some_and(|x| x != v) {
                    return Err(p.err_tok(t, "a rule has one protocol: use `or` for several"));
                }
                r.proto = Some(v);
                Ok(())
            };
            match w.as_str() {
                "all" => {}
                "ip" | "ip4" if self.is("proto") => {
                    self.pos += 1;
                    let p = self.number("an IP protocol number", 255)? as u8;
                    set_ip(self, &mut r, IpVersion::V4)?;
                    set_proto(self, &mut r, p)?;
                }
                "ip" | "ip4" => set_ip(self, &mut r, IpVersion::V4)?,
                "ip6" => set_ip(self, &mut r, IpVersion::V6)?,
                "udp" => set_proto(self, &mut r, IPPROTO_UDP)?,
                "tcp" => set_proto(self, &mut r, IPPROTO_TCP)?,
                "sctp" => set_proto(self, &mut r, IPPROTO_SCTP)?,
                "icmp" => {
                    set_ip(self, &mut r, IpVersion::V4)?;
                    set_proto(self, &mut r, IPPROTO_ICMP)?;
                }
                "icmp6" | "icmpv6" => {
                    set_ip(self, &mut r, IpVersion::V6)?;
                    set_proto(self, &mut r, IPPROTO_ICMPV6)?;
                }
                "proto" => {
                    let p = self.number("an IP protocol number", 255)? as u8;
                    set_proto(self, &mut r, p)?;
                }
                "ether" => {
                    let k = self.next("`proto`")?;
                    if !k.text.eq_ignore_ascii_case("proto") {
                        return Err(self.err_tok(k, "expected `proto` after `ether`"));
                    }
                    let v = self.next("an EtherType like 0x88b5")?;
                    let et = match v.text.to_ascii_lowercase().as_str() {
                        "ip" | "ip4" => {
                            set_ip(self, &mut r, IpVersion::V4)?;
                            continue;
                        }
                        "ip6" => {
                            set_ip(self, &mut r, IpVersion::V6)?;
                            continue;
                        }
                        "arp" => 0x0806,
                        _ => parse_number(v.text)
                            .filter(|&n| n <= 0xffff)
                            .ok_or_else(|| self.err_tok(v, "expected an EtherType 0..0xffff"))?,
                    };
                    match et {
                        0x0800 => set_ip(self, &mut r, IpVersion::V4)?,
                        0x86dd => set_ip(self, &mut r, IpVersion::V6)?,
                        0x8100 | 0x88a8 => return Err(self.err_tok(v, "VLAN EtherTypes are matched with `vlan`")),
                        _ => r.ethertype = Some(et as u16),
                    }
                }
                "vlan" => {
                    r.vlan = Vlan::Tagged;
                    if let Some(n) = self.peek().and_then(|t| parse_number(t.text)) {
                        let t = self.next("a VLAN id")?;
                        if n > 4095 {
                            return Err(self.err_tok(t, "VLAN id must be 0..4095"));
                        }
                        r.vlan = Vlan::Id(n as u16);
                    }
                }
                "src" | "dst" => {
                    let is_src = w == "src";
                    if self.is("port") {
                        self.pos += 1;
                        let pr = self.port_range()?;
                        let slot = if is_src { &mut r.sport } else { &mut r.dport };
                        if slot.is_some() {
                            return Err(self.err_tok(t, "the port is already given in this rule"));
                        }
                        *slot = Some(pr);
                    } else {
                        if self.is("host") || self.is("net") {
                            self.pos += 1;
                        }
                        let (p, pt) = self.prefix()?;
                        if r.ip.is_some_and(|v| v != p.version()) {
                            return Err(self.err_tok(pt, "address family conflicts with the IP version of this rule"));
                        }
                        let slot = if is_src { &mut r.src } else { &mut r.dst };
                        if slot.is_some() {
                            return Err(self.err_tok(t, "the address is already given in this rule"));
                        }
                        *slot = Some(p);
                    }
                }
                "port" => {
                    if any_port.is_some() {
                        return Err(self.err_tok(t, "the port is already given in this rule"));
                    }
                    any_port = Some(self.port_range()?);
                }
                _ => {
                    return Err(self.err_tok(
                        t,
                        "unknown term: expected all, ip, ip6, udp, tcp, sctp, icmp, icmp6, proto, ether proto, vlan, src, dst or port",
                    ))
                }
            }
        }
        if terms == 0 {
            return Err(match self.peek() {
                Some(t) => self.err_tok(t, "expected a rule before it"),
                None => self.err_end("expected a rule"),
            });
        }
        let check = |r: &Rule| {
            r.validate().map_err(|e| {
                let t0 = self.toks[start];
                self.err_at(t0.col, 1, e)
            })
        };
        let out = match any_port {
            None => vec![r],
            Some(p) => {
                if r.sport.is_some() || r.dport.is_some() {
                    return Err(self.err_end(
                        "`port` cannot be combined with `src port`/`dst port` in one rule",
                    ));
                }
                let mut a = r.clone();
                a.sport = Some(p);
                let mut b = r;
                b.dport = Some(p);
                vec![a, b]
            }
        };
        for r in &out {
            check(r)?;
        }
        Ok(out)
    }
}

fn parse_number(s: &str) -> Option<u32> {
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(h, 16).ok()
    } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// Parse a filter (see the module docs for the grammar) into its rules.
pub fn parse_filter(text: &str) -> Result<Vec<Rule>> {
    let mut p = Parser {
        src: text,
        toks: tokenize(text),
        pos: 0,
    };
    if p.toks.is_empty() {
        return Err(Error::invalid(
            "the filter is empty: give rules like `udp dst port 9000`, or no filter to redirect everything",
        ));
    }
    let mut rules = Vec::new();
    loop {
        rules.extend(p.rule()?);
        match p.peek() {
            None => break,
            Some(t) => {
                p.pos += 1;
                if p.peek().is_none() {
                    return Err(p.err_tok(t, "expected a rule after it"));
                }
            }
        }
    }
    Ok(rules)
}

/// The canonical text of a list of rules (`or`-joined).
pub fn format_filter(rules: &[Rule]) -> String {
    rules
        .iter()
        .map(Rule::to_string)
        .collect::<Vec<_>>()
        .join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Rule {
        let v = parse_filter(s).unwrap();
        assert_eq!(v.len(), 1, "{s}");
        v.into_iter().next().unwrap()
    }

    #[test]
    fn examples_from_the_docs() {
        let r = one("udp dst port 9000-9010");
        assert_eq!(
            (r.proto, r.dport, r.ip),
            (Some(17), Some((9000, 9010)), None)
        );
        assert_eq!(r.versions(), vec![IpVersion::V4, IpVersion::V6]);
        let r = one("ip6 tcp src port 22");
        assert_eq!(
            (r.ip, r.proto, r.sport),
            (Some(IpVersion::V6), Some(6), Some((22, 22)))
        );
        let r = one("ip src 198.18.0.0/15 and udp");
        assert_eq!(
            r.src,
            Some(Prefix::new("198.18.0.0".parse().unwrap(), 15).unwrap())
        );
        assert_eq!(r.proto, Some(17));
        let r = one("ether proto 0x88b5");
        assert_eq!(r.ethertype, Some(0x88b5));
        let v = parse_filter("udp port 53 or tcp dst port 80, icmp; vlan 100 and udp").unwrap();
        assert_eq!(v.len(), 5);
        assert_eq!(v[0].sport, Some((53, 53)));
        assert_eq!(v[1].dport, Some((53, 53)));
        assert_eq!(v[3].ip, Some(IpVersion::V4));
        assert_eq!(v[4].vlan, Vlan::Id(100));
    }

    #[test]
    fn rules_from_fields_are_checked_like_parsed_ones() {
        let r = RuleFields {
            ip: Some(4),
            proto: Some(17),
            dst: Some(" 198.18.0.9/15 "),
            dport: Some((9000, 9000)),
            ..Default::default()
        }
        .build()
        .unwrap();
        assert_eq!(r, parse_filter(&r.to_string()).unwrap()[0]);
        assert_eq!(r.dst, Some(Prefix::parse("198.18.0.0/15").unwrap()));
        for (f, want) in [
            (
                RuleFields {
                    ip: Some(5),
                    ..Default::default()
                },
                "ip=5",
            ),
            (
                RuleFields {
                    src: Some("1.2.3.4/33"),
                    ..Default::default()
                },
                "0..32",
            ),
            (
                RuleFields {
                    dst: Some("nope"),
                    ..Default::default()
                },
                "IPv4 or IPv6",
            ),
            (
                RuleFields {
                    vlan: Some(5000),
                    ..Default::default()
                },
                "vlan=5000",
            ),
            (
                RuleFields {
                    ethertype: Some(0x0800),
                    ..Default::default()
                },
                "ip=4/6",
            ),
        ] {
            let e = f.build().unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        assert_eq!(
            Prefix::parse("2001:db8::1/129"),
            Err("prefix length must be 0..128")
        );
    }

    #[test]
    fn prefixes_clear_host_bits_and_v6_works() {
        let r = one("dst net 198.19.255.7/16");
        assert_eq!(r.dst.unwrap().to_string(), "198.19.0.0/16");
        let r = one("src host 2001:db8::1 udp");
        assert_eq!(r.src.unwrap().len, 128);
        assert_eq!(r.versions(), vec![IpVersion::V6]);
        let r = one("dst 2001:db8:ff::/40");
        assert_eq!(r.dst.unwrap().to_string(), "2001:db8::/40");
    }

    #[test]
    fn display_roundtrips() {
        for s in [
            "udp dst port 9000-9010",
            "ip6 tcp src port 22",
            "ip udp src 198.18.0.0/15",
            "ether proto 0x88b5",
            "vlan 7 ip6 proto 200 src 2001:db8::/32 dst 2001:db8::1",
            "vlan ip icmp",
            "sctp src port 1-2 dst port 3",
            "all",
        ] {
            let rules = parse_filter(s).unwrap();
            let text = format_filter(&rules);
            assert_eq!(parse_filter(&text).unwrap(), rules, "{s} -> {text}");
        }
    }

    #[test]
    fn errors_point_at_the_token() {
        let e = parse_filter("udp dst port 9000x").unwrap_err().to_string();
        assert!(e.contains("column 14") && e.contains("`9000x`"), "{e}");
        assert!(e.contains("\n               ^^^^^"), "{e}");
        let e = parse_filter("udp florp").unwrap_err().to_string();
        assert!(e.contains("column 5") && e.contains("unknown term"), "{e}");
        let e = parse_filter("ip6 src 1.2.3.4").unwrap_err().to_string();
        assert!(e.contains("column 9") && e.contains("conflicts"), "{e}");
        let e = parse_filter("udp tcp").unwrap_err().to_string();
        assert!(e.contains("column 5") && e.contains("one protocol"), "{e}");
        let e = parse_filter("udp dst port 9010-9000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty"), "{e}");
        let e = parse_filter("udp or").unwrap_err().to_string();
        assert!(e.contains("column 5"), "{e}");
        let e = parse_filter("udp dst port").unwrap_err().to_string();
        assert!(e.contains("unexpected end"), "{e}");
        assert!(parse_filter("").is_err());
        assert!(parse_filter("and udp").is_err());
        assert!(parse_filter("or udp").is_err());
        assert!(parse_filter("src 10.0.0.0/33").is_err());
        assert!(parse_filter("vlan 5000").is_err());
        assert!(parse_filter("icmp dst port 5").is_err());
        assert!(parse_filter("ether proto 0x88b5 udp").is_err());
        assert!(parse_filter("src 10.0.0.1 dst ::1").is_err());
        assert!(parse_filter("udp port 1 dst port 2").is_err());
        assert!(parse_filter("ether proto 0x8100").is_err());
        assert!(parse_filter("proto 256").is_err());
    }

    #[test]
    fn ether_proto_ip_means_ip() {
        assert_eq!(one("ether proto 0x0800").ip, Some(IpVersion::V4));
        assert_eq!(one("ether proto ip6").ip, Some(IpVersion::V6));
        assert_eq!(one("ether proto arp").ethertype, Some(0x0806));
        assert_eq!(one("ip proto 47").proto, Some(47));
        assert_eq!(one("UDP DST PORT 0x2328").dport, Some((9000, 9000)));
    }

    fn udp4_frame(tags: &[u16], src: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        for (i, id) in tags.iter().enumerate() {
            let tpid: u16 = if i == 0 { 0x88a8 } else { 0x8100 };
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[198, 18, 0, 2]);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&[0, 8, 0, 0]);
        f
    }

    fn hit(filter: &str, f: &[u8]) -> bool {
        matches(
            &parse_filter(filter).unwrap(),
            &crate::packet::parse::parse(f),
        )
    }

    #[test]
    fn matcher_follows_the_documented_semantics() {
        let f = udp4_frame(&[], [198, 18, 0, 1], 1234, 9000);
        assert!(hit("udp dst port 9000", &f));
        assert!(hit("port 1234", &f));
        assert!(hit("ip src 198.18.0.0/15 and udp", &f));
        assert!(hit("src 0.0.0.0/0", &f));
        assert!(!hit("tcp dst port 9000", &f));
        assert!(!hit("ip6", &f));
        assert!(!hit("vlan", &f));
        assert!(!hit("src 198.20.0.0/15", &f));
        assert!(matches(&[], &crate::packet::parse::parse(&[0u8; 3])));
        assert!(!hit("all", &[0u8; 13]));
        // QinQ: the inner EtherType, the outer id.
        let q = udp4_frame(&[100, 7], [198, 18, 0, 1], 1234, 9000);
        assert!(hit("vlan 100 and udp dst port 9000", &q));
        assert!(!hit("vlan 7", &q));
        // Total length 20: the UDP header lies outside the datagram.
        let mut short = f.clone();
        short[17] = 20;
        assert!(hit("udp", &short));
        assert!(!hit("udp dst port 9000", &short));
        assert!(!hit("port 1234", &short));
    }

    #[test]
    fn parser_never_panics_on_junk() {
        // A small deterministic fuzz: random token soups must give Ok or a clean error.
        let words = [
            "udp",
            "tcp",
            "ip",
            "ip6",
            "src",
            "dst",
            "port",
            "or",
            "and",
            ",",
            "1-2",
            "70000",
            "ether",
            "proto",
            "vlan",
            "0x",
            "1.2.3.4/8",
            "::/0",
            "/",
            "-",
            "net",
            "host",
            "9000",
            "icmp6",
            "ä",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..5000 {
            let mut s = String::new();
            for _ in 0..(x % 7) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.push_str(words[(x % words.len() as u64) as usize]);
                s.push(' ');
            }
            x = x.wrapping_add(1);
            let _ = parse_filter(&s);
        }
    }
}
