//! What a replica hands its host, and the contract on each: the durability order of
//! records and sends, and what a delivery or an install asks of the application store.

use alloc::vec::Vec;

use super::exactly_once::ClientRecord;
#[cfg(doc)]
use super::{Replica, restore::ExecutedState};
use crate::certificate::QuorumCertificate;
use crate::config::ReplicaId;
use crate::crypto::{Digest, PublicKey};
use crate::envelope::{self, DecodeError};
use crate::epoch::{EpochChange, NextEpoch};
use crate::new_view::NewView;
use crate::statement::Evidence;
use crate::statement::{Batch, Vote};
use crate::view_change::{Prepared, StableCheckpoint, ViewChange};

/// Where the host must send bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// One validator.
    Validator(ReplicaId),
    /// Every validator but this one.
    AllValidators,
    /// A client (or the gateway that speaks for it), by key.
    Client(PublicKey),
    /// A validator outside this epoch's set, by key: one an epoch change removed, still in an
    /// earlier epoch (told how its epoch ended, so it reaches the boundary and retires), or
    /// one the scheduled change adds (told where this replica stands, so it hands over the
    /// change this replica lacks). A host sends it over that validator's peer connection if
    /// it has one, and drops it otherwise (pbft-host connects only to the validators its
    /// config lists).
    Outside(PublicKey),
}

/// A record the host must make durable; [`Record::encode`] gives the bytes to store.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Record {
    /// A vote this replica signed. After a restart the replica must never sign a different
    /// digest for the same phase and slot.
    Signed(Vote),
    /// A prepared certificate this replica assembled, as it sends its commit, with the batch
    /// when this replica holds it: a view change after a restart must still carry the
    /// certificate, or a batch committed elsewhere could be lost, and when every validator
    /// restarts at once the batch is known only from these records (Castro and Liskov log the
    /// pre-prepare with its requests for the same reason).
    Prepared(Prepared, Option<Batch>),
    /// A pre-prepare this replica accepted (or, as primary, signed) with its batch, logged
    /// before its own vote for the batch leaves: a view change reports that vote, f + 1
    /// reports make the next view re-propose the batch (the fast path's rule), and after every
    /// validator crashed the batch is known only from these records (Castro and Liskov log the
    /// pre-prepare with its requests). The primary's own pre-prepare is its vote, and restore
    /// takes it back as one. A later `Prepared` record of the slot leaves the batch out.
    Accepted(Vote, Batch),
    /// A checkpoint that became stable: everything at or below it is final. A host may
    /// compact its log to [`Replica::durable_records`] when it sees one.
    Stable(StableCheckpoint),
    /// A view change this replica signed: it left every view below `view`.
    ViewChange(ViewChange),
    /// The new view this replica entered (signed by it if it is that view's primary).
    NewView(NewView),
    /// A QC, persisted just before its batch is delivered: the redo record of the batch's
    /// execution. The batch is carried only when no `Prepared` record before it carried it
    /// (restore finds it there). A host that commits its application store lazily (not
    /// durably every round) relies on it: [`Replica::restore`] delivers again every such
    /// batch above the store's executed seq, so a reply may leave once this record is
    /// durable. Such a host must make its store durable before it compacts its log to
    /// [`Replica::durable_records`] (which leaves these out).
    Committed(QuorumCertificate, Option<Batch>),
    /// The delivery of the batch at `seq` scheduled a change of the validator set (or changed
    /// the scheduled one), persisted before the delivery: a replica restored with that batch
    /// executed must still vote on nothing of its epoch beyond the boundary.
    Scheduled {
        /// The batch's seq.
        seq: u64,
        /// The change as of that batch.
        next: NextEpoch,
    },
    /// This replica entered the epoch `change` starts: after a restart it runs that epoch,
    /// with its set. A host keeps every one (they are the chain a client follows). The
    /// records before it still hold the batches the redo records up to the boundary need:
    /// a host compacts them away only once its store is durable at or above the boundary
    /// (as for any compaction, [`Replica::durable_records`]).
    EpochStarted(EpochChange),
    /// Evidence this replica holds (found, or received from a peer) until a batch commits
    /// it: a restart keeps it, so a crash of every validator that saw the conflict does not
    /// let the equivocator go.
    Evidence(crate::statement::Evidence),
    /// Rollback protection found statements signed by this replica that its log had lost
    /// (the data dir was restored from an old copy): the fence it signs within from now on
    /// in this epoch, and the lost votes, which bind it like its own but are not its log's
    /// ([`Replica::check_for_rollback`]). A restart keeps both, so the next check need not find them
    /// again.
    Fenced(super::recovery::Fence, Vec<Vote>),
}

impl Record {
    /// The record's bytes for the host's log, in the versioned [`crate::envelope`].
    pub fn encode(&self) -> Vec<u8> {
        envelope::encode(self)
    }

    /// Reads a record written by [`Record::encode`].
    ///
    /// # Errors
    ///
    /// [`DecodeError`]: empty, another version, malformed, or trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
        envelope::decode(bytes, usize::MAX)
    }
}

