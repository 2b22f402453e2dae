//! Node and client identities at the TLS handshake: every endpoint presents a self-signed
//! certificate for its ed25519 key, and the other side pins the key, never a CA.
//!
//! The key a verifier accepts is read from the certificate's SubjectPublicKeyInfo, and the
//! handshake signature is checked against that same key: whoever completes the handshake
//! holds the private key the connection is attributed to. Validators dialling each other
//! (and clients dialling validators) accept only the one key they meant to reach; a node
//! accepting a connection takes any key whose holder proved possession, then admits it by
//! role (see `transport`) before reading a byte from it.

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
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// ALPN of validator-to-validator connections.
pub const ALPN_PEER: &[u8] = b"pbft-peer/1";
/// ALPN of client (and gateway) connections.
pub const ALPN_CLIENT: &[u8] = b"pbft-client/1";

/// DER of an ed25519 SubjectPublicKeyInfo up to the key (RFC 8410): the algorithm is
/// id-Ed25519 (1.3.101.112) and the key a 32-byte BIT STRING.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER of a PKCS#8 v1 ed25519 private key up to the 32-byte seed (RFC 8410).
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The ring provider, TLS 1.3 only (QUIC requires it).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate and private key for `keypair`, as rustls takes them.
pub fn certificate(
    keypair: &Keypair,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), rcgen::Error> {
    let mut pkcs8 = PKCS8_PREFIX.to_vec();
    pkcs8.extend_from_slice(&keypair.seed());
    let der = PrivatePkcs8KeyDer::from(pkcs8);
    let signer = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)?;
    let params = rcgen::CertificateParams::new(vec!["pbft".to_string()])?;
    let certificate = params.self_signed(&signer)?;
    Ok((certificate.der().clone(), PrivateKeyDer::Pkcs8(der)))
}

/// Reads one DER element at the start of `der`: (tag, contents, rest).
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let count = (first & 0x7f) as usize;
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[count..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The ed25519 key of a certificate: the SubjectPublicKeyInfo of its TBSCertificate
/// (RFC 5280 §4.1: optional version, serial, signature, issuer, validity, subject, SPKI).
pub fn certificate_key(cert: &[u8]) -> Option<PublicKey> {
    const SEQUENCE: u8 = 0x30;
    let (tag, certificate, _) = element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, _, rest) = element(tbs)?;
    if tag == 0xa0 {
        tbs = rest; // explicit version
    }
    // serial, signature algorithm, issuer, validity, subject
    for _ in 0..5 {
        tbs = element(tbs)?.2;
    }
    let (tag, spki, _) = element(tbs)?;
    if tag != SEQUENCE || spki.len() != 42 {
        return None;
    }
    let full = &tbs[..44];
    let key = full.strip_prefix(&SPKI_PREFIX[..])?;
    Some(PublicKey(key.try_into().ok()?))
}

fn spki(key: &PublicKey) -> SubjectPublicKeyInfoDer<'static> {
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(&key.0);
    SubjectPublicKeyInfoDer::from(der)
}

fn bad_certificate() -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
}

/// QUIC is TLS 1.3 only: a TLS 1.2 signature is never asked for.
fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls13RequiredForQuic,
    ))
}

/// Checks a TLS 1.3 handshake signature against the certificate's own ed25519 key.
fn verify_signature(
    algorithms: &WebPkiSupportedAlgorithms,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(rustls::Error::PeerMisbehaved(
            rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
        ));
    }
    let key = certificate_key(cert).ok_or_else(bad_certificate)?;
    verify_tls13_signature_with_raw_key(message, &spki(&key), dss, algorithms)
}

/// The handshake-signature methods both verifiers share (the server and client verifier
/// traits declare the same three).
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
        match certificate_key(end_entity) {
            Some(key) if key == self.expected => Ok(ServerCertVerified::assertion()),
            Some(_) => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            None => Err(bad_certificate()),
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
        certificate_key(end_entity)
            .map(|_| ClientCertVerified::assertion())
            .ok_or_else(bad_certificate)
    }

    handshake_signatures!();
}

/// The key a finished handshake authenticated.
pub fn peer_key(connection: &quinn::Connection) -> Option<PublicKey> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certificate_key(chain.first()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_read_from_a_certificate_is_the_one_it_was_made_for() {
        let keypair = Keypair::from_seed(&[7; 32]);
        let (cert, _) = certificate(&keypair).unwrap();
        assert_eq!(certificate_key(&cert), Some(keypair.public_key()));
        // Truncated or altered certificates yield no key rather than a wrong one.
        for cut in [0, 1, 10, cert.len() / 2, cert.len() - 1] {
            assert_eq!(certificate_key(&cert[..cut]), None, "cut at {cut}");
        }
    }
}
