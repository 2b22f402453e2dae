//! `pbft`: run a validator, a local cluster, a client, a benchmark or a demo.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use pbft_core::Keypair;
use pbft_core::SetChange;
use pbft_host::config::{
    load_config, load_gateway_config, load_network, parse_public_key, random_seed, read_key_file,
    write_key_file,
};
use pbft_host::kv::KvStore;
use pbft_host::kv::{Op, OpResult};
use pbft_host::node::Node;
use pbft_host::wire::ProofBundle;
use pbft_quic::bench::{self, BenchOptions};
use pbft_quic::client::{ClusterClient, Transport};
use pbft_quic::{operator, status};

#[derive(Parser)]
#[command(
    name = "pbft",
    version,
    about = "Byzantine-fault-tolerant replicated key-value store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new key file (mode 0600) and print its public key.
    Keygen {
        /// The key file to create (never overwritten).
        out: PathBuf,
    },
    /// Write keys and configs for a local cluster on loopback.
    Testnet {
        /// Validators (4 tolerate one fault).
        #[arg(long, default_value_t = 4)]
        validators: usize,
        /// Directory for the files (created).
        #[arg(long)]
        dir: PathBuf,
        /// Network name.
        #[arg(long, default_value = "testnet")]
        chain: String,
        /// The transport the printed commands use (ports are free for both).
        #[arg(long, value_enum, default_value_t)]
        transport: TransportArg,
        /// Gateways to write configs for too (listed in network.toml for clients).
        #[arg(long, default_value_t = 0)]
        gateways: usize,
        /// How requests are authenticated (gateway-attested needs --gateways).
        #[arg(long, value_enum, default_value_t)]
        authentication: Authentication,
    },
    /// Run a gateway between clients and the validators (QUIC).
    Gateway {
        /// The gateway's config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a validator.
    Node {
        /// The node's config file.
        #[arg(long)]
        config: PathBuf,
        /// What carries the messages.
        #[arg(long, value_enum, default_value_t)]
        transport: TransportArg,
    },
    /// Put, get or delete a key through consensus.
    Client {
        /// A config naming the network (a node's or `network.toml`).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// The client's key file, made by `pbft keygen` (without this flag: a fresh key for
        /// this command only).
        #[arg(long, global = true)]
        key_file: Option<PathBuf>,
        /// Save the QC and inclusion proof of the request here.
        #[arg(long, global = true)]
        proof: Option<PathBuf>,
        /// Seconds to wait for f + 1 matching replies.
        #[arg(long, default_value_t = 10, global = true)]
        timeout: u64,
        /// What carries the messages.
        #[arg(long, value_enum, default_value_t, global = true)]
        transport: TransportArg,
        /// Send through gateway N of the config's `[[gateways]]` (QUIC) instead of to the
        /// validators.
        #[arg(long, value_name = "N", global = true)]
        via_gateway: Option<usize>,
        #[command(subcommand)]
        op: ClientOp,
    },
    /// Where each validator is (role, epoch, view, primary, executed seq, stable checkpoint,
    /// lag, peers, last commit), and whether the cluster can make progress: exits non-zero
    /// if fewer than 2f + 1 validators answer, or work waits and nothing committed for
    /// --max-commit-age (a health check).
    Status {
        /// A config naming the network.
        #[arg(long)]
        config: PathBuf,
        /// Seconds to wait for the validators' answers.
        #[arg(long, default_value_t = 1)]
        timeout: u64,
        /// Seconds without a commit, while work waits, that make the cluster unhealthy.
        #[arg(long, default_value_t = 30)]
        max_commit_age: u64,
        /// Print JSON (for scripts) instead of the table.
        #[arg(long)]
        json: bool,
        /// What carries the messages.
        #[arg(long, value_enum, default_value_t)]
        transport: TransportArg,
    },
    /// Change the validator set (or, gateway-attested, the gateways that attest) by
    /// governance: the change is approved, ordered, and takes effect at the next checkpoint
    /// boundary (a new epoch).
    Validator {
        /// A config naming the network.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// A governor's key file (a validator of the current epoch, or one of the network's
        /// `governors`): repeat until the rule's threshold (2f + 1 validators by default).
        #[arg(long = "approver", value_name = "KEY_FILE", global = true)]
        approvers: Vec<PathBuf>,
        /// Write the change to this file for each governor to approve where their key is
        /// (`pbft validator approve`), instead of submitting it.
        #[arg(long, value_name = "FILE", global = true)]
        propose: Option<PathBuf>,
        /// Seconds to wait for the decision.
        #[arg(long, default_value_t = 20, global = true)]
        timeout: u64,
        /// What carries the messages.
        #[arg(long, value_enum, default_value_t, global = true)]
        transport: TransportArg,
        #[command(subcommand)]
        change: ValidatorChange,
    },
    /// Check a saved QC and inclusion proof against a validator set, offline.
    VerifyQc {
        /// A config naming the network.
        #[arg(long)]
        config: PathBuf,
        /// The proof file `pbft client --proof` saved.
        proof: PathBuf,
    },
    /// Closed-loop load against a running cluster.
    Bench {
        /// A config naming the network.
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        load: Load,
    },
    /// Look at a stopped validator's data dir, or repair its write-ahead log.
    Data {
        #[command(subcommand)]
        action: DataAction,
    },
    /// Print a completion script for SHELL to standard output, e.g.
    /// `pbft completions bash > /usr/share/bash-completion/completions/pbft`.
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
    /// Print the man page of `pbft` (roff) to standard output, or write one page per
    /// command to a directory: `man ./pbft.1`.
    Man {
        /// Write pbft.1 and a page per command (pbft-node.1, pbft-data-inspect.1, ...) here
        /// (created if missing) instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Start a local 4-validator cluster in a temporary directory, load it, and stop it.
    Demo {
        #[command(flatten)]
        load: Load,
        /// Start a gateway too, and send the load through it.
        #[arg(long)]
        gateway: bool,
        /// How requests are authenticated (gateway-attested needs --gateway).
        #[arg(long, value_enum, default_value_t)]
        authentication: Authentication,
    },
}

#[derive(Subcommand)]
enum DataAction {
    /// What a stopped validator's data dir holds, read without changing a byte.
    ///
    /// The WAL's segments and records by kind, the view and stable checkpoint they show,
    /// the store's executed seq and size, and whether the WAL is clean or corrupt (where,
    /// and what a cut there loses). Exits non-zero if it is corrupt.
    Inspect {
        /// The data dir (the `data_dir` of the node's config).
        dir: PathBuf,
        /// Print JSON (for scripts) instead of the report.
        #[arg(long)]
        json: bool,
        /// The node's config (or network.toml): read the WAL with the record limit the
        /// node uses (needed only if the network's max_message_bytes is above 15 MiB).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Cut a WAL damaged in its middle at the damage, so the node starts again.
    ///
    /// Says where the damage is and what the cut loses, keeps a copy of the damaged segment
    /// (and moves the later ones) into DIR/damaged-<unix time>, and cuts only when
    /// confirmed (--yes, or y at the prompt on a terminal); otherwise changes nothing and
    /// exits non-zero. Start the node with rollback protection on afterwards (the
    /// default): the records cut may include statements it signed.
    Repair {
        /// The data dir (the `data_dir` of the node's config).
        dir: PathBuf,
        /// Cut without asking.
        #[arg(long)]
        yes: bool,
        /// The node's config (or network.toml): read the WAL with the record limit the
        /// node uses (needed only if the network's max_message_bytes is above 15 MiB).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// How requests are authenticated (a network config's `authentication`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
enum Authentication {
    /// Every client signs its requests; every validator checks every signature.
    #[default]
    EndToEnd,
    /// Clients send unsigned requests to a gateway, which signs one root per batch.
    GatewayAttested,
}

#[derive(clap::Args)]
struct Load {
    /// Clients with one request outstanding each.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Bytes per operation.
    #[arg(long, default_value_t = 128)]
    op_bytes: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Stop after this many operations instead.
    #[arg(long)]
    ops: Option<u64>,
    /// What carries the messages.
    #[arg(long, value_enum, default_value_t)]
    transport: TransportArg,
    /// Send through gateway N of the config's `[[gateways]]` (QUIC), each client on its own
    /// connection (`pbft bench` only; `pbft demo --gateway` starts one).
    #[arg(long, value_name = "N")]
    via_gateway: Option<usize>,
    /// With --via-gateway (or demo --gateway): one more client floods the gateway with this
    /// many requests a second (forged end to end, unsigned over its rate limit attested).
    #[arg(long, value_name = "PER_SEC", default_value_t = 0)]
    flood: u64,
}

impl Load {
    /// The bench's options against `network`.
    ///
    /// # Errors
    ///
    /// `--via-gateway` names no gateway of the network, or is combined with TCP.
    fn options(&self, network: &pbft_host::config::Network) -> Result<BenchOptions, Failure> {
        let via_gateway = match self.via_gateway {
            None => None,
            Some(_) if matches!(self.transport, TransportArg::Tcp) => {
                return Err("gateways serve QUIC clients only; drop --transport tcp".into());
            }
            Some(index) => Some(*network.gateways.get(index).ok_or_else(|| {
                format!(
                    "the network lists {} gateways; --via-gateway {index} names none",
                    network.gateways.len()
                )
            })?),
        };
        Ok(BenchOptions {
            concurrency: self.concurrency.max(1),
            op_bytes: self.op_bytes,
            duration: Duration::from_secs(self.duration),
            ops: self.ops,
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            transport: self.transport.into(),
            via_gateway,
            flood: self.flood,
        })
    }
}

/// What carries the messages (every node of a cluster uses the same).
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
enum TransportArg {
    /// QUIC: TLS 1.3 with pinned ed25519 raw public keys.
    #[default]
    Quic,
    /// TCP: Noise channels whose ends prove their ed25519 keys.
    Tcp,
}

impl From<TransportArg> for Transport {
    fn from(arg: TransportArg) -> Transport {
        match arg {
            TransportArg::Quic => Transport::Quic,
            TransportArg::Tcp => Transport::Tcp,
        }
    }
}

#[derive(Subcommand)]
enum ValidatorChange {
    /// Add a validator (its public key, 64 hex digits): start it (`pbft node` with its key,
    /// the network's config, and its own `listen`) before or after; it joins once the
    /// change takes effect, by state transfer.
    Add { key: String },
    /// Remove a validator: from the boundary on, its key is refused at the handshake.
    Remove { key: String },
    /// Replace a validator's key in place: the old key's node stops at the boundary, a node
    /// with the new key joins there (with an empty data dir).
    RotateKey { old: String, new: String },
    /// Let a gateway attest requests (gateway-attested networks): validators take its
    /// attestations from the boundary on.
    AddGateway { key: String },
    /// Stop taking a gateway's attestations from the boundary on (not the last one's).
    RemoveGateway { key: String },
    /// Add the `--approver` key files' approvals to a proposal file (`--propose`), after
    /// printing what they approve.
    Approve { file: PathBuf },
    /// Submit a proposal file's change with the approvals it holds.
    Submit { file: PathBuf },
}

#[derive(Subcommand)]
enum ClientOp {
    /// Set a key to a value: given here, or read whole from a file (binary-safe).
    Put {
        key: String,
        /// The value, as text.
        #[arg(required_unless_present = "value_file", conflicts_with = "value_file")]
        value: Option<String>,
        /// Read the value from this file (`-`: standard input) instead.
        #[arg(long, value_name = "FILE")]
        value_file: Option<PathBuf>,
    },
    /// Read a key (ordered like a write).
    Get {
        key: String,
        /// Write the value to this file (created or replaced) instead of standard output
        /// (`-`: standard output, even for binary on a terminal).
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Remove a key.
    Delete { key: String },
}

type Failure = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Long-running processes say what they are doing; one-shot commands print their result.
    let default_level = if matches!(cli.command, Command::Node { .. } | Command::Gateway { .. }) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Keygen { out } => {
            let keypair = Keypair::from_seed(&random_seed()?);
            write_key_file(&out, &keypair)?;
            println!("{}", keypair.public_key());
        }
        Command::Testnet {
            validators,
            dir,
            chain,
            transport,
            gateways,
            authentication,
        } => {
            let attested = authentication == Authentication::GatewayAttested;
            if attested && gateways == 0 {
                return Err("--authentication gateway-attested needs --gateways N (N >= 1)".into());
            }
            let testnet = testnet(&dir, (validators, gateways), (&chain, attested))?;
            let flag = match transport {
                TransportArg::Quic => "",
                TransportArg::Tcp => " --transport tcp",
            };
            for (index, config) in testnet.nodes.iter().enumerate() {
                println!(
                    "pbft node --config {}{flag}    # metrics on http://{}/metrics",
                    config.display(),
                    testnet.metrics[index]
                );
            }
            for (index, config) in testnet.gateways.iter().enumerate() {
                println!(
                    "pbft gateway --config {}    # metrics on http://{}/metrics",
                    config.display(),
                    testnet.gateway_metrics[index]
                );
            }
            println!("clients: --config {}{flag}", testnet.network.display());
            if !testnet.gateways.is_empty() {
                println!(
                    "through a gateway: --config {} --via-gateway 0",
                    testnet.network.display()
                );
            }
        }
        Command::Gateway { config } => {
            let config = load_gateway_config(&config)?;
            pbft_quic::gateway::run(config, shutdown_signal()).await?;
        }
        Command::Node { config, transport } => {
            let network = load_network(&config)?;
            let config = load_config(&config)?;
            run_node((config, network), transport.into(), shutdown_signal()).await?;
        }
        Command::Status {
            config,
            timeout,
            max_commit_age,
            json,
            transport,
        } => {
            let network = load_network(&config)?;
            let ages = (
                Duration::from_secs(timeout),
                Duration::from_secs(max_commit_age),
            );
            let status = status::status(&network, transport.into(), ages.0, ages.1).await?;
            match json {
                true => println!("{}", serde_json::to_string_pretty(&status)?),
                false => print!("{}", status.table()),
            }
            if !status.healthy {
                return Err(status.problems.join("; ").into());
            }
        }
        Command::Validator {
            config,
            approvers,
            propose,
            timeout,
            transport,
            change,
        } => {
            let approvers = approvers
                .iter()
                .map(|path| read_key_file(path))
                .collect::<Result<Vec<_>, _>>()?;
            let timeout = Duration::from_secs(timeout);
            let network = || -> Result<_, Box<dyn std::error::Error>> {
                let config = config
                    .as_ref()
                    .ok_or("--config is required (a node's config or network.toml)")?;
                Ok(load_network(config)?)
            };
            let parse = |text: &str| {
                parse_public_key(text)
                    .ok_or_else(|| format!("`{text}` is not a public key (64 hex digits)"))
            };
            let changes = match &change {
                ValidatorChange::Add { key } => vec![SetChange::Add(parse(key)?)],
                ValidatorChange::Remove { key } => vec![SetChange::Remove(parse(key)?)],
                ValidatorChange::RotateKey { old, new } => vec![SetChange::Rotate {
                    old: parse(old)?,
                    new: parse(new)?,
                }],
                ValidatorChange::AddGateway { key } => vec![SetChange::AddGateway(parse(key)?)],
                ValidatorChange::RemoveGateway { key } => {
                    vec![SetChange::RemoveGateway(parse(key)?)]
                }
                ValidatorChange::Approve { file } => {
                    let mut proposal = unspent_proposal(file)?;
                    if approvers.is_empty() {
                        return Err("--approver KEY_FILE: whose approval to add".into());
                    }
                    for change in &proposal.changes {
                        println!(
                            "approving in epoch {}: {}",
                            proposal.epoch,
                            operator::describe(change)
                        );
                    }
                    for governor in &approvers {
                        proposal.approve(governor);
                    }
                    write_proposal(file, &proposal, true)?;
                    println!(
                        "{} approvals in {}",
                        proposal.approvals.len(),
                        file.display()
                    );
                    return Ok(());
                }
                ValidatorChange::Submit { file } => {
                    let mut proposal = unspent_proposal(file)?;
                    let result = proposal
                        .submit(&network()?, transport.into(), timeout)
                        .await;
                    let committed = match &result {
                        Ok(scheduled) => Some(scheduled.seq),
                        Err(operator::ChangeError::Refused { seq, .. }) => Some(*seq),
                        Err(_) => None,
                    };
                    if let Some(seq) = committed {
                        proposal.committed_at_seq = Some(seq);
                        write_proposal(file, &proposal, true)?;
                    }
                    let scheduled = result.map_err(|err| match committed {
                        Some(_) => format!(
                            "{err}\nthe proposal's request number is spent: write a new one with --propose, and have it approved"
                        ),
                        None => err.to_string(),
                    })?;
                    print_scheduled(&scheduled);
                    return Ok(());
                }
            };
            let network = network()?;
            if let Some(file) = propose {
                let mut proposal =
                    operator::Proposal::prepare(&network, transport.into(), changes, timeout)
                        .await?;
                for governor in &approvers {
                    proposal.approve(governor);
                }
                write_proposal(&file, &proposal, false)?;
                println!(
                    "wrote {} for epoch {} ({} approvals): each governor runs `pbft validator approve {} --approver KEY_FILE`, then `pbft validator submit {} --config ...`",
                    file.display(),
                    proposal.epoch,
                    proposal.approvals.len(),
                    file.display(),
                    file.display()
                );
                return Ok(());
            }
            let scheduled = operator::change_validators(
                &network,
                transport.into(),
                changes,
                &approvers,
                timeout,
            )
            .await?;
            print_scheduled(&scheduled);
        }
        Command::Client {
            config,
            key_file,
            proof,
            timeout,
            transport,
            via_gateway,
            op,
        } => {
            let config = config.ok_or("--config is required (a node's config or network.toml)")?;
            let files = (config.as_path(), key_file.as_deref(), proof.as_deref());
            client(files, timeout, (transport.into(), via_gateway), op).await?;
        }
        Command::VerifyQc { config, proof } => {
            let network = load_network(&config)?;
            let bytes = std::fs::read(&proof).map_err(|e| format!("{}: {e}", proof.display()))?;
            let bundle = ProofBundle::decode(&bytes)
                .map_err(|e| format!("{}: not a proof file ({e})", proof.display()))?;
            let set = bundle
                .verify(&network.core.chain_id, &network.validators)
                .map_err(|e| format!("{}: {e}", proof.display()))?;
            println!(
                "valid: request {} of client {} committed at seq {} in view {} of epoch {} ({} signatures of {} validators; {} epoch changes checked from genesis)",
                bundle.request.client_seq,
                bundle.request.client,
                bundle.certificate.seq,
                bundle.certificate.view,
                set.epoch(),
                bundle.certificate.signatures.len(),
                set.len(),
                bundle.epochs.len()
            );
        }
        Command::Bench { config, load } => {
            let network = load_network(&config)?;
            let report = bench::run(&network, &load.options(&network)?).await?;
            println!("{report}");
        }
        Command::Demo {
            load,
            gateway,
            authentication,
        } => demo(&load, (gateway, authentication)).await?,
        Command::Data { action } => data(action)?,
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "pbft", &mut std::io::stdout());
        }
        Command::Man { dir } => man(dir.as_deref())?,
    }
    Ok(())
}

/// `pbft man`: the page of `pbft` to standard output, or every command's page into `dir`.
fn man(dir: Option<&Path>) -> Result<(), Failure> {
    let command = Cli::command();
    match dir {
        None => match clap_mangen::Man::new(command).render(&mut std::io::stdout()) {
            // `pbft man | head` closes the pipe early: not an error.
            Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => return Err(err.into()),
            _ => {}
        },
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
            clap_mangen::generate_to(command, dir)
                .map_err(|err| format!("cannot write the pages to {}: {err}", dir.display()))?;
            println!("man pages written to {}", dir.display());
        }
    }
    Ok(())
}

