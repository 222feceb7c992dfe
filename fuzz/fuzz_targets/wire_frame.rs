//! The node's request-response wire: a length-prefixed frame read from a
//! peer (in reads of a size the input picks), then the sync or blob message
//! inside it. The frame is exactly its announced body or an error, however
//! the bytes are cut; a frame written back reads the same; every message
//! that decodes encodes to the frame's bytes.
#![no_main]

use futures::executor::block_on;
use futures::io::{AllowStdIo, Cursor};
use gradchain_fuzz::{canonical, Pieces};
use libfuzzer_sys::fuzz_target;
use libp2p::request_response::Codec as _;
use libp2p::StreamProtocol;
use node::net::wire::{
    BlobRequest, BlobResponse, FrameCodec, SyncRequest, SyncResponse, BLOB_PROTOCOL,
    MAX_BLOB_FRAME, MAX_SYNC_FRAME, SYNC_PROTOCOL,
};

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let (name, max) = if control & 1 == 0 {
        (SYNC_PROTOCOL, MAX_SYNC_FRAME)
    } else {
        (BLOB_PROTOCOL, MAX_BLOB_FRAME)
    };
    let step = usize::from(control >> 1).max(1);
    let protocol = StreamProtocol::new(name);
    let mut codec = FrameCodec::new(max);

    let whole = block_on(codec.read_request(&protocol, &mut Cursor::new(stream)));
    let mut pieces = AllowStdIo::new(Pieces::new(stream, step));
    let pieced = block_on(codec.read_request(&protocol, &mut pieces));
    assert_eq!(
        whole.as_ref().map_err(|err| err.kind()),
        pieced.as_ref().map_err(|err| err.kind())
    );
    let Ok(frame) = whole else {
        return;
    };
    let announced = stream
        .get(..4)
        .map(|len| u32::from_le_bytes(len.try_into().unwrap()));
    assert_eq!(announced, u32::try_from(frame.len()).ok());
    assert_eq!(stream.get(4..4 + frame.len()), Some(&frame[..]));

    let mut written = Cursor::new(Vec::new());
    block_on(codec.write_response(&protocol, &mut written, frame.clone())).unwrap();
    assert_eq!(written.into_inner(), &stream[..4 + frame.len()]);

    if control & 1 == 0 {
        canonical::<SyncRequest>(&frame, max);
        canonical::<SyncResponse>(&frame, max);
    } else {
        canonical::<BlobRequest>(&frame, max);
        canonical::<BlobResponse>(&frame, max);
    }
});
