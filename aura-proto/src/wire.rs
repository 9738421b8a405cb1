//! Bytes on the wire: the outer packet every datagram carries, and the inner frame that
//! travels inside the Noise transport state.
//!
//! Both are postcard with a strict decoder: decoding must consume every byte, and
//! re-encoding the result must give back exactly the input, so each message has one and
//! only one valid encoding (no overlong varints, no trailing bytes).

use serde::{Deserialize, Serialize};

use crate::keys::DeviceCert;

/// Version byte that starts every datagram. A datagram with another first byte is dropped
/// and counted as [`DropReason::WrongVersion`](crate::DropReason::WrongVersion).
pub const WIRE_VERSION: u8 = 1;

/// Largest Noise message snow accepts (payload plus the 16-byte tag).
pub const MAX_NOISE_MSG: usize = 65535;
/// Noise AEAD tag length.
pub const TAG_LEN: usize = 16;
/// Largest datagram a peer sends or accepts: a full Noise message plus packet header.
pub const MAX_DATAGRAM: usize = MAX_NOISE_MSG + 32;
/// Padded plaintext sizes. Every frame is padded up to the first bucket that fits, so the
/// size on the wire (bucket + 16-byte tag) reveals only the bucket. Buckets are whole
/// multiples of four 64-byte ChaCha blocks: the vector backends make keystream four blocks
/// at a time, and a ragged tail costs a full batch per block (measured: sealing a
/// 240-byte plaintext took as long as 1 KiB).
pub const PAD_BUCKETS: [usize; 5] = [256, 1024, 4096, 16384, MAX_NOISE_MSG - TAG_LEN];

/// Whether a ciphertext is exactly one padded bucket plus the tag.
pub fn is_bucket_ciphertext(len: usize) -> bool {
    len >= TAG_LEN && PAD_BUCKETS.contains(&(len - TAG_LEN))
}
/// Bytes of a frame's length prefix inside the padded plaintext.
const LEN_PREFIX: usize = 2;
/// Largest encoded inner frame.
pub const MAX_FRAME: usize = MAX_NOISE_MSG - TAG_LEN - LEN_PREFIX;
/// Largest application payload one `Send` may carry (frame header slack included).
pub const MAX_APP_PAYLOAD: usize = MAX_FRAME - 16;

/// Serde's default for `&[u8]` is a sequence of `u8`, written one element at a time; as
/// bytes it is one copy. Postcard encodes both the same way (length, then the bytes), so
/// this changes speed only, never the wire format.
fn ser_bytes<S: serde::Serializer>(v: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(v)
}

/// Why a handshake is being made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Purpose {
    /// Joiner to inviter, keyed by an invitation's one-time secret.
    Pairing,
    /// Between paired devices, keyed by their link secret.
    Link,
    /// A member device of one authority redeeming another's context invitation, keyed by
    /// the invitation's one-time secret.
    ContextJoin,
    /// Between member devices of a relational context, keyed by the context secret of
    /// the current epoch; the context travels in the (encrypted) first payload.
    Context,
}

/// The outer packet (after the version byte).
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Packet<'a> {
    /// First handshake message (`-> e, es, s, ss`).
    HandshakeInit {
        /// Sender's session index (the responder addresses replies to it).
        sender: u32,
        /// Pairing or link; bound into the prologue.
        purpose: Purpose,
        /// The Noise message.
        #[serde(borrow, serialize_with = "ser_bytes")]
        noise: &'a [u8],
    },
    /// Second handshake message (`<- e, ee, se, psk`).
    HandshakeResp {
        /// Responder's session index.
        sender: u32,
        /// The initiator's session index this answers.
        receiver: u32,
        /// The Noise message.
        #[serde(borrow, serialize_with = "ser_bytes")]
        noise: &'a [u8],
    },
    /// A transport frame sealed with an explicit nonce (datagrams may be lost or reordered).
    Data {
        /// The receiving side's session index.
        receiver: u32,
        /// Noise transport nonce; also the replay-window position.
        nonce: u64,
        /// Padded, encrypted frame.
        #[serde(borrow, serialize_with = "ser_bytes")]
        ciphertext: &'a [u8],
    },
}

/// Payload of the first handshake message (encrypted by Noise).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitPayload {
    /// Highest protocol version the initiator speaks.
    pub version: u16,
    /// Lowest version it accepts.
    pub min_version: u16,
    /// Capability bits (none defined yet; unknown bits are ignored).
    pub caps: u64,
    /// The initiator's public keys.
    pub cert: DeviceCert,
    /// For pairing and context joins: which invitation this handshake redeems.
    pub invite: Option<[u8; 32]>,
    /// For context channels: the context and the epoch whose secret keys the PSK.
    pub context: Option<(crate::journal::ContextId, u64)>,
}

