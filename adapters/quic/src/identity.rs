//! Node and client identities at the TLS handshake: every endpoint presents its ed25519 key
//! as a raw public key (RFC 7250, no certificate), and the other side pins the key, never a
//! CA.
//!
//! The key a verifier accepts is the one the other side presented, and the handshake
//! signature is checked against that same key: whoever completes the handshake holds the
//! private key the connection is attributed to. Validators dialling each other (and clients
//! dialling validators) accept only the one key they meant to reach; a node accepting a
//! connection takes any key whose holder proved possession, then admits it by role (see
//! `transport`) before reading a byte from it.

use std::sync::Arc;

use pbft_core::{Keypair, PublicKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    CryptoProvider, WebPkiSupportedAlgorithms, verify_tls13_signature_with_raw_key,
};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// ALPN of validator-to-validator connections.
pub const ALPN_PEER: &[u8] = b"pbft-peer/1";
/// ALPN of client (and gateway) connections.
pub const ALPN_CLIENT: &[u8] = b"pbft-client/1";

/// DER of an ed25519 SubjectPublicKeyInfo up to the key (RFC 8410 §4): the algorithm is
/// id-Ed25519 (1.3.101.112) without parameters, and the key a 32-byte BIT STRING. DER has
/// one encoding per value, so these 12 bytes and the key are the whole of any ed25519 SPKI:
/// comparing bytes accepts exactly what a strict DER parser would.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER of a PKCS#8 v1 ed25519 private key up to the 32-byte seed (RFC 8410 §7), the form
/// rustls loads signing keys from.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The ring provider, TLS 1.3 only (QUIC requires it).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `keypair` as rustls presents it: its raw public key and its signing key. Fails only if
/// the provider cannot load an ed25519 key, or derives another public key from it.
pub fn certified_key(keypair: &Keypair) -> Result<Arc<CertifiedKey>, rustls::Error> {
    let mut pkcs8 = PKCS8_PREFIX.to_vec();
    pkcs8.extend_from_slice(&keypair.seed());
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8));
    let signer = provider().key_provider.load_private_key(der)?;
    let presented = spki(&keypair.public_key());
    // The presented key must be the signing key's own, or every handshake would fail
    // (`CertifiedKey::keys_match` reads an X.509 certificate, which there is none of).
    if signer.public_key().as_deref() != Some(presented.as_ref()) {
        return Err(rustls::Error::InconsistentKeys(
            rustls::InconsistentKeys::KeyMismatch,
        ));
    }
    let presented = CertificateDer::from(presented.to_vec());
    Ok(Arc::new(CertifiedKey::new(vec![presented], signer)))
}

/// The ed25519 key of a raw public key (a DER SubjectPublicKeyInfo); `None` for anything
/// else: another algorithm, a truncated or altered encoding.
pub fn raw_key(spki: &[u8]) -> Option<PublicKey> {
    let key = spki.strip_prefix(&SPKI_PREFIX[..])?;
    Some(PublicKey(key.try_into().ok()?))
}

fn spki(key: &PublicKey) -> SubjectPublicKeyInfoDer<'static> {
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(&key.0);
    SubjectPublicKeyInfoDer::from(der)
}

fn bad_key() -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
}

/// QUIC is TLS 1.3 only: a TLS 1.2 signature is never asked for.
fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls13RequiredForQuic,
    ))
}

/// Checks a TLS 1.3 handshake signature against the presented ed25519 key.
fn verify_signature(
    algorithms: &WebPkiSupportedAlgorithms,
    message: &[u8],
    presented: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(rustls::Error::PeerMisbehaved(
            rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
        ));
    }
    let key = raw_key(presented).ok_or_else(bad_key)?;
    verify_tls13_signature_with_raw_key(message, &spki(&key), dss, algorithms)
}

/// The handshake-signature methods both verifiers share (the server and client verifier
/// traits declare the same four).
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            tls12_refused()
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_signature(&self.algorithms, message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }

        /// Keys are pinned, never certified: negotiate raw public keys (RFC 7250) only.
        fn requires_raw_public_keys(&self) -> bool {
            true
        }
    };
}

/// The server's check, at a validator or client dialling one: only `expected` will do.
#[derive(Debug)]
pub struct PinnedServer {
    expected: PublicKey,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedServer {
    /// Accepts only a server holding `expected`.
    pub fn new(expected: PublicKey) -> Arc<Self> {
        Arc::new(PinnedServer {
            expected,
            algorithms: provider().signature_verification_algorithms,
        })
    }
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match raw_key(end_entity) {
            Some(key) if key == self.expected => Ok(ServerCertVerified::assertion()),
            Some(_) => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            None => Err(bad_key()),
        }
    }

    handshake_signatures!();
}

/// The client's check, at a node accepting connections: any ed25519 key whose holder signs
/// the handshake; the node admits it by role once the handshake is done.
#[derive(Debug)]
pub struct AnyKeyClient {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AnyKeyClient {
    /// The verifier.
    pub fn new() -> Arc<Self> {
        Arc::new(AnyKeyClient {
            algorithms: provider().signature_verification_algorithms,
        })
    }
}

impl ClientCertVerifier for AnyKeyClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        raw_key(end_entity)
            .map(|_| ClientCertVerified::assertion())
            .ok_or_else(bad_key)
    }

    handshake_signatures!();
}

/// The key a finished handshake authenticated.
pub fn peer_key(connection: &quinn::Connection) -> Option<PublicKey> {
    let identity = connection.peer_identity()?;
    let presented = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    raw_key(presented.first()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_read_from_a_raw_public_key_is_the_one_it_was_made_for() {
        let keypair = Keypair::from_seed(&[7; 32]);
        let certified = certified_key(&keypair).unwrap();
        let presented = &certified.cert[0];
        assert_eq!(raw_key(presented), Some(keypair.public_key()));
        // The signing key rustls loaded agrees on the encoding, byte for byte.
        assert_eq!(
            certified.key.public_key().as_deref(),
            Some(presented.as_ref())
        );
        // Truncated, extended or altered keys yield no key rather than a wrong one.
        for cut in [0, 1, 10, presented.len() / 2, presented.len() - 1] {
            assert_eq!(raw_key(&presented[..cut]), None, "cut at {cut}");
        }
        let mut longer = presented.to_vec();
        longer.push(0);
        assert_eq!(raw_key(&longer), None);
        let mut other_algorithm = presented.to_vec();
        other_algorithm[8] = 0x71; // id-Ed448
        assert_eq!(raw_key(&other_algorithm), None);
    }
}
