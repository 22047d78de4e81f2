//! Opens the TUN interface (tun-rs), gives it its address and MTU, brings it up, and points
//! the configured routes at it.
//!
//! Needs CAP_NET_ADMIN and `/dev/net/tun` (mode 0600 on Debian: root or a capability).
//! Routes are set with iproute2's `ip route replace … dev NAME` (present wherever a TUN
//! client is run; a netlink crate would add a dependency for three calls). Routes on the
//! interface vanish with it when the client exits; for a fail-closed setup across restarts,
//! create the interface persistently first (`ip tuntap add NAME mode tun`) and add the
//! routes to it: the client attaches to the existing interface, and while no client reads
//! it the kernel drops what is routed there.

use std::io;
use std::process::Command;

use super::fakeip::Ipv4Net;
use super::settings::TunSettings;
use super::TunError;

/// An open TUN device.
pub type Device = tun_rs::AsyncDevice;

/// Opens and configures the interface named in `s`.
pub fn open(s: &TunSettings) -> Result<Device, TunError> {
    let dev = tun_rs::DeviceBuilder::new()
        .name(&s.name)
        .ipv4(s.address.addr, s.address.prefix, None)
        .mtu(s.mtu)
        .build_async()
        .map_err(|source| TunError::Open {
            name: s.name.clone(),
            source,
        })?;
    for r in &s.routes {
        add_route(&s.name, r)?;
    }
    Ok(dev)
}

fn add_route(dev: &str, net: &Ipv4Net) -> Result<(), TunError> {
    let err = |detail: String| TunError::Route {
        route: net.to_string(),
        detail,
    };
    let out = Command::new("ip")
        .args(["-4", "route", "replace", &net.to_string(), "dev", dev])
        .output()
        .map_err(|e: io::Error| err(format!("cannot run `ip`: {e}")))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(())
}
