//! Frames over quinn streams, the agent's side.

use super::FleetError;
use ferry_protocol::frames::{length_prefixed, AgentFrame, FrameReader, ServerFrame};

pub(crate) async fn send_frame(
    s: &mut quinn::SendStream,
    frame: &AgentFrame,
) -> Result<(), FleetError> {
    s.write_all(&length_prefixed(&frame.encode()))
        .await
        .map_err(|e| FleetError::Protocol(e.to_string()))
}

pub(crate) async fn read_server_frame(
    r: &mut quinn::RecvStream,
    reader: &mut FrameReader,
) -> Result<Option<ServerFrame>, FleetError> {
    loop {
        if let Some(bytes) = reader
            .next_frame()
            .map_err(|e| FleetError::Protocol(e.to_string()))?
        {
            return ServerFrame::decode(&bytes)
                .map(Some)
                .map_err(|e| FleetError::Protocol(e.to_string()));
        }
        // quinn's own buffers, not a fresh zeroed one per frame.
        match r.read_chunk(256 * 1024, true).await {
            Ok(Some(chunk)) => reader.push(&chunk.bytes),
            Ok(None) => return Ok(None),
            Err(e) => return Err(FleetError::Protocol(e.to_string())),
        }
    }
}
