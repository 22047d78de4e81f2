//! The userspace TCP/IP stack behind a small boundary: raw IP packets in and out, accepted
//! TCP connections (any destination) and UDP datagrams. This is the only file that names
//! `netstack-smoltcp`; another stack (raw smoltcp, a fork) replaces it by filling the same
//! [`StackParts`].
//!
//! Why netstack-smoltcp: its TCP keeps data that arrives on a FIN segment and supports
//! half-close both ways (see /shared/reference/client.md: `ipstack` failed both).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

use futures::{Sink, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};

/// A TCP connection the stack accepted: a byte stream with half-close (`shutdown` sends a
/// FIN after the buffered data; EOF on read means the application sent its FIN).
pub trait AppConn: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AppConn for T {}

/// An accepted connection with its source (the application) and destination.
pub type Accepted = (Box<dyn AppConn>, SocketAddr, SocketAddr);

/// A UDP datagram: payload, source, destination.
pub type Datagram = (Vec<u8>, SocketAddr, SocketAddr);

/// Packets from the TUN into the stack.
pub type PacketSink = Pin<Box<dyn Sink<Vec<u8>, Error = io::Error> + Send>>;
/// Packets from the stack toward the TUN.
pub type PacketSource = Pin<Box<dyn Stream<Item = io::Result<Vec<u8>>> + Send>>;

/// The pieces of a running stack.
pub struct StackParts {
    /// Feed every packet read from the TUN here.
    pub packets_in: PacketSink,
    /// Write every packet from here to the TUN.
    pub packets_out: PacketSource,
    /// Accepted TCP connections.
    pub tcp: Pin<Box<dyn Stream<Item = Accepted> + Send>>,
    /// UDP datagrams from applications.
    pub udp_in: Pin<Box<dyn Stream<Item = Datagram> + Send>>,
    /// UDP datagrams to applications (the source is the address they are "from").
    pub udp_out: Pin<Box<dyn Sink<Datagram, Error = io::Error> + Send>>,
    /// The stack's own work (timers, retransmissions): poll it until it ends.
    pub runner: Pin<Box<dyn Future<Output = io::Result<()>> + Send>>,
}

/// TCP window per connection: 1 MiB each way. The default (~320 KiB) limits one flow to
/// window ÷ RTT; loopback RTTs are tiny, but a bigger window keeps a 3-hop circuit busy.
const TCP_WINDOW: u32 = 1 << 20;

/// Starts a netstack-smoltcp stack for an interface of `mtu`.
pub fn start(mtu: u16) -> io::Result<StackParts> {
    let (stack, runner, udp, tcp) = netstack_smoltcp::StackBuilder::default()
        .enable_tcp(true)
        .enable_udp(true)
        // ICMP echo is answered by the stack for any address: a ping "works" without
        // leaving the device, which is honest about nothing (documented).
        .enable_icmp(false)
        .mtu(usize::from(mtu))
        .tcp_recv_buffer_size(TCP_WINDOW)
        .tcp_send_buffer_size(TCP_WINDOW)
        .build()?;
    let missing = |what| io::Error::other(format!("netstack did not build its {what}"));
    let runner = runner.ok_or_else(|| missing("runner"))?;
    let udp = udp.ok_or_else(|| missing("UDP socket"))?;
    let tcp = tcp.ok_or_else(|| missing("TCP listener"))?;
    let (sink, source) = stack.split();
    let (udp_rd, udp_wr) = udp.split();
    Ok(StackParts {
        packets_in: Box::pin(sink),
        packets_out: Box::pin(source),
        tcp: Box::pin(tcp.map(|(s, src, dst)| (Box::new(s) as Box<dyn AppConn>, src, dst))),
        udp_in: Box::pin(udp_rd),
        udp_out: Box::pin(udp_wr),
        runner: Box::pin(runner),
    })
}