/// Payload of the second handshake message (encrypted and PSK-authenticated).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RespPayload {
    /// The responder accepts; `version` is the negotiated one.
    Accept {
        /// Negotiated version: the smaller of both maxima.
        version: u16,
        /// Responder capability bits.
        caps: u64,
        /// Responder's public keys.
        cert: DeviceCert,
    },
    /// No common version. Both ranges are given so the user can see who must upgrade.
    Reject {
        /// Responder's lowest accepted version.
        min_version: u16,
        /// Responder's highest version.
        version: u16,
    },
}

/// Frames carried inside an established channel.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame<'a> {
    /// First frame of the initiator: proves it completed the handshake (and, when pairing,
    /// asks the inviter to record the pairing).
    Confirm,
    /// The inviter has durably recorded the pairing.
    PairAck,
    /// Keeps the channel alive; carries nothing.
    Keepalive,
    /// Round-trip probe.
    Ping {
        /// Echoed in the matching `Pong`.
        id: u64,
    },
    /// Answer to `Ping`.
    Pong {
        /// The `Ping`'s id.
        id: u64,
    },
    /// Application data.
    App {
        /// Opaque to the channel.
        #[serde(borrow, serialize_with = "ser_bytes")]
        data: &'a [u8],
    },
    /// The sender is tearing the channel down.
    Close,
    /// A sub-protocol message (authority key generation, signing, fact push).
    Proto {
        /// Encoded `AuthMsg`.
        #[serde(borrow, serialize_with = "ser_bytes")]
        data: &'a [u8],
    },
    /// Flow accounting inside a context (sealed receipt batches and their acks): costs
    /// no flow budget, like channel upkeep.
    Accounting {
        /// Encoded accounting message.
        #[serde(borrow, serialize_with = "ser_bytes")]
        data: &'a [u8],
    },
}

/// Why a byte string failed to decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Ran out of bytes.
    Truncated,
    /// Not a valid encoding (bad tag, overlong varint, trailing bytes, bad padding…).
    Malformed,
    /// Larger than the hard limit.
    Oversized,
    /// First byte is not [`WIRE_VERSION`].
    WrongVersion,
}

/// Decodes `bytes` as exactly one `T`, rejecting trailing bytes and non-canonical encodings.
pub fn strict_decode<'a, T>(bytes: &'a [u8], scratch: &mut Vec<u8>) -> Result<T, DecodeError>
where
    T: Deserialize<'a> + Serialize,
{
    let (v, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|e| match e {
        postcard::Error::DeserializeUnexpectedEnd => DecodeError::Truncated,
        _ => DecodeError::Malformed,
    })?;
    if !rest.is_empty() {
        return Err(DecodeError::Malformed);
    }
    scratch.clear();
    let re = postcard::to_extend(&v, core::mem::take(scratch)).map_err(|_| DecodeError::Malformed)?;
    let same = re.as_slice() == bytes;
    *scratch = re;
    if same {
        Ok(v)
    } else {
        Err(DecodeError::Malformed)
    }
}

/// Encodes a value with postcard, appending to `out`.
pub fn encode_into<T: Serialize>(v: &T, out: Vec<u8>) -> Vec<u8> {
    postcard::to_extend(v, out).expect("postcard encoding into a Vec cannot fail")
}

/// Encodes a value with postcard.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    encode_into(v, Vec::new())
}

