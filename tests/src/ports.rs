//! Loopback ports for servers the tests start: the kernel picks them (a bind
//! to `127.0.0.1:0`) and the test keeps them for as long as it holds the
//! [`Reserved`] socket. No port is guessed.
//!
//! Asking for port 0 and releasing the port before the server binds it is
//! racy: the port lies in the ephemeral range, so any outgoing connection (a
//! load thread of a test running alongside) may take it as its local port in
//! between. CI saw exactly that ("Address already in use" for a node's API
//! address). So the port is never released: the reservation stays bound, with
//! `SO_REUSEADDR` and without listening. On Linux
//! - the server binds and listens on the same address when it sets
//!   `SO_REUSEADDR` too, which Rust's std and Tokio listeners and Go's `net`
//!   (etcd, kube-apiserver, kube-controller-manager) do;
//! - connect(2) never picks a port some socket is bound to as its local port,
//!   so no outgoing connection takes the port while it is reserved;
//! - a reservation does not listen: connecting to a killed server is refused,
//!   and the restarted server binds the same address again.
//!
//! A server that binds without `SO_REUSEADDR` fails with "Address already in
//! use" at once: loud, never a flake.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

/// A loopback address picked by the kernel and held for a server to bind.
#[derive(Debug)]
pub struct Reserved {
    _socket: Socket,
    addr: SocketAddr,
}

impl Reserved {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// Reserves a loopback port (see the module documentation). The socket is
/// close-on-exec: servers the test starts do not inherit it.
pub fn reserve() -> Result<Reserved> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .context("creating a socket to reserve a port")?;
    socket
        .set_reuse_address(true)
        .context("setting SO_REUSEADDR on a port reservation")?;
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .context("binding 127.0.0.1:0 to reserve a port")?;
    let addr = socket
        .local_addr()
        .context("reading a reserved address")?
        .as_socket()
        .context("a reserved address that is not an IP address")?;
    Ok(Reserved {
        _socket: socket,
        addr,
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use super::*;

    #[test]
    fn reserved_ports_are_distinct() {
        let held: Vec<Reserved> = (0..64).map(|_| reserve().unwrap()).collect();
        let mut ports: Vec<u16> = held.iter().map(Reserved::port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), held.len(), "a port was handed out twice");
    }

    #[test]
    fn a_server_binds_a_reserved_port_again_and_again_and_nothing_else_can() {
        let r = reserve().unwrap();
        // std's listener sets SO_REUSEADDR, like Tokio's and Go's.
        for round in 0..2 {
            let server = TcpListener::bind(r.addr()).unwrap();
            let mut client = TcpStream::connect(r.addr()).unwrap();
            let (mut conn, _) = server.accept().unwrap();
            conn.write_all(b"hi").unwrap();
            let mut got = [0u8; 2];
            client.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"hi", "round {round}");
            drop((server, conn, client));
            let refused = TcpStream::connect(r.addr()).unwrap_err();
            assert_eq!(
                refused.kind(),
                std::io::ErrorKind::ConnectionRefused,
                "the reservation itself must not accept connections"
            );
        }
        let plain = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let taken = plain.bind(&r.addr().into()).unwrap_err();
        assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);
    }
}
