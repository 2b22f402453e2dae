//! Gateway-attested mode: unsigned requests from clients whose keys the transport proved,
//! attested in batches with one signature of the gateway's (issue 14).

use alloc::vec::Vec;

use super::{Gateway, Shed};
use crate::crypto::{Keypair, PublicKey, Signature};
use crate::statement::{Request, attest};

impl Gateway {
    /// Gateway-attested mode: unsigned requests ([`Gateway::submit_unsigned`]) are attested
    /// with `key`, which must attest in the validators' epoch
    /// ([`crate::Replica::attesting_gateways`]: the genesis list, as governance changed it;
    /// this gateway does not follow those changes, and a removed one's attestations are
    /// refused as [`crate::Error::UnknownGateway`]).
    /// Signed requests still go as they came, checked first.
    #[must_use]
    pub fn attesting(mut self, key: Keypair) -> Self {
        self.attester = Some(key);
        self
    }

    /// Whether this gateway attests unsigned requests.
    pub fn is_attesting(&self) -> bool {
        self.attester.is_some()
    }

    /// An unsigned request from `client`'s session at `now` (ms), in gateway-attested mode:
    /// the session's key is the client's, proved by the transport's handshake, and the
    /// gateway attests the request in the batch it goes in. Limits as [`Gateway::submit`].
    ///
    /// # Errors
    ///
    /// [`Shed::NotAttesting`] in end-to-end mode; otherwise as [`Gateway::submit`].
    pub fn submit_unsigned(
        &mut self,
        now: u64,
        client: &PublicKey,
        client_seq: u64,
        op: Vec<u8>,
    ) -> Result<(), Shed> {
        if self.attester.is_none() {
            return Err(self.shed(Shed::NotAttesting));
        }
        let request = Request {
            client: *client,
            client_seq,
            op,
            signature: Signature([0; 64]),
            attestation: None,
        };
        self.accept(now, client, request, true)
    }

    /// Attests the unsigned requests among `keys` with one signature over their Merkle root
    /// ([`crate::attest`]); each keeps its attested form for retransmissions.
    pub(super) fn attest(&mut self, keys: &[(PublicKey, u64)]) {
        let Some(attester) = &self.attester else {
            return;
        };
        let unsigned: Vec<(PublicKey, u64)> = keys
            .iter()
            .filter(|key| self.pending.get(key).is_some_and(|p| p.unsigned))
            .copied()
            .collect();
        if unsigned.is_empty() {
            return;
        }
        let mut requests = Vec::with_capacity(unsigned.len());
        for key in &unsigned {
            if let Some(pending) = self.pending.get_mut(key) {
                let op = core::mem::take(&mut pending.request.op);
                requests.push((pending.request.client, pending.request.client_seq, op));
            }
        }
        let attested = attest(&self.config.chain_id, attester, requests);
        self.metrics.batches_attested += 1;
        for (key, request) in unsigned.iter().zip(attested) {
            if let Some(pending) = self.pending.get_mut(key) {
                pending.request = request;
            }
        }
    }
}
