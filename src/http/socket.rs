//! Writes to a client's TCP socket that never wait, shared by the transports the
//! hub's fan-out writes to ([`super::ws`], [`super::sse`]).

use std::io::{self, IoSlice};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// A vectored write that never waits, as `sendmsg`: `writev` (what tokio's vectored
/// write calls) takes the file-position lock and the VFS checks first, a cost the
/// fan-out would pay per client per change for nothing on a socket.
pub fn send_vectored(stream: &TcpStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    stream.try_io(Interest::WRITABLE, || {
        socket2::SockRef::from(stream).send_vectored(slices)
    })
}
