//! Real `pbft node` processes on loopback, over each transport (one test body, run for
//! QUIC and for TCP): killed with SIGKILL at random moments (the primary included) and
//! restarted from their data dirs while a client writes, and fed bad input at their ports. Everything acknowledged must stay readable, the validators must
//! end in the same state, and no log may hold two signatures for one statement.

use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pbft_core::{Keypair, Message, Phase};
use pbft_host::kv::OpResult;
use pbft_host::node::logged_votes;
use pbft_quic::client::{ClusterClient, Transport};
use pbft_quic::identity::{ALPN_CLIENT, ALPN_PEER};
use pbft_quic::transport::{self, close};
use pbft_tcp::secure::{Role, initiate};

#[macro_use]
mod common;
use common::{Cluster, VALIDATORS, get, put, scrape_whole};

/// A small deterministic generator for kill moments and victims.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

type Statement = (usize, Phase, u64, u64);

/// Adds the votes in a stopped node's log (its own, and the primaries' pre-prepares it
/// accepted); panics on a second digest for a statement by one signer.
fn audit(cluster: &Cluster, index: usize, signed: &mut BTreeMap<Statement, pbft_core::Digest>) {
    for vote in logged_votes(&cluster.data_dir(index)).unwrap() {
        let signer = usize::from(vote.replica.0);
        let statement = (signer, vote.phase, vote.view, vote.seq);
        let previous = signed.entry(statement).or_insert(vote.digest);
        assert_eq!(
            *previous, vote.digest,
            "validator {signer} signed two digests for {statement:?} (in the log of {index})"
        );
    }
}

