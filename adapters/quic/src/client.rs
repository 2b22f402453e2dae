//! The client side over QUIC: [`connect`] opens a [`Session`] with a link to every
//! validator, and [`ClusterClient`] runs the core's [`Client`] over it (sign, send to the primary, broadcast on
//! timeout, accept a result once f + 1 validators signed it).

use std::time::{Duration, Instant};

use std::net::SocketAddr;

use pbft_core::{
    Answer, Client, Digest, EpochChange, Keypair, Message, Outcome, PublicKey, RefusalReason,
    Refused, ValidatorSet,
};
use pbft_host::config::Network;
use pbft_host::session::Session;
use pbft_host::wire::{ClientFrame, NodeStatus, ProofBundle, ServerFrame};
use quinn::{Endpoint, VarInt};
use tokio::task::JoinHandle;

use crate::identity::ALPN_CLIENT;
use crate::transport::{self, TransportError, close, link};

/// Stops a QUIC session's links when the session is dropped.
struct QuicLinks {
    endpoint: Endpoint,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for QuicLinks {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.endpoint
            .close(VarInt::from_u32(close::SHUTDOWN), b"client done");
    }
}

/// A session over QUIC to every validator `network` names (link `i` to
/// [`Network::known_addresses`]`[i]`: the genesis set, then the `[[peers]]` added since),
/// authenticated as `keypair`. Links connect (and reconnect) in the background on the
/// current tokio runtime.
pub fn connect(network: &Network, keypair: &Keypair) -> Result<Session, TransportError> {
    connect_to(network, &network.known_addresses(), keypair)
}

/// A session over QUIC to `targets` (each a key and address: validators, or a gateway),
/// link `i` to `targets[i]`, authenticated as `keypair`.
pub fn connect_to(
    network: &Network,
    targets: &[(PublicKey, SocketAddr)],
    keypair: &Keypair,
) -> Result<Session, TransportError> {
    let links: Vec<_> = targets
        .iter()
        .map(|(key, addr)| (*key, *addr, keypair))
        .collect();
    open(network, &links)
}

/// A session of one link per key of `keypairs`, all to `target` (a gateway's key and
/// address): link `i` is authenticated as `keypairs[i]`, so a load generator carries many
/// clients, each on a connection of its own (a gateway serves a client on the connection
/// whose handshake proved the client's key).
pub fn connect_as(
    network: &Network,
    target: (PublicKey, SocketAddr),
    keypairs: &[Keypair],
) -> Result<Session, TransportError> {
    let links: Vec<_> = keypairs
        .iter()
        .map(|keypair| (target.0, target.1, keypair))
        .collect();
    open(network, &links)
}

/// A session of a link per entry of `links` (the peer's key and address, and the key to
/// authenticate as), all over one UDP socket.
fn open(
    network: &Network,
    links: &[(PublicKey, SocketAddr, &Keypair)],
) -> Result<Session, TransportError> {
    let Some((_, first, _)) = links.first() else {
        return Err(TransportError::Quic("nothing to connect to".into()));
    };
    let endpoint = transport::client_endpoint(*first)?;
    let (mut queues, ends) = Session::channels(links.len());
    let outgoing = std::mem::take(&mut queues.outgoing);
    let max = network.core.max_message_bytes + 64;
    let mut tasks = Vec::new();
    for ((index, (key, addr, keypair)), queue) in links.iter().enumerate().zip(outgoing) {
        let config = transport::client_config(keypair, *key, ALPN_CLIENT)?;
        let inbound = queues.inbound_for(index);
        tasks.push(tokio::spawn(link(
            endpoint.clone(),
            *addr,
            config,
            queue,
            max,
            Some(inbound),
            None,
        )));
    }
    Ok(Session::new(ends, Box::new(QuicLinks { endpoint, tasks })))
}

/// The transports a session can run over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// QUIC (quinn, TLS 1.3 with pinned ed25519 raw public keys).
    Quic,
    /// TCP (Noise channels whose ends prove their ed25519 keys).
    Tcp,
}

