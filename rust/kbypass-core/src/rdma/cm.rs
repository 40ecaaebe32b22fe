//! Connection setup through the RDMA connection manager (librdmacm, loaded at run time): IP
//! addresses instead of an out-of-band exchange, for QPs kbypass creates itself.
//!
//! The QP stays kbypass's (created on its own [`Context`](super::Context)); librdmacm resolves
//! the address and route, carries the QP number in the CM exchange, and tells us the attributes
//! of each state (`rdma_init_qp_attr`), which we apply with `ibv_modify_qp`, as librdmacm does
//! for the QPs it creates. The active side: resolve address → resolve route → INIT →
//! `rdma_connect` → CONNECT_RESPONSE → RTR → RTS → `rdma_establish`. The passive side: bind →
//! listen → CONNECT_REQUEST → INIT → RTR → RTS → `rdma_accept` → ESTABLISHED.

use std::net::SocketAddr;
use std::ptr::{self, NonNull};
use std::time::{Duration, Instant};

use super::ffi::{self, rdmacm, RdmaCm};
use super::{Access, Cancel, QueuePair};
use crate::error::{Error, Result};

/// A connection made by the connection manager: owns the CM id(s) and the event channel;
/// dropping it disconnects and releases them (the QP is not touched).
pub struct CmConnection {
    cm: &'static RdmaCm,
    ch: NonNull<ffi::rdma_event_channel>,
    id: Option<NonNull<ffi::rdma_cm_id>>,
    listen: Option<NonNull<ffi::rdma_cm_id>>,
    established: bool,
}
// SAFETY: librdmacm ids and channels may be used from any thread; this value is their only
// owner and its methods take `&mut self` or run in Drop.
unsafe impl Send for CmConnection {}
// SAFETY: once built, a connection offers no method that touches the ids (only Drop does).
unsafe impl Sync for CmConnection {}

impl Drop for CmConnection {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            if self.established {
                // SAFETY: a connected id we own; a failure only means the peer already left.
                unsafe { (self.cm.disconnect)(id.as_ptr()) };
            }
            // SAFETY: we own the id and acked every event we read for it.
            unsafe { (self.cm.destroy_id)(id.as_ptr()) };
        }
        if let Some(l) = self.listen {
            // SAFETY: as above, for the listening id.
            unsafe { (self.cm.destroy_id)(l.as_ptr()) };
        }
        // SAFETY: the channel's ids are destroyed above.
        unsafe { (self.cm.destroy_event_channel)(self.ch.as_ptr()) };
    }
}

/// The connection manager is the kernel's: a user-space engine's QP connects by endpoint or
/// the tools' TCP exchanges instead.
fn refuse_userspace(qp: &QueuePair) -> Result<()> {
    if qp.is_userspace() {
        return Err(Error::Unsupported {
            what: "the RDMA connection manager (librdmacm) on a user-space RoCE QP".into(),
            fix: "connect it with qp.connect(endpoint), pingpong_* or perftest_* instead".into(),
        });
    }
    Ok(())
}

fn sockaddr(addr: &SocketAddr) -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain data; all zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage, which is aligned for it.
            unsafe { ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
        }
    }
    ss
}

fn check(rc: i32, what: &str, fix: &str) -> Result<()> {
    if rc != 0 {
        return Err(Error::last_os(what.to_string(), fix.to_string()));
    }
    Ok(())
}

fn ms(t: Duration) -> i32 {
    i32::try_from(t.as_millis()).unwrap_or(i32::MAX).max(1)
}

impl CmConnection {
    fn new() -> Result<Self> {
        let cm = rdmacm()?;
        // SAFETY: plain constructor; NULL on failure.
        let ch = NonNull::new(unsafe { (cm.create_event_channel)() }).ok_or_else(|| {
            Error::last_os(
                "rdma_create_event_channel",
                "load rdma_ucm (modprobe rdma_ucm) and check /dev/infiniband/rdma_cm",
            )
        })?;
        Ok(CmConnection {
            cm,
            ch,
            id: None,
            listen: None,
            established: false,
        })
    }

