//! Replies built in place (`kbypass.packet`'s `udp_reply`, `icmp_echo_reply`, `tcp_rst`,
//! `arp_reply`, `neighbor_advert` and `reply`): one frame in a writable uint8 array, or the rows
//! of a 2-D array; the work is the core's `packet::reply`.

use kbypass_core::packet::reply::{self, Reply, ReplyError as CoreReplyError};
use kbypass_core::packet::Rows;
use numpy::{PyReadonlyArray1, PyReadwriteArray1, PyReadwriteArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::IntoPyResult;

pyo3::create_exception!(
    kbypass._core,
    ReplyError,
    PyValueError,
    "The frame is not one the reply helper answers (cut short, malformed, another protocol, a fragment, sent to a multicast address, asking for another address, ...) or its reply does not fit the buffer; the message says which. The frame is left as it was."
);

/// A reply refused: the frame's fault is a `ReplyError`, an argument's a plain `ValueError`.
pub(crate) fn reply_err(e: CoreReplyError) -> PyErr {
    match e {
        CoreReplyError::Argument(m) => PyValueError::new_err(m),
        e => ReplyError::new_err(e.to_string()),
    }
}

fn bytes_of<'a>(frame: &'a mut PyReadwriteArray1<'_, u8>) -> PyResult<&'a mut [u8]> {
    frame
        .as_slice_mut()
        .map_err(|_| PyValueError::new_err("frame must be a contiguous uint8 array"))
}

fn fixed<const N: usize>(b: &[u8], what: &str) -> PyResult<[u8; N]> {
    b.try_into()
        .map_err(|_| PyValueError::new_err(format!("{what} must be {N} bytes, not {}", b.len())))
}

/// Answer the UDP datagram in `frame[:length]` with `payload`; returns the reply's length.
#[pyfunction]
fn udp_reply(
    mut frame: PyReadwriteArray1<'_, u8>,
    length: usize,
    payload: &[u8],
) -> PyResult<usize> {
    reply::udp_reply(bytes_of(&mut frame)?, length, payload).map_err(reply_err)
}

/// Answer the ICMP/ICMPv6 echo request in `frame[:length]`; returns the reply's length.
#[pyfunction]
fn icmp_echo_reply(mut frame: PyReadwriteArray1<'_, u8>, length: usize) -> PyResult<usize> {
    reply::icmp_echo_reply(bytes_of(&mut frame)?, length).map_err(reply_err)
}

/// Answer the TCP segment in `frame[:length]` with a RST; returns the reply's length.
#[pyfunction]
fn tcp_rst(mut frame: PyReadwriteArray1<'_, u8>, length: usize) -> PyResult<usize> {
    reply::tcp_rst(bytes_of(&mut frame)?, length).map_err(reply_err)
}

/// The signature of the core's answers for an address (`arp_reply`, `neighbor_advert`).
type ForAddress<const N: usize> =
    fn(&mut [u8], usize, [u8; 6], [u8; N]) -> Result<usize, CoreReplyError>;

/// `answer` for `frame[:length]` with the owner's `mac` and `ip` (`what` names the address).
fn answer_for<const N: usize>(
    answer: ForAddress<N>,
    mut frame: PyReadwriteArray1<'_, u8>,
    length: usize,
    mac: &[u8],
    ip: &[u8],
    what: &str,
) -> PyResult<usize> {
    let (mac, ip) = (fixed(mac, "mac")?, fixed(ip, what)?);
    answer(bytes_of(&mut frame)?, length, mac, ip).map_err(reply_err)
}

/// Answer the ARP request for `ipv4` (4 bytes) in `frame[:length]` from `mac` (6 bytes);
/// returns the reply's length.
#[pyfunction]
fn arp_reply(
    frame: PyReadwriteArray1<'_, u8>,
    length: usize,
    mac: &[u8],
    ipv4: &[u8],
) -> PyResult<usize> {
    answer_for(reply::arp_reply, frame, length, mac, ipv4, "ipv4")
}

/// Answer the Neighbor Solicitation for `ipv6` (16 bytes) in `frame[:length]` from `mac`
/// (6 bytes); returns the reply's length.
#[pyfunction]
fn neighbor_advert(
    frame: PyReadwriteArray1<'_, u8>,
    length: usize,
    mac: &[u8],
    ipv6: &[u8],
) -> PyResult<usize> {
    answer_for(reply::neighbor_advert, frame, length, mac, ipv6, "ipv6")
}

/// Answer the rows `frames[i, :lengths[i]]` selected by `mask` (all when None) with the reply
/// `kind` (its arguments: `payload`, `mac`, `ip`); `lengths` gets the replies' lengths and
/// `answered` which rows were answered. Returns how many.
#[pyfunction]
#[pyo3(signature = (frames, lengths, kind, answered, payload=None, mac=None, ip=None, mask=None))]
#[allow(clippy::too_many_arguments)]
fn reply_rows(
    py: Python<'_>,
    mut frames: PyReadwriteArray2<'_, u8>,
    mut lengths: PyReadwriteArray1<'_, u32>,
    kind: &str,
    mut answered: PyReadwriteArray1<'_, bool>,
    payload: Option<&[u8]>,
    mac: Option<&[u8]>,
    ip: Option<&[u8]>,
    mask: Option<PyReadonlyArray1<'_, bool>>,
) -> PyResult<usize> {
    let reply = Reply::new(kind, payload, mac, ip).map_err(reply_err)?;
    let lens_in = lengths.as_slice()?.to_vec();
    let shape = frames.shape();
    let rows = Rows::new(shape[0], shape[1], &lens_in).py()?;
    let mask = mask.as_ref().map(|m| m.as_slice()).transpose()?;
    let data = frames
        .as_slice_mut()
        .map_err(|_| PyValueError::new_err("frames must be C-contiguous"))?;
    let lens_out = lengths.as_slice_mut()?;
    let answered = answered.as_slice_mut()?;
    py.detach(|| rows.reply(data, &reply, mask, lens_out, answered))
        .py()
}

/// A MAC address given as "02:00:00:00:00:01" (or '-' separated) or as 6 bytes.
pub(crate) fn mac_arg(mac: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(s) = mac.extract::<String>() {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        let bytes: Option<Vec<u8>> = (parts.len() == 6)
            .then(|| {
                parts
                    .iter()
                    .map(|p| {
                        (1..=2)
                            .contains(&p.len())
                            .then(|| u8::from_str_radix(p, 16).ok())?
                    })
                    .collect()
            })
            .flatten();
        return bytes.ok_or_else(|| {
            PyValueError::new_err(format!(
                "mac {s:?} is not a MAC address like '02:00:00:00:00:01'"
            ))
        });
    }
    mac.extract::<Vec<u8>>().map_err(|_| {
        PyValueError::new_err("mac must be a string like '02:00:00:00:00:01' or 6 bytes")
    })
}

/// An IP address given as text ("198.18.0.2", "fd00::2"), packed bytes, or an `ipaddress`
/// object (its `packed` bytes).
pub(crate) fn ip_arg(ip: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(s) = ip.extract::<String>() {
        return match s.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(a)) => Ok(a.octets().to_vec()),
            Ok(std::net::IpAddr::V6(a)) => Ok(a.octets().to_vec()),
            Err(_) => Err(PyValueError::new_err(format!(
                "ip {s:?} is not an IP address"
            ))),
        };
    }
    let packed = match ip.getattr("packed") {
        Ok(p) => p,
        Err(_) => ip.clone(),
    };
    packed.extract::<Vec<u8>>().map_err(|_| {
        PyValueError::new_err(
            "ip must be a string like '198.18.0.2', packed bytes or an ipaddress object",
        )
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("ReplyError", m.py().get_type::<ReplyError>())?;
    m.add_function(wrap_pyfunction!(udp_reply, m)?)?;
    m.add_function(wrap_pyfunction!(icmp_echo_reply, m)?)?;
    m.add_function(wrap_pyfunction!(tcp_rst, m)?)?;
    m.add_function(wrap_pyfunction!(arp_reply, m)?)?;
    m.add_function(wrap_pyfunction!(neighbor_advert, m)?)?;
    m.add_function(wrap_pyfunction!(reply_rows, m)?)?;
    Ok(())
}