/// Starts a `Packet::Data` datagram whose `len`-byte ciphertext the caller appends right
/// after: the exact bytes `encode_packet` would produce before the ciphertext (version,
/// variant index, then postcard's LEB128 varints). Lets a channel seal straight into the
/// datagram instead of sealing into a buffer and copying it into a second allocation.
pub fn data_header(out: &mut Vec<u8>, receiver: u32, nonce: u64, len: usize) {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    out.push(WIRE_VERSION);
    varint(out, 2); // `Packet::Data` is the third variant
    varint(out, u64::from(receiver));
    varint(out, nonce);
    varint(out, len as u64);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Length of the canonical postcard encoding of a `Packet::Data` (0 for other variants).
fn canonical_data_len(p: &Packet<'_>) -> usize {
    match p {
        Packet::Data {
            receiver,
            nonce,
            ciphertext,
        } => {
            varint_len(2)
                + varint_len(u64::from(*receiver))
                + varint_len(*nonce)
                + varint_len(ciphertext.len() as u64)
                + ciphertext.len()
        }
        _ => 0,
    }
}

/// Builds a datagram: version byte, then the packet.
pub fn encode_packet(p: &Packet<'_>) -> Vec<u8> {
    // Sized up front: growing from one byte would reallocate half a dozen times per
    // datagram (measured at ~5% of the simulator's null workload).
    let body = match p {
        Packet::HandshakeInit { noise, .. } | Packet::HandshakeResp { noise, .. } => noise.len(),
        Packet::Data { ciphertext, .. } => ciphertext.len(),
    };
    let mut out = Vec::with_capacity(body + 32);
    out.push(WIRE_VERSION);
    encode_into(p, out)
}

/// Parses a datagram strictly.
pub fn decode_packet<'a>(bytes: &'a [u8], scratch: &mut Vec<u8>) -> Result<Packet<'a>, DecodeError> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(DecodeError::Oversized);
    }
    match bytes.first() {
        None => Err(DecodeError::Truncated),
        Some(&WIRE_VERSION) => {
            let body = &bytes[1..];
            // Data packets (all traffic after the handshake) get a cheaper strictness
            // check with the same meaning: postcard's encoding of a `Data` is a sequence of
            // LEB128 varints and raw bytes, each with exactly one minimal form, and a
            // non-minimal one is longer, so the input is canonical exactly when its length
            // is the canonical length. Everything else takes the re-encode comparison.
            let p: Packet<'a> = match postcard::take_from_bytes::<Packet<'a>>(body) {
                Ok((p @ Packet::Data { .. }, [])) => {
                    if canonical_data_len(&p) != body.len() {
                        return Err(DecodeError::Malformed);
                    }
                    p
                }
                _ => strict_decode(body, scratch)?,
            };
            let inner = match &p {
                Packet::HandshakeInit { noise, .. } | Packet::HandshakeResp { noise, .. } => noise.len(),
                Packet::Data { ciphertext, .. } => ciphertext.len(),
            };
            if inner > MAX_NOISE_MSG {
                return Err(DecodeError::Oversized);
            }
            Ok(p)
        }
        Some(_) => Err(DecodeError::WrongVersion),
    }
}

/// Size of the padded plaintext for an encoded frame of `len` bytes, or `None` if too big.
pub fn padded_len(len: usize) -> Option<usize> {
    PAD_BUCKETS.iter().copied().find(|cap| len + LEN_PREFIX <= *cap)
}

/// Encodes `frame` into a zero-padded plaintext ready for sealing.
pub fn pad_frame(frame: &Frame<'_>, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    out.clear();
    out.extend_from_slice(&[0, 0]);
    let mut v = encode_into(frame, core::mem::take(out));
    let len = v.len() - LEN_PREFIX;
    let total = padded_len(len).ok_or(DecodeError::Oversized)?;
    v[..2].copy_from_slice(&(len as u16).to_be_bytes());
    v.resize(total, 0);
    *out = v;
    Ok(())
}

