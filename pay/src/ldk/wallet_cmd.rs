//! The `wallet` commands of `onionvpn-relay` and `onionvpn-client`, shared by both.
//!
//! A [`WalletCommand`] is parsed by clap (it is a clap subcommand enum), travels to a running
//! daemon as one line ([`WalletCommand::to_line`], [`WalletCommand::parse_line`]) because
//! ldk-node's store is single-process, and is executed against an [`LdkRail`] by
//! [`execute`]. The [`WalletAnswer`] goes back as TOML and is shown with its `Display`.

use std::fmt;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ChannelEvent, ChannelInfo, LdkConfig, LdkRail};
use crate::rail::NodeId;
use crate::{PayError, PaymentRail};

/// Longest request line a daemon accepts for a wallet command, bytes (a BOLT11 invoice with
/// a long description is under 2 KiB).
pub const MAX_LINE: usize = 4096;

/// Default validity of an invoice created by `wallet invoice`, seconds.
pub const INVOICE_EXPIRY_SECS: u32 = 3600;

/// Longest invoice description accepted (BOLT11 allows 639 bytes).
const MAX_DESCRIPTION: usize = 639;

/// Timeout of the self-test's TCP connection to the node's listening address.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`run_standalone`] waits for a channel open or close it started to reach its
/// peer before it stops the node.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// A wallet command.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum WalletCommand {
    /// A new on-chain address to fund the node.
    Address,
    /// On-chain and Lightning balances.
    Balance,
    /// The node's channels.
    Channels,
    /// Open a channel of SATS satoshi to a node (connecting to it first).
    OpenChannel {
        /// The peer: NODE_ID@IP:PORT (node id as 66 hex digits).
        #[arg(value_name = "NODE_ID@HOST:PORT")]
        peer: PeerAddr,
        /// Channel size in satoshi.
        sats: u64,
    },
    /// Close a channel cooperatively (its id as shown by `channels`).
    CloseChannel {
        /// Channel id, 64 hex digits.
        #[arg(value_name = "CHANNEL_ID", value_parser = parse_channel_id)]
        channel_id: ChannelIdHex,
    },
    /// Create a BOLT11 invoice for MSAT millisatoshi (a top-up, or a payout to collect).
    Invoice {
        /// Amount in millisatoshi.
        msat: u64,
        /// Description shown to the payer.
        #[arg(default_value = "onionvpn")]
        description: String,
    },
    /// Pay a BOLT11 invoice.
    Pay {
        /// The invoice (lnbc…, lntb…, lnbcrt…).
        invoice: String,
    },
    /// Whether the node can receive a payment (the self-test's Lightning check).
    #[command(hide = true)]
    ReceiveCheck,
}

/// A channel id given on the command line.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ChannelIdHex(pub [u8; 32]);

impl fmt::Debug for ChannelIdHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

fn parse_channel_id(s: &str) -> Result<ChannelIdHex, String> {
    unhex::<32>(s)
        .map(ChannelIdHex)
        .ok_or_else(|| format!("`{s}` is not a channel id (64 hex digits)"))
}

/// A peer to open a channel to: its node id and where it listens.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PeerAddr {
    /// The node id.
    pub node: NodeId,
    /// Its Lightning listening address.
    pub addr: SocketAddr,
}

impl std::str::FromStr for PeerAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, host) = s
            .split_once('@')
            .ok_or_else(|| format!("`{s}` is not NODE_ID@HOST:PORT"))?;
        let node = unhex::<33>(id)
            .map(NodeId)
            .ok_or_else(|| format!("`{id}` is not a node id (66 hex digits)"))?;
        // Resolved here, on the command line's side: the daemon never looks names up.
        let addr = host
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| format!("`{host}` is not HOST:PORT (or does not resolve)"))?;
        Ok(PeerAddr { node, addr })
    }
}

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim();
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn bad_request(detail: impl Into<String>) -> PayError {
    PayError::Invalid {
        what: "wallet request",
        detail: detail.into(),
    }
}