/// Every acknowledged write reads back through consensus, and all validators reach the same
/// seq with the same state (within 30 s).
async fn reads_back_and_converges(
    cluster: &Cluster,
    client: &mut ClusterClient,
    acknowledged: &[(String, String)],
) {
    // Every acknowledged write reads back through consensus.
    for (key, value) in acknowledged {
        let (outcome, _) = client.execute(get(key), TIMEOUT).await.unwrap();
        assert_eq!(
            OpResult::decode(&outcome.result),
            Some(OpResult::Value(Some(value.as_bytes().to_vec()))),
            "{key}"
        );
    }
    // All validators reach the same seq with the same state.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut statuses = Vec::new();
        for index in 0..VALIDATORS {
            statuses.push(client.status(index, Duration::from_secs(2)).await);
        }
        let statuses: Vec<_> = statuses.into_iter().flatten().collect();
        if statuses.len() == VALIDATORS
            && statuses
                .windows(2)
                .all(|w| w[0].state_seq == w[1].state_seq && w[0].state == w[1].state)
        {
            break;
        }
        if Instant::now() >= deadline {
            // Say why: the end of each node's log.
            let logs: Vec<String> = (0..VALIDATORS)
                .map(|index| {
                    let log = cluster.log(index);
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    format!("node {index}:\n{}", tail.join("\n"))
                })
                .collect();
            panic!(
                "validators did not converge: {statuses:?}\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

over_both_transports! {
    quic_killed_validators_lose_no_acknowledged_write,
    tcp_killed_validators_lose_no_acknowledged_write
        => killed_validators_lose_no_acknowledged_write;
    quic_whole_cluster_restarts_lose_no_acknowledged_write,
    tcp_whole_cluster_restarts_lose_no_acknowledged_write
        => whole_cluster_restarts_lose_no_acknowledged_write;
    quic_bad_input_at_every_port_is_refused_and_counted,
    tcp_bad_input_at_every_port_is_refused_and_counted
        => bad_input_at_every_port_is_refused_and_counted;
    quic_a_wiped_validator_catches_up_every_time,
    tcp_a_wiped_validator_catches_up_every_time
        => a_wiped_validator_catches_up_every_time;
}

/// What an operator does to replace a broken disk: stop a validator, delete its data dir,
/// let the others commit a few hundred seqs, start it again with the cluster idle. It must
/// reach their executed seq (a checkpoint's state by transfer, then the batches after it)
/// every time; once it stayed behind in about one try of five, so this tries five times.
async fn a_wiped_validator_catches_up_every_time(transport: Transport) {
    const WRITERS: u8 = 16;
    const TRIES: usize = 5;
    let mut cluster = Cluster::start("wipe-test", transport);
    let mut writers: Vec<ClusterClient> = (0..WRITERS).map(|i| cluster.client(100 + i)).collect();
    let wiped = VALIDATORS - 1;
    for attempt in 0..TRIES {
        cluster.kill(wiped);
        let dir = cluster.data_dir(wiped);
        if let Err(err) = std::fs::remove_dir_all(&dir) {
            // Once seen failing in a full run and never alone: say why, and what is there.
            let left: Vec<_> = std::fs::read_dir(&dir)
                .map(|entries| entries.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            panic!(
                "try {attempt}: removing {} failed: {err}; left: {left:?}",
                dir.display()
            );
        }
        let until = Instant::now() + Duration::from_secs(3);
        let mut load = tokio::task::JoinSet::new();
        for (index, mut writer) in writers.drain(..).enumerate() {
            load.spawn(async move {
                let mut write = 0;
                while Instant::now() < until {
                    let key = format!("w{attempt}-{index}-{write}");
                    writer
                        .execute(put(&key, "v"), TIMEOUT)
                        .await
                        .unwrap_or_else(|err| panic!("write {key}: {err}"));
                    write += 1;
                }
                writer
            });
        }
        while let Some(writer) = load.join_next().await {
            writers.push(writer.unwrap());
        }
        let executed = cluster.metric(0, "pbft_executed_seq");
        cluster.spawn(wiped);
        let started = Instant::now();
        loop {
            let own = cluster.metric(wiped, "pbft_executed_seq");
            if own >= executed {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{transport:?} try {attempt}: the wiped validator is at seq {own} of {executed} after 60 s:\n{}",
                cluster.log(wiped)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "{transport:?} try {attempt}: caught up to seq {executed} in {:?}",
            started.elapsed()
        );
    }
}

const TIMEOUT: Duration = Duration::from_secs(20);

async fn killed_validators_lose_no_acknowledged_write(transport: Transport) {
    let mut cluster = Cluster::start("kill-test", transport);
    let mut client = cluster.client(77);
    let mut rng = Lcg(2026);
    let mut signed = BTreeMap::new();
    let mut acknowledged = Vec::new();
    let mut kills = 0;
    let mut primary_kills = 0;
    let mut view = 0;
    let mut down: Option<(usize, Instant)> = None;
    let mut next_kill = Instant::now() + Duration::from_millis(300);
    let started = Instant::now();
    let mut write = 0;
    while kills < 24 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "only {kills} kills in 120 s"
        );
        // Restart a killed node after a pause; kill another at a random moment. One at a
        // time: four validators tolerate one fault.
        if let Some((index, at)) = down
            && Instant::now() >= at
        {
            audit(&cluster, index, &mut signed);
            cluster.spawn(index);
            down = None;
            next_kill = Instant::now() + Duration::from_millis(200 + rng.next(600));
        }
        if down.is_none() && Instant::now() >= next_kill {
            // Every third kill takes the primary of the view the last write committed in.
            let victim = if kills % 3 == 0 {
                primary_kills += 1;
                (view % VALIDATORS as u64) as usize
            } else {
                rng.next(VALIDATORS as u64) as usize
            };
            cluster.kill(victim);
            kills += 1;
            down = Some((
                victim,
                Instant::now() + Duration::from_millis(100 + rng.next(500)),
            ));
        }
        let (key, value) = (format!("k{write}"), format!("v{write}"));
        let (outcome, _) = client
            .execute(put(&key, &value), TIMEOUT)
            .await
            .unwrap_or_else(|err| panic!("write {write} after {kills} kills: {err}"));
        assert_eq!(OpResult::decode(&outcome.result), Some(OpResult::Done));
        view = outcome.view;
        acknowledged.push((key, value));
        write += 1;
    }
    if let Some((index, _)) = down {
        audit(&cluster, index, &mut signed);
        cluster.spawn(index);
    }
    reads_back_and_converges(&cluster, &mut client, &acknowledged).await;
    // A graceful stop exits cleanly; then no log holds two digests for one statement.
    for index in 0..VALIDATORS {
        assert!(
            cluster.stop(index),
            "node {index} did not stop cleanly:\n{}",
            cluster.log(index)
        );
        audit(&cluster, index, &mut signed);
    }
    assert!(primary_kills >= 8);
    eprintln!(
        "{transport:?}: {} writes acknowledged and read back across {kills} kills ({primary_kills} of the primary); {} statements audited",
        acknowledged.len(),
        signed.len()
    );
}

/// Power cuts: all four validators SIGKILLed at the same moment, at a random point of a
/// stream of writes, then started again (together, or staggered over up to 3 s). Each comes
/// back from its own data dir; writes resume, and everything acknowledged before any cut
/// reads back at the end.
async fn whole_cluster_restarts_lose_no_acknowledged_write(transport: Transport) {
    const ROUNDS: usize = 10;
    let cluster = Arc::new(Mutex::new(Cluster::start("power-cut", transport)));
    let mut client = cluster.lock().unwrap().client(78);
    let mut acknowledged = Vec::new();
    let mut recoveries = Vec::new();
    let mut write = 0;
    for round in 0..ROUNDS {
        // The cut happens on another thread while this one keeps writing; it notes when the
        // last node was started again.
        let restarted: Arc<Mutex<Option<Instant>>> = Arc::default();
        let cutter = {
            let cluster = cluster.clone();
            let restarted = restarted.clone();
            std::thread::spawn(move || {
                let mut rng = Lcg(7 + round as u64);
                std::thread::sleep(Duration::from_millis(300 + rng.next(900)));
                let mut cluster = cluster.lock().unwrap();
                for index in 0..VALIDATORS {
                    cluster.kill(index);
                }
                let staggered = round % 2 == 1;
                let mut delays: Vec<u64> = (0..VALIDATORS)
                    .map(|_| if staggered { rng.next(3_000) } else { 0 })
                    .collect();
                delays.sort_unstable();
                let cut = Instant::now();
                for (index, delay) in delays.into_iter().enumerate() {
                    let at = cut + Duration::from_millis(delay);
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                    cluster.spawn(index);
                }
                *restarted.lock().unwrap() = Some(Instant::now());
            })
        };
        // Write until the cluster is back and has committed a few writes after the cut.
        let mut written_after = 0;
        while written_after < 5 {
            let (key, value) = (format!("p{write}"), format!("v{write}"));
            let (outcome, _) = client
                .execute(put(&key, &value), TIMEOUT)
                .await
                .unwrap_or_else(|err| panic!("write {write} in round {round}: {err}"));
            let done = Instant::now();
            assert_eq!(OpResult::decode(&outcome.result), Some(OpResult::Done));
            acknowledged.push((key, value));
            write += 1;
            if let Some(at) = *restarted.lock().unwrap() {
                if written_after == 0 {
                    recoveries.push(done.duration_since(at));
                }
                written_after += 1;
            }
        }
        cutter.join().unwrap();
    }
    let mut cluster = Arc::into_inner(cluster)
        .expect("the cutter thread is done")
        .into_inner()
        .unwrap();
    reads_back_and_converges(&cluster, &mut client, &acknowledged).await;
    let mut signed = BTreeMap::new();
    for index in 0..VALIDATORS {
        assert!(cluster.stop(index), "node {index} did not stop cleanly");
        audit(&cluster, index, &mut signed);
        let log = cluster.log(index);
        assert!(
            !log.contains("ERROR"),
            "node {index} logged an error:\n{log}"
        );
    }
    recoveries.sort_unstable();
    let ms = |d: &Duration| d.as_millis();
    eprintln!(
        "{transport:?}: {ROUNDS} whole-cluster SIGKILLs (odd rounds staggered over up to 3 s); {} writes acknowledged and read back; last restart -> first commit: min {} ms, median {} ms, max {} ms",
        acknowledged.len(),
        ms(&recoveries[0]),
        ms(&recoveries[recoveries.len() / 2]),
        ms(&recoveries[recoveries.len() - 1]),
    );
}

/// A raw connection a test opens to a node, through the transport's handshake as whoever
/// it likes, then writing bytes of its choosing inside the transport's encryption.
enum Probe {
    Quic {
        connection: quinn::Connection,
        send: quinn::SendStream,
    },
    Tcp {
        stream: smol::net::TcpStream,
        channel: pbft_tcp::secure::Channel,
    },
}

impl Probe {
    /// Connects to validator 0 as `keypair`, asking to be a validator (`peer`) or a client.
    /// `None` if the node refused during the handshake (TCP refuses there; QUIC closes
    /// right after it, see [`Probe::closed`]).
    async fn open(cluster: &Cluster, keypair: &Keypair, peer: bool) -> Option<Probe> {
        let addr = cluster.network.addresses[0];
        let server = cluster.key(0).public_key();
        match cluster.transport {
            Transport::Quic => {
                let alpn = if peer { ALPN_PEER } else { ALPN_CLIENT };
                let endpoint = transport::client_endpoint(addr).unwrap();
                let config = transport::client_config(keypair, server, alpn).unwrap();
                let connection = endpoint
                    .connect_with(config, addr, "pbft")
                    .unwrap()
                    .await
                    .ok()?;
                let (send, _) = connection.open_bi().await.ok()?;
                Some(Probe::Quic { connection, send })
            }
            Transport::Tcp => {
                let mut stream = smol::net::TcpStream::connect(addr).await.unwrap();
                let role = if peer { Role::Peer } else { Role::Client };
                let chain = cluster.network.core.chain_id;
                let channel = initiate(&mut stream, &chain, keypair, (role, None), &server)
                    .await
                    .ok()?;
                Some(Probe::Tcp { stream, channel })
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        match self {
            Probe::Quic { send, .. } => {
                let _ = send.write_all(bytes).await;
            }
            Probe::Tcp { stream, channel } => {
                let _ = channel.write(stream, bytes).await;
            }
        }
    }

    /// Ends the stream (a frame cut short stays cut short).
    async fn finish(&mut self) {
        match self {
            Probe::Quic { send, .. } => {
                let _ = send.finish();
            }
            Probe::Tcp { stream, .. } => {
                let _ = stream.shutdown(std::net::Shutdown::Write);
            }
        }
    }

    /// Waits until the node closes the connection; QUIC says why with a close code.
    async fn closed(self) -> Option<u64> {
        match self {
            Probe::Quic { connection, .. } => match connection.closed().await {
                quinn::ConnectionError::ApplicationClosed(close) => {
                    Some(close.error_code.into_inner())
                }
                _ => None,
            },
            Probe::Tcp {
                mut stream,
                channel,
            } => {
                while let Ok(Some(_)) = channel.read(&mut stream).await {}
                None
            }
        }
    }
}

/// Inputs the core itself refused (not the transport), all reasons.
fn core_rejections(cluster: &Cluster) -> u64 {
    const TRANSPORT: [&str; 5] = [
        "unknown_key",
        "oversized_frame",
        "truncated_frame",
        "bad_client_frame",
        "handshake_failed",
    ];
    scrape_whole(cluster.testnet.metrics[0])
        .lines()
        .filter(|line| line.starts_with("pbft_messages_rejected_total{"))
        .filter(|line| !TRANSPORT.iter().any(|t| line.contains(&format!("\"{t}\""))))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn rss_kib(child: &Child) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn bad_input_at_every_port_is_refused_and_counted(transport: Transport) {
    let mut cluster = Cluster::start("bad-input", transport);
    let mut client = cluster.client(78);
    // QUIC closes a refused connection with a code that says why; TCP just closes it.
    let expect_code = |code: u32| (transport == Transport::Quic).then_some(u64::from(code));
    // A committed write's QC and inclusion proof verify offline (`pbft verify-qc`), and a
    // tampered one does not.
    let (outcome, digest) = client.execute(put("proved", "yes"), TIMEOUT).await.unwrap();
    let bundle = client
        .proof(outcome.seq, digest, &cluster.network.validators, TIMEOUT)
        .await
        .expect("a validator returns a valid proof");
    let proof_file = cluster.dir.path().join("proved.qc");
    std::fs::write(&proof_file, bundle.encode()).unwrap();
    let verify = |file: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_pbft"))
            .arg("verify-qc")
            .arg("--config")
            .arg(&cluster.testnet.network)
            .arg(file)
            .output()
            .unwrap()
    };
    let verified = verify(&proof_file);
    assert!(verified.status.success(), "{verified:?}");
    let mut forged = bundle.clone();
    forged.request.op = put("proved", "no");
    std::fs::write(&proof_file, forged.encode()).unwrap();
    assert!(!verify(&proof_file).status.success());
    // Validator 3's key, held by this test once validator 3 is stopped: garbage frames,
    // replayed votes, an oversized length prefix, a truncated frame. The votes to replay
    // come from its log, so it must have voted: a validator that joined late catches up
    // by fetching committed batches and signs nothing for them, so write until its log
    // holds votes (each round restarts it), each round once it caught up with validator 0
    // (on a loaded machine a restarted validator still fetching signs nothing).
    let mut replayed: Vec<Vec<u8>> = Vec::new();
    for round in 0..8 {
        let connected = Instant::now() + TIMEOUT;
        while cluster.metric(3, "pbft_peers_connected") < 3 && Instant::now() < connected {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let target = client.status(0, TIMEOUT).await.map_or(0, |s| s.executed);
        while client
            .status(3, TIMEOUT)
            .await
            .is_none_or(|status| status.executed < target)
            && Instant::now() < connected
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut last = 0;
        for index in 0..5 {
            let (outcome, _) = client
                .execute(put(&format!("before{round}.{index}"), "1"), TIMEOUT)
                .await
                .unwrap();
            last = outcome.seq;
        }
        while client
            .status(3, TIMEOUT)
            .await
            .is_none_or(|status| status.executed < last)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(cluster.stop(3));
        replayed = logged_votes(&cluster.data_dir(3))
            .unwrap()
            .into_iter()
            .map(|vote| Message::Vote(vote).encode())
            .collect();
        if !replayed.is_empty() {
            break;
        }
        cluster.spawn(3);
    }
    assert!(!replayed.is_empty(), "validator 3 never voted");
    // An unknown key asking to be a validator: refused before a byte is read.
    let stranger = Keypair::from_seed(&[200; 32]);
    if let Some(probe) = Probe::open(&cluster, &stranger, true).await {
        assert_eq!(probe.closed().await, expect_code(close::UNKNOWN_KEY));
    }

    let insider = cluster.key(3);
    let rss_before = rss_kib(cluster.children[0].as_ref().unwrap());
    let mut probe = Probe::open(&cluster, &insider, true).await.unwrap();
    let mut stream = Vec::new();
    for index in 0..5_000u32 {
        let garbage: Vec<u8> = (0..200).map(|i| (index * 7 + i) as u8).collect();
        stream.extend(pbft_host::framing::encode(&garbage, 1 << 20).unwrap());
    }
    for vote in &replayed {
        for _ in 0..5 {
            stream.extend(pbft_host::framing::encode(vote, 1 << 20).unwrap());
        }
    }
    let received_before = cluster.metric(0, "pbft_messages_received_total");
    let rejected_before = core_rejections(&cluster);
    probe.write(&stream).await;
    let frames = 5_000 + 5 * replayed.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.metric(0, "pbft_messages_received_total") < received_before + frames {
        assert!(Instant::now() < deadline, "frames did not reach the core");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every frame reached the core and nearly all were refused (a few random ones decode
    // as an unsigned status, which is harmless); the replays among them.
    let refused = core_rejections(&cluster) - rejected_before;
    assert!(refused >= frames * 9 / 10, "{refused} of {frames} refused");
    // The oversized prefix ends the connection.
    probe.write(&u32::MAX.to_be_bytes()).await;
    assert_eq!(probe.closed().await, expect_code(close::BAD_FRAME));
    // A frame cut short by the end of its stream.
    let mut probe = Probe::open(&cluster, &insider, true).await.unwrap();
    probe.write(&100u32.to_be_bytes()).await;
    probe.write(&[1; 10]).await;
    probe.finish().await;
    // The same garbage on the client port, as a client.
    let mut garbler = Probe::open(&cluster, &stranger, false).await.unwrap();
    // A relay claim for a client whose key did not sign it diverts nothing.
    let victim = Keypair::from_seed(&[79; 32]);
    let claim = pbft_host::wire::ClientFrame::relay(
        &cluster.network.core.chain_id,
        &victim,
        &cluster.key(1).public_key(), // signed for another relay than this connection
    );
    garbler
        .write(&pbft_host::framing::encode(&claim.encode(), 1 << 20).unwrap())
        .await;
    let whole_frames = 490 * (4 + 200);
    garbler.write(&stream[..whole_frames]).await;
    garbler.write(&u32::MAX.to_be_bytes()).await;
    assert_eq!(garbler.closed().await, expect_code(close::BAD_FRAME));

    // The node keeps serving: a write commits with validator 3 still down.
    client.execute(put("after", "2"), TIMEOUT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rejected = |reason: &str| {
        cluster.metric(
            0,
            &format!("pbft_messages_rejected_total{{reason=\"{reason}\"}}"),
        )
    };
    assert!(rejected("unknown_key") >= 1);
    assert!(rejected("oversized_frame") >= 2);
    assert!(rejected("truncated_frame") >= 1);
    assert!(rejected("bad_client_frame") >= 1);
    // The forged claim is refused either way: its signature fails, or (when the garbage
    // after it closed the connection before the node took it) it names a connection that
    // is gone, and no signature is checked for it.
    assert_eq!(
        rejected("bad_relay_signature") + rejected("relay_connection_closed"),
        1
    );
    let rss_after = rss_kib(cluster.children[0].as_ref().unwrap());
    assert!(
        rss_after < rss_before + 64 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    eprintln!(
        "{transport:?}: node 0 refused {refused} of {frames} frames from a validator key, and: unknown_key {}, oversized {}, truncated {}, bad client frames {}; RSS {rss_before} -> {rss_after} KiB",
        rejected("unknown_key"),
        rejected("oversized_frame"),
        rejected("truncated_frame"),
        rejected("bad_client_frame"),
    );
}
