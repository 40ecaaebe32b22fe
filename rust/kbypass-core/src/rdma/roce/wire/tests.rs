//! Wire format tests: known packets from real hardware and from other implementations,
//! build → parse round trips for every opcode, and each error path.

use super::*;

pub(super) const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub(super) const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

pub(super) fn v4() -> IpHeader {
    IpHeader::V4 {
        src: [198, 18, 0, 1],
        dst: [198, 18, 0, 2],
        tos: 0,
        ttl: 64,
        id: 7,
    }
}

pub(super) fn v6() -> IpHeader {
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    src[15] = 1;
    let mut dst = src;
    dst[15] = 2;
    IpHeader::V6 {
        src,
        dst,
        traffic_class: 0x28,
        flow_label: 0x12345,
        hop_limit: 64,
    }
}

/// The extension headers `opcode` carries, their fields drawn from `r`.
pub(super) fn ext_for(opcode: Opcode, r: [u64; 4]) -> ExtHeaders {
    let h = opcode.headers();
    let lo = |v: u64| v as u32;
    ExtHeaders {
        deth: h.contains(HeaderSet::DETH).then_some(Deth {
            qkey: lo(r[0]),
            src_qp: lo(r[1]) & QPN_MASK,
        }),
        reth: h.contains(HeaderSet::RETH).then_some(Reth {
            va: r[0],
            rkey: lo(r[1]),
            dma_len: lo(r[2]),
        }),
        atomic: h.contains(HeaderSet::ATOMIC_ETH).then_some(AtomicEth {
            va: r[0],
            rkey: lo(r[1]),
            swap_add: r[2],
            compare: r[3],
        }),
        aeth: h.contains(HeaderSet::AETH).then_some(Aeth {
            syndrome: r[2] as u8,
            msn: lo(r[3]) & PSN_MASK,
        }),
        atomic_ack: h.contains(HeaderSet::ATOMIC_ACK_ETH).then_some(r[1]),
        imm: h.contains(HeaderSet::IMM_DT).then_some(lo(r[3] >> 32)),
        ieth: h.contains(HeaderSet::IETH).then_some(lo(r[2] >> 32)),
    }
}

pub(super) fn spec(opcode: Opcode, ip: IpHeader, vlan_tci: Option<u16>, r: [u64; 4]) -> FrameSpec {
    let mut bth = Bth::new(opcode, lo24(r[0] >> 8), lo24(r[1] >> 16));
    bth.solicited = r[2] & 1 != 0;
    bth.ack_req = r[2] & 2 != 0;
    bth.migreq = r[2] & 4 != 0;
    bth.fecn = r[2] & 8 != 0;
    bth.becn = r[2] & 16 != 0;
    bth.pkey = (r[3] >> 40) as u16;
    FrameSpec {
        eth_dst: MAC_B,
        eth_src: MAC_A,
        vlan_tci,
        ip,
        udp_src: 0xc000 | (r[3] as u16 & 0x3fff),
        bth,
        ext: ext_for(opcode, r),
    }
}

fn lo24(v: u64) -> u32 {
    v as u32 & 0x00ff_ffff
}

pub(super) fn build(s: &FrameSpec, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; s.frame_len(payload.len())];
    let n = s.build(payload, &mut out).expect("spec builds");
    assert_eq!(n, out.len());
    out
}

/// Checks that a parsed frame says what its spec said.
pub(super) fn assert_matches_spec(f: &Frame<'_>, s: &FrameSpec, payload: &[u8]) {
    assert_eq!(
        (f.eth_dst, f.eth_src, f.vlan_tci),
        (s.eth_dst, s.eth_src, s.vlan_tci)
    );
    assert_eq!((f.ip, f.udp_src), (s.ip, s.udp_src));
    let mut bth = s.bth;
    bth.pad = ((4 - payload.len() % 4) % 4) as u8;
    assert_eq!(f.packet.bth, bth);
    assert_eq!(f.packet.ext, s.ext);
    assert_eq!(f.packet.payload, payload);
}