impl WalletCommand {
    /// The command as one request line (without the newline), e.g.
    /// `open-channel 02ab…@127.0.0.1:9735 100000`. Peer addresses are sent resolved.
    pub fn to_line(&self) -> String {
        match self {
            WalletCommand::Address => "address".into(),
            WalletCommand::Balance => "balance".into(),
            WalletCommand::Channels => "channels".into(),
            WalletCommand::OpenChannel { peer, sats } => {
                format!("open-channel {}@{} {sats}", hex(&peer.node.0), peer.addr)
            }
            WalletCommand::CloseChannel { channel_id } => {
                format!("close-channel {}", hex(&channel_id.0))
            }
            // The description is last: it may contain spaces (not newlines, see parse_line).
            WalletCommand::Invoice { msat, description } => {
                format!("invoice {msat} {}", description.replace(['\n', '\r'], " "))
            }
            WalletCommand::Pay { invoice } => format!("pay {}", invoice.trim()),
            WalletCommand::ReceiveCheck => "receive-check".into(),
        }
    }

    /// Parses a request line made by [`WalletCommand::to_line`]. Bad input is a typed
    /// error naming what was wrong.
    pub fn parse_line(line: &str) -> Result<WalletCommand, PayError> {
        if line.len() > MAX_LINE {
            return Err(bad_request(format!("longer than {MAX_LINE} bytes")));
        }
        let line = line.trim();
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        let no_args = |c: WalletCommand| {
            if rest.is_empty() {
                Ok(c)
            } else {
                Err(bad_request(format!("`{verb}` takes no arguments")))
            }
        };
        let amount = |s: &str, what: &str| {
            s.parse::<u64>()
                .map_err(|_| bad_request(format!("{what} {s:?} is not a whole number")))
        };
        match verb {
            "address" => no_args(WalletCommand::Address),
            "balance" => no_args(WalletCommand::Balance),
            "channels" => no_args(WalletCommand::Channels),
            "receive-check" => no_args(WalletCommand::ReceiveCheck),
            "open-channel" => {
                let mut it = rest.split_whitespace();
                let (Some(p), Some(s), None) = (it.next(), it.next(), it.next()) else {
                    return Err(bad_request("open-channel NODE_ID@IP:PORT SATS"));
                };
                // Only numeric addresses on this side: the daemon does no name lookups.
                let (id, addr) = p
                    .split_once('@')
                    .ok_or_else(|| bad_request("open-channel NODE_ID@IP:PORT SATS"))?;
                let node = unhex::<33>(id)
                    .map(NodeId)
                    .ok_or_else(|| bad_request("node id: 66 hex digits"))?;
                let addr = addr
                    .parse::<SocketAddr>()
                    .map_err(|_| bad_request(format!("{addr:?} is not IP:PORT")))?;
                Ok(WalletCommand::OpenChannel {
                    peer: PeerAddr { node, addr },
                    sats: amount(s, "channel size")?,
                })
            }
            "close-channel" => Ok(WalletCommand::CloseChannel {
                channel_id: parse_channel_id(rest).map_err(bad_request)?,
            }),
            "invoice" => {
                let (msat, description) = rest.split_once(' ').unwrap_or((rest, "onionvpn"));
                Ok(WalletCommand::Invoice {
                    msat: amount(msat, "amount")?,
                    description: description.trim().to_owned(),
                })
            }
            "pay" if !rest.is_empty() && !rest.contains(' ') => Ok(WalletCommand::Pay {
                invoice: rest.to_owned(),
            }),
            "pay" => Err(bad_request("pay BOLT11_INVOICE")),
            other => {
                let shown: String = other.chars().take(32).collect();
                Err(bad_request(format!(
                    "unknown wallet command {shown:?}; known: address, balance, channels, \
                     open-channel, close-channel, invoice, pay"
                )))
            }
        }
    }
}

/// How the receive check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckLevel {
    /// The node can receive now.
    Pass,
    /// It runs, but cannot receive yet (no channel, no inbound capacity, no listener).
    Warn,
    /// It is broken (not running, its listening address refuses connections).
    Fail,
}

