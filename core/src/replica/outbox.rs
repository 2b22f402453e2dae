//! The outbox: the replica's outputs in the order the host must act on them.
//!
//! Its methods are the only way an output is queued, so the durability rule lives here:
//! [`Outbox::publish`] queues the record that holds a signature before the message that
//! carries it.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use super::Replica;
use super::output::{Destination, Output, Record};
use crate::config::ReplicaId;
use crate::message::Message;

/// Outputs waiting for [`super::Replica::poll_output`], oldest first.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    queue: VecDeque<Output>,
    /// The other validators: how many copies a broadcast puts on the wire.
    peers: usize,
}

impl Outbox {
    /// An empty outbox for a set of `validators`.
    pub(super) fn new(validators: usize) -> Self {
        Outbox {
            queue: VecDeque::new(),
            peers: validators.saturating_sub(1),
        }
    }

    /// Queues a record the host must make durable before any later send leaves.
    pub(super) fn persist(&mut self, record: Record) {
        self.queue.push_back(Output::Persist(record));
    }

    /// Queues `bytes` for `to`; returns the bytes it puts on the wire (a broadcast counts once
    /// per peer).
    pub(super) fn send(&mut self, to: Destination, bytes: Vec<u8>) -> u64 {
        let copies = match to {
            Destination::AllValidators => self.peers,
            _ => 1,
        };
        let wire = (bytes.len() * copies) as u64;
        self.queue.push_back(Output::Send { to, bytes });
        wire
    }

    /// Queues `record`, then `message` to every peer: the message carries the signature the
    /// record holds, so the record must be durable first. Returns the bytes sent.
    pub(super) fn publish(&mut self, record: Record, message: &Message) -> u64 {
        self.persist(record);
        self.send(Destination::AllValidators, message.encode())
    }

    /// Queues an output with no ordering rule of its own (a delivery, an install, evidence).
    pub(super) fn push(&mut self, output: Output) {
        self.queue.push_back(output);
    }

    /// Queues `record`, if any, as [`Outbox::persist`] does.
    pub(super) fn extend_persist(&mut self, record: Option<Record>) {
        if let Some(record) = record {
            self.persist(record);
        }
    }

    /// Moves `other`'s outputs, in order, behind this one's (a replica that rebuilt itself
    /// for a new epoch keeps what its old self queued).
    pub(super) fn take_from(&mut self, other: &mut Outbox) {
        self.queue.append(&mut other.queue);
    }

    /// The next output, oldest first.
    pub(super) fn pop(&mut self) -> Option<Output> {
        self.queue.pop_front()
    }
}

impl Replica {
    /// Queues `bytes` for `to` and counts them.
    pub(super) fn send(&mut self, to: Destination, bytes: Vec<u8>) {
        self.metrics.bytes_sent += self.outbox.send(to, bytes);
    }

    /// Queues `record`, then `message` (which carries its signature) to every peer.
    pub(super) fn publish(&mut self, record: Record, message: &Message) {
        self.metrics.bytes_sent += self.outbox.publish(record, message);
    }

    /// Every validator of the set but this one.
    pub(super) fn others(&self) -> Vec<ReplicaId> {
        let me = self.id;
        self.validators.ids().filter(|&id| id != me).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Status;
    use crate::view_change::StableCheckpoint;

    fn status() -> Message {
        Message::Status(Status {
            epoch: 0,
            view: 0,
            normal: true,
            stable: 0,
            executed: 0,
            slots: Vec::new(),
        })
    }

    #[test]
    fn a_published_record_precedes_its_message() {
        let mut outbox = Outbox::new(4);
        let record = Record::Stable(StableCheckpoint::genesis());
        let message = status();
        let sent = outbox.publish(record.clone(), &message);
        assert_eq!(outbox.pop(), Some(Output::Persist(record)));
        let bytes = message.encode();
        assert_eq!(sent, 3 * bytes.len() as u64, "one copy per peer");
        assert_eq!(
            outbox.pop(),
            Some(Output::Send {
                to: Destination::AllValidators,
                bytes
            })
        );
        assert_eq!(outbox.pop(), None);
    }

    #[test]
    fn a_send_to_one_counts_once_and_order_is_kept() {
        let mut outbox = Outbox::new(7);
        assert_eq!(
            outbox.send(
                Destination::Validator(crate::ReplicaId(2)),
                alloc::vec![1; 10]
            ),
            10
        );
        assert_eq!(
            outbox.send(Destination::AllValidators, alloc::vec![2; 10]),
            60
        );
        assert!(matches!(
            outbox.pop(),
            Some(Output::Send {
                to: Destination::Validator(_),
                ..
            })
        ));
        assert!(matches!(
            outbox.pop(),
            Some(Output::Send {
                to: Destination::AllValidators,
                ..
            })
        ));
    }
}
