//! Blob manifests and chunks as peers serve them: decode, then encode gives
//! the same bytes; a manifest's `check` never panics and passes only when
//! its length fits its kind and its chunk list its length.
#![no_main]

use gradchain_fuzz::canonical;
use libfuzzer_sys::fuzz_target;
use node::net::wire::MAX_BLOB_FRAME;
use protocol::blob::{chunk_count, BlobChunk, BlobManifest, BlobName};

fuzz_target!(|data: &[u8]| {
    if let Some(manifest) = canonical::<BlobManifest>(data, MAX_BLOB_FRAME) {
        let fits = manifest.total <= manifest.kind.max_bytes()
            && u64::try_from(manifest.chunks.len()).ok() == Some(chunk_count(manifest.total));
        assert_eq!(manifest.check().is_ok(), fits);
    }
    canonical::<BlobChunk>(data, MAX_BLOB_FRAME);
    canonical::<BlobName>(data, MAX_BLOB_FRAME);
});
