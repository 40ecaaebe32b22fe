//! Filled packets are read back with `etherparse` (independent of kbypass): fields, lengths
//! and checksums (recomputed by etherparse) must be right for every kind of template.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{NetHeaders, PacketBuilder, PacketHeaders, TransportHeader};
use proptest::prelude::*;

use super::*;
use crate::packet::checksum::{fold, sum16};

const V6A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const V6B: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0xbe, 0xef);

/// The four kinds (v4/v6 x UDP/TCP), with and without a VLAN tag.
fn specs() -> Vec<Spec> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        for proto in [IPPROTO_UDP, IPPROTO_TCP] {
            for vlan_tci in [None, Some(5 << 13 | 42)] {
                let (src_ip, dst_ip): (IpAddr, IpAddr) = if v6 {
                    (V6A.into(), V6B.into())
                } else {
                    (
                        Ipv4Addr::new(198, 18, 0, 1).into(),
                        Ipv4Addr::new(198, 18, 0, 2).into(),
                    )
                };
                out.push(Spec {
                    vlan_tci,
                    src_ip,
                    dst_ip,
                    proto,
                    payload: b"template payload".to_vec(),
                    ..Spec::default()
                });
            }
        }
    }
    out
}

/// Parse `f` with etherparse and check the IP and L4 lengths and checksums; returns the
/// headers and the payload.
fn checked(f: &[u8]) -> (PacketHeaders<'_>, Vec<u8>) {
    let h = PacketHeaders::from_ethernet_slice(f).expect("etherparse reads it");
    let payload = h.payload.slice().to_vec();
    let ip = h.net.clone().expect("an IP header");
    match (&ip, &h.transport) {
        (NetHeaders::Ipv4(ip4, _), Some(TransportHeader::Udp(u))) => {
            assert_eq!(ip4.header_checksum, ip4.calc_header_checksum());
            assert_eq!(ip4.total_len as usize, 20 + 8 + payload.len());
            assert_eq!(u.length as usize, 8 + payload.len());
            assert_eq!(u.checksum, u.calc_checksum_ipv4(ip4, &payload).unwrap());
        }
        (NetHeaders::Ipv4(ip4, _), Some(TransportHeader::Tcp(t))) => {
            assert_eq!(ip4.header_checksum, ip4.calc_header_checksum());
            assert_eq!(ip4.total_len as usize, 20 + 20 + payload.len());
            assert_eq!(t.checksum, t.calc_checksum_ipv4(ip4, &payload).unwrap());
        }
        (NetHeaders::Ipv6(ip6, _), Some(TransportHeader::Udp(u))) => {
            assert_eq!(ip6.payload_length as usize, 8 + payload.len());
            assert_eq!(u.length as usize, 8 + payload.len());
            assert_eq!(u.checksum, u.calc_checksum_ipv6(ip6, &payload).unwrap());
        }
        (NetHeaders::Ipv6(ip6, _), Some(TransportHeader::Tcp(t))) => {
            assert_eq!(ip6.payload_length as usize, 20 + payload.len());
            assert_eq!(t.checksum, t.calc_checksum_ipv6(ip6, &payload).unwrap());
        }
        other => panic!("not a UDP/TCP packet: {other:?}"),
    }
    (h, payload)
}