/// A committed batch, handed to the host for execution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The sequence number; deliveries come in strictly increasing order without gaps.
    pub seq: u64,
    /// The whole batch, as certified: the certificate covers each request's digest (chain,
    /// client, client seq, op), which is what its client signed, not the signature bytes. A
    /// batch this replica took by digest (fetched, re-proposed) may carry other valid or
    /// invalid signature bytes than a peer's copy: execute on client, client seq and op, and
    /// never hash the signatures into the state.
    pub batch: Batch,
    /// The quorum certificate over the batch digest.
    pub certificate: QuorumCertificate,
    /// Indices into `batch.requests` of the requests to execute, in order; the others
    /// already executed (exactly-once) and must be skipped.
    pub execute: Vec<u32>,
    /// Requests the replica executed itself, each with its result: reconfigurations
    /// ([`crate::Reconfiguration`]), as (index into `batch.requests`, result). The host never
    /// hands them to the application, and stores their exactly-once rows as for `execute`.
    pub decided: Vec<(u32, Vec<u8>)>,
    /// A checkpoint seq: pass a snapshot of the application state after this batch to
    /// [`Replica::executed`].
    pub checkpoint: bool,
    /// Clients the exactly-once table forgot to stay within `max_clients` when this batch's
    /// requests were recorded: a host that persists the table writes the rows of the executed
    /// requests first, then deletes these.
    pub forgotten: Vec<PublicKey>,
    /// The table's floor after this batch (see [`ExecutedState::client_floor`]).
    pub client_floor: u64,
}

/// An application snapshot fetched from peers, to replace the host's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Install {
    /// The checkpoint the snapshot is the state at; deliveries continue after it.
    pub seq: u64,
    /// The application's snapshot bytes, as its own `executed` snapshot produced them.
    pub snapshot: Vec<u8>,
    /// The exactly-once table as of `seq`, which replaces the one the host persisted.
    pub clients: Vec<ClientRecord>,
    /// The table's floor as of `seq`.
    pub client_floor: u64,
}

/// What the replica asks of its host. Drain with [`Replica::poll_output`] and act in order.
///
/// The order is the contract, as raft-rs states it on `Ready`: a `Persist` is durable before
/// any later `Send` goes on the wire; a `Deliver` is executed, and reported through
/// [`Replica::executed`], before the next one.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// Make the record durable (fsync). It must be durable before any `Send` that comes
    /// after it in the output order goes on the wire: that `Send` carries its signature, and
    /// a replica that restarts without the record could sign a conflicting vote.
    Persist(Record),
    /// Send the encoded message. Best effort: the protocol tolerates loss.
    Send {
        /// Who receives it.
        to: Destination,
        /// An encoded [`Message`].
        bytes: Vec<u8>,
    },
    /// Execute the batch's `execute` requests in order, then call [`Replica::executed`] with
    /// their results. Deliveries come in sequence order, each after `executed` for the one
    /// before. A host that keeps its application across crashes writes, atomically with the
    /// application's changes, what [`ExecutedState`] lists (the exactly-once rows, `forgotten`,
    /// `client_floor`, the seq, the batch with its QC), durable after the records before it;
    /// the `Send`s after it (they carry the replies) may leave once the `Persist` of the
    /// [`Record::Committed`] redo record just before it is durable. A delivery whose `seq` is not
    /// [`Replica::executed_seq`] + 1 when the host reaches it was voided by an install: skip it.
    Deliver(Delivery),
    /// A validator signed two conflicting votes; the evidence verifies offline with
    /// [`crate::verify_evidence`]. Forward it to whatever decides on punishment.
    Evidence(Evidence),
    /// The epoch `change` starts began, after its [`Record::EpochStarted`] (already queued):
    /// from here on [`Destination::Validator`] ids are positions in its set
    /// ([`EpochChange::validators`]), the transport must admit its keys, and clients need
    /// `change` to check this replica's replies ([`crate::Client::enter_epoch`]). When this
    /// replica's key is not in the set, it was removed: it takes no more part
    /// ([`Replica::is_retired`]).
    EpochStarted(EpochChange),
    /// This replica was too far behind to replay batches, or its state diverged, and fetched
    /// a checkpoint's state: replace the application's state with the snapshot, and the
    /// persisted exactly-once table and executed seq with the install's (in the same atomic
    /// write; `seq` may be below the executed seq after a divergence). Every delivery the host
    /// has not executed yet is void; the next delivery is `seq + 1`.
    Install(Install),
    /// A quorum made the checkpoint at `seq` stable with the state digest `stable`, and this
    /// replica's own state there has the digest `own`: its execution diverged (corrupt storage,
    /// a non-deterministic application, a bad restore). Nothing is to be done for it but to
    /// alert an operator: the replica delivers nothing more, signs no reply nor checkpoint from
    /// the diverged state, and fetches the stable state from its peers, which comes as an
    /// [`Output::Install`] (Castro and Liskov, section 4.3: the quorum's checkpoint is the
    /// state). A delivery already handed out may still be executed and reported as usual.
    StateDiverged {
        /// The stable checkpoint's seq.
        seq: u64,
        /// This replica's state digest at `seq`.
        own: Digest,
        /// The digest a quorum signed at `seq`.
        stable: Digest,
    },
    /// Rollback protection settled ([`Replica::check_for_rollback`]): the replica signs
    /// again, within what the report says. Tell the operator; a report with lost
    /// statements means the data dir was restored from an old copy (or the key runs
    /// elsewhere too).
    Recovered(super::RecoveryReport),
}
