//! The TCP handshake over real loopback sockets: keys are proven, the listener's first, so
//! a listener with the wrong key learns nothing of who dialled it; a recorded handshake
//! replayed, or a proof reflected back to its sender, gets nobody in.

use std::pin::Pin;
use std::task::{Context, Poll};

use pbft_core::{ChainId, Keypair};
use pbft_host::driver::Refusal;
use pbft_tcp::secure::{HandshakeError, Proof, Role, initiate, proof_digest, respond};
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use smol::net::{TcpListener, TcpStream};

fn chain() -> ChainId {
    ChainId::from_name("handshake-tests")
}

/// A stream that keeps a copy of everything written to it.
struct Recording {
    inner: TcpStream,
    written: Vec<u8>,
}

impl AsyncRead for Recording {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Recording {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = &poll {
            this.written.extend_from_slice(&buf[..*written]);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// A listener on a free loopback port, and its address.
async fn listen() -> (TcpListener, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Accepts one connection and runs the responder's side (admitting any peer key).
async fn serve_once(
    listener: &TcpListener,
    node: &Keypair,
) -> Result<pbft_core::PublicKey, HandshakeError> {
    let (mut stream, _) = listener.accept().await.unwrap();
    let peers_only = |_: &_, role| match role {
        Role::Peer => Ok(()),
        _ => Err(Refusal::UnknownKey),
    };
    respond(&mut stream, &chain(), node, peers_only)
        .await
        .map(|(_, proof, ())| proof.key)
}

#[test]
fn both_sides_prove_their_keys_and_talk() {
    smol::block_on(async {
        let (listener, addr) = listen().await;
        let (node, peer) = (Keypair::from_seed(&[1; 32]), Keypair::from_seed(&[2; 32]));
        let server = smol::spawn({
            let node = Keypair::from_seed(&node.seed());
            async move {
                let (mut stream, _) = listener.accept().await.unwrap();
                let (channel, proof, ()) = respond(&mut stream, &chain(), &node, |_, _| Ok(()))
                    .await
                    .unwrap();
                let message = channel.read(&mut stream).await.unwrap().unwrap();
                (proof.key, proof.role, message)
            }
        });
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let channel = initiate(
            &mut stream,
            &chain(),
            &peer,
            (Role::Peer, None),
            &node.public_key(),
        )
        .await
        .unwrap();
        // Larger than one Noise message: split and reassembled.
        let long = vec![9u8; 200_000];
        channel.write(&mut stream, &long[..70_000]).await.unwrap();
        let (key, role, first) = server.await;
        assert_eq!(key, peer.public_key());
        assert_eq!(role, Role::Peer);
        assert_eq!(first.len(), pbft_tcp::secure::MAX_PLAIN);

        // Dialling a node that holds another key than expected fails.
        let (listener, addr) = listen().await;
        let impostor = Keypair::from_seed(&[3; 32]);
        let server = smol::spawn(async move { serve_once(&listener, &impostor).await });
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let outcome = initiate(
            &mut stream,
            &chain(),
            &peer,
            (Role::Peer, None),
            &node.public_key(),
        )
        .await;
        assert!(matches!(outcome, Err(HandshakeError::UnknownKey)));
        // The dialler hangs up without a proof of its own: the impostor sees the stream end.
        drop(stream);
        assert!(matches!(server.await, Err(HandshakeError::Io(_))));
    });
}

#[test]
fn a_recorded_handshake_replayed_is_refused() {
    smol::block_on(async {
        let (listener, addr) = listen().await;
        let node = Keypair::from_seed(&[1; 32]);
        let peer = Keypair::from_seed(&[2; 32]);
        let node_key = node.public_key();
        let server = smol::spawn(async move {
            let first = serve_once(&listener, &node).await;
            let second = serve_once(&listener, &node).await;
            (first, second)
        });
        // A genuine session, recorded from the initiator's side.
        let mut recording = Recording {
            inner: TcpStream::connect(addr).await.unwrap(),
            written: Vec::new(),
        };
        let channel = initiate(
            &mut recording,
            &chain(),
            &peer,
            (Role::Peer, None),
            &node_key,
        )
        .await
        .unwrap();
        channel.write(&mut recording, b"hello").await.unwrap();
        // The same bytes again on a new connection: the node's fresh ephemeral key makes
        // the recorded proof undecryptable.
        let mut replay = TcpStream::connect(addr).await.unwrap();
        replay.write_all(&recording.written).await.unwrap();
        let mut rest = Vec::new();
        let _ = replay.read_to_end(&mut rest).await;
        let (first, second) = server.await;
        assert_eq!(first.unwrap(), peer.public_key());
        assert!(second.is_err(), "a replayed handshake was accepted");
    });
}

const NOISE: &str = "Noise_NN_25519_ChaChaPoly_BLAKE2s";

#[test]
fn a_listener_with_the_wrong_key_learns_nothing_of_the_dialler() {
    smol::block_on(async {
        let (listener, addr) = listen().await;
        let (expected, dialler) = (Keypair::from_seed(&[1; 32]), Keypair::from_seed(&[2; 32]));
        let impostor = Keypair::from_seed(&[3; 32]);
        // The impostor runs the responder's side by hand, with a valid proof of its own
        // key, and keeps whatever the dialler sends after its first Noise message.
        let server = smol::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut noise = snow::Builder::new(NOISE.parse().unwrap())
                .build_responder()
                .unwrap();
            let mut buffer = vec![0u8; 65_535];
            let first = read_message(&mut stream).await;
            noise.read_message(&first, &mut buffer).unwrap();
            let len = noise.write_message(&[], &mut buffer).unwrap();
            write_message(&mut stream, &buffer[..len]).await;
            let handshake = noise.get_handshake_hash().to_vec();
            let mut transport = noise.into_transport_mode().unwrap();
            let proof = Proof {
                role: Role::Server,
                key: impostor.public_key(),
                listens: None,
                signature: impostor.sign(&proof_digest(&chain(), &handshake, false, Role::Server)),
            };
            let proof = postcard::to_allocvec(&proof).unwrap();
            let len = transport.write_message(&proof, &mut buffer).unwrap();
            write_message(&mut stream, &buffer[..len]).await;
            let mut received = Vec::new();
            let _ = stream.read_to_end(&mut received).await;
            // What it could read of it with the session keys it shares with the dialler.
            let mut plain = Vec::new();
            let mut rest = received.as_slice();
            while let [high, low, tail @ ..] = rest {
                let len = usize::from(u16::from_be_bytes([*high, *low])).min(tail.len());
                if let Ok(n) = transport.read_message(&tail[..len], &mut buffer) {
                    plain.extend_from_slice(&buffer[..n]);
                }
                rest = &tail[len..];
            }
            (received, plain)
        });
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let outcome = initiate(
            &mut stream,
            &chain(),
            &dialler,
            (Role::Peer, None),
            &expected.public_key(),
        )
        .await;
        assert!(
            matches!(outcome, Err(HandshakeError::UnknownKey)),
            "{outcome:?}"
        );
        drop(stream);
        let (received, plain) = server.await;
        let key = dialler.public_key().0;
        let leaked = plain.windows(key.len()).any(|window| window == key);
        assert!(
            received.is_empty(),
            "the impostor got {} bytes after the Noise messages (the dialler's key among \
             them: {leaked})",
            received.len()
        );
    });
}

#[test]
fn a_proof_reflected_to_its_sender_is_refused() {
    smol::block_on(async {
        let (listener, addr) = listen().await;
        let victim = Keypair::from_seed(&[4; 32]);
        let victim_key = victim.public_key();
        let server = smol::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            // The victim would even admit its own key as a peer's: the reflection must
            // still fail, because the proof says which side made it.
            respond(&mut stream, &chain(), &victim, |_, _| Ok(()))
                .await
                .map(|(_, proof, ())| proof.key)
        });
        // The attacker dials the victim (it can: Noise NN has no static keys), decrypts the
        // proof the listener sends first and sends it back as its own.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut noise = snow::Builder::new(NOISE.parse().unwrap())
            .build_initiator()
            .unwrap();
        let mut buffer = vec![0u8; 65_535];
        let len = noise.write_message(&[], &mut buffer).unwrap();
        write_message(&mut stream, &buffer[..len]).await;
        let reply = read_message(&mut stream).await;
        noise.read_message(&reply, &mut buffer).unwrap();
        let mut transport = noise.into_transport_mode().unwrap();
        let sealed = read_message(&mut stream).await;
        let len = transport.read_message(&sealed, &mut buffer).unwrap();
        let proof: Proof = postcard::from_bytes(&buffer[..len]).unwrap();
        assert_eq!(proof.key, victim_key, "the listener proves its key first");
        let plain = buffer[..len].to_vec();
        let len = transport.write_message(&plain, &mut buffer).unwrap();
        write_message(&mut stream, &buffer[..len]).await;
        let outcome = server.await;
        assert!(
            matches!(outcome, Err(HandshakeError::BadProof)),
            "{outcome:?}"
        );
    });
}

async fn read_message(stream: &mut TcpStream) -> Vec<u8> {
    let mut prefix = [0u8; 2];
    stream.read_exact(&mut prefix).await.unwrap();
    let mut message = vec![0; usize::from(u16::from_be_bytes(prefix))];
    stream.read_exact(&mut message).await.unwrap();
    message
}

async fn write_message(stream: &mut TcpStream, message: &[u8]) {
    let mut wire = (message.len() as u16).to_be_bytes().to_vec();
    wire.extend_from_slice(message);
    stream.write_all(&wire).await.unwrap();
}

#[test]
fn an_unproven_connection_gets_no_large_buffer() {
    smol::block_on(async {
        let (listener, addr) = listen().await;
        let node = Keypair::from_seed(&[1; 32]);
        let server = smol::spawn(async move { serve_once(&listener, &node).await });
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // A 65,535-byte first message is refused on its length alone, at once.
        stream.write_all(&[0xff, 0xff]).await.unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(server.await, Err(HandshakeError::Io(_))));
        assert!(started.elapsed() < pbft_tcp::secure::HANDSHAKE_TIMEOUT);
    });
}
