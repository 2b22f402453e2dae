//! Validators' signed refusals of a pending request ([`RequestRefusal`]): once f + 1 agree,
//! the gateway stops carrying the request and hands the client the refusals, which it
//! checks itself (as it checks replies), so it can act on them: renumber above spent numbers,
//! or show the reason.

use alloc::vec::Vec;

use super::{Gateway, GatewayOutput};
use crate::client::ClientError;
use crate::config::ReplicaId;
use crate::refusal::{RefusalReason, RequestRefusal};

impl Gateway {
    /// Counts validator `from`'s refusal of a pending request.
    ///
    /// # Errors
    ///
    /// As a reply's ([`Gateway::handle_reply`]): signed by another validator than `from`,
    /// for no pending request or another request under its number, or a bad signature.
    pub(super) fn count_refusal(
        &mut self,
        from: ReplicaId,
        refusal: RequestRefusal,
    ) -> Result<(), ClientError> {
        if refusal.replica != from {
            return Err(ClientError::NotFromSigner {
                claimed: refusal.replica,
                from,
            });
        }
        let key = (refusal.client, refusal.client_seq);
        let pending = self
            .pending
            .get_mut(&key)
            .ok_or(ClientError::NotOutstanding)?;
        if refusal.request != pending.digest {
            return Err(ClientError::AnotherRequest);
        }
        if pending.refusals.contains_key(&from) {
            return Ok(());
        }
        let signer = self
            .validators
            .key(from)
            .ok_or(ClientError::UnknownReplica(from))?;
        let signed = refusal.signed_digest(&self.config.chain_id, self.validators.epoch());
        signer
            .verify(&signed, &refusal.signature)
            .map_err(|_| ClientError::BadSignature)?;
        let reason = refusal.reason;
        pending.refusals.insert(from, refusal);
        let agreeing = pending
            .refusals
            .values()
            .filter(|other| other.reason.agrees_with(&reason))
            .count();
        // Overloaded validators may still take a retransmission: the gateway keeps trying.
        if agreeing < self.validators.reply_quorum() || reason == RefusalReason::Overloaded {
            return Ok(());
        }
        let Some(pending) = self.take_pending(&key) else {
            return Ok(());
        };
        self.forget(key.0, key.1, &pending);
        if let Some(session) = self.sessions.get_mut(&key.0) {
            session.outstanding.remove(&key.1);
        }
        let refusals: Vec<RequestRefusal> = pending
            .refusals
            .into_values()
            .filter(|other| other.reason.agrees_with(&reason))
            .collect();
        *self
            .metrics
            .shed
            .entry("refused_by_validators")
            .or_default() += 1;
        self.outputs.push_back(GatewayOutput::Rejected {
            client: key.0,
            client_seq: key.1,
            refusals,
        });
        Ok(())
    }
}