/// A session to every validator of `network` over `transport`.
pub fn connect_over(
    transport: Transport,
    network: &Network,
    keypair: &Keypair,
) -> Result<Session, TransportError> {
    match transport {
        Transport::Quic => connect(network, keypair),
        Transport::Tcp => Ok(pbft_tcp::client::connect(network, keypair)),
    }
}

/// Why a client operation did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ClientFailure {
    /// No result within the time allowed; says what to check (the cluster, or the gateway).
    #[error("no result in time (is {0} up?)")]
    Timeout(&'static str),
    /// The operation is over the network's `max_request_bytes`: every validator would refuse
    /// it, so it is not sent.
    #[error("operation of {len} bytes; the network takes at most {max}")]
    TooLarge {
        /// The operation's size, in bytes.
        len: usize,
        /// The network's limit, in bytes.
        max: usize,
    },
    /// The links are gone.
    #[error("connections closed")]
    Closed,
    /// The gateway refused the request, and said why.
    #[error("the gateway refused the request: {0}")]
    Refused(String),
    /// f + 1 validators refused the request for the same reason (signed refusals, so at least
    /// one honest validator says so); the message says what to do.
    #[error(
        "the validators refused request {client_seq}: {reason}{}",
        advice(reason)
    )]
    Rejected {
        /// The request's number.
        client_seq: u64,
        /// Why.
        reason: RefusalReason,
    },
    /// The request's number was spent by another client with the same key while this one
    /// ran: numbers from two places at once collide, and requests of both get lost.
    #[error(
        "request number {client_seq} is spent: this key's requests up to number {last} executed, and not from here; is this key in use by another client at the same time? (each client process needs a key of its own)"
    )]
    KeyInUse {
        /// The number this client used.
        client_seq: u64,
        /// The highest number f + 1 validators hold spent.
        last: u64,
    },
}

/// What to do about a refusal, for the person reading it.
fn advice(reason: &RefusalReason) -> &'static str {
    match reason {
        RefusalReason::Stale { .. } | RefusalReason::NumberTaken => {
            "; is this key in use by another client at the same time? (each client process needs a key of its own)"
        }
        RefusalReason::TooLarge { .. } => {
            "; split the value, or raise max_request_bytes in the network's config"
        }
        RefusalReason::UnknownGateway => {
            "; the validators no longer take this gateway's attestations: use another gateway of network.toml"
        }
        RefusalReason::Overloaded => "; retry later",
    }
}

/// A client of a pbft cluster, over either transport.
pub struct ClusterClient {
    session: Session,
    /// The key at the other end of each of the session's links.
    targets: Vec<PublicKey>,
    client: Client,
    start: Instant,
    /// The session's one link goes to a gateway, which routes and retransmits.
    via_gateway: bool,
    /// The network's largest operation, in bytes.
    max_request_bytes: usize,
    /// Whether the validators may still renumber this client: until a request of this
    /// session executed or was renumbered once. A number found spent after that was spent by
    /// someone else ([`ClientFailure::KeyInUse`]).
    may_renumber: bool,
}

/// First request number of a new client key: microseconds since the epoch, so numbers keep
/// growing across restarts of a client that reuses its key.
pub fn first_client_seq() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |since| since.as_micros() as u64)
}

impl ClusterClient {
    /// A client of `network` with `keypair`, over `transport`.
    pub fn connect(
        transport: Transport,
        network: &Network,
        keypair: Keypair,
    ) -> Result<ClusterClient, TransportError> {
        Self::connect_numbered(transport, network, keypair, first_client_seq())
    }

    /// [`ClusterClient::connect`], its first request numbered `first_seq` (a request
    /// prepared earlier, whose number approvals signed).
    pub fn connect_numbered(
        transport: Transport,
        network: &Network,
        keypair: Keypair,
        first_seq: u64,
    ) -> Result<ClusterClient, TransportError> {
        let session = connect_over(transport, network, &keypair)?;
        let targets = network
            .known_addresses()
            .iter()
            .map(|(key, _)| *key)
            .collect();
        Ok(ClusterClient::over(
            session,
            targets,
            network,
            (keypair, first_seq),
            false,
        ))
    }