pub(super) fn payload_of(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn opcode_table_is_the_ibta_one() {
    // 23 RC, 12 UC, 2 UD opcodes.
    let all: Vec<Opcode> = Opcode::all().collect();
    assert_eq!(all.len(), 37);
    let count = |t| all.iter().filter(|o| o.transport() == t).count();
    assert_eq!(
        (
            count(Transport::Rc),
            count(Transport::Uc),
            count(Transport::Ud)
        ),
        (23, 12, 2)
    );
    let op = |b: u8| Opcode::from_u8(b).unwrap();
    let h = |b: u8| op(b).headers();
    use HeaderSet as H;
    // Spot checks against rxe_opcode.c's masks and lengths.
    assert_eq!(h(0x00), H::NONE); // RC SEND_FIRST
    assert_eq!(h(0x0b), H::RETH.with(H::IMM_DT)); // RC RDMA_WRITE_ONLY_WITH_IMMEDIATE
    assert_eq!(h(0x0b).wire_len(), 20);
    assert_eq!(h(0x0c), H::RETH); // RC RDMA_READ_REQUEST
    assert!(!op(0x0c).has_payload());
    assert_eq!(h(0x0e), H::NONE); // READ_RESPONSE_MIDDLE carries no AETH
    assert_eq!(h(0x10), H::AETH);
    assert_eq!(h(0x12), H::AETH.with(H::ATOMIC_ACK_ETH));
    assert_eq!(h(0x12).wire_len(), 12);
    assert_eq!(h(0x13).wire_len(), 28);
    assert_eq!(h(0x17), H::IETH);
    assert_eq!(h(0x2b), H::RETH.with(H::IMM_DT)); // UC RDMA_WRITE_ONLY_WITH_IMMEDIATE
    assert_eq!(h(0x64), H::DETH); // UD SEND_ONLY
    assert_eq!(h(0x65), H::DETH.with(H::IMM_DT));
    assert_eq!(op(0x65).name(), "UD_SEND_ONLY_WITH_IMMEDIATE");
    assert_eq!(op(0x06).position(), Position::First);
    assert_eq!(op(0x0f).position(), Position::Last);
    assert!(op(0x0c).is_request() && !op(0x11).is_request());
    // Not RC/UC/UD: RD, CNP, reserved, UC read, UD write.
    for b in [0x15, 0x18, 0x2c, 0x31, 0x40, 0x66, 0x81, 0xa0, 0xff, 0x6a] {
        assert_eq!(Opcode::from_u8(b), None, "0x{b:02x}");
    }
    assert_eq!(Opcode::new(Transport::Ud, Op::WriteOnly), None);
    assert_eq!(
        Opcode::new(Transport::Uc, Op::SendOnly).unwrap().as_u8(),
        0x24
    );
}

#[test]
fn aeth_syndromes() {
    let ack = Aeth::new(Syndrome::Ack { credits: 31 }, 5);
    assert_eq!(
        (ack.syndrome, ack.kind()),
        (0x1f, Syndrome::Ack { credits: 31 })
    );
    let rnr = Aeth::new(Syndrome::RnrNak { timer: 14 }, 0);
    assert_eq!(
        (rnr.syndrome, rnr.kind()),
        (0x2e, Syndrome::RnrNak { timer: 14 })
    );
    let nak = Aeth::new(Syndrome::Nak(NakCode::RemoteAccessError), 0);
    assert_eq!(
        (nak.syndrome, nak.kind()),
        (0x62, Syndrome::Nak(NakCode::RemoteAccessError))
    );
    assert_eq!(
        Aeth {
            syndrome: 0x60,
            msn: 0
        }
        .kind(),
        Syndrome::Nak(NakCode::PsnSequenceError)
    );
    assert_eq!(
        Aeth {
            syndrome: 0x45,
            msn: 0
        }
        .kind(),
        Syndrome::Reserved(0x45)
    );
}

/// The UC send of scapy's RoCE tests: its IPv4 checksum (0xb4d5) and ICRC (78 f3 53 f3) come
/// from another implementation (scapy, whose ICRC matches a ConnectX-4 capture).
#[test]
fn builds_the_uc_send_of_scapys_tests() {
    let mut bth = Bth::new(Opcode::from_u8(0x24).unwrap(), 211, 13_571_856);
    bth.migreq = true;
    let s = FrameSpec {
        eth_dst: [0x24, 0x8a, 0x07, 0xa8, 0xfa, 0x22],
        eth_src: [0x24, 0x8a, 0x07, 0xa8, 0xfa, 0x22],
        vlan_tci: None,
        ip: IpHeader::V4 {
            src: [192, 168, 0, 7],
            dst: [192, 168, 0, 7],
            tos: 1,
            ttl: 64,
            id: 1144,
        },
        udp_src: 49152,
        bth,
        ext: ExtHeaders::default(),
    };
    let payload = hex("4630 818b e289 35d9 0e9a 9550 5401 be88 5e50");
    let f = build(&s, &payload);
    assert_eq!(f.len(), 14 + 64);
    assert_eq!(&f[24..26], &[0xb4, 0xd5], "IPv4 header checksum");
    assert_eq!(f[14 + 28 + 1] >> 4 & 3, 2, "pad count");
    assert_eq!(&f[f.len() - 4..], &[0x78, 0xf3, 0x53, 0xf3], "ICRC");
    let p = Frame::parse(&f).unwrap();
    assert_matches_spec(&p, &s, &payload);
}

#[test]
fn every_opcode_round_trips_on_ipv4_ipv6_and_vlan() {
    let mut n = 0;
    for opcode in Opcode::all() {
        let lens: &[usize] = if opcode.has_payload() {
            &[0, 1, 2, 3, 4, 255, 4096]
        } else {
            &[0]
        };
        for (i, &len) in lens.iter().enumerate() {
            for (ip, vlan) in [
                (v4(), None),
                (v6(), None),
                (v4(), Some(0x2064)),
                (v6(), Some(5)),
            ] {
                let r = [
                    0x0123_4567_89ab_cdef_u64 ^ n,
                    0xfedc_ba98_7654_3210,
                    n * 7,
                    !n,
                ];
                let s = spec(opcode, ip, vlan, r);
                let payload = payload_of(len, i as u8);
                let f = build(&s, &payload);
                let p = Frame::parse(&f).unwrap_or_else(|e| panic!("{opcode:?} {len}: {e}"));
                assert_matches_spec(&p, &s, &payload);
                check_with_etherparse(&f);
                n += 1;
            }
        }
    }
    let with_payload = Opcode::all().filter(|o| o.has_payload()).count();
    assert_eq!(with_payload, 32);
    assert_eq!(n, (with_payload as u64 * 7 + 5) * 4);
}

/// etherparse, an independent parser, agrees on the Ethernet/IP/UDP framing and checksums.
fn check_with_etherparse(f: &[u8]) {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let p = SlicedPacket::from_ethernet(f).expect("etherparse reads the frame");
    let Some(TransportSlice::Udp(udp)) = &p.transport else {
        panic!("etherparse sees no UDP");
    };
    assert_eq!(udp.destination_port(), ROCE_PORT);
    match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header().to_header();
            assert_eq!(h.header_checksum, h.calc_header_checksum());
            assert!(h.dont_fragment);
            assert_eq!(udp.checksum(), 0);
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header().to_header();
            let uh = udp.to_header();
            let sum = uh.calc_checksum_ipv6(&h, udp.payload()).unwrap();
            assert_eq!(uh.checksum, sum, "UDP checksum over IPv6");
        }
        _ => panic!("etherparse sees no IP"),
    }
}

