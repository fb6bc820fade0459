//! The host<->agent protocol from a peer that lies (a shim toward the agent, a microVM guest's
//! agent toward the shim, a client toward the shim): a byte stream cut into frames and decoded
//! as the agent's requests, the shim's requests and responses. Invariants: no panic; every read
//! consumes input, so a stream always ends; a malformed frame leaves the stream usable exactly
//! when the protocol says it does; whatever decodes re-encodes to a frame that decodes to the
//! same value.
#![no_main]

use guest_agent::protocol::{decode, encode, read_payload, AgentRequest, Frame, FrameError, Response, ShimRequest};
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;

fn roundtrip<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(frame: &Frame<T>) {
    let Ok(bytes) = encode(frame) else { return };
    let mut cursor = Cursor::new(bytes);
    let payload = read_payload(&mut cursor).expect("an encoded frame reads back");
    let again: Frame<T> = decode(&payload).expect("an encoded frame decodes");
    assert_eq!(&again, frame);
}

fuzz_target!(|data: &[u8]| {
    let mut cursor = Cursor::new(data);
    loop {
        let before = cursor.position();
        match read_payload(&mut cursor) {
            Ok(payload) => {
                if let Ok(frame) = decode::<AgentRequest>(&payload) {
                    roundtrip(&frame);
                }
                if let Ok(frame) = decode::<ShimRequest>(&payload) {
                    roundtrip(&frame);
                }
                if let Ok(frame) = decode::<Response>(&payload) {
                    roundtrip(&frame);
                }
            }
            Err(e) if e.recoverable() => {}
            Err(FrameError::Closed) => break,
            Err(_) => break,
        }
        assert!(cursor.position() > before, "a read that consumes nothing would loop forever");
    }
});
