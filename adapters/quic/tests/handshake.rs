//! The QUIC handshake over loopback: both sides present raw ed25519 keys (RFC 7250) and
//! prove them, a dialler reaches only the key it pinned, and the node admits what it accepted
//! by key and role.

use std::sync::Arc;

use pbft_core::{Keypair, ValidatorSet};
use pbft_host::driver::admission::ConnectionLimits;
use pbft_host::driver::{Connections, Refusal, Role};
use pbft_quic::identity::{ALPN_CLIENT, ALPN_PEER, certified_key, peer_key};
use pbft_quic::transport::{self, close};
use quinn::Endpoint;
use rustls::sign::CertifiedKey;

#[tokio::test]
async fn keys_are_proven_pinned_and_admitted_by_role() {
    let node = Keypair::from_seed(&[1; 32]);
    let validator = Keypair::from_seed(&[2; 32]);
    let stranger = Keypair::from_seed(&[3; 32]);
    let set = ValidatorSet::new(0, &[node.public_key(), validator.public_key()]).unwrap();
    let connections = Connections::new(std::sync::Arc::new(set), ConnectionLimits::default());
    // What admission makes of a connection whose handshake completed.
    let admit = |connection: &quinn::Connection| {
        let handshake = connections.handshake(connection.remote_address().ip())?;
        transport::admit(connection, handshake).map(|(key, role, _slot)| (key, role))
    };
    let config = transport::server_config(&node).unwrap();
    let server = Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr().unwrap();
    // Hands over every connection whose handshake completed.
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    let accepting = tokio::spawn({
        let server = server.clone();
        async move {
            while let Some(incoming) = server.accept().await {
                if let Ok(connection) = incoming.await {
                    let _ = accepted_tx.send(connection);
                }
            }
        }
    });
    let dialler = transport::client_endpoint(addr).unwrap();
    let dial = |keypair: &Keypair, pinned, alpn| {
        let config = transport::client_config(keypair, pinned, alpn).unwrap();
        dialler.connect_with(config, addr, "pbft").unwrap()
    };

    // A validator reaches the node it pinned; each side learns the other's key.
    let connection = dial(&validator, node.public_key(), ALPN_PEER)
        .await
        .unwrap();
    assert_eq!(peer_key(&connection), Some(node.public_key()));
    let at_node = accepted.recv().await.unwrap();
    assert_eq!(peer_key(&at_node), Some(validator.public_key()));
    assert_eq!(
        admit(&at_node),
        Ok((validator.public_key(), Role::Validator))
    );

    // Any key may be a client; only the set's keys may be validators.
    let client = dial(&stranger, node.public_key(), ALPN_CLIENT)
        .await
        .unwrap();
    let at_node = accepted.recv().await.unwrap();
    assert_eq!(admit(&at_node), Ok((stranger.public_key(), Role::Client)));
    let _impostor = dial(&stranger, node.public_key(), ALPN_PEER).await.unwrap();
    let at_node = accepted.recv().await.unwrap();
    let refusal = admit(&at_node).unwrap_err();
    assert_eq!(refusal, Refusal::UnknownKey);
    assert_eq!(close::refused(refusal), close::UNKNOWN_KEY);

    // Pinning a key the node does not hold: no connection at all.
    let wrong_pin = dial(&validator, stranger.public_key(), ALPN_PEER).await;
    assert!(wrong_pin.is_err());

    // Presenting a validator's key without holding it: the handshake signature, made with
    // another key, does not verify.
    let theirs = certified_key(&validator).unwrap();
    let mine = certified_key(&stranger).unwrap();
    let forged = CertifiedKey::new(theirs.cert.clone(), mine.key.clone());
    let config =
        transport::client_config_presenting(Arc::new(forged), node.public_key(), ALPN_PEER)
            .unwrap();
    // The dialler's side of the handshake completes before the node checks its signature
    // (TLS 1.3), so the refusal arrives as the node closing the connection in the handshake
    // layer; the node never hands the connection over.
    let refusal = match dialler.connect_with(config, addr, "pbft").unwrap().await {
        Ok(forged) => forged.closed().await,
        Err(err) => err,
    };
    let quinn::ConnectionError::ConnectionClosed(close) = &refusal else {
        panic!("the handshake should fail: {refusal}");
    };
    assert_eq!(
        close.error_code,
        quinn::TransportErrorCode::crypto(51), // TLS alert decrypt_error: bad signature
        "{refusal}"
    );
    assert!(
        accepted.try_recv().is_err(),
        "the node accepted nothing more"
    );

    drop((connection, client));
    accepting.abort();
}
