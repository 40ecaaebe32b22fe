//! What an AF_XDP port needs from its XDP program, whichever program it is.

use std::os::fd::RawFd;

use super::program::XdpProgram;
use crate::error::Result;
use crate::sys::bpf::ProgFd;

/// An XDP program that sends frames to AF_XDP sockets through an XSKMAP indexed by the RX
/// queue: the filter program ([`XdpProgram`]) and the rule table
/// ([`super::table::XdpTable`]). Sockets are registered with [`SocketProgram::set_socket`]
/// and the program attached by [`SocketProgram::prog_fd`]. (A port holds its program as a
/// [`crate::xsk::PortProgram`]: for a table it takes the slot only if it is empty and shares
/// the table's attachment, see [`super::table::XdpTable::hold`].)
pub trait SocketProgram: Send + Sync + std::fmt::Debug {
    /// The loaded program.
    fn prog_fd(&self) -> &ProgFd;
    /// Its kernel id.
    fn prog_id(&self) -> u32;
    /// XSKMAP slots (queues `0..queues` can have a socket).
    fn queues(&self) -> u32;
    /// Loaded with `BPF_F_XDP_HAS_FRAGS`.
    fn frags(&self) -> bool;
    /// Send the frames of RX queue `queue` that the program redirects to `xsk_fd`.
    fn set_socket(&self, queue: u32, xsk_fd: RawFd) -> Result<()>;
    /// Stop sending queue `queue`'s frames to a socket.
    fn clear_socket(&self, queue: u32) -> Result<()>;
}

impl SocketProgram for XdpProgram {
    fn prog_fd(&self) -> &ProgFd {
        self.prog()
    }
    fn prog_id(&self) -> u32 {
        self.info().id
    }
    fn queues(&self) -> u32 {
        XdpProgram::queues(self)
    }
    fn frags(&self) -> bool {
        XdpProgram::frags(self)
    }
    fn set_socket(&self, queue: u32, xsk_fd: RawFd) -> Result<()> {
        XdpProgram::set_socket(self, queue, xsk_fd)
    }
    fn clear_socket(&self, queue: u32) -> Result<()> {
        XdpProgram::clear_socket(self, queue)
    }
}
