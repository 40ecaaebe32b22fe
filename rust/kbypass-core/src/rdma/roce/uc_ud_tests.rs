//! UC and UD: messages through real frames, gaps, bad keys and refusals, each counted.

use super::rc::{MemoryTable, Pkt, RemoteAccess};
use super::uc::{UcReceiver, UcRequest, UcSender};
use super::ud::{UdDest, UdReceiver, UdSender};
use super::wire::{Frame, FrameSpec, IpHeader, Op, WireError};

const RKEY: u32 = 0x55;
const VA: u64 = 0x4000_0000;

/// The packet after a trip through a built and parsed frame (IPv6 here, IPv4 in the RC tests).
fn via_wire(p: &Pkt) -> Pkt {
    let mut src = [0u8; 16];
    src[..2].copy_from_slice(&[0xfd, 0x00]);
    let spec = FrameSpec {
        eth_dst: [2, 0, 0, 0, 0, 2],
        eth_src: [2, 0, 0, 0, 0, 1],
        vlan_tci: None,
        ip: IpHeader::V6 {
            src,
            dst: src,
            traffic_class: 0,
            flow_label: 7,
            hop_limit: 64,
        },
        udp_src: 0xc123,
        bth: p.bth,
        ext: p.ext,
    };
    let mut f = vec![0u8; spec.frame_len(p.payload.len())];
    spec.build(&p.payload, &mut f).unwrap();
    let r = Frame::parse(&f).unwrap();
    Pkt {
        bth: r.packet.bth,
        ext: r.packet.ext,
        payload: r.packet.payload.to_vec().into(),
    }
}

