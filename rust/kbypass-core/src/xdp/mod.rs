//! XDP programs built in Rust: a small eBPF assembler ([`asm`]), the default redirect program and
//! match rules compiled to bytecode ([`program`], [`rules`]), attaching with bpf_link or netlink
//! ([`attach`]), a capability probe ([`probe`]), and the rule table ([`table`]): a program whose
//! rules live in BPF maps and change at run time. No libbpf/libxdp at build or run time.
//!
//! ```no_run
//! use kbypass_core::xdp::{attach, parse_filter, AttachMode, ProgramOptions, XdpProgram};
//! let rules = parse_filter("udp dst port 9000-9010")?;
//! let prog = XdpProgram::new(&rules, ProgramOptions::default())?;
//! let att = attach(&prog, "eth0", AttachMode::Auto, false)?;
//! println!("attached in {} mode via {}", att.mode().as_str(), att.via());
//! # Ok::<(), kbypass_core::Error>(())
//! ```

pub mod asm;
pub mod attach;
pub mod echo;
pub mod faults;
#[cfg(test)]
mod fuzz;
pub mod probe;
pub mod program;
pub mod rules;
pub mod socket_program;
pub mod table;
#[cfg(test)]
mod tests;

pub use attach::{attach, attach_fd, query, AttachMode, AttachedProgram, XdpAttachment};
pub use echo::UdpEcho;
pub use probe::{probe, Check, XdpProbe};
pub use program::{
    default_program, filter_program, redirect_form, ProgramOptions, RedirectForm, XdpProgram,
};
pub use rules::{format_filter, matches, parse_filter, IpVersion, Prefix, Rule, RuleFields, Vlan};
pub use socket_program::SocketProgram;
pub use table::{TableOptions, XdpTable};