/// One channel in a [`WalletAnswer::Channels`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRow {
    /// Channel id, hex.
    pub channel_id: String,
    /// Peer node id, hex.
    pub peer: String,
    /// Channel size, sat.
    pub value_sat: u64,
    /// Sendable now, msat.
    pub outbound_msat: u64,
    /// Receivable now, msat.
    pub inbound_msat: u64,
    /// Funding confirmed and both sides agreed.
    pub ready: bool,
    /// Ready and the peer is connected.
    pub usable: bool,
    /// Confirmations of the funding transaction.
    #[serde(default)]
    pub confirmations: u32,
}

impl From<&ChannelInfo> for ChannelRow {
    fn from(c: &ChannelInfo) -> Self {
        ChannelRow {
            channel_id: hex(&c.channel_id),
            peer: hex(&c.counterparty.0),
            value_sat: c.value_sat,
            outbound_msat: c.outbound_msat,
            inbound_msat: c.inbound_msat,
            ready: c.ready,
            usable: c.usable,
            confirmations: c.confirmations,
        }
    }
}

/// What a wallet command answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum WalletAnswer {
    /// A new on-chain address.
    Address {
        /// The address.
        address: String,
    },
    /// Balances.
    Balance {
        /// Node id, hex.
        node_id: String,
        /// On-chain funds that can be spent now, sat.
        onchain_spendable_sat: u64,
        /// All on-chain funds (including unconfirmed and reserved), sat.
        onchain_total_sat: u64,
        /// On-chain funds kept as reserve for anchor channels, sat.
        onchain_reserve_sat: u64,
        /// The node's side of all channels, sat.
        lightning_total_sat: u64,
        /// Sendable now over usable channels, msat.
        lightning_outbound_msat: u64,
        /// Receivable now over usable channels, msat.
        lightning_inbound_msat: u64,
    },
    /// The channels.
    Channels {
        /// One row per channel.
        channels: Vec<ChannelRow>,
    },
    /// A channel open was started.
    ChannelOpening {
        /// The local channel id (`user_channel_id`), decimal.
        user_channel_id: String,
    },
    /// A cooperative close was started.
    ChannelClosing {
        /// The channel, hex.
        channel_id: String,
    },
    /// A new invoice.
    Invoice {
        /// BOLT11 text.
        invoice: String,
    },
    /// An invoice was paid.
    Paid {
        /// Payment id, hex.
        payment_id: String,
        /// Routing fees paid, msat.
        fee_msat: u64,
    },
    /// The receive check.
    ReceiveCheck {
        /// How it ended.
        level: CheckLevel,
        /// One line: why.
        detail: String,
    },
}

impl fmt::Display for WalletAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalletAnswer::Address { address } => writeln!(f, "{address}"),
            WalletAnswer::Balance {
                node_id,
                onchain_spendable_sat,
                onchain_total_sat,
                onchain_reserve_sat,
                lightning_total_sat,
                lightning_outbound_msat,
                lightning_inbound_msat,
            } => {
                writeln!(f, "node id:    {node_id}")?;
                writeln!(
                    f,
                    "on-chain:   {onchain_spendable_sat} sat spendable, {onchain_total_sat} sat \
                     total ({onchain_reserve_sat} sat channel reserve)"
                )?;
                writeln!(
                    f,
                    "lightning:  {lightning_total_sat} sat total; can send {lightning_outbound_msat} \
                     msat, receive {lightning_inbound_msat} msat now"
                )
            }
            WalletAnswer::Channels { channels } => {
                if channels.is_empty() {
                    return writeln!(f, "no channels");
                }
                for c in channels {
                    let state = if c.usable {
                        "usable"
                    } else if c.ready {
                        "ready, peer offline"
                    } else if c.confirmations == 0 {
                        "pending, funding unconfirmed"
                    } else {
                        "pending"
                    };
                    writeln!(
                        f,
                        "{}  peer {}  {} sat  out {} msat  in {} msat  {state} ({} conf)",
                        c.channel_id,
                        c.peer,
                        c.value_sat,
                        c.outbound_msat,
                        c.inbound_msat,
                        c.confirmations
                    )?;
                }
                Ok(())
            }
            WalletAnswer::ChannelOpening { user_channel_id } => writeln!(
                f,
                "channel opening (local id {user_channel_id}); it is usable after 6 \
                 confirmations: see `wallet channels`"
            ),
            WalletAnswer::ChannelClosing { channel_id } => {
                writeln!(f, "closing channel {channel_id}")
            }
            WalletAnswer::Invoice { invoice } => writeln!(f, "{invoice}"),
            WalletAnswer::Paid {
                payment_id,
                fee_msat,
            } => writeln!(f, "paid: payment {payment_id}, routing fee {fee_msat} msat"),
            WalletAnswer::ReceiveCheck { level, detail } => {
                let l = match level {
                    CheckLevel::Pass => "PASS",
                    CheckLevel::Warn => "WARN",
                    CheckLevel::Fail => "FAIL",
                };
                writeln!(f, "{l} {detail}")
            }
        }
    }
}

