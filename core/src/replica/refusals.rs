//! Signed answers to client requests this replica will not order ([`crate::RequestRefusal`]), within
//! a budget a flood cannot exceed.

use alloc::collections::BTreeMap;

use super::Replica;
use super::output::Destination;
use crate::crypto::{Digest, PublicKey};
use crate::error::Error;
use crate::message::Message;
use crate::refusal::{
    REFUSALS_PER_CLIENT_PER_SECOND, REFUSALS_PER_SECOND, RefusalReason, RequestRefusal,
};

/// Counts the refusals signed in the current second, in all and per client key. The map
/// holds at most [`REFUSALS_PER_SECOND`] keys (a key costs an entry only once answered) and
/// is emptied each second.
#[derive(Debug, Default)]
pub(super) struct RefusalBudget {
    second: u64,
    used: u32,
    per_client: BTreeMap<PublicKey, u8>,
}

impl RefusalBudget {
    /// Whether one more refusal to `client` fits in the second of `now_ms`; counts it if so.
    fn allow(&mut self, client: &PublicKey, now_ms: u64) -> bool {
        if now_ms / 1000 != self.second {
            self.second = now_ms / 1000;
            self.used = 0;
            self.per_client.clear();
        }
        if self.used >= REFUSALS_PER_SECOND {
            return false;
        }
        let sent = self.per_client.entry(*client).or_default();
        if *sent >= REFUSALS_PER_CLIENT_PER_SECOND {
            return false;
        }
        *sent += 1;
        self.used += 1;
        true
    }
}

/// The reason a client is told for `err`, if it is one a client can act on: a forged
/// signature, a malformed attestation or a copy already in flight gets no answer (the first
/// two are not the client's doing, or not an honest client's; the third is on its way).
fn reason(err: &Error, spent_up_to: u64) -> Option<RefusalReason> {
    Some(match *err {
        Error::StaleRequest => RefusalReason::Stale { last: spent_up_to },
        Error::NumberTaken => RefusalReason::NumberTaken,
        Error::RequestTooLarge { len, max } => RefusalReason::TooLarge {
            len: len as u64,
            max: max as u64,
        },
        Error::UnknownGateway => RefusalReason::UnknownGateway,
        Error::Overloaded => RefusalReason::Overloaded,
        _ => return None,
    })
}

impl Replica {
    /// Tells `client` why its request (number `client_seq`, digest `request`) was refused
    /// with `err`, signed, if the reason is one it can act on and the budget allows: the
    /// answer goes where its replies would.
    pub(super) fn refuse(
        &mut self,
        (client, client_seq): (PublicKey, u64),
        request: Digest,
        err: &Error,
    ) {
        let Some(reason) = reason(err, self.clients.spent_up_to(&client)) else {
            return;
        };
        if !self.intake.refusals.allow(&client, self.timers.now()) {
            return;
        }
        let refusal = RequestRefusal::new(
            (&self.config.chain_id, self.validators.epoch()),
            (client, client_seq, request),
            reason,
            self.id,
            self.signer.keypair(),
        );
        self.metrics.signatures_created += 1;
        self.metrics.refusals_signed += 1;
        self.send(
            Destination::Client(client),
            Message::Refusal(refusal).encode(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_answered_within_the_budget() {
        let mut budget = RefusalBudget::default();
        let key = |i: u32| {
            let mut bytes = [0; 32];
            bytes[..4].copy_from_slice(&i.to_be_bytes());
            PublicKey(bytes)
        };
        let one: u32 = (0..100)
            .map(|_| u32::from(budget.allow(&key(0), 1500)))
            .sum();
        assert_eq!(one, u32::from(REFUSALS_PER_CLIENT_PER_SECOND));
        let all: u32 = (1..1000)
            .map(|i| u32::from(budget.allow(&key(i), 1600)))
            .sum();
        assert_eq!(all + one, REFUSALS_PER_SECOND);
        assert!(budget.per_client.len() <= REFUSALS_PER_SECOND as usize);
        // The next second starts afresh.
        assert!(budget.allow(&key(0), 2000));
    }
}
