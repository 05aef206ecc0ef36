//! The wire format: what Ferry's datagrams hold, byte by byte, and nothing else.
//!
//! Every module here encodes or decodes (or derives the keys of) something that crosses the
//! network: integers ([`coding`]), packet headers ([`packet`]), frames ([`frame`]), the HELLO's
//! settings ([`settings`]), address-validation tokens ([`cookie`]), stateless resets
//! ([`stateless_reset`]), the connection-ID layout and keys a fleet of servers shares
//! ([`fleet`]), the identifiers all of them name ([`ids`]), and why a connection ends: its close
//! codes and the error the application sees ([`close`]). Malformed input is an error value,
//! never a panic.
//!
//! Wire code imports only wire code: the state machines (`connection`, `endpoint`), streams,
//! recovery and congestion control build on these modules, never the other way round. The
//! folder is that layering, as smoltcp's `wire/` is.

pub mod close;
pub mod coding;
pub mod cookie;
pub mod fleet;
pub mod frame;
pub mod ids;
pub mod packet;
pub mod settings;
pub mod stateless_reset;
