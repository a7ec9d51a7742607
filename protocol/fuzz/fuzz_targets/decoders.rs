//! Every decoder that reads bytes from a file or a peer, fed arbitrary input.
//! None may panic, hang, or allocate without bound.
#![no_main]

use ferry_protocol::bundle;
use ferry_protocol::frames::{AgentFrame, ServerFrame};
use ferry_protocol::manifest::Manifest;
use ferry_protocol::trust::SignedTrustRoot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = bundle::read_header(&mut &data[..]) {
        let _ = header.peek_manifest();
    }
    if let Ok(root) = SignedTrustRoot::from_bytes(data) {
        let _ = root.open(1_800_000_000);
    }
    let _ = AgentFrame::decode(data);
    let _ = ServerFrame::decode(data);
    let _ = Manifest::decode(data);
});
