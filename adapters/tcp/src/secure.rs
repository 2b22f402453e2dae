//! An authenticated, encrypted channel over a byte stream.
//!
//! Noise NN (X25519, ChaCha20-Poly1305, BLAKE2s, from `snow`) agrees fresh keys; then each
//! side proves, inside the encrypted channel, that it holds its ed25519 key by signing the
//! Noise handshake hash with the chain id and its side (initiator or responder). The hash
//! covers both sides' fresh ephemeral keys, so a signature is worth nothing in any other
//! session (no replay), and the side is signed, so a proof reflected back to its sender does
//! not pass as the other side's.
//!
//! The listener proves its key first, as a TLS 1.3 server sends its certificate before the
//! client does: the responder sends its proof in the same flight as its Noise message (no
//! extra round trip), and the initiator sends its own only once that proof is of exactly the
//! key it dialled. A listener that holds another key (someone who took over the address, or
//! a misconfigured peer) learns nothing of who dialled it; the responder's key is no secret,
//! it is in every network config. The responder then admits the initiator's key for the role
//! it asked before it reads a message.
//!
//! ```text
//! initiator                               responder
//!   Noise -> e                      ->
//!                                   <-    Noise <- e, ee  +  [proof: responder, Server]
//!   (checks: the key it dialled)
//!   [proof: initiator, role]        ->
//!                                         (checks the proof, admits the key for the role)
//! ```
//!
//! On the wire every Noise message is a 2-byte big-endian length and the message.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pbft_core::{ChainId, Digest, Hasher, Keypair, PublicKey, Signature};
use pbft_host::driver::Refusal;
use serde::{Deserialize, Serialize};
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const NOISE: &str = "Noise_NN_25519_ChaChaPoly_BLAKE2s";
/// Largest Noise message.
const MAX_MESSAGE: usize = 65_535;
/// ChaCha20-Poly1305 tag.
const TAG: usize = 16;
/// Most plaintext in one Noise message.
pub const MAX_PLAIN: usize = MAX_MESSAGE - TAG;
/// Largest handshake message: the two Noise messages and the proofs are far smaller, and a
/// connection that has proven nothing gets no more buffer than this.
const MAX_HANDSHAKE_MESSAGE: usize = 1024;
/// A handshake that takes longer is dropped: a peer cannot hold a connection half-open.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a connecting side asks to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// A validator.
    Peer,
    /// A client (or a gateway).
    Client,
    /// The accepting node (only ever in the responder's proof).
    Server,
}

/// A side's proof that it holds `key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// The role the side claims.
    pub role: Role,
    /// Its key.
    pub key: PublicKey,
    /// The port a validator listens on (at the address it connects from): where the
    /// accepting node reaches a validator added after genesis. Inside the encrypted channel,
    /// so no one but the prover sets it.
    pub listens: Option<u16>,
    /// Its signature over [`proof_digest`].
    pub signature: Signature,
}

/// What a side signs: the chain, the session's handshake hash, its side and role.
pub fn proof_digest(chain: &ChainId, handshake: &[u8], initiator: bool, role: Role) -> Digest {
    Hasher::new(b"pbft/v1/tcp-auth")
        .digest(&chain.0)
        .bytes(handshake)
        .u64(u64::from(initiator))
        .u64(role as u64)
        .finish()
}

/// Why a connection was refused; the label names it in the metrics.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The stream failed or closed.
    #[error("handshake: {0}")]
    Io(std::io::Error),
    /// Noise refused a message (not a handshake, or tampered with).
    #[error("handshake: {0}")]
    Noise(snow::Error),
    /// The handshake took longer than [`HANDSHAKE_TIMEOUT`].
    #[error("handshake timed out")]
    Timeout,
    /// The proof does not decode or its signature does not verify.
    #[error("key proof does not verify")]
    BadProof,
    /// The key is not the one dialled, or asked for the accepting node's role.
    #[error("key not admitted")]
    UnknownKey,
    /// The node's admission rule refused the key for the role it asked.
    #[error("refused: {0}")]
    Refused(Refusal),
}

impl HandshakeError {
    /// The reason label for the metrics.
    pub fn label(&self) -> &'static str {
        match self {
            HandshakeError::Io(_) => "handshake_io",
            HandshakeError::Noise(_) => "handshake_failed",
            HandshakeError::Timeout => "handshake_timeout",
            HandshakeError::BadProof => "bad_handshake_proof",
            HandshakeError::UnknownKey => "unknown_key",
            HandshakeError::Refused(refusal) => refusal.reason(),
        }
    }
}