/// Held while `open-channel` checks the channels and starts the open.
static OPENING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Why a new channel open must wait, if it must: while a channel this node funds has no
/// confirmation yet.
///
/// ldk-node 0.7.1 builds a funding transaction with BDK's `build_tx` + `sign` and broadcasts
/// it without inserting it into the wallet (`Wallet::create_funding_transaction`); the
/// wallet learns that its coins are spent only when its chain source reports the
/// transaction (a mempool poll, every 2 s with bitcoind RPC, or a block). A second funding
/// transaction built before that picks the same coins: a double spend the chain refuses,
/// and the second channel never confirms. Its funding may also be built only after the peer
/// accepted, so "already broadcast" cannot be observed; one confirmation can.
pub fn open_refusal(channels: &[ChannelInfo]) -> Option<PayError> {
    let waiting = channels
        .iter()
        .find(|c| c.outbound && c.confirmations == 0)?;
    Some(PayError::Invalid {
        what: "open-channel",
        detail: format!(
            "channel {} (opened by this node) waits for its funding transaction to confirm; \
             opening another now could spend the same coins (ldk-node 0.7.1 does not count \
             an unconfirmed funding transaction as spent). Wait for one confirmation (see \
             `wallet channels`), then retry",
            hex(&waiting.channel_id)
        ),
    })
}

