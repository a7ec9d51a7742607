//! Frames on a QUIC stream: read one `AgentFrame` (length-prefixed,
//! through a `FrameReader`), send one `ServerFrame`.

use ferry_protocol::frames::{length_prefixed, AgentFrame, FrameReader, ServerFrame};

pub(super) async fn read_frame(
    recv: &mut quinn::RecvStream,
    reader: &mut FrameReader,
) -> Result<Option<AgentFrame>, String> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(bytes) = reader.next_frame().map_err(|e| e.to_string())? {
            return AgentFrame::decode(&bytes)
                .map(Some)
                .map_err(|e| e.to_string());
        }
        match recv.read(&mut buf).await {
            Ok(Some(n)) => reader.push(&buf[..n]),
            Ok(None) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        }
    }
}

pub(super) async fn send(send: &mut quinn::SendStream, frame: &ServerFrame) -> Result<(), String> {
    send.write_all(&length_prefixed(&frame.encode()))
        .await
        .map_err(|e| e.to_string())
}
