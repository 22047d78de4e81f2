//! RTT-based congestion control in the style of Tor's Vegas (docs/spec.md, "Flow and congestion control").