    fn create_id(&self) -> Result<NonNull<ffi::rdma_cm_id>> {
        let mut id = ptr::null_mut();
        // SAFETY: valid channel; `id` receives the new id.
        let rc = unsafe {
            (self.cm.create_id)(self.ch.as_ptr(), &mut id, ptr::null_mut(), ffi::RDMA_PS_TCP)
        };
        check(rc, "rdma_create_id", "")?;
        NonNull::new(id).ok_or_else(|| Error::State("rdma_create_id returned no id".into()))
    }

    /// Wait for the next event (until `deadline`, or until `cancel` says stop), ack it, and
    /// return (event, status, id).
    fn next_event(
        &self,
        deadline: Instant,
        cancel: &Cancel<'_>,
    ) -> Result<(i32, i32, *mut ffi::rdma_cm_id)> {
        // SAFETY: the channel is valid; `fd` is its first field.
        let fd = unsafe { self.ch.as_ref().fd };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout(
                    "no RDMA CM event in time: is the peer listening on that address?".into(),
                ));
            }
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, ms(left).min(100)) };
            if n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return Err(Error::last_os("poll(rdma_cm channel)", ""));
            }
            if n <= 0 {
                cancel.check("waiting for an RDMA CM event")?;
                continue;
            }
            let mut ev = ptr::null_mut();
            // SAFETY: valid channel; the fd is readable, so this does not block for long.
            let rc = unsafe { (self.cm.get_cm_event)(self.ch.as_ptr(), &mut ev) };
            check(rc, "rdma_get_cm_event", "")?;
            // SAFETY: librdmacm returned a valid event; read its head, then ack it once.
            let (event, status, id) = unsafe { ((*ev).event, (*ev).status, (*ev).id) };
            // SAFETY: as above.
            unsafe { (self.cm.ack_cm_event)(ev) };
            return Ok((event, status, id));
        }
    }

    fn expect(
        &self,
        want: i32,
        deadline: Instant,
        cancel: &Cancel<'_>,
    ) -> Result<*mut ffi::rdma_cm_id> {
        let (event, status, id) = self.next_event(deadline, cancel)?;
        if event != want {
            let name = |e: i32| {
                usize::try_from(e)
                    .ok()
                    .and_then(|i| ffi::CM_EVENT_NAMES.get(i).copied())
                    .unwrap_or("UNKNOWN")
            };
            return Err(Error::Os {
                what: format!(
                    "RDMA CM: got {} (status {status}) while waiting for {}",
                    name(event),
                    name(want)
                ),
                errno: if status < 0 { -status } else { libc::ECONNREFUSED },
                fix: "check the address (an IP of the RDMA device's netdev) and that the peer listens"
                    .into(),
            });
        }
        Ok(id)
    }

    /// Move `qp` to `state` with the attributes the CM gives for this connection.
    fn modify(&self, qp: &QueuePair, state: i32, access: Access) -> Result<()> {
        let id = self
            .id
            .ok_or_else(|| Error::State("no connection id yet".into()))?;
        let mut attr = ffi::ibv_qp_attr {
            qp_state: state,
            ..Default::default()
        };
        let mut mask = 0;
        // SAFETY: valid id; attr and mask are written by the call.
        let rc = unsafe { (self.cm.init_qp_attr)(id.as_ptr(), &mut attr, &mut mask) };
        check(rc, "rdma_init_qp_attr", "")?;
        if state == ffi::QPS_INIT {
            attr.qp_access_flags = access.0 as u32;
            mask |= ffi::QP_ACCESS_FLAGS;
        }
        qp.modify(&mut attr, mask)
    }

    fn conn_param(qp: &QueuePair) -> ffi::rdma_conn_param {
        ffi::rdma_conn_param {
            responder_resources: 1,
            initiator_depth: 1,
            retry_count: 7,
            rnr_retry_count: 7,
            qp_num: qp.qp_num(),
            ..Default::default()
        }
    }

    /// Active side: connect `qp` (in RESET) to the CM listener at `addr`; returns when the QP
    /// is in RTS. Ends at `timeout` or when `cancel` says stop ([`Error::Interrupted`]).
    pub fn connect(
        qp: &QueuePair,
        addr: SocketAddr,
        access: Access,
        timeout: Duration,
        cancel: &Cancel<'_>,
    ) -> Result<Self> {
        refuse_userspace(qp)?;
        let deadline = Instant::now() + timeout;
        let mut c = Self::new()?;
        let id = c.create_id()?;
        c.id = Some(id);
        let dst = sockaddr(&addr);
        // SAFETY: valid id; dst is a sockaddr of the family it says.
        let rc = unsafe {
            (c.cm.resolve_addr)(
                id.as_ptr(),
                ptr::null(),
                (&dst as *const libc::sockaddr_storage).cast(),
                ms(timeout),
            )
        };
        check(rc, "rdma_resolve_addr", "is the address reachable?")?;
        c.expect(0, deadline, cancel)?; // ADDR_RESOLVED
                                        // SAFETY: valid id with a resolved address.
        let rc = unsafe { (c.cm.resolve_route)(id.as_ptr(), ms(timeout)) };
        check(rc, "rdma_resolve_route", "")?;
        c.expect(2, deadline, cancel)?; // ROUTE_RESOLVED
        c.modify(qp, ffi::QPS_INIT, access)?;
        let mut p = Self::conn_param(qp);
        // SAFETY: valid id with a route; `p` outlives the call.
        let rc = unsafe { (c.cm.connect)(id.as_ptr(), &mut p) };
        check(rc, "rdma_connect", "")?;
        c.expect(5, deadline, cancel)?; // CONNECT_RESPONSE
        c.modify(qp, ffi::QPS_RTR, access)?;
        c.modify(qp, ffi::QPS_RTS, access)?;
        // SAFETY: valid id; our QP is in RTS, so the CM may send its ready-to-use message.
        let rc = unsafe { (c.cm.establish)(id.as_ptr()) };
        check(rc, "rdma_establish", "")?;
        c.established = true;
        Ok(c)
    }

    /// Passive side: listen on `bind`, accept the first connection request for `qp` (in
    /// RESET); returns when the connection is established. Ends at `timeout` or when `cancel`
    /// says stop ([`Error::Interrupted`]).
    pub fn accept(
        qp: &QueuePair,
        bind: SocketAddr,
        access: Access,
        timeout: Duration,
        cancel: &Cancel<'_>,
    ) -> Result<Self> {
        refuse_userspace(qp)?;
        let deadline = Instant::now() + timeout;
        let mut c = Self::new()?;
        let listen = c.create_id()?;
        c.listen = Some(listen);
        let src = sockaddr(&bind);
        // SAFETY: valid id; src is a sockaddr of the family it says.
        let rc = unsafe {
            (c.cm.bind_addr)(
                listen.as_ptr(),
                (&src as *const libc::sockaddr_storage).cast(),
            )
        };
        check(rc, &format!("rdma_bind_addr({bind})"), "pick a free port")?;
        // SAFETY: a bound id.
        let rc = unsafe { (c.cm.listen)(listen.as_ptr(), 1) };
        check(rc, "rdma_listen", "")?;
        let child = c.expect(4, deadline, cancel)?; // CONNECT_REQUEST
        c.id = NonNull::new(child);
        c.modify(qp, ffi::QPS_INIT, access)?;
        c.modify(qp, ffi::QPS_RTR, access)?;
        c.modify(qp, ffi::QPS_RTS, access)?;
        let mut p = Self::conn_param(qp);
        // SAFETY: the request's id; `p` outlives the call.
        let rc = unsafe { (c.cm.accept)(child, &mut p) };
        check(rc, "rdma_accept", "")?;
        c.expect(9, deadline, cancel)?; // ESTABLISHED
        c.established = true;
        Ok(c)
    }
}