/// Runs `cmd` against `rail`. `reach` lists extra addresses (`ip:port`) where the node
/// should accept Lightning peers, checked by the receive check besides its listening address
/// (a relay passes its advertised IPs with the Lightning port).
pub async fn execute(
    rail: &LdkRail,
    cmd: &WalletCommand,
    reach: &[SocketAddr],
) -> Result<WalletAnswer, PayError> {
    Ok(match cmd {
        WalletCommand::Address => WalletAnswer::Address {
            address: rail.new_address()?,
        },
        WalletCommand::Balance => {
            let b = rail.node().list_balances();
            let ours = rail.balances()?;
            WalletAnswer::Balance {
                node_id: hex(&rail.node_id().0),
                onchain_spendable_sat: b.spendable_onchain_balance_sats,
                onchain_total_sat: b.total_onchain_balance_sats,
                onchain_reserve_sat: b.total_anchor_channels_reserve_sats,
                lightning_total_sat: b.total_lightning_balance_sats,
                lightning_outbound_msat: ours.lightning_outbound_msat,
                lightning_inbound_msat: ours.lightning_inbound_msat,
            }
        }
        WalletCommand::Channels => WalletAnswer::Channels {
            channels: rail.channels().iter().map(ChannelRow::from).collect(),
        },
        WalletCommand::OpenChannel { peer, sats } => {
            // Check and open under one lock, so two requests at once cannot both pass the
            // check (the new channel is listed as soon as open_channel returns).
            let _one_at_a_time = OPENING.lock().await;
            if let Some(e) = open_refusal(&rail.channels()) {
                return Err(e);
            }
            let id = rail.open_channel(peer.node, peer.addr, *sats, None).await?;
            WalletAnswer::ChannelOpening {
                user_channel_id: id.to_string(),
            }
        }
        WalletCommand::CloseChannel { channel_id } => {
            let c = rail
                .channels()
                .into_iter()
                .find(|c| c.channel_id == channel_id.0)
                .ok_or_else(|| PayError::Invalid {
                    what: "channel id",
                    detail: format!("no channel {}: see `wallet channels`", hex(&channel_id.0)),
                })?;
            rail.close_channel(c.counterparty, c.user_channel_id)?;
            WalletAnswer::ChannelClosing {
                channel_id: hex(&channel_id.0),
            }
        }
        WalletCommand::Invoice { msat, description } => {
            if description.len() > MAX_DESCRIPTION {
                return Err(PayError::Invalid {
                    what: "invoice description",
                    detail: format!("longer than {MAX_DESCRIPTION} bytes"),
                });
            }
            if *msat == 0 {
                return Err(PayError::Invalid {
                    what: "invoice amount",
                    detail: "must be at least 1 msat".into(),
                });
            }
            WalletAnswer::Invoice {
                invoice: rail.create_invoice(*msat, description, INVOICE_EXPIRY_SECS)?,
            }
        }
        WalletCommand::Pay { invoice } => {
            let sent = rail.pay_invoice(invoice).await?;
            WalletAnswer::Paid {
                payment_id: hex(&sent.id.0),
                fee_msat: sent.fee_msat,
            }
        }
        WalletCommand::ReceiveCheck => {
            let running = rail.node().status().is_running;
            let mut targets: Vec<SocketAddr> = rail.listening_address().into_iter().collect();
            // A wildcard listener is probed on loopback: the port is what matters here.
            for t in &mut targets {
                if t.ip().is_unspecified() {
                    t.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
            }
            for a in reach {
                if !targets.contains(a) {
                    targets.push(*a);
                }
            }
            let probes = tokio::task::spawn_blocking(move || {
                targets
                    .into_iter()
                    .map(|a| {
                        let r = TcpStream::connect_timeout(&a, PROBE_TIMEOUT)
                            .map(drop)
                            .map_err(|e| e.to_string());
                        (a, r)
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| super::join_err("receive check", e))?;
            let (level, detail) =
                judge_receive(running, rail.listening_address(), &probes, &rail.channels());
            WalletAnswer::ReceiveCheck { level, detail }
        }
    })
}

/// Runs `cmd` on a node started here from `cfg` (the daemon is not running; the store lock
/// of [`LdkRail::start`] refuses if it is), then stops the node. Syncs with the chain first,
/// so balances are current, and waits (bounded) after an open or close until the peer has
/// taken part, so stopping does not cut the negotiation short. Needs a multi-threaded tokio
/// runtime.
pub async fn run_standalone(
    cfg: &LdkConfig,
    data_dir: &std::path::Path,
    cmd: &WalletCommand,
    reach: &[SocketAddr],
) -> Result<WalletAnswer, PayError> {
    let rail = LdkRail::start(cfg, data_dir).await?;
    let result = async {
        rail.sync().await?;
        let mut events = rail.channel_events();
        let answer = execute(&rail, cmd, reach).await?;
        let waited = match cmd {
            WalletCommand::OpenChannel { .. } => Some("the peer to accept the channel"),
            WalletCommand::CloseChannel { .. } => Some("the peer to agree to the close"),
            _ => None,
        };
        if let Some(what) = waited {
            let done = async {
                loop {
                    match events.recv().await {
                        Ok(ChannelEvent::Pending { .. })
                            if matches!(cmd, WalletCommand::OpenChannel { .. }) =>
                        {
                            return true
                        }
                        Ok(ChannelEvent::Closed { .. })
                            if matches!(cmd, WalletCommand::CloseChannel { .. }) =>
                        {
                            return true
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return false,
                    }
                }
            };
            if !matches!(tokio::time::timeout(HANDOVER_TIMEOUT, done).await, Ok(true)) {
                return Err(PayError::Node {
                    context: "wallet",
                    detail: format!(
                        "started, but no sign of {what} within {HANDOVER_TIMEOUT:?}; run the \
                         relay or client so the node finishes it"
                    ),
                });
            }
        }
        Ok(answer)
    }
    .await;
    let stopped = rail.stop().await;
    let answer = result?;
    stopped?;
    Ok(answer)
}

/// Judges whether a node can receive: `running`, its configured listening address, the
/// outcome of TCP connections to where it should accept peers, and its channels.
pub fn judge_receive(
    running: bool,
    listen: Option<SocketAddr>,
    probes: &[(SocketAddr, Result<(), String>)],
    channels: &[ChannelInfo],
) -> (CheckLevel, String) {
    if !running {
        return (CheckLevel::Fail, "the Lightning node is not running".into());
    }
    if let Some((a, Err(e))) = probes.iter().find(|(_, r)| r.is_err()) {
        return (
            CheckLevel::Fail,
            format!(
                "the Lightning port does not accept connections at {a}: {e} (open it in the \
                 firewall; behind NAT without hairpinning this fails from inside even when \
                 it works from outside)"
            ),
        );
    }
    if listen.is_none() {
        return (
            CheckLevel::Warn,
            "no [lightning] listen address: clients cannot open channels to this node".into(),
        );
    }
    let ready: Vec<&ChannelInfo> = channels.iter().filter(|c| c.ready).collect();
    if channels.is_empty() {
        return (
            CheckLevel::Warn,
            "no channel yet: payments arrive once a client (or a node you ask) opens a \
             channel to this node"
                .into(),
        );
    }
    if ready.is_empty() {
        return (
            CheckLevel::Warn,
            format!(
                "{} channel(s) waiting for confirmations; none can carry payments yet",
                channels.len()
            ),
        );
    }
    let inbound: u64 = ready
        .iter()
        .fold(0u64, |s, c| s.saturating_add(c.inbound_msat));
    let usable = ready.iter().filter(|c| c.usable).count();
    if inbound == 0 {
        return (
            CheckLevel::Warn,
            format!(
                "{} ready channel(s) but no inbound capacity: everything is on this node's \
                 side; get inbound liquidity (see docs/operator.md)",
                ready.len()
            ),
        );
    }
    if usable == 0 {
        return (
            CheckLevel::Warn,
            format!(
                "{inbound} msat inbound on {} channel(s), but no channel peer is connected now",
                ready.len()
            ),
        );
    }
    (
        CheckLevel::Pass,
        format!(
            "can receive up to {inbound} msat over {} channel(s) ({usable} with the peer \
             connected)",
            ready.len()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "02eec7245d6b7d2ccb30380bfbe2a3648cd7a942653f5aa340edcea1f283686619";

    #[test]
    fn lines_round_trip() {
        let cmds = [
            WalletCommand::Address,
            WalletCommand::Balance,
            WalletCommand::Channels,
            WalletCommand::ReceiveCheck,
            WalletCommand::OpenChannel {
                peer: format!("{NODE}@127.0.0.1:9735").parse().unwrap(),
                sats: 100_000,
            },
            WalletCommand::CloseChannel {
                channel_id: ChannelIdHex([0xab; 32]),
            },
            WalletCommand::Invoice {
                msat: 5000,
                description: "top up my relay".into(),
            },
            WalletCommand::Pay {
                invoice: "lnbcrt50n1xyz".into(),
            },
        ];
        for c in cmds {
            assert_eq!(WalletCommand::parse_line(&c.to_line()).unwrap(), c);
        }
    }

    #[test]
    fn bad_lines_are_typed_errors() {
        for bad in [
            "",
            "reboot",
            "address now",
            "open-channel 02@1.2.3.4:1 5",
            &format!("open-channel {NODE}@host.invalid:1 5"),
            &format!("open-channel {NODE}@127.0.0.1:1 lots"),
            "close-channel zz",
            "invoice -5",
            "pay",
            "pay a b",
            &"x".repeat(MAX_LINE + 1),
        ] {
            assert!(
                matches!(
                    WalletCommand::parse_line(bad),
                    Err(PayError::Invalid { .. })
                ),
                "{bad:?}"
            );
        }
        assert!("nope".parse::<PeerAddr>().is_err());
        assert!(format!("{NODE}@").parse::<PeerAddr>().is_err());
    }

    #[test]
    fn answers_round_trip_as_toml() {
        let answers = [
            WalletAnswer::Balance {
                node_id: NODE.into(),
                onchain_spendable_sat: 1,
                onchain_total_sat: 2,
                onchain_reserve_sat: 3,
                lightning_total_sat: 4,
                lightning_outbound_msat: 5,
                lightning_inbound_msat: 6,
            },
            WalletAnswer::Channels {
                channels: vec![ChannelRow {
                    channel_id: "ab".into(),
                    peer: NODE.into(),
                    value_sat: 7,
                    outbound_msat: 8,
                    inbound_msat: 9,
                    ready: true,
                    usable: false,
                    confirmations: 6,
                }],
            },
            WalletAnswer::Channels { channels: vec![] },
            WalletAnswer::ReceiveCheck {
                level: CheckLevel::Warn,
                detail: "why".into(),
            },
        ];
        for a in answers {
            let text = toml::to_string(&a).unwrap();
            assert_eq!(toml::from_str::<WalletAnswer>(&text).unwrap(), a, "{text}");
            assert!(!a.to_string().is_empty());
        }
    }

    fn chan(ready: bool, usable: bool, inbound: u64) -> ChannelInfo {
        ChannelInfo {
            channel_id: [1; 32],
            user_channel_id: 1,
            counterparty: NodeId([2; 33]),
            value_sat: 100_000,
            outbound_msat: 0,
            inbound_msat: inbound,
            next_outbound_htlc_limit_msat: 0,
            ready,
            usable,
            outbound: true,
            confirmations: u32::from(ready) * 6,
        }
    }

    #[test]
    fn second_open_waits_for_a_confirmation() {
        assert!(open_refusal(&[]).is_none());
        let confirmed = chan(true, true, 0);
        assert!(open_refusal(std::slice::from_ref(&confirmed)).is_none());
        // A channel the peer opened does not spend this node's coins.
        let inbound = ChannelInfo {
            outbound: false,
            ..chan(false, false, 0)
        };
        assert!(open_refusal(&[confirmed.clone(), inbound]).is_none());
        // One confirmation is enough; none is not.
        let one = ChannelInfo {
            confirmations: 1,
            ..chan(false, false, 0)
        };
        assert!(open_refusal(&[one]).is_none());
        let e = open_refusal(&[confirmed, chan(false, false, 0)]).unwrap();
        let msg = e.to_string();
        assert!(matches!(e, PayError::Invalid { .. }), "{msg}");
        assert!(msg.contains("Wait for one confirmation"), "{msg}");
        assert!(msg.contains(&hex(&[1; 32])), "{msg}");
    }

    #[test]
    fn receive_check_distinguishes_each_case() {
        let l: SocketAddr = "127.0.0.1:9735".parse().unwrap();
        let ok = [(l, Ok(()))];
        let refused = [(l, Err("connection refused".to_string()))];
        let j = |running, listen, probes: &[_], ch: &[ChannelInfo]| {
            judge_receive(running, listen, probes, ch).0
        };
        let c = [chan(true, true, 5_000)];
        assert_eq!(j(false, Some(l), &ok, &c), CheckLevel::Fail);
        assert_eq!(j(true, Some(l), &refused, &c), CheckLevel::Fail);
        assert_eq!(j(true, None, &[], &c), CheckLevel::Warn);
        assert_eq!(j(true, Some(l), &ok, &[]), CheckLevel::Warn);
        assert_eq!(
            j(true, Some(l), &ok, &[chan(false, false, 5_000)]),
            CheckLevel::Warn
        );
        assert_eq!(
            j(true, Some(l), &ok, &[chan(true, true, 0)]),
            CheckLevel::Warn
        );
        assert_eq!(
            j(true, Some(l), &ok, &[chan(true, false, 5_000)]),
            CheckLevel::Warn
        );
        let (level, detail) = judge_receive(true, Some(l), &ok, &c);
        assert_eq!(level, CheckLevel::Pass);
        assert!(detail.contains("5000 msat"), "{detail}");
        let (_, why) = judge_receive(true, Some(l), &refused, &c);
        assert!(why.contains("hairpinning"), "{why}");
    }
}