    /// A client of `network` with `keypair` that sends through `gateway` (its key and
    /// address), over QUIC: the gateway routes its requests and hands it the f + 1 replies
    /// it checks itself.
    pub fn connect_via_gateway(
        network: &Network,
        gateway: (PublicKey, SocketAddr),
        keypair: Keypair,
    ) -> Result<ClusterClient, TransportError> {
        let session = connect_to(network, &[gateway], &keypair)?;
        // The claim goes first: validators send this client's replies to the gateway.
        session.send(
            0,
            &ClientFrame::relay(&network.core.chain_id, &keypair, &gateway.0),
        );
        Ok(ClusterClient::over(
            session,
            vec![gateway.0],
            network,
            (keypair, first_client_seq()),
            true,
        ))
    }

    fn over(
        session: Session,
        targets: Vec<PublicKey>,
        network: &Network,
        (keypair, first_seq): (Keypair, u64),
        via_gateway: bool,
    ) -> Self {
        let client = Client::new(
            network.core.chain_id,
            keypair,
            network.validators.clone(),
            first_seq,
        );
        // Through a gateway of an attested network, the gateway signs: the client need not.
        let client = match via_gateway && network.attested() {
            true => client.unsigned(),
            false => client,
        };
        ClusterClient {
            session,
            targets,
            client,
            start: Instant::now(),
            via_gateway,
            max_request_bytes: network.core.max_request_bytes,
            may_renumber: true,
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64 + 1
    }

    /// Orders and executes `op`; returns once f + 1 validators signed the same result.
    pub async fn execute(
        &mut self,
        op: Vec<u8>,
        timeout: Duration,
    ) -> Result<(Outcome, Digest), ClientFailure> {
        if op.len() > self.max_request_bytes {
            return Err(ClientFailure::TooLarge {
                len: op.len(),
                max: self.max_request_bytes,
            });
        }
        let request = self.client.request(self.now(), op);
        self.send_and_wait(request, timeout).await
    }

    /// Sends the outstanding request again (the one an [`ClusterClient::execute`] that
    /// failed left, with its number) and waits for its result: after a gateway failed,
    /// through another ([`ClusterClient::switch_gateway`]). The number is the same, so the
    /// request executes at most once: if it did already, the validators answer with the
    /// result it had.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::execute`]; [`ClientFailure::Closed`] if nothing is outstanding.
    pub async fn resume(&mut self, timeout: Duration) -> Result<(Outcome, Digest), ClientFailure> {
        let request = self
            .client
            .outstanding()
            .cloned()
            .ok_or(ClientFailure::Closed)?;
        self.client.track(self.now(), request.clone());
        self.send_and_wait(request, timeout).await
    }

    /// Connects through `gateway` (its key and address) instead, keeping the client's
    /// numbering and its outstanding request (send it with [`ClusterClient::resume`]).
    ///
    /// # Errors
    ///
    /// The transport cannot open the connection.
    pub fn switch_gateway(
        &mut self,
        network: &Network,
        gateway: (PublicKey, SocketAddr),
        keypair: &Keypair,
    ) -> Result<(), TransportError> {
        let session = connect_to(network, &[gateway], keypair)?;
        session.send(
            0,
            &ClientFrame::relay(&network.core.chain_id, keypair, &gateway.0),
        );
        self.session = session;
        self.targets = vec![gateway.0];
        self.via_gateway = true;
        Ok(())
    }

    async fn send_and_wait(
        &mut self,
        request: pbft_core::Request,
        timeout: Duration,
    ) -> Result<(Outcome, Digest), ClientFailure> {
        let give_up = tokio::time::Instant::now() + timeout;
        let mut digest = request.digest(&self.client_chain());
        self.send_first(request);
        // The latest refusal f + 1 validators agreed on that leaves the request outstanding
        // (an overloaded cluster): what a timeout reports instead of silence.
        let mut overloaded = None;
        loop {
            let retry = self.client.poll_timeout().map_or(give_up, |at| {
                tokio::time::Instant::from_std(self.start + Duration::from_millis(at))
            });
            tokio::select! {
                frame = self.session.recv() => match frame {
                    Some((_, ServerFrame::Message(bytes))) => match self.client.handle_message(&bytes) {
                        Ok(Some(Answer::Executed(outcome))) => {
                            self.may_renumber = false;
                            return Ok((outcome, digest));
                        }
                        Ok(Some(Answer::Refused(refused))) => {
                            match self.on_refused(refused)? {
                                Some(request) => {
                                    digest = request.digest(&self.client_chain());
                                    self.send_first(request);
                                }
                                None => overloaded = Some(refused),
                            }
                        }
                        Ok(None) | Err(_) => {}
                    },
                    Some((_, ServerFrame::Refused { client_seq: refused, reason }))
                        if self.via_gateway && (refused == self.outstanding_seq() || refused == 0) =>
                    {
                        return Err(ClientFailure::Refused(reason));
                    }
                    Some(_) => {}
                    None => return Err(ClientFailure::Closed),
                },
                () = tokio::time::sleep_until(retry.min(give_up)) => {
                    if tokio::time::Instant::now() >= give_up {
                        if let Some(Refused { client_seq, reason }) = overloaded {
                            return Err(ClientFailure::Rejected { client_seq, reason });
                        }
                        let what = match self.via_gateway {
                            true => "the gateway",
                            false => "the cluster",
                        };
                        return Err(ClientFailure::Timeout(what));
                    }
                    if let Some(request) = self.client.handle_timeout(self.now()) {
                        self.session.broadcast(&ClientFrame::Message(Message::Request(request).encode()));
                    }
                }
            }
        }
    }

    /// Sends a request the first time: through the gateway, or to the primary of the epoch
    /// the client follows if it has a link to it, else to every validator (backups forward
    /// it).
    fn send_first(&mut self, request: pbft_core::Request) {
        let frame = ClientFrame::Message(Message::Request(request).encode());
        let primary = self.client.validators().key(self.client.primary());
        let to = match self.via_gateway {
            true => Some(0),
            false => primary.and_then(|key| {
                let key = key.public_key();
                self.targets.iter().position(|target| *target == key)
            }),
        };
        match to {
            Some(to) => {
                self.session.send(to, &frame);
            }
            None => self.session.broadcast(&frame),
        }
    }

    /// The number of the request awaiting replies (0: none).
    fn outstanding_seq(&self) -> u64 {
        self.client
            .outstanding()
            .map_or(0, |request| request.client_seq)
    }

    /// What a refusal f + 1 validators agreed on leads to: the request renumbered above the
    /// spent numbers, to send (once per session, before anything executed: numbers from a
    /// clock that was ahead, or from a previous run); `None` to keep waiting (overloaded
    /// validators may take a retransmission); or the failure to report.
    fn on_refused(
        &mut self,
        refused: Refused,
    ) -> Result<Option<pbft_core::Request>, ClientFailure> {
        let Refused { client_seq, reason } = refused;
        match reason {
            RefusalReason::Overloaded => Ok(None),
            RefusalReason::Stale { last } if self.may_renumber => {
                self.may_renumber = false;
                tracing::info!(
                    "request number {client_seq} is spent (this key's requests up to {last} executed): renumbering above it"
                );
                Ok(self.client.renumber_above(self.now(), last))
            }
            RefusalReason::Stale { last } => Err(ClientFailure::KeyInUse { client_seq, last }),
            reason => Err(ClientFailure::Rejected { client_seq, reason }),
        }
    }

    fn client_chain(&self) -> pbft_core::ChainId {
        self.client.chain()
    }

    /// The key requests are signed with.
    pub fn public_key(&self) -> PublicKey {
        self.client.public_key()
    }

    /// The number the next request will carry.
    pub fn next_client_seq(&self) -> u64 {
        self.client.next_seq()
    }

    /// Numbers the next request at least `seq` ([`pbft_core::Client::number_from`]).
    pub fn number_from(&mut self, seq: u64) {
        self.client.number_from(seq);
    }

    /// The validator set of the epoch the client follows.
    pub fn validators(&self) -> &ValidatorSet {
        self.client.validators()
    }

    /// The keys at the other ends of the session's links, by link.
    pub fn targets(&self) -> &[PublicKey] {
        &self.targets
    }

    /// Whether the validator at link `index` sent a frame this build could not decode
    /// ([`Session::unreadable`]).
    pub fn unreadable(&self, index: usize) -> bool {
        self.session.unreadable(index)
    }

    /// Asks every validator for the epoch changes since the one the client follows, checks
    /// each against the set it ends ([`pbft_core::verify_epoch_change`]) and follows them,
    /// until every link answered without a later epoch, or `timeout` passes. An answer counts
    /// once per link and per question (it echoes the epoch asked after), so a Byzantine
    /// validator can hold back changes, which the others then give, but neither forge one
    /// nor end a round early. Returns the changes it followed, oldest first, and how many
    /// links answered the last question.
    pub async fn follow_epochs(&mut self, timeout: Duration) -> (Vec<EpochChange>, usize) {
        let mut followed = Vec::new();
        let give_up = tokio::time::Instant::now() + timeout;
        let mut answered = std::collections::HashSet::new();
        'ask: loop {
            let asked = self.client.validators().epoch();
            self.session
                .broadcast(&ClientFrame::Epochs { after: asked });
            answered.clear();
            while answered.len() < self.targets.len() {
                tokio::select! {
                    frame = self.session.recv() => match frame {
                        Some((link, ServerFrame::Epochs { after, changes })) if after == asked => {
                            answered.insert(link);
                            for change in changes {
                                if change.epoch() == self.client.validators().epoch() + 1
                                    && self.client.enter_epoch(&change).is_ok()
                                {
                                    followed.push(change);
                                }
                            }
                            if self.client.validators().epoch() > asked {
                                continue 'ask;
                            }
                        }
                        Some(_) => {}
                        None => break 'ask,
                    },
                    () = tokio::time::sleep_until(give_up) => break 'ask,
                }
            }
            break;
        }
        (followed, answered.len())
    }