/// `pbft data inspect` and `pbft data repair`.
fn data(action: DataAction) -> Result<(), Failure> {
    use pbft_host::data_dir::{self, Health, Repair};
    use pbft_quic::data as report;
    match action {
        DataAction::Inspect { dir, json, config } => {
            let options = report::wal_options(config.as_deref())?;
            let inspection = data_dir::inspect(&dir, options)?;
            match json {
                true => println!(
                    "{}",
                    serde_json::to_string_pretty(&report::inspection_json(&inspection))?
                ),
                false => print!("{}", report::inspection_text(&inspection)),
            }
            if inspection.corrupt() {
                return Err(format!(
                    "the WAL in {} is corrupt: a node will not start on it; `pbft data repair {}` cuts it at the damage",
                    dir.display(),
                    dir.display()
                )
                .into());
            }
        }
        DataAction::Repair { dir, yes, config } => {
            let options = report::wal_options(config.as_deref())?;
            let asking = !yes
                && std::io::IsTerminal::is_terminal(&std::io::stdin())
                && std::io::IsTerminal::is_terminal(&std::io::stderr());
            let mut refused_limit = false;
            let outcome = data_dir::repair(&dir, options, |damage| {
                print!("{}", report::damage_text(damage));
                eprintln!("{}", report::ROLLBACK_WARNING);
                // Under a smaller limit than the node's, a whole record reads as damage.
                if damage.may_be_a_larger_limit() && config.is_none() {
                    refused_limit = true;
                    return false;
                }
                yes || (asking && confirm_on_terminal(&damage.segment, damage.offset))
            })?;
            match outcome {
                Repair::NothingToRepair(health) => {
                    println!(
                        "{}: the WAL is {}: nothing to repair",
                        dir.display(),
                        report::health_text(&health, &dir)
                    );
                    if let Health::Corrupt(_) = health {
                        return Err("the WAL is corrupt".into());
                    }
                }
                Repair::Declined(_) if refused_limit => {
                    return Err(
                        "nothing was changed: give the node's --config before cutting a record longer than the default limit"
                            .into(),
                    );
                }
                Repair::Declined(_) if asking => {
                    return Err("nothing was changed".into());
                }
                Repair::Declined(_) => {
                    return Err(
                        "nothing was changed: run again with --yes to cut the log at the damage (or on a terminal, to be asked)"
                            .into(),
                    );
                }
                Repair::Repaired { damage, backup } => {
                    println!(
                        "cut {} at byte {}; the segment as it was, and {} later segments, are in {}",
                        damage.segment.display(),
                        damage.offset,
                        damage.lost.later_segments.len(),
                        backup.display()
                    );
                    let after = data_dir::inspect(&dir, options)?;
                    println!(
                        "the WAL is {} ({} records); start the node with rollback protection on",
                        report::health_text(&after.health, &dir),
                        after.counts.records
                    );
                }
            }
        }
    }
    Ok(())
}