fn msg(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

fn uc_pair(mtu: usize) -> (UcSender, UcReceiver) {
    let mut mem = MemoryTable::new();
    mem.register(RKEY, VA, 1 << 16, RemoteAccess::ALL);
    (
        UcSender::new(9, 0xff_fffe, mtu).unwrap(),
        UcReceiver::new(0xff_fffe, mtu, mem),
    )
}

#[test]
fn uc_delivers_sends_and_writes_whole() {
    for mtu in [256, 1024, 4096] {
        let (mut s, mut r) = uc_pair(mtu);
        let sends = [msg(0, 1), msg(1, 2), msg(mtu, 3), msg(3 * mtu + 5, 4)];
        for (i, m) in sends.iter().enumerate() {
            r.post_recv(100 + i as u64, 1 << 14).unwrap();
            s.post(
                i as u64,
                UcRequest::Send {
                    data: m.clone().into(),
                    imm: (i == 2).then_some(42),
                },
            );
        }
        let w = msg(5000, 9);
        r.post_recv(200, 0).unwrap();
        s.post(
            10,
            UcRequest::Write {
                data: w.clone().into(),
                va: VA + 100,
                rkey: RKEY,
                imm: Some(7),
            },
        );
        while let Some(p) = s.poll_tx() {
            r.on_packet(&via_wire(&p));
        }
        let done: Vec<u64> = std::iter::from_fn(|| s.poll_completion()).collect();
        assert_eq!(done, [0, 1, 2, 3, 10]);
        for (i, m) in sends.iter().enumerate() {
            let c = r.poll_completion().unwrap();
            assert_eq!(
                (c.wr_id, &c.data, c.imm),
                (100 + i as u64, m, (i == 2).then_some(42))
            );
        }
        let c = r.poll_completion().unwrap();
        assert_eq!((c.wr_id, c.imm, c.byte_len), (200, Some(7), 5000));
        assert_eq!(&r.memory().bytes(RKEY).unwrap()[100..5100], &w[..]);
        assert_eq!((r.aborted, r.dropped), (0, 0));
    }
}

#[test]
fn uc_drops_a_message_with_a_gap_and_reuses_its_buffer() {
    let (mut s, mut r) = uc_pair(256);
    let m = [msg(600, 1), msg(600, 2), msg(600, 3), msg(10, 4)];
    for (i, d) in m.iter().enumerate() {
        s.post(
            i as u64,
            UcRequest::Send {
                data: d.clone().into(),
                imm: None,
            },
        );
    }
    r.post_recv(1, 4096).unwrap();
    r.post_recv(2, 4096).unwrap();
    r.post_recv(3, 4096).unwrap();
    let pkts: Vec<Pkt> = std::iter::from_fn(|| s.poll_tx()).collect();
    assert_eq!(pkts.len(), 3 + 3 + 3 + 1);
    // Lose the middle of message 1 and the first packet of message 2.
    for (i, p) in pkts.iter().enumerate() {
        if i != 4 && i != 6 {
            r.on_packet(p);
        }
    }
    let got: Vec<(u64, Vec<u8>)> = std::iter::from_fn(|| r.poll_completion())
        .map(|c| (c.wr_id, c.data))
        .collect();
    assert_eq!(got, [(1, m[0].clone()), (2, m[3].clone())]);
    assert_eq!(r.aborted, 1, "message 1 cut short");
    assert_eq!(
        r.dropped, 3,
        "the rest of message 1 and of message 2, which lost its start"
    );
}

#[test]
fn uc_refuses_writes_outside_the_memory_table() {
    let (mut s, mut r) = uc_pair(256);
    s.post(
        1,
        UcRequest::Write {
            data: vec![1; 600].into(),
            va: VA,
            rkey: RKEY + 1,
            imm: None,
        },
    );
    s.post(
        2,
        UcRequest::Write {
            data: vec![2; 600].into(),
            va: VA + (1 << 16) - 100,
            rkey: RKEY,
            imm: None,
        },
    );
    s.post(
        3,
        UcRequest::Write {
            data: vec![3; 600].into(),
            va: VA,
            rkey: RKEY,
            imm: None,
        },
    );
    while let Some(p) = s.poll_tx() {
        r.on_packet(&p);
    }
    let mem = r.memory().bytes(RKEY).unwrap();
    assert!(mem[..600].iter().all(|b| *b == 3));
    assert!(mem[600..].iter().all(|b| *b == 0));
    assert_eq!(
        r.dropped,
        2 + 2 * 2,
        "two refused starts, and their middles and lasts"
    );
    assert!(matches!(
        UcSender::new(1, 0, 1000),
        Err(WireError::BadMtu(1000))
    ));
}

#[test]
fn ud_checks_qpn_qkey_buffers_and_lengths() {
    let mut s = UdSender::new(0x31, 1024).unwrap();
    let mut r = UdReceiver::new(0x77, 0x1111_2222);
    let good = UdDest {
        qpn: 0x77,
        qkey: 0x1111_2222,
    };
    let p = s.send(good, &msg(1024, 5), Some(3)).unwrap();
    assert_eq!(p.bth.opcode.op(), Op::SendOnlyImm);
    r.on_packet(&via_wire(&p)); // no buffer yet
    r.post_recv(1, 100).unwrap();
    r.on_packet(&via_wire(&p)); // too long for it: the buffer stays
    r.post_recv(2, 2048).unwrap();
    r.on_packet(&via_wire(
        &s.send(UdDest { qkey: 1, ..good }, b"x", None).unwrap(),
    ));
    r.on_packet(&via_wire(
        &s.send(UdDest { qpn: 0x78, ..good }, b"x", None).unwrap(),
    ));
    r.on_packet(&via_wire(&s.send(good, b"short", None).unwrap()));
    r.on_packet(&via_wire(&p));
    let c = r.poll_completion().unwrap();
    assert_eq!(
        (c.wr_id, &c.data[..], c.imm, c.src_qp),
        (1, &b"short"[..], None, 0x31)
    );
    let c = r.poll_completion().unwrap();
    assert_eq!((c.wr_id, c.data.len(), c.imm), (2, 1024, Some(3)));
    assert_eq!(
        (
            r.no_buffer,
            r.too_long,
            r.bad_qkey,
            r.wrong_qpn,
            r.malformed
        ),
        (1, 1, 1, 1, 0)
    );
    assert_eq!(
        s.send(good, &[0; 1025], None),
        Err(WireError::Oversize {
            len: 1025,
            max: 1024
        })
    );
    let mut uc = p.clone();
    uc.bth.opcode = super::wire::Opcode::from_u8(0x24).unwrap();
    r.on_packet(&uc);
    assert_eq!(r.malformed, 1);
}