#[test]
fn every_kind_builds_a_valid_frame_with_its_fields() {
    for s in specs() {
        let t = Template::build(&s).unwrap();
        let f = t.frame();
        assert_eq!(f.len(), t.frame_len(16).max(ETH_ZLEN));
        let (h, payload) = checked(&f);
        assert_eq!(payload, s.payload);
        let eth = h.link.clone().unwrap().ethernet2().unwrap();
        assert_eq!((eth.source, eth.destination), (s.src_mac, s.dst_mac));
        assert_eq!(h.vlan().is_some(), s.vlan_tci.is_some());
        let (sp, dp) = match h.transport.unwrap() {
            TransportHeader::Udp(u) => (u.source_port, u.destination_port),
            TransportHeader::Tcp(t) => {
                assert!(t.syn && !t.ack && t.window_size == 8192);
                (t.source_port, t.destination_port)
            }
            other => panic!("{other:?}"),
        };
        assert_eq!((sp, dp), (s.src_port, s.dst_port));
        // Fields read back as built; from_frame finds the same layout and values.
        let again = Template::from_frame(&f).unwrap();
        assert_eq!(again.fields(), t.fields());
        for field in t.fields() {
            assert_eq!(again.value(field).unwrap(), t.value(field).unwrap());
        }
        assert_eq!(t.value(Field::Ttl).unwrap(), 64);
        if s.vlan_tci.is_some() {
            assert_eq!(t.value(Field::Vlan).unwrap(), 42);
            assert_eq!(t.value(Field::Pcp).unwrap(), 5);
        }
    }
}