/// Asks on the terminal whether to cut `segment` at `offset`; only `y` or `yes` agrees.
fn confirm_on_terminal(segment: &Path, offset: u64) -> bool {
    use std::io::Write as _;
    eprint!(
        "cut {} at byte {offset}, keeping a copy? [y/N] ",
        segment.display()
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if std::io::stdin().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

fn testnet(
    dir: &Path,
    nodes: (usize, usize),
    chain: (&str, bool),
) -> Result<pbft_host::testnet::Testnet, Failure> {
    let base = random_seed()?;
    Ok(pbft_host::testnet::create_with(
        dir,
        nodes,
        chain,
        |index| {
            let mut seed = base;
            seed[0] ^= index as u8;
            seed[1] ^= (index >> 8) as u8;
            seed
        },
    )?)
}

/// Runs a validator over `transport` until `shutdown`. A validator outside the genesis set
/// with an empty data dir first waits for a committed change that adds its key, and joins
/// with the chain of epoch changes.
async fn run_node(
    (config, network): (pbft_host::config::NodeConfig, pbft_host::config::Network),
    transport: Transport,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Failure> {
    let mut shutdown = std::pin::pin!(shutdown);
    let chain = match config.outside_genesis() && !Node::<KvStore>::has_log(&config.data_dir) {
        false => None,
        true => {
            let key = config.keypair.public_key();
            tokio::select! {
                chain = operator::wait_to_join(&network, transport, key) => Some(chain?),
                () = &mut shutdown => return Ok(()),
            }
        }
    };
    match transport {
        Transport::Quic => pbft_quic::node::run(config, chain, shutdown).await?,
        Transport::Tcp => {
            // The TCP node runs smol on a thread of its own; dropping `stop` stops it.
            let (stop, stopped) = async_channel::bounded::<()>(1);
            let mut node =
                tokio::task::spawn_blocking(move || pbft_tcp::node::run(config, chain, stopped));
            let early = tokio::select! {
                () = shutdown => None,
                result = &mut node => Some(result),
            };
            drop(stop);
            let result = match early {
                Some(result) => result,
                None => node.await,
            };
            result.map_err(|_| "the node thread panicked")??;
        }
    }
    Ok(())
}

async fn client(
    (config, key, proof): (&Path, Option<&Path>, Option<&Path>),
    timeout: u64,
    (transport, via_gateway): (Transport, Option<usize>),
    op: ClientOp,
) -> Result<(), Failure> {
    let network = load_network(config)?;
    let keypair = match key {
        Some(path) if !path.exists() => {
            return Err(format!(
                "{}: no such key file; make one with `pbft keygen {}`",
                path.display(),
                path.display()
            )
            .into());
        }
        Some(path) => read_key_file(path)?,
        None => Keypair::from_seed(&random_seed()?),
    };
    let output = match &op {
        ClientOp::Get { output, .. } => output.clone(),
        _ => None,
    };
    let op = match op {
        ClientOp::Put {
            key,
            value,
            value_file,
        } => Op::Put {
            key: key.into_bytes(),
            value: match (value, value_file) {
                (Some(value), _) => value.into_bytes(),
                (None, Some(file)) => read_value(&file)?,
                (None, None) => return Err("give the value, or --value-file FILE".into()),
            },
        },
        ClientOp::Get { key, .. } => Op::Get {
            key: key.into_bytes(),
        },
        ClientOp::Delete { key } => Op::Delete {
            key: key.into_bytes(),
        },
    };
    let key_name = match &op {
        Op::Put { key, .. } | Op::Get { key } | Op::Delete { key } => {
            String::from_utf8_lossy(key).into_owned()
        }
        _ => String::new(),
    };
    // Refused here, before any connection: every validator would refuse it.
    let op = op.encode();
    let max = network.core.max_request_bytes;
    if op.len() > max {
        return Err(format!(
            "the operation is {} bytes (key, value and their encoding); the network takes at most {max} (`max_request_bytes` under `[limits]` in {}; 65536 unless set there)",
            op.len(),
            config.display()
        )
        .into());
    }
    if via_gateway.is_some() && proof.is_some() {
        return Err("--proof asks the validators for the QC; drop --via-gateway to use it".into());
    }
    let mut client = match via_gateway {
        None => ClusterClient::connect(transport, &network, keypair)?,
        Some(_) if matches!(transport, Transport::Tcp) => {
            return Err("gateways serve QUIC clients only; drop --transport tcp".into());
        }
        Some(index) => {
            let gateway = *network.gateways.get(index).ok_or_else(|| {
                format!(
                    "{} lists {} gateways; --via-gateway {index} names none",
                    config.display(),
                    network.gateways.len()
                )
            })?;
            ClusterClient::connect_via_gateway(&network, gateway, keypair)?
        }
    };
    // The numbering kept beside the key file: above it, whatever the clock says.
    let numbering = key.map(Numbering::beside);
    if let Some(first) = numbering.as_ref().and_then(Numbering::next) {
        client.number_from(first);
    }
    let executed = client.execute(op, Duration::from_secs(timeout)).await;
    if let Some(numbering) = &numbering {
        numbering.keep(client.next_client_seq());
    }
    let (outcome, digest) = executed?;
    match OpResult::decode(&outcome.result) {
        Some(OpResult::Done) => println!("ok"),
        Some(OpResult::Value(Some(value))) => write_value(&value, output.as_deref())?,
        Some(OpResult::Value(None)) => {
            return Err(format!(
                "{key_name} is absent (read at seq {} in view {})",
                outcome.seq, outcome.view
            )
            .into());
        }
        Some(other) => println!("{other:?}"),
        None => println!("(undecodable result)"),
    }
    eprintln!("committed at seq {} in view {}", outcome.seq, outcome.view);
    if let Some(path) = proof {
        let bundle = client
            .proof(
                outcome.seq,
                digest,
                &network.validators,
                Duration::from_secs(timeout),
            )
            .await
            .ok_or("no validator returned a valid proof in time")?;
        std::fs::write(path, bundle.encode()).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("proof saved to {}", path.display());
    }
    Ok(())
}

/// A client key's request numbering, kept in a file beside the key file (`KEY_FILE.seq`):
/// the next number, so that a client whose clock went back, or ran ahead once, still numbers
/// above what it used. Best effort: the validators' refusals renumber a client without it
/// ([`pbft_quic::client::ClientFailure::KeyInUse`] when the key runs in two places).
struct Numbering {
    path: PathBuf,
}

impl Numbering {
    fn beside(key_file: &Path) -> Numbering {
        let mut path = key_file.as_os_str().to_owned();
        path.push(".seq");
        Numbering { path: path.into() }
    }

    /// The next number kept, if the file holds one.
    fn next(&self) -> Option<u64> {
        std::fs::read_to_string(&self.path)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Keeps `next` (written whole, then renamed into place); a warning if it cannot.
    fn keep(&self, next: u64) {
        let temporary = self.path.with_extension("seq.new");
        let written = std::fs::write(&temporary, format!("{next}\n"))
            .and_then(|()| std::fs::rename(&temporary, &self.path));
        if let Err(err) = written {
            tracing::warn!(
                "cannot keep the request numbering in {}: {err}",
                self.path.display()
            );
        }
    }
}

/// A value read whole from `file` (`-`: standard input).
fn read_value(file: &Path) -> Result<Vec<u8>, Failure> {
    use std::io::Read as _;
    let mut value = Vec::new();
    match file == Path::new("-") {
        true => std::io::stdin()
            .read_to_end(&mut value)
            .map_err(|err| format!("cannot read standard input: {err}"))?,
        false => std::fs::File::open(file)
            .and_then(|mut file| file.read_to_end(&mut value))
            .map_err(|err| format!("cannot read {}: {err}", file.display()))?,
    };
    Ok(value)
}

/// Writes a value read: to `output` if given (`-`: standard output, byte for byte); else to
/// standard output, as it is (text gets a newline; binary goes only where it is not a
/// terminal).
fn write_value(value: &[u8], output: Option<&Path>) -> Result<(), Failure> {
    use std::io::Write as _;
    if let Some(path) = output.filter(|path| *path != Path::new("-")) {
        std::fs::write(path, value)
            .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
        eprintln!("{} bytes written to {}", value.len(), path.display());
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    if output.is_some() {
        // `--output -`: the bytes as they are, wherever stdout goes.
        stdout.write_all(value)?;
        return Ok(());
    }
    match std::str::from_utf8(value) {
        Ok(text) => writeln!(stdout, "{text}")?,
        Err(_) if std::io::IsTerminal::is_terminal(&stdout) => {
            return Err(format!(
                "the value is {} bytes of binary; write it to a file with --output FILE (or pipe it)",
                value.len()
            )
            .into());
        }
        Err(_) => stdout.write_all(value)?,
    }
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

async fn demo(
    load: &Load,
    (gateway, authentication): (bool, Authentication),
) -> Result<(), Failure> {
    let attested = authentication == Authentication::GatewayAttested;
    if attested && !gateway {
        return Err("--authentication gateway-attested needs --gateway".into());
    }
    if load.via_gateway.is_some() {
        return Err("pbft demo starts its own gateway: use --gateway".into());
    }
    let dir = tempfile::tempdir()?;
    let testnet = testnet(dir.path(), (4, usize::from(gateway)), ("demo", attested))?;
    match gateway {
        true => println!(
            "starting 4 validators and a gateway ({}) in {}",
            if attested {
                "gateway-attested"
            } else {
                "end to end"
            },
            dir.path().display()
        ),
        false => println!("starting 4 validators in {}", dir.path().display()),
    }
    let mut stops = Vec::new();
    let mut nodes = Vec::new();
    for path in &testnet.nodes {
        let config = (load_config(path)?, load_network(path)?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop);
        let transport = load.transport.into();
        nodes.push(tokio::spawn(async move {
            run_node(config, transport, async {
                let _ = stopped.await;
            })
            .await
            .map_err(|err| err.to_string())
        }));
    }
    for path in &testnet.gateways {
        if matches!(load.transport, TransportArg::Tcp) {
            return Err("gateways serve QUIC clients only; drop --transport tcp".into());
        }
        let config = load_gateway_config(path)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop);
        nodes.push(tokio::spawn(async move {
            pbft_quic::gateway::run(config, async {
                let _ = stopped.await;
            })
            .await
            .map_err(|err| err.to_string())
        }));
    }
    let network = load_network(&testnet.network)?;
    println!(
        "running {} clients with {}-byte puts for {} s",
        load.concurrency, load.op_bytes, load.duration
    );
    let mut options = load.options(&network)?;
    options.via_gateway = network.gateways.first().copied();
    let report = bench::run(&network, &options).await?;
    println!("{report}");
    let mut probe = ClusterClient::connect(
        load.transport.into(),
        &network,
        Keypair::from_seed(&random_seed()?),
    )?;
    let mut states = Vec::new();
    for index in 0..network.addresses.len() {
        if let Some(status) = probe.status(index, Duration::from_secs(5)).await {
            states.push(status);
        }
    }
    let agree = states
        .windows(2)
        .all(|w| w[0].state_seq != w[1].state_seq || w[0].state == w[1].state);
    println!(
        "validators: {}",
        states
            .iter()
            .map(|s| format!("#{} view {} seq {}", s.id, s.view, s.executed))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "state digests at equal seqs {}",
        if agree { "agree" } else { "DIFFER" }
    );
    drop(probe);
    for stop in stops {
        let _ = stop.send(());
    }
    for node in nodes {
        node.await??;
    }
    println!("stopped cleanly");
    Ok(())
}

fn print_scheduled(scheduled: &operator::Scheduled) {
    println!(
        "scheduled: committed at seq {} in epoch {}; takes effect when epoch {} starts, at the next checkpoint boundary",
        scheduled.seq, scheduled.approved_in, scheduled.epoch
    );
}

/// A proposal file not yet submitted: one that was is refused with what to do instead.
fn unspent_proposal(file: &Path) -> Result<operator::Proposal, Box<dyn std::error::Error>> {
    let proposal = read_proposal(file)?;
    if let Some(seq) = proposal.committed_at_seq {
        return Err(format!(
            "{} was submitted already (committed at seq {seq}) and its request number is spent: write a new proposal with --propose, and have it approved",
            file.display()
        )
        .into());
    }
    Ok(proposal)
}

fn read_proposal(file: &Path) -> Result<operator::Proposal, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(file)
        .map_err(|err| format!("cannot read {}: {err}", file.display()))?;
    Ok(operator::Proposal::from_toml(&text).map_err(|err| format!("{}: {err}", file.display()))?)
}

/// Writes a proposal file (readable by its owner only: its client key submits it), a new one
/// only where none is, or over the old one in one step (a temporary file renamed).
fn write_proposal(
    file: &Path,
    proposal: &operator::Proposal,
    replace: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let target = match replace {
        true => file.with_extension("approving"),
        false => file.to_path_buf(),
    };
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&target)
        .map_err(|err| format!("cannot create {}: {err}", target.display()))?;
    out.write_all(proposal.to_toml().as_bytes())?;
    out.sync_all()?;
    if replace {
        std::fs::rename(&target, file)?;
    }
    Ok(())
}