#[test]
fn every_cut_of_a_frame_is_an_error() {
    for opcode in [0x0b, 0x12, 0x13, 0x65, 0x0c] {
        let opcode = Opcode::from_u8(opcode).unwrap();
        for ip in [v4(), v6()] {
            let s = spec(opcode, ip, Some(1), [1, 2, 3, 4]);
            let payload = if opcode.has_payload() {
                payload_of(9, 1)
            } else {
                vec![]
            };
            let f = build(&s, &payload);
            for cut in 0..f.len() {
                assert!(Frame::parse(&f[..cut]).is_err(), "{opcode:?} cut at {cut}");
            }
            // Ethernet padding after the IP packet is ignored.
            let mut padded = f.clone();
            padded.extend_from_slice(&[0; 7]);
            assert_matches_spec(&Frame::parse(&padded).unwrap(), &s, &payload);
        }
    }
}

fn frame(opcode: u8, payload: &[u8]) -> (FrameSpec, Vec<u8>) {
    let s = spec(Opcode::from_u8(opcode).unwrap(), v4(), None, [9, 8, 7, 6]);
    let f = build(&s, payload);
    (s, f)
}

/// Rewrites the IPv4 checksum and the ICRC after an edit, so only the edit is wrong.
fn reseal(f: &mut [u8]) {
    f[24..26].fill(0);
    let mut acc: u32 = 0;
    for c in f[14..34].chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    f[24..26].copy_from_slice(&(!(acc as u16)).to_be_bytes());
    let n = f.len();
    let crc = icrc::compute(&f[14..n - 4], 20).unwrap();
    f[n - 4..].copy_from_slice(&crc);
}

