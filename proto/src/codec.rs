//! The codec every Shoal service uses: prost's, with smaller buffers.
//!
//! tonic's default gives every call — and every open stream, for as long as it is open — an 8 KiB
//! encode buffer and another to decode. A manager holds one assignment stream per node: at
//! 10,000 nodes the defaults alone are ≈160 MiB of mostly empty buffers. Buffers start at 1 KiB
//! here and grow with the message, so large messages cost the same and idle streams far less.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial encode and decode buffer per call or stream.
pub const BUFFER_SIZE: usize = 1024;
/// tonic's default: a stream yields to the transport after this many encoded bytes.
pub const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

/// [`ProstCodec`] with [`BUFFER_SIZE`] buffers.
#[derive(Debug, Clone)]
pub struct LeanCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec { _types: PhantomData }
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
