//! `hello`: the protocol and version handshake.

use outboxd::protocol::{Hello, OPS, PROTOCOL_VERSION};

pub fn hello() -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        server: "outboxd".into(),
        version: outboxd::VERSION.into(),
        ops: OPS.iter().map(|op| op.to_string()).collect(),
    }
}