#[test]
fn filling_writes_fields_payloads_lengths_and_checksums() {
    for s in specs() {
        let t = Template::build(&s).unwrap();
        let n = 4;
        let ports: Vec<u64> = (0..n as u64).map(|i| 20000 + i).collect();
        let ttls: Vec<u64> = vec![1, 2, 3, 255];
        let payloads: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 10 + 300 * i]).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
        let mut fill = Fill::new(n);
        fill.set(&t, Field::SrcPort, Values::Each(&ports)).unwrap();
        fill.set(&t, Field::Ttl, Values::Each(&ttls)).unwrap();
        fill.set(&t, Field::DstMac, Values::One(0x0200_0000_00ff))
            .unwrap();
        let dst6: Vec<u8> = (0..n).flat_map(|i| [i as u8 + 1; 16]).collect();
        if t.ip_version() == 6 {
            fill.set(&t, Field::DstIp, Values::Bytes(&dst6)).unwrap();
            fill.set(&t, Field::FlowLabel, Values::One(0xabcde))
                .unwrap();
            fill.set(&t, Field::Tos, Values::One(0xb8)).unwrap();
        } else {
            fill.set(&t, Field::DstIp, Values::One(0xc612_0063))
                .unwrap();
            fill.set(&t, Field::IpId, Values::Each(&ports)).unwrap();
            fill.set(&t, Field::Tos, Values::One(0xb8)).unwrap();
        }
        if t.proto() == IPPROTO_TCP {
            fill.set(&t, Field::Seq, Values::Each(&ports)).unwrap();
            fill.set(&t, Field::Ack, Values::One(7)).unwrap();
            fill.set(&t, Field::TcpFlags, Values::One(0x18)).unwrap();
        }
        if s.vlan_tci.is_some() {
            fill.set(&t, Field::Vlan, Values::One(4000)).unwrap();
        }
        fill.payload(&t, Payloads::Each(&refs)).unwrap();
        // Junk in the buffer must not leak into a frame.
        let mut buf = vec![0x5a; 2048];
        for i in 0..n {
            let w = fill.write(&t, i, &mut buf, Checksum::Full).unwrap();
            assert_eq!(w.len, fill.frame_len(&t, i));
            let f = &buf[..w.len];
            let (h, payload) = checked(f);
            assert_eq!(payload, payloads[i]);
            if f.len() > t.offsets().2 + payloads[i].len() {
                assert!(f[t.offsets().2 + payloads[i].len()..]
                    .iter()
                    .all(|&b| b == 0));
            }
            assert_eq!(
                h.link.clone().unwrap().ethernet2().unwrap().destination,
                [2, 0, 0, 0, 0, 0xff]
            );
            if let Some(etherparse::VlanHeader::Single(v)) = h.vlan() {
                assert_eq!((v.vlan_id.value(), v.pcp.value()), (4000, 5), "pcp kept");
            }
            match h.net.unwrap() {
                NetHeaders::Ipv4(ip, _) => {
                    assert_eq!(ip.time_to_live as u64, ttls[i]);
                    assert_eq!(ip.destination, [198, 18, 0, 99]);
                    assert_eq!(ip.identification as u64, ports[i]);
                    assert_eq!((ip.dscp.value(), ip.ecn.value()), (0xb8 >> 2, 0));
                    assert!(ip.dont_fragment);
                }
                NetHeaders::Ipv6(ip, _) => {
                    assert_eq!(ip.hop_limit as u64, ttls[i]);
                    assert_eq!(ip.destination, [i as u8 + 1; 16]);
                    assert_eq!(ip.flow_label.value(), 0xabcde);
                    assert_eq!(ip.traffic_class, 0xb8);
                    assert_eq!(ip.source, V6A.octets(), "unset fields keep the template's");
                }
                other => panic!("{other:?}"),
            }
            match h.transport.unwrap() {
                TransportHeader::Udp(u) => assert_eq!(u.source_port as u64, ports[i]),
                TransportHeader::Tcp(tcp) => {
                    assert_eq!(tcp.source_port as u64, ports[i]);
                    assert_eq!(
                        (tcp.sequence_number as u64, tcp.acknowledgment_number),
                        (ports[i], 7)
                    );
                    assert!(tcp.psh && tcp.ack && !tcp.syn);
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn offload_leaves_the_pseudo_header_sum_that_the_device_completes() {
    for s in specs() {
        let t = Template::build(&s).unwrap();
        let mut fill = Fill::new(1);
        fill.payload(&t, Payloads::One(b"odd-length payload!"))
            .unwrap();
        let mut full = vec![0; 256];
        let mut part = vec![0; 256];
        let a = fill.write(&t, 0, &mut full, Checksum::Full).unwrap();
        let b = fill.write(&t, 0, &mut part, Checksum::Offload).unwrap();
        assert_eq!(a, b);
        let at = (b.csum_start + b.csum_offset) as usize;
        assert_ne!(full[at..at + 2], part[at..at + 2]);
        // What a device does with CHECKSUM_PARTIAL: sum from csum_start to the end of the IP
        // datagram (the field holding the pseudo-header sum), complement, store.
        let (_, _, payload_off) = t.offsets();
        let end = payload_off + 19;
        let mut c = fold(sum16(&part[b.csum_start as usize..end], 0));
        if c == 0 && t.proto() == IPPROTO_UDP {
            c = 0xffff;
        }
        part[at..at + 2].copy_from_slice(&c.to_be_bytes());
        assert_eq!(full[..a.len], part[..b.len]);
    }
}

#[test]
fn templates_from_etherparse_frames_and_bad_frames() {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv6(V6A.octets(), V6B.octets(), 9)
        .tcp(1234, 80, 99, 4096);
    let mut f = Vec::new();
    b.write(&mut f, b"GET /").unwrap();
    let t = Template::from_frame(&f).unwrap();
    assert_eq!(
        (t.ip_version(), t.proto(), t.payload()),
        (6, IPPROTO_TCP, &b"GET /"[..])
    );
    assert_eq!(t.value(Field::Seq).unwrap(), 99);
    assert_eq!(t.value(Field::Window).unwrap(), 4096);
    assert_eq!(t.value(Field::Ttl).unwrap(), 9);
    assert_eq!(t.frame()[..f.len()], f[..], "the same bytes back");
    // No ip_id in IPv6, no seq in UDP: the error names the fields there are.
    let e = t.slot(Field::IpId).unwrap_err().to_string();
    assert!(e.contains("flow_label") && e.contains("payload"), "{e}");
    let udp = Template::build(&Spec::default()).unwrap();
    assert!(udp.slot(Field::Seq).is_err() && udp.slot(Field::Vlan).is_err());
    // Not a template: ARP, cut short, a fragment, mixed versions, other protocols.
    assert!(Template::from_frame(&[0u8; 42]).is_err());
    let full = udp.frame();
    assert!(Template::from_frame(&full[..40]).is_err());
    let mut frag = full.clone();
    frag[20] |= 0x20;
    assert!(Template::from_frame(&frag).is_err());
    for bad in [
        Spec {
            dst_ip: V6B.into(),
            ..Spec::default()
        },
        Spec {
            proto: 1,
            ..Spec::default()
        },
        Spec {
            payload: vec![0; MAX_FRAME],
            ..Spec::default()
        },
    ] {
        assert!(Template::build(&bad).is_err(), "{bad:?}");
    }
}

#[test]
fn bad_fills_are_refused_whole() {
    let t = Template::build(&Spec::default()).unwrap();
    let mut fill = Fill::new(3);
    assert!(fill.set(&t, Field::SrcPort, Values::One(70000)).is_err());
    assert!(fill.set(&t, Field::SrcPort, Values::Each(&[1, 2])).is_err());
    assert!(fill
        .set(&t, Field::Ttl, Values::Each(&[1, 2, 256]))
        .is_err());
    assert!(fill.set(&t, Field::DstIp, Values::Bytes(&[0; 8])).is_err());
    let list: [&[u8]; 2] = [b"a", b"b"];
    assert!(fill.payload(&t, Payloads::Each(&list)).is_err());
    let big = vec![0u8; MAX_FRAME];
    assert!(fill.payload(&t, Payloads::One(&big)).is_err());
    // Nothing was set: the fill writes the template.
    let mut out = vec![0; 128];
    let w = fill.write(&t, 2, &mut out, Checksum::Full).unwrap();
    assert_eq!(out[..w.len], t.frame()[..]);
    assert!(fill.write(&t, 3, &mut out, Checksum::Full).is_err());
    assert!(fill.write(&t, 0, &mut out[..59], Checksum::Full).is_err());
}

proptest! {
    #[test]
    fn any_fill_parses_back_with_right_checksums(
        v6 in any::<bool>(), tcp in any::<bool>(), vlan in any::<bool>(),
        sport in any::<u16>(), dport in any::<u16>(), ttl in any::<u8>(), src in any::<u128>(),
        payload in proptest::collection::vec(any::<u8>(), 0..1500),
    ) {
        let s = specs()
            .into_iter()
            .find(|s| s.src_ip.is_ipv6() == v6 && (s.proto == IPPROTO_TCP) == tcp && s.vlan_tci.is_some() == vlan)
            .unwrap();
        let t = Template::build(&s).unwrap();
        let mut fill = Fill::new(1);
        fill.set(&t, Field::SrcPort, Values::One(sport.into())).unwrap();
        fill.set(&t, Field::DstPort, Values::One(dport.into())).unwrap();
        fill.set(&t, Field::Ttl, Values::One(ttl.into())).unwrap();
        let src = if v6 { src } else { src & 0xffff_ffff };
        fill.set(&t, Field::SrcIp, Values::One(src)).unwrap();
        fill.payload(&t, Payloads::One(&payload)).unwrap();
        let mut buf = vec![0; 2048];
        let w = fill.write(&t, 0, &mut buf, Checksum::Full).unwrap();
        let (h, got) = checked(&buf[..w.len]);
        prop_assert_eq!(got, payload);
        let ip_src = match h.net.unwrap() {
            NetHeaders::Ipv4(ip, _) => u32::from_be_bytes(ip.source) as u128,
            NetHeaders::Ipv6(ip, _) => u128::from_be_bytes(ip.source),
            _ => unreachable!(),
        };
        prop_assert_eq!(ip_src, src);
        // kbypass's own parser agrees with etherparse.
        let m = parse(&buf[..w.len]);
        prop_assert_eq!((m.src_port, m.dst_port), (sport, dport));
        prop_assert!(crate::packet::edit::checksums_ok(&buf[..w.len], &m));
    }
}