impl From<std::io::Error> for HandshakeError {
    fn from(err: std::io::Error) -> Self {
        HandshakeError::Io(err)
    }
}

impl From<snow::Error> for HandshakeError {
    fn from(err: snow::Error) -> Self {
        HandshakeError::Noise(err)
    }
}

/// The session keys of an established channel, shared by its reading and writing halves.
#[derive(Clone)]
pub struct Channel {
    state: Arc<Mutex<snow::TransportState>>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Channel")
    }
}

impl Channel {
    fn lock(&self) -> std::sync::MutexGuard<'_, snow::TransportState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Encrypts `plain` (any length) into Noise messages and writes them.
    pub async fn write<W: AsyncWrite + Unpin>(
        &self,
        stream: &mut W,
        plain: &[u8],
    ) -> std::io::Result<()> {
        let mut wire = Vec::with_capacity(plain.len() + (plain.len() / MAX_PLAIN + 1) * 18);
        self.seal(plain, &mut wire)?;
        stream.write_all(&wire).await
    }

    /// Encrypts `plain` (any length) into Noise messages appended to `wire`, each with its
    /// length prefix. Fails only if the session's nonces are exhausted (after 2^64 messages).
    fn seal(&self, plain: &[u8], wire: &mut Vec<u8>) -> std::io::Result<()> {
        for chunk in plain.chunks(MAX_PLAIN) {
            let start = wire.len();
            wire.resize(start + 2 + chunk.len() + TAG, 0);
            let len = self
                .lock()
                .write_message(chunk, &mut wire[start + 2..])
                .map_err(std::io::Error::other)?;
            wire[start..start + 2].copy_from_slice(&(len as u16).to_be_bytes());
            wire.truncate(start + 2 + len);
        }
        Ok(())
    }

    /// Reads and decrypts one Noise message; `Ok(None)` at a clean end of stream.
    pub async fn read<R: AsyncRead + Unpin>(
        &self,
        stream: &mut R,
    ) -> std::io::Result<Option<Vec<u8>>> {
        self.read_within(stream, MAX_MESSAGE).await
    }

    /// [`Channel::read`] of a message of at most `max` bytes.
    async fn read_within<R: AsyncRead + Unpin>(
        &self,
        stream: &mut R,
        max: usize,
    ) -> std::io::Result<Option<Vec<u8>>> {
        let Some(message) = read_message(stream, max).await? else {
            return Ok(None);
        };
        let mut plain = vec![0; message.len()];
        let len = self
            .lock()
            .read_message(&message, &mut plain)
            .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))?;
        plain.truncate(len);
        Ok(Some(plain))
    }
}

