//! Planted bugs, for the mutation test only (the `mutants` feature; never in a release).
//!
//! A suite that cannot fail proves nothing. Each [`Mutant`] is a known
//! way to break PBFT, switched on per replica through `Config::mutant`; the simulator's
//! mutation test (`tests/tests/mutants.rs`) must catch every one of them within its seed
//! budget. Without the feature this module does not exist and every planted check is `false`.

/// A deliberate bug a replica can be built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutant {
    /// Restore skips the signed-vote records of the log: a restarted replica forgets what it
    /// signed and may sign a second digest for a statement (Castro and Liskov, section 4.5:
    /// a replica logs what it sends before sending it).
    RestoreWithoutSignedIndex,
    /// Pre-prepares and votes at or below the low watermark are accepted (section 4.3 keeps
    /// only seqs in (h, h + L]).
    AcceptBelowLowWatermark,
    /// A view change leaves out its highest prepared certificate and its vote there (section
    /// 4.4 carries every prepared certificate above the stable checkpoint).
    ViewChangeOmitsHighestPrepared,
    /// Prepared and commit certificates are formed from 2f votes instead of 2f + 1 (section
    /// 4.2: the quorums must intersect in an honest replica).
    QuorumOf2f,
    /// A view change reports none of its signer's votes: a batch that committed on the fast
    /// path only (n prepares, no commit round) can be replaced by the next view.
    ViewChangeOmitsVotes,
    /// A state transfer installs the application's snapshot but keeps the replica's own
    /// exactly-once table, so requests in the transferred range can execute again.
    InstallKeepsClientTable,
    /// Attestations are taken from any gateway, listed or not: a stranger's requests execute
    /// as if a client had signed them.
    AcceptUnlistedGateway,
    /// The primary never puts evidence into its batches: equivocation is reported, and
    /// never committed (so no replicated decision can punish it).
    PrimaryOmitsEvidence,
}

impl Mutant {
    /// Every planted bug, in the order the mutation test tries them.
    pub const ALL: [Mutant; 8] = [
        Mutant::RestoreWithoutSignedIndex,
        Mutant::AcceptBelowLowWatermark,
        Mutant::ViewChangeOmitsHighestPrepared,
        Mutant::ViewChangeOmitsVotes,
        Mutant::QuorumOf2f,
        Mutant::InstallKeepsClientTable,
        Mutant::AcceptUnlistedGateway,
        Mutant::PrimaryOmitsEvidence,
    ];
}
