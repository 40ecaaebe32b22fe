//! The key message and the TCP session (the runs need a device: they are tested against
//! the tools in the soft-RoCE VM, tests/rdma).

use std::net::TcpListener;
use std::time::Duration;

use super::*;

fn keys() -> Keys {
    Keys {
        lid: 0,
        out_reads: 0x10,
        qpn: 0x11,
        psn: 0xabcdef,
        rkey: 0x1234,
        vaddr: 0x5555_dead_b000,
        gid: Gid::from_hex("00000000000000000000ffffc612000f").unwrap(),
        srqn: 0,
    }
}

#[test]
fn key_message_matches_perftest_format() {
    let m = key_message(&keys());
    let text = std::str::from_utf8(&m[..107]).unwrap();
    assert_eq!(
        text,
        "0000:0010:000011:abcdef:00001234:00005555deadb000:\
         00:00:00:00:00:00:00:00:00:00:ff:ff:c6:12:00:0f:00000000:"
    );
    assert_eq!(m[107], 0);
    assert_eq!(parse_key_message(&m).unwrap(), keys());
    assert!(parse_key_message(b"0000:0010:000011").is_err());
}

#[test]
fn session_over_loopback_tcp() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let never = Cancel::never();
        let mut s = Session::accept(&l, 3, Duration::from_secs(5), &never).unwrap();
        let k = s.keys(&keys()).unwrap();
        let r = s.reports(&BwReport::default()).unwrap();
        assert_eq!(s.remote_version, PERFTEST_VERSION);
        s.close(&keys()).unwrap();
        (k, r)
    });
    let never = Cancel::never();
    let mut c = Session::connect(("127.0.0.1", port), 3, Duration::from_secs(5), &never).unwrap();
    assert_eq!(
        (c.remote_version.as_str(), c.remote_mtu),
        (PERFTEST_VERSION, 3)
    );
    let mut mine = keys();
    mine.qpn = 0x22;
    assert_eq!(c.keys(&mine).unwrap(), keys());
    let rep = BwReport {
        size: 65536,
        iters: 5000,
        bw_peak: 1.5,
        bw_avg: 1.25,
        msg_rate: 0.02,
    };
    assert_eq!(c.reports(&rep).unwrap(), BwReport::default());
    c.close(&mine).unwrap();
    let (k, r) = t.join().unwrap();
    assert_eq!((k, r), (mine, rep));
}