/// Strips padding from a decrypted plaintext and decodes the frame strictly.
/// Padding must be all zeros and the plaintext must be exactly one bucket long.
pub fn unpad_frame<'a>(plain: &'a [u8], scratch: &mut Vec<u8>) -> Result<Frame<'a>, DecodeError> {
    if plain.len() < LEN_PREFIX {
        return Err(DecodeError::Truncated);
    }
    let len = u16::from_be_bytes([plain[0], plain[1]]) as usize;
    if LEN_PREFIX + len > plain.len() {
        return Err(DecodeError::Truncated);
    }
    if padded_len(len) != Some(plain.len()) {
        return Err(DecodeError::Malformed);
    }
    let (body, pad) = plain[LEN_PREFIX..].split_at(len);
    // OR-fold rather than `any`: no early exit, so it vectorises (padding is most of a
    // small frame) and takes the same time whatever the bytes are.
    if pad.iter().fold(0u8, |acc, b| acc | b) != 0 {
        return Err(DecodeError::Malformed);
    }
    strict_decode(body, scratch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_roundtrip_and_strictness() {
        let mut s = Vec::new();
        let p = Packet::Data {
            receiver: 7,
            nonce: 300,
            ciphertext: &[1, 2, 3],
        };
        let b = encode_packet(&p);
        assert_eq!(decode_packet(&b, &mut s), Ok(p));
        // trailing byte
        let mut t = b.clone();
        t.push(0);
        assert_eq!(decode_packet(&t, &mut s), Err(DecodeError::Malformed));
        // truncated
        assert_eq!(decode_packet(&b[..b.len() - 1], &mut s), Err(DecodeError::Truncated));
        assert_eq!(decode_packet(&[], &mut s), Err(DecodeError::Truncated));
        // wrong version
        let mut w = b.clone();
        w[0] = 9;
        assert_eq!(decode_packet(&w, &mut s), Err(DecodeError::WrongVersion));
        // unknown variant tag
        assert_eq!(decode_packet(&[WIRE_VERSION, 77], &mut s), Err(DecodeError::Malformed));
        // overlong varint for receiver (7 encoded as 0x87 0x00)
        let overlong = [WIRE_VERSION, 2, 0x87, 0x00, 0xac, 0x02, 3, 1, 2, 3];
        assert_eq!(decode_packet(&overlong, &mut s), Err(DecodeError::Malformed));
        // oversized
        let big = vec![WIRE_VERSION; MAX_DATAGRAM + 1];
        assert_eq!(decode_packet(&big, &mut s), Err(DecodeError::Oversized));
    }

    /// The fast strictness check for data packets agrees with the general one on
    /// arbitrary bytes and on valid packets with overlong varints spliced in.
    #[test]
    fn data_fast_path_agrees_with_reencoding() {
        fn general(bytes: &[u8]) -> Result<Vec<u8>, DecodeError> {
            let mut s = Vec::new();
            match bytes.split_first() {
                Some((&WIRE_VERSION, body)) => strict_decode::<Packet<'_>>(body, &mut s).map(|p| encode_packet(&p)),
                _ => Err(DecodeError::WrongVersion),
            }
        }
        fn fast(bytes: &[u8]) -> Result<Vec<u8>, DecodeError> {
            decode_packet(bytes, &mut Vec::new()).map(|p| encode_packet(&p))
        }
        fn prop(receiver: u32, nonce: u64, ct: Vec<u8>, junk: Vec<u8>, at: u8) -> bool {
            let good = encode_packet(&Packet::Data {
                receiver,
                nonce,
                ciphertext: &ct,
            });
            // Overlong forms: a varint byte gets a continuation bit and a zero group.
            let mut overlong = good.clone();
            let i = 2 + (at as usize) % 3;
            if i < overlong.len() && overlong[i] < 0x80 {
                overlong[i] |= 0x80;
                overlong.insert(i + 1, 0);
            }
            let mut raw = vec![WIRE_VERSION];
            raw.extend_from_slice(&junk);
            [good, overlong, raw, junk].iter().all(|b| {
                let (g, f) = (general(b), fast(b));
                g.is_ok() == f.is_ok() && (g.is_err() || g == f)
            })
        }
        quickcheck::QuickCheck::new()
            .tests(2000)
            .quickcheck(prop as fn(u32, u64, Vec<u8>, Vec<u8>, u8) -> bool);
        // One overlong receiver by hand: 5 encoded as 0x85 0x00.
        let bad = [WIRE_VERSION, 2, 0x85, 0x00, 1, 1, 0xaa];
        assert_eq!(decode_packet(&bad, &mut Vec::new()), Err(DecodeError::Malformed));
    }

    #[test]
    fn data_header_matches_postcard() {
        for (receiver, nonce, len) in [
            (0u32, 0u64, 0usize),
            (127, 127, 127),
            (128, 128, 272),
            (u32::MAX, u64::MAX, 65_535),
            (300, 1 << 35, 1040),
        ] {
            let ct = vec![0x5a; len];
            let mut manual = Vec::new();
            data_header(&mut manual, receiver, nonce, len);
            manual.extend_from_slice(&ct);
            let p = Packet::Data {
                receiver,
                nonce,
                ciphertext: &ct,
            };
            assert_eq!(manual, encode_packet(&p), "{receiver} {nonce} {len}");
        }
    }

    #[test]
    fn padding_hits_buckets_and_is_strict() {
        let mut s = Vec::new();
        let mut out = Vec::new();
        for (n, bucket) in [
            (0usize, 256usize),
            (200, 256),
            (300, 1024),
            (2000, 4096),
            (10_000, 16384),
            (40_000, 65519),
        ] {
            let data = vec![0xaa; n];
            pad_frame(&Frame::App { data: &data }, &mut out).unwrap();
            assert_eq!(out.len(), bucket, "payload {n}");
            assert!(is_bucket_ciphertext(out.len() + TAG_LEN));
            assert_eq!(unpad_frame(&out, &mut s), Ok(Frame::App { data: &data }));
        }
        let huge = vec![0; MAX_FRAME];
        assert_eq!(
            pad_frame(&Frame::App { data: &huge }, &mut out),
            Err(DecodeError::Oversized)
        );
        let ok = vec![0; MAX_APP_PAYLOAD];
        pad_frame(&Frame::App { data: &ok }, &mut out).unwrap();
        // non-zero padding is rejected
        pad_frame(&Frame::Keepalive, &mut out).unwrap();
        let last = out.len() - 1;
        out[last] = 1;
        assert_eq!(unpad_frame(&out, &mut s), Err(DecodeError::Malformed));
        // a plaintext that is not a bucket size is rejected
        assert_eq!(unpad_frame(&[0, 1, 2, 0, 0], &mut s), Err(DecodeError::Malformed));
        assert_eq!(unpad_frame(&[0, 9, 2], &mut s), Err(DecodeError::Truncated));
    }
}