async fn read_message<R: AsyncRead + Unpin>(
    stream: &mut R,
    max: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut prefix = [0u8; 2];
    match stream.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let len = usize::from(u16::from_be_bytes(prefix));
    if len > max {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    let mut message = vec![0; len];
    stream.read_exact(&mut message).await?;
    Ok(Some(message))
}

async fn write_message<W: AsyncWrite + Unpin>(
    stream: &mut W,
    message: &[u8],
) -> std::io::Result<()> {
    stream.write_all(&framed(message)).await
}

/// `message` with its 2-byte length prefix (handshake messages are far below 64 KiB).
fn framed(message: &[u8]) -> Vec<u8> {
    let mut wire = Vec::with_capacity(2 + message.len());
    wire.extend_from_slice(&(message.len() as u16).to_be_bytes());
    wire.extend_from_slice(message);
    wire
}

async fn expect_message<R: AsyncRead + Unpin>(stream: &mut R) -> Result<Vec<u8>, HandshakeError> {
    read_message(stream, MAX_HANDSHAKE_MESSAGE)
        .await?
        .ok_or_else(hung_up)
}

/// The other side closed the stream mid-handshake: an I/O failure, not a bad proof (a
/// dialler that refuses the listener's key hangs up just so).
fn hung_up() -> HandshakeError {
    HandshakeError::Io(std::io::ErrorKind::UnexpectedEof.into())
}

fn sign_proof(
    chain: &ChainId,
    keypair: &Keypair,
    handshake: &[u8],
    initiator: bool,
    (role, listens): (Role, Option<u16>),
) -> Vec<u8> {
    let proof = Proof {
        role,
        key: keypair.public_key(),
        listens,
        signature: keypair.sign(&proof_digest(chain, handshake, initiator, role)),
    };
    postcard::to_allocvec(&proof).expect("serialising to a Vec cannot fail")
}

fn check_proof(
    chain: &ChainId,
    bytes: &[u8],
    handshake: &[u8],
    initiator: bool,
) -> Result<Proof, HandshakeError> {
    let proof: Proof = postcard::from_bytes(bytes).map_err(|_| HandshakeError::BadProof)?;
    let digest = proof_digest(chain, handshake, initiator, proof.role);
    proof
        .key
        .verifying_key()
        .and_then(|key| key.verify(&digest, &proof.signature))
        .map_err(|_| HandshakeError::BadProof)?;
    Ok(proof)
}

async fn with_timeout<T>(
    handshake: impl std::future::Future<Output = Result<T, HandshakeError>>,
) -> Result<T, HandshakeError> {
    smol::future::or(handshake, async {
        smol::Timer::after(HANDSHAKE_TIMEOUT).await;
        Err(HandshakeError::Timeout)
    })
    .await
}

/// Opens a channel to the holder of `expected`, proving `keypair` for `role` (a validator
/// also says the port it `listens` on).
///
/// The listener's proof comes first: if it is not of `expected` in the accepting node's role,
/// the handshake fails with [`HandshakeError::UnknownKey`] (or [`HandshakeError::BadProof`]
/// if it does not verify) and nothing more is written, so this side's key never reaches a
/// listener that is not the one dialled.
pub async fn initiate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    chain: &ChainId,
    keypair: &Keypair,
    (role, listens): (Role, Option<u16>),
    expected: &PublicKey,
) -> Result<Channel, HandshakeError> {
    with_timeout(async {
        let mut noise = snow::Builder::new(NOISE.parse()?).build_initiator()?;
        let mut buffer = vec![0; MAX_HANDSHAKE_MESSAGE];
        let len = noise.write_message(&[], &mut buffer)?;
        write_message(stream, &buffer[..len]).await?;
        let reply = expect_message(stream).await?;
        noise.read_message(&reply, &mut buffer)?;
        let handshake = noise.get_handshake_hash().to_vec();
        let channel = Channel {
            state: Arc::new(Mutex::new(noise.into_transport_mode()?)),
        };
        let answer = channel
            .read_within(stream, MAX_HANDSHAKE_MESSAGE)
            .await?
            .ok_or_else(hung_up)?;
        let proof = check_proof(chain, &answer, &handshake, false)?;
        if proof.role != Role::Server || proof.key != *expected {
            return Err(HandshakeError::UnknownKey);
        }
        channel
            .write(
                stream,
                &sign_proof(chain, keypair, &handshake, true, (role, listens)),
            )
            .await?;
        Ok(channel)
    })
    .await
}

/// Accepts a channel: proves `keypair` as the accepting node in the same flight as the Noise
/// reply, then `admit` decides whether the initiator's key may take the role it asked (a
/// validator's or a client's), before anything else is read from it, and returns what the
/// admission holds (the connection's place), handed back with the channel and the
/// initiator's proof.
pub async fn respond<S: AsyncRead + AsyncWrite + Unpin, T>(
    stream: &mut S,
    chain: &ChainId,
    keypair: &Keypair,
    admit: impl FnOnce(&PublicKey, Role) -> Result<T, Refusal>,
) -> Result<(Channel, Proof, T), HandshakeError> {
    with_timeout(async {
        let mut noise = snow::Builder::new(NOISE.parse()?).build_responder()?;
        let mut buffer = vec![0; MAX_HANDSHAKE_MESSAGE];
        let first = expect_message(stream).await?;
        noise.read_message(&first, &mut buffer)?;
        let len = noise.write_message(&[], &mut buffer)?;
        // The handshake hash is final once the last Noise message is written: the proof
        // can sign it and go out with that message, in one write.
        let mut flight = framed(&buffer[..len]);
        let handshake = noise.get_handshake_hash().to_vec();
        let channel = Channel {
            state: Arc::new(Mutex::new(noise.into_transport_mode()?)),
        };
        let proof = sign_proof(chain, keypair, &handshake, false, (Role::Server, None));
        channel.seal(&proof, &mut flight)?;
        stream.write_all(&flight).await?;
        let claim = channel
            .read_within(stream, MAX_HANDSHAKE_MESSAGE)
            .await?
            .ok_or_else(hung_up)?;
        let proof = check_proof(chain, &claim, &handshake, true)?;
        if proof.role == Role::Server {
            return Err(HandshakeError::UnknownKey);
        }
        let admitted = admit(&proof.key, proof.role).map_err(HandshakeError::Refused)?;
        Ok((channel, proof, admitted))
    })
    .await
}