    /// Asks every validator at once where it is; by link, `None` for each that does not
    /// answer within `timeout`.
    pub async fn statuses(&mut self, timeout: Duration) -> Vec<Option<NodeStatus>> {
        let mut answers = vec![None; self.targets.len()];
        self.session.broadcast(&ClientFrame::Status);
        let give_up = tokio::time::Instant::now() + timeout;
        while answers.iter().any(Option::is_none) {
            tokio::select! {
                frame = self.session.recv() => match frame {
                    Some((from, ServerFrame::Status(status))) => {
                        if let Some(slot) = answers.get_mut(from) {
                            *slot = Some(status);
                        }
                    }
                    Some(_) => {}
                    None => break,
                },
                () = tokio::time::sleep_until(give_up) => break,
            }
        }
        answers
    }

    /// Asks one validator where it is; `None` if it does not answer in time.
    pub async fn status(&mut self, validator: usize, timeout: Duration) -> Option<NodeStatus> {
        self.session.send(validator, &ClientFrame::Status);
        let give_up = tokio::time::Instant::now() + timeout;
        loop {
            tokio::select! {
                frame = self.session.recv() => match frame? {
                    (from, ServerFrame::Status(status)) if from == validator => return Some(status),
                    _ => {}
                },
                () = tokio::time::sleep_until(give_up) => return None,
            }
        }
    }

    /// Fetches the QC and inclusion proof of a committed request from any validator that
    /// still holds it, and checks it before returning it.
    pub async fn proof(
        &mut self,
        seq: u64,
        request: Digest,
        validators: &ValidatorSet,
        timeout: Duration,
    ) -> Option<ProofBundle> {
        self.session.broadcast(&ClientFrame::Proof { seq, request });
        let give_up = tokio::time::Instant::now() + timeout;
        let chain = self.client_chain();
        loop {
            tokio::select! {
                frame = self.session.recv() => match frame? {
                    (_, ServerFrame::Proof(Some(bundle))) if bundle.verify(&chain, validators).is_ok() => {
                        return Some(*bundle);
                    }
                    _ => {}
                },
                () = tokio::time::sleep_until(give_up) => return None,
            }
        }
    }
}