#[test]
fn each_error_has_its_variant() {
    const BTH: usize = 14 + 20 + 8;
    let (_, f) = frame(0x04, &[1, 2, 3, 4, 5]);
    let parse = |f: &[u8]| Frame::parse(f).map(|_| ());

    let mut g = f.clone();
    let n = g.len();
    g[n - 6] ^= 1; // a payload byte
    assert!(matches!(parse(&g), Err(WireError::BadIcrc { .. })));
    assert!(Frame::parse_headers(&g).is_ok());

    let mut g = f.clone();
    g[BTH] = 0x81; // CNP
    reseal(&mut g);
    assert_eq!(parse(&g), Err(WireError::UnknownOpcode(0x81)));

    let mut g = f.clone();
    g[BTH + 1] |= 0x01; // TVer 1
    reseal(&mut g);
    assert_eq!(parse(&g), Err(WireError::BadVersion(1)));

    let mut g = f.clone();
    g[BTH + 1] &= !0x30; // pad 0 for 5 bytes of payload and 3 of pad: still aligned, payload 8
    reseal(&mut g);
    assert_eq!(Frame::parse(&g).unwrap().packet.payload.len(), 8);

    let (_, mut g) = frame(0x11, &[]); // ACK with a pad count
    g[BTH + 1] |= 0x10;
    reseal(&mut g);
    assert_eq!(
        parse(&g),
        Err(WireError::BadPad {
            pad: 1,
            data_len: 0
        })
    );

    let (_, mut g) = frame(0x04, &[]); // pad 3 over no data
    g[BTH + 1] |= 0x30;
    reseal(&mut g);
    assert_eq!(
        parse(&g),
        Err(WireError::BadPad {
            pad: 3,
            data_len: 0
        })
    );

    let mut g = f.clone();
    g[36..38].copy_from_slice(&4792u16.to_be_bytes());
    assert!(matches!(parse(&g), Err(WireError::NotRoce(_))));

    let mut g = f.clone();
    g[20] |= 0x20; // more fragments
    reseal(&mut g);
    assert_eq!(parse(&g), Err(WireError::Fragmented));

    let mut g = f.clone();
    g[22] ^= 0x40; // TTL, checksum left stale
    assert_eq!(parse(&g), Err(WireError::BadIpChecksum));

    let mut g = f.clone();
    g[39] += 1; // UDP length one more than the IP packet leaves
    assert!(matches!(parse(&g), Err(WireError::LengthMismatch { .. })));

    let mut g = f.clone();
    g[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert!(matches!(parse(&g), Err(WireError::NotRoce(_))));

    // A read request carrying data, and a send of 4100 bytes.
    let (s, _) = frame(0x0c, &[]);
    let mut big = vec![0u8; 200];
    let n = s.frame_len(0);
    s.build(&[], &mut big).unwrap();
    let mut g = big[..n + 4].to_vec();
    let at = 14 + 2;
    let ip_len = u16::from_be_bytes([g[at], g[at + 1]]) + 4;
    g[at..at + 2].copy_from_slice(&ip_len.to_be_bytes());
    let udp_len = u16::from_be_bytes([g[38], g[39]]) + 4;
    g[38..40].copy_from_slice(&udp_len.to_be_bytes());
    reseal(&mut g);
    assert_eq!(parse(&g), Err(WireError::Oversize { len: 4, max: 0 }));
    let mut spec4100 = s;
    spec4100.bth.opcode = Opcode::from_u8(0x04).unwrap();
    spec4100.ext = ExtHeaders::default();
    let len = spec4100.frame_len(4100);
    let mut g = vec![0u8; len];
    assert_eq!(
        spec4100.build(&[0; 4100], &mut g),
        Err(WireError::Oversize {
            len: 4100,
            max: 4096
        })
    );
    let at = BTH + 12 + 4096;
    let mut ok = vec![0u8; spec4100.frame_len(4096) + 4];
    let m = spec4100.build(&[0; 4096], &mut ok).unwrap();
    ok.truncate(m + 4);
    ok.copy_within(at..at + 4, at + 4);
    let ip_len = u16::from_be_bytes([ok[16], ok[17]]) + 4;
    ok[16..18].copy_from_slice(&ip_len.to_be_bytes());
    let udp_len = u16::from_be_bytes([ok[38], ok[39]]) + 4;
    ok[38..40].copy_from_slice(&udp_len.to_be_bytes());
    reseal(&mut ok);
    assert_eq!(
        parse(&ok),
        Err(WireError::Oversize {
            len: 4100,
            max: 4096
        })
    );
}

#[test]
fn build_refuses_what_the_opcode_does_not_carry() {
    let (mut s, _) = frame(0x0a, &[]); // RDMA_WRITE_ONLY: RETH
    s.ext.reth = None;
    let mut out = [0u8; 256];
    assert!(matches!(
        s.build(&[1], &mut out),
        Err(WireError::HeadersMismatch { opcode: 0x0a, .. })
    ));
    let (mut s, _) = frame(0x64, &[]);
    s.ext.imm = Some(1);
    assert!(matches!(
        s.build(&[], &mut out),
        Err(WireError::HeadersMismatch { .. })
    ));
    let (s, _) = frame(0x11, &[]);
    assert_eq!(
        s.build(&[1], &mut out),
        Err(WireError::Oversize { len: 1, max: 0 })
    );
    let (s, _) = frame(0x04, &[]);
    let need = s.frame_len(100);
    assert_eq!(
        s.build(&[0; 100], &mut out[..need - 1]),
        Err(WireError::BufferTooSmall {
            need,
            have: need - 1
        })
    );
}
