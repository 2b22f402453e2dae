//! Key files and a node's TOML config, with errors that name the file, the field and what
//! is wrong with it.
//!
//! A key file holds the 32-byte ed25519 seed in hex on one line, and must be a regular file
//! (not a symlink) owned by the user the node runs as and readable by that user only. A
//! config file names the network, the node's key file and data directory (both relative to
//! the config file), its listen address, the validator set (key and address of each, in id
//! order), and optionally overrides of the core's limits.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use pbft_core::{ChainId, Config, Keypair, PublicKey, ValidatorSet};
use serde::Deserialize;
use zeroize::Zeroizing;

/// Why a key or config file cannot be used.
#[derive(Debug)]
pub enum FileError {
    /// The file cannot be read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The file is not valid TOML for a config, or a field has the wrong type or is unknown.
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the field and its line.
        message: String,
    },
    /// A field parsed but its value cannot be used.
    Field {
        /// The file.
        path: PathBuf,
        /// The field, as a path into the file (`validators[2].key`).
        field: String,
        /// What is wrong.
        problem: String,
    },
}

// Written by hand, not derived: `thiserror` would make the `source` field of `Io` the error's
// `source()`, which `FileError` has never reported (its message already includes it).
impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            FileError::Parse { path, message } => write!(f, "{}: {message}", path.display()),
            FileError::Field {
                path,
                field,
                problem,
            } => write!(f, "{}: `{field}`: {problem}", path.display()),
        }
    }
}

impl std::error::Error for FileError {}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn field_error(path: &Path, field: impl Into<String>, problem: impl Into<String>) -> FileError {
    FileError::Field {
        path: path.to_path_buf(),
        field: field.into(),
        problem: problem.into(),
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Decodes exactly `out.len()` bytes of hex (surrounding whitespace ignored) into `out`, in
/// place, so a secret is never copied through a temporary; false if `text` is not that.
pub fn decode_hex(text: &str, out: &mut [u8]) -> bool {
    let text = text.trim().as_bytes();
    if text.len() != 2 * out.len() {
        return false;
    }
    let nibble = |digit: u8| char::from(digit).to_digit(16).map(|n| n as u8);
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (Some(high), Some(low)) = (nibble(pair[0]), nibble(pair[1])) else {
            return false;
        };
        *byte = high << 4 | low;
    }
    true
}

/// Parses a public key written as 64 hex digits.
pub fn parse_public_key(text: &str) -> Option<PublicKey> {
    let mut key = [0u8; 32];
    decode_hex(text, &mut key).then_some(PublicKey(key))
}

/// 32 bytes from the operating system's random source, for a new key. Fails only if the
/// system has no generator to offer (the error says which call failed). The seed is secret:
/// the caller wipes it once the keypair is built.
pub fn random_seed() -> io::Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)?;
    Ok(seed)
}

/// A key file's text: 64 hex digits and a newline.
const KEY_LINE: usize = 65;
/// The longest key file read: a key line with room for stray whitespace (a `\r\n`, an
/// editor's trailing blank). Anything longer is not a key file.
const MAX_KEY_FILE: usize = 128;

/// Writes a new key file readable by its owner only; refuses to overwrite one, or to write
/// through a symlink (the exclusive create fails on any existing name, a dangling link too).
/// The hex text of the seed is wiped from memory once written.
pub fn write_key_file(path: &Path, keypair: &Keypair) -> Result<(), FileError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io_error(path))?;
    let seed = Zeroizing::new(keypair.seed());
    // Hex digits written into a fixed buffer: `format!` would leave copies of the secret in
    // freed heap memory.
    let mut line = Zeroizing::new([b'\n'; KEY_LINE]);
    for (byte, pair) in seed.iter().zip(line.chunks_exact_mut(2)) {
        pair[0] = HEX_DIGITS[usize::from(byte >> 4)];
        pair[1] = HEX_DIGITS[usize::from(byte & 0xf)];
    }
    file.write_all(&line[..])
        .and_then(|()| file.sync_all())
        .map_err(io_error(path))
}

/// Reads a key file. Refuses a symlink, anything but a regular file, a file others than its
/// owner may read or write, and a file not owned by the user this process runs as (another
/// user could swap its contents). The checks are made on the file opened once, and the key
/// is read from that same handle: a file swapped for another at the same path between check
/// and read is never read. (Directories on the path may be symlinks; only the last name is
/// not followed.) The file's text and the seed are wiped from memory after use.
pub fn read_key_file(path: &Path) -> Result<Keypair, FileError> {
    let mut file = open_key_file(path)?;
    let metadata = file.metadata().map_err(io_error(path))?;
    if !metadata.is_file() {
        return Err(field_error(path, "(file)", "not a regular file"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let mode = metadata.mode();
        if mode & 0o077 != 0 {
            return Err(field_error(
                path,
                "(file mode)",
                format!(
                    "mode {:o} lets others read the key; chmod 600 it",
                    mode & 0o777
                ),
            ));
        }
        let me = rustix::process::geteuid().as_raw();
        if metadata.uid() != me {
            return Err(field_error(
                path,
                "(file owner)",
                format!(
                    "owned by uid {}, not by uid {me} (the user this node runs as); \
                     another user could replace the key",
                    metadata.uid()
                ),
            ));
        }
    }
    // A fixed buffer, not a growing `String`: growing would leave copies of the secret in
    // freed memory that nobody wipes.
    let mut text = Zeroizing::new([0u8; MAX_KEY_FILE]);
    let mut len = 0;
    loop {
        let Some(room) = text.get_mut(len..).filter(|room| !room.is_empty()) else {
            return Err(field_error(path, "(seed)", "too long for 64 hex digits"));
        };
        match file.read(room) {
            Ok(0) => break,
            Ok(read) => len += read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(io_error(path)(err)),
        }
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    let decoded = std::str::from_utf8(&text[..len]).is_ok_and(|t| decode_hex(t, &mut seed[..]));
    if !decoded {
        return Err(field_error(path, "(seed)", "not 64 hex digits"));
    }
    Ok(Keypair::from_seed(&seed))
}

/// Opens a key file for reading without following a symlink at its last name; a symlink is
/// refused with an error that says so.
fn open_key_file(path: &Path) -> Result<fs::File, FileError> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use rustix::fs::OFlags;
        // NONBLOCK: opening a FIFO put at the path returns at once (and is then refused as
        // not a regular file) instead of hanging the node; it changes nothing for a file.
        let flags = OFlags::NOFOLLOW | OFlags::NONBLOCK;
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, flags.bits() as i32);
    }
    options.open(path).map_err(|err| {
        // Systems differ in the error O_NOFOLLOW gives (ELOOP on Linux, EMLINK on FreeBSD):
        // look at the name itself to say what is wrong.
        if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            field_error(
                path,
                "(file)",
                "is a symlink; a key file is never read through one, give the file's own path",
            )
        } else {
            io_error(path)(err)
        }
    })
}

/// One validator (or gateway) in a config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidatorEntry {
    key: String,
    address: String,
}

/// A gateway's `[gateway]` table: any of [`pbft_core::GatewayConfig`]'s limits and timers;
/// the rest keep their defaults.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayTable {
    max_sessions: Option<usize>,
    max_outstanding_per_client: Option<usize>,
    max_outstanding: Option<usize>,
    client_rate: Option<u64>,
    client_burst: Option<u64>,
    max_batch_ops: Option<usize>,
    max_batch_bytes: Option<usize>,
    batch_delay_ms: Option<u64>,
    retransmit_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    chain: String,
    key_file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    metrics: Option<String>,
    verify_threads: Option<usize>,
    compress_above_bytes: Option<usize>,
    /// Off only for a key whose statements no other data dir ever signed: see
    /// [`NodeConfig::unsafe_skip_rollback_check`].
    unsafe_skip_rollback_check: Option<bool>,
    validators: Vec<ValidatorEntry>,
    /// The network's gateways, which clients may send through (`pbft client --via-gateway`).
    #[serde(default)]
    gateways: Vec<ValidatorEntry>,
    /// Validators a reconfiguration added after genesis, with their addresses: whom a joining
    /// validator or a client reaches besides the genesis set (validators learn each other's
    /// addresses from their connections).
    #[serde(default)]
    peers: Vec<ValidatorEntry>,
    /// How requests are authenticated: `end-to-end` (the default: every client signs, every
    /// validator checks) or `gateway-attested` (the gateways listed sign one root per
    /// batch; validators check that one signature).
    authentication: Option<String>,
    /// A gateway's own limits (a gateway's config only).
    gateway: Option<GatewayTable>,
    /// Every field of the core's [`Config`] may be set here; the rest keep their defaults.
    /// The chain id comes from `chain`.
    #[serde(default)]
    limits: Config,
}

/// The network a config file describes: what a client needs to reach and check it.
#[derive(Debug)]
pub struct Network {
    /// The core's config (chain id and limits).
    pub core: Config,
    /// The validator set.
    pub validators: ValidatorSet,
    /// Each validator's address, by id.
    pub addresses: Vec<SocketAddr>,
    /// The network's gateways: each one's key and address.
    pub gateways: Vec<(PublicKey, SocketAddr)>,
    /// Validators added after genesis (the config's `[[peers]]`): each one's key and address.
    pub peers: Vec<(PublicKey, SocketAddr)>,
}

impl Network {
    /// Where the validators the config names listen: the genesis set's, then the
    /// `[[peers]]` added since.
    pub fn known_addresses(&self) -> Vec<(PublicKey, SocketAddr)> {
        known_addresses(&self.validators, &self.addresses, &self.peers)
    }

    /// Whether requests are gateway-attested: the gateways sign one root per batch and
    /// clients send unsigned requests to them (the config's `authentication`).
    pub fn attested(&self) -> bool {
        !self.core.attesting_gateways.is_empty()
    }
}

/// A gateway's configuration, checked.
#[derive(Debug)]
pub struct GatewayNodeConfig {
    /// The network the gateway serves (its `gateways` list is not the gateway's concern).
    pub network: Network,
    /// The gateway's key: its transport identity towards clients and validators (it signs
    /// nothing). Never a validator's.
    pub keypair: Keypair,
    /// Where it listens for clients.
    pub listen: SocketAddr,
    /// Where it serves Prometheus metrics, if anywhere (the config's `metrics`).
    pub metrics: Option<SocketAddr>,
    /// Its limits and timers: [`crate::gateway::config_for`] the network, then the config's
    /// `[gateway]` table.
    pub gateway: pbft_core::GatewayConfig,
}

/// A node's configuration, checked.
#[derive(Debug)]
pub struct NodeConfig {
    /// Where the node serves Prometheus metrics, if anywhere: the config's `metrics`
    /// address, bound exactly as written. Without the field there is no endpoint (nothing
    /// defaults to a wildcard address); the local testnet writes loopback ones. A
    /// non-loopback address is kept, since an operator wrote it, and serves the metrics to
    /// anyone who can reach it.
    pub metrics: Option<SocketAddr>,
    /// The core's config (chain id and limits).
    pub core: Config,
    /// This node's key.
    pub keypair: Keypair,
    /// The validator set.
    pub validators: ValidatorSet,
    /// Each validator's address, by id.
    pub addresses: Vec<SocketAddr>,
    /// Validators added after genesis (the config's `[[peers]]`): each one's key and address.
    pub peers: Vec<(PublicKey, SocketAddr)>,
    /// Where this node listens.
    pub listen: SocketAddr,
    /// Where its log lives.
    pub data_dir: PathBuf,
    /// How many threads check the pieces of a large batch of signatures: the config's
    /// `verify_threads`, else every core this process may use
    /// ([`crate::checks::default_threads`]). Nodes sharing a machine's cores (a local
    /// testnet) do better with 1 each.
    pub verify_threads: usize,
    /// Messages to validators of at least this many bytes go LZ4-compressed: the config's
    /// `compress_above_bytes`; off without it. Pays only on links slower than about
    /// 2 Gbit/s ([`crate::compression`]). Nodes need not agree: each reads both kinds (once
    /// every node runs a build that does).
    pub compress_above: Option<usize>,
    /// The config's `unsafe_skip_rollback_check`: start signing without asking the peers
    /// what they hold signed by this key ([`pbft_core::Replica::check_for_rollback`]). A
    /// data dir restored from an old copy, or a second process with this key, can then sign
    /// conflicting statements and get the key convicted. For tests of exactly that.
    pub unsafe_skip_rollback_check: bool,
}

/// The genesis validators' addresses, then those of `peers` (validators added since) whose
/// key is not among them.
fn known_addresses(
    validators: &ValidatorSet,
    addresses: &[SocketAddr],
    peers: &[(PublicKey, SocketAddr)],
) -> Vec<(PublicKey, SocketAddr)> {
    let mut known: Vec<(PublicKey, SocketAddr)> = validators
        .public_keys()
        .zip(addresses.iter().copied())
        .collect();
    for (key, addr) in peers {
        if !known.iter().any(|(k, _)| k == key) {
            known.push((*key, *addr));
        }
    }
    known
}

impl NodeConfig {
    /// Where the validators the config names listen: the genesis set's, then the
    /// `[[peers]]` added since (a key in both keeps its genesis address).
    pub fn known_addresses(&self) -> Vec<(PublicKey, SocketAddr)> {
        known_addresses(&self.validators, &self.addresses, &self.peers)
    }

    /// Whether this node's key is outside the genesis set: a validator a reconfiguration
    /// adds, which joins with the chain of epoch changes.
    pub fn outside_genesis(&self) -> bool {
        self.validators.id_of(&self.keypair.public_key()).is_none()
    }
}

fn read_config_file(path: &Path) -> Result<ConfigFile, FileError> {
    let text = fs::read_to_string(path).map_err(io_error(path))?;
    toml::from_str(&text).map_err(|err| FileError::Parse {
        path: path.to_path_buf(),
        message: err.to_string(),
    })
}

fn parse_address(path: &Path, field: &str, text: &str) -> Result<SocketAddr, FileError> {
    text.parse().map_err(|_| {
        field_error(
            path,
            field,
            format!("`{text}` is not an address like 127.0.0.1:7000"),
        )
    })
}

fn required<'a, T>(path: &Path, field: &str, value: &'a Option<T>) -> Result<&'a T, FileError> {
    value
        .as_ref()
        .ok_or_else(|| field_error(path, field, "missing (a node's config needs it)"))
}

/// Reads the network (chain, validators, limits) from a node's or a client's config file.
pub fn load_network(path: &Path) -> Result<Network, FileError> {
    network(path, &read_config_file(path)?)
}

/// Reads and checks a node's config file.
pub fn load_config(path: &Path) -> Result<NodeConfig, FileError> {
    let file = read_config_file(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let (listen, metrics) = endpoints(path, &file)?;
    let key_file = required(path, "key_file", &file.key_file)?;
    let data_dir = required(path, "data_dir", &file.data_dir)?;
    if file.gateway.is_some() {
        return Err(field_error(
            path,
            "gateway",
            "a validator's config has no [gateway] table",
        ));
    }
    let Network {
        core,
        validators,
        addresses,
        peers,
        ..
    } = network(path, &file)?;
    // A key outside the genesis set is a validator a reconfiguration adds: it joins
    // (`pbft node` waits for the change, then fetches the chain of epoch changes).
    let keypair = read_key_file(&base.join(key_file))?;
    let verify_threads = match file.verify_threads {
        None => crate::checks::default_threads(),
        Some(threads) if !(1..=crate::checks::MAX_THREADS).contains(&threads) => {
            let max = crate::checks::MAX_THREADS;
            return Err(field_error(
                path,
                "verify_threads",
                format!("must be 1 to {max}"),
            ));
        }
        Some(threads) => threads,
    };
    Ok(NodeConfig {
        metrics,
        core,
        keypair,
        validators,
        addresses,
        peers,
        listen,
        data_dir: base.join(data_dir),
        verify_threads,
        compress_above: file.compress_above_bytes,
        unsafe_skip_rollback_check: file.unsafe_skip_rollback_check.unwrap_or(false),
    })
}

/// The `listen` address (required) and the `metrics` one (optional) of a node's or a
/// gateway's config file.
fn endpoints(
    path: &Path,
    file: &ConfigFile,
) -> Result<(SocketAddr, Option<SocketAddr>), FileError> {
    let listen = parse_address(path, "listen", required(path, "listen", &file.listen)?)?;
    let metrics = file
        .metrics
        .as_ref()
        .map(|text| parse_address(path, "metrics", text))
        .transpose()?;
    Ok((listen, metrics))
}

/// Reads and checks a gateway's config file: the network's fields, `key_file` (not a
/// validator's key), `listen`, and an optional `[gateway]` table of limits.
pub fn load_gateway_config(path: &Path) -> Result<GatewayNodeConfig, FileError> {
    let file = read_config_file(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let (listen, metrics) = endpoints(path, &file)?;
    let key_file = required(path, "key_file", &file.key_file)?;
    let unused = [
        ("data_dir", file.data_dir.is_some()),
        ("verify_threads", file.verify_threads.is_some()),
        ("compress_above_bytes", file.compress_above_bytes.is_some()),
        (
            "unsafe_skip_rollback_check",
            file.unsafe_skip_rollback_check.is_some(),
        ),
    ];
    if let Some((field, _)) = unused.iter().find(|(_, set)| *set) {
        return Err(field_error(
            path,
            *field,
            "a gateway has none (it keeps no data and checks no batches of validators)",
        ));
    }
    let network = network(path, &file)?;
    let keypair = read_key_file(&base.join(key_file))?;
    if network.validators.id_of(&keypair.public_key()).is_some() {
        return Err(field_error(
            path,
            "key_file",
            "is a validator's key; a gateway needs a key of its own",
        ));
    }
    let mut gateway = crate::gateway::config_for(&network.core);
    let table = file.gateway.clone().unwrap_or_default();
    let set = |value: &mut usize, from: Option<usize>| *value = from.unwrap_or(*value);
    set(&mut gateway.max_sessions, table.max_sessions);
    set(
        &mut gateway.max_outstanding_per_client,
        table.max_outstanding_per_client,
    );
    set(&mut gateway.max_outstanding, table.max_outstanding);
    set(&mut gateway.max_batch_ops, table.max_batch_ops);
    set(&mut gateway.max_batch_bytes, table.max_batch_bytes);
    gateway.client_rate = table.client_rate.unwrap_or(gateway.client_rate);
    gateway.client_burst = table.client_burst.unwrap_or(gateway.client_burst);
    gateway.batch_delay_ms = table.batch_delay_ms.unwrap_or(gateway.batch_delay_ms);
    gateway.retransmit_ms = table.retransmit_ms.unwrap_or(gateway.retransmit_ms);
    gateway.request_timeout_ms = table
        .request_timeout_ms
        .unwrap_or(gateway.request_timeout_ms);
    pbft_core::Gateway::new(gateway.clone(), network.validators.clone())
        .map_err(|err| field_error(path, "gateway", err.to_string()))?;
    Ok(GatewayNodeConfig {
        network,
        keypair,
        listen,
        metrics,
        gateway,
    })
}

fn network(path: &Path, file: &ConfigFile) -> Result<Network, FileError> {
    let mut keys = Vec::with_capacity(file.validators.len());
    let mut addresses = Vec::with_capacity(file.validators.len());
    for (index, entry) in file.validators.iter().enumerate() {
        let key = parse_public_key(&entry.key).ok_or_else(|| {
            field_error(
                path,
                format!("validators[{index}].key"),
                "not 64 hex digits",
            )
        })?;
        let address = entry.address.parse().map_err(|_| {
            field_error(
                path,
                format!("validators[{index}].address"),
                format!("`{}` is not an address", entry.address),
            )
        })?;
        keys.push(key);
        addresses.push(address);
    }
    let validators = ValidatorSet::new(0, &keys)
        .map_err(|err| field_error(path, "validators", err.to_string()))?;
    if file.limits.chain_id != Config::default().chain_id {
        return Err(field_error(
            path,
            "limits.chain_id",
            "set `chain` (the network's name) instead",
        ));
    }
    // The chain id commits to the parameters validators must agree on: a node whose file
    // differs from its peers' signs for another chain and is refused, never half-agreed with.
    if !file.limits.attesting_gateways.is_empty() {
        return Err(field_error(
            path,
            "limits.attesting_gateways",
            "set `authentication = \"gateway-attested\"` and list the `[[gateways]]` instead",
        ));
    }
    let mut gateways = Vec::with_capacity(file.gateways.len());
    for (index, entry) in file.gateways.iter().enumerate() {
        let key = parse_public_key(&entry.key).ok_or_else(|| {
            field_error(path, format!("gateways[{index}].key"), "not 64 hex digits")
        })?;
        let address = parse_address(path, &format!("gateways[{index}].address"), &entry.address)?;
        gateways.push((key, address));
    }
    let mut peers = Vec::with_capacity(file.peers.len());
    for (index, entry) in file.peers.iter().enumerate() {
        let key = parse_public_key(&entry.key)
            .ok_or_else(|| field_error(path, format!("peers[{index}].key"), "not 64 hex digits"))?;
        let address = parse_address(path, &format!("peers[{index}].address"), &entry.address)?;
        peers.push((key, address));
    }
    let mut limits = file.limits.clone();
    match file.authentication.as_deref() {
        None | Some("end-to-end") => {}
        Some("gateway-attested") if gateways.is_empty() => {
            return Err(field_error(
                path,
                "authentication",
                "gateway-attested needs at least one `[[gateways]]` entry to attest",
            ));
        }
        Some("gateway-attested") => {
            limits.attesting_gateways = gateways.iter().map(|(key, _)| *key).collect();
        }
        Some(other) => {
            return Err(field_error(
                path,
                "authentication",
                format!("`{other}`: expected `end-to-end` or `gateway-attested`"),
            ));
        }
    }
    let mut core = Config {
        chain_id: ChainId::for_network(&file.chain, &limits),
        ..limits
    };
    // A window above the default needs as many retained batches; raising both by hand is
    // an easy thing to forget.
    core.retained_batches = core.retained_batches.max(core.window as usize);
    // The limits must fit together, and the largest message this set makes (a new view with
    // a full window of prepared certificates) must fit max_message_bytes.
    core.validate_for(&validators)
        .map_err(|err| field_error(path, "limits", err.to_string()))?;
    Ok(Network {
        core,
        validators,
        addresses,
        gateways,
        peers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
        keys: Vec<Keypair>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<Keypair> = (0..4u8).map(|i| Keypair::from_seed(&[i + 1; 32])).collect();
        write_key_file(&dir.path().join("node.key"), &keys[2]).unwrap();
        Fixture { dir, keys }
    }

    fn config_text(keys: &[Keypair], extra: &str) -> String {
        let mut text = String::from(
            "chain = \"testnet\"\nkey_file = \"node.key\"\ndata_dir = \"data\"\nlisten = \"127.0.0.1:7002\"\n",
        );
        text.push_str(extra);
        for (index, key) in keys.iter().enumerate() {
            text.push_str(&format!(
                "\n[[validators]]\nkey = \"{}\"\naddress = \"127.0.0.1:{}\"\n",
                key.public_key(),
                7000 + index
            ));
        }
        text
    }

    fn load(fixture: &Fixture, text: &str) -> Result<NodeConfig, FileError> {
        let path = fixture.dir.path().join("node.toml");
        fs::write(&path, text).unwrap();
        load_config(&path)
    }

    fn field_of(result: Result<NodeConfig, FileError>) -> String {
        match result {
            Err(FileError::Field { field, .. }) => field,
            Err(FileError::Parse { message, .. }) => format!("parse: {message}"),
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn a_good_config_loads_with_paths_relative_to_it() {
        let fixture = fixture();
        let config = load(
            &fixture,
            &config_text(
                &fixture.keys,
                "[limits]\nwindow = 16\ncheckpoint_interval = 8\n",
            ),
        )
        .unwrap();
        assert_eq!(config.keypair.public_key(), fixture.keys[2].public_key());
        assert_eq!(config.validators.len(), 4);
        assert_eq!(config.addresses[3].port(), 7003);
        assert_eq!(config.core.window, 16);
        assert_eq!(config.data_dir, fixture.dir.path().join("data"));
        assert_eq!(config.verify_threads, crate::checks::default_threads());
        let pinned = load(
            &fixture,
            &config_text(&fixture.keys, "verify_threads = 3\n"),
        )
        .unwrap();
        assert_eq!(pinned.verify_threads, 3);
    }

    #[test]
    fn a_gateway_config_loads_with_its_limits_and_refuses_what_a_gateway_has_not() {
        let fixture = fixture();
        let gateway_key = Keypair::from_seed(&[9; 32]);
        write_key_file(&fixture.dir.path().join("gateway.key"), &gateway_key).unwrap();
        let text = |extra: &str| {
            let node = config_text(&fixture.keys, "");
            let validators = &node[node.find("\n[[validators]]").unwrap()..];
            format!(
                "chain = \"testnet\"\nkey_file = \"gateway.key\"\nlisten = \"127.0.0.1:7100\"\n{extra}{validators}"
            )
        };
        let path = fixture.dir.path().join("gateway.toml");
        let load = |text: String| {
            fs::write(&path, text).unwrap();
            load_gateway_config(&path)
        };
        let config = load(text("[gateway]\nclient_rate = 50\nmax_sessions = 7\n")).unwrap();
        assert_eq!(config.keypair.public_key(), gateway_key.public_key());
        assert_eq!(
            (config.gateway.client_rate, config.gateway.max_sessions),
            (50, 7)
        );
        assert_eq!(
            config.gateway.max_request_bytes,
            config.network.core.max_request_bytes
        );
        let refused = |extra: &str, field: &str| {
            let err = load(text(extra)).unwrap_err().to_string();
            assert!(err.contains(field), "{extra}: {err}");
        };
        refused("data_dir = \"data\"\n", "data_dir");
        refused(
            "[gateway]\nclient_burst = 0\n",
            "client_burst must be positive",
        );
        refused("[gateway]\nbatch_size = 3\n", "unknown field");
        // A validator's key is refused, and a validator's config takes no [gateway] table.
        write_key_file(&fixture.dir.path().join("node-copy.key"), &fixture.keys[0]).unwrap();
        let err = load(text("").replace("gateway.key", "node-copy.key")).unwrap_err();
        assert!(err.to_string().contains("validator's key"), "{err}");
        let node = config_text(&fixture.keys, "[gateway]\nclient_rate = 5\n");
        let err = super::tests::load(&fixture, &node).unwrap_err();
        assert!(err.to_string().contains("[gateway]"), "{err}");
    }

    #[test]
    fn every_limit_of_the_core_can_be_set_and_no_other() {
        let fixture = fixture();
        let limits = "[limits]\nmax_clients = 500\nheartbeat_ms = 250\nretained_batches = 512\n\
                      max_snapshot_bytes = 1048576\nmax_future_per_peer = 32\n";
        let config = load(&fixture, &config_text(&fixture.keys, limits)).unwrap();
        assert_eq!(config.core.max_clients, 500);
        assert_eq!(config.core.heartbeat_ms, 250);
        assert_eq!(config.core.retained_batches, 512);
        assert_eq!(config.core.max_snapshot_bytes, 1 << 20);
        assert_eq!(config.core.max_future_per_peer, 32);
        assert_ne!(
            config.core.chain_id,
            ChainId::from_name("testnet"),
            "max_clients and max_snapshot_bytes are agreed parameters: the chain id covers them"
        );
        let local = "[limits]\nheartbeat_ms = 250\nview_timeout_ms = 900\n";
        let config = load(&fixture, &config_text(&fixture.keys, local)).unwrap();
        assert_eq!(
            config.core.chain_id,
            ChainId::from_name("testnet"),
            "a node's own timeouts leave the chain id alone"
        );
        let typo = config_text(&fixture.keys, "[limits]\nmax_client = 500\n");
        let message = field_of(load(&fixture, &typo));
        assert!(message.contains("max_client"), "{message}");
        let chain = format!("[limits]\nchain_id = {:?}\n", [1u8; 32]);
        let chain = config_text(&fixture.keys, &chain);
        assert_eq!(field_of(load(&fixture, &chain)), "limits.chain_id");
    }

    #[test]
    fn errors_name_the_field_and_the_problem() {
        let fixture = fixture();
        let mut bad_key = config_text(&fixture.keys, "");
        bad_key = bad_key.replacen(&fixture.keys[1].public_key().to_string(), "xyz", 1);
        assert_eq!(field_of(load(&fixture, &bad_key)), "validators[1].key");
        let bad_listen = config_text(&fixture.keys, "").replace("127.0.0.1:7002", "nowhere");
        assert_eq!(field_of(load(&fixture, &bad_listen)), "listen");
        // A key outside the genesis set loads: the node joins once a change adds it.
        let outsider = config_text(&fixture.keys[..2], "");
        assert!(load(&fixture, &outsider).unwrap().outside_genesis());
        let bad_peer = format!(
            "{}
[[peers]]
key = \"{}\"
address = \"nowhere\"
",
            config_text(&fixture.keys, ""),
            fixture.keys[0].public_key()
        );
        assert_eq!(field_of(load(&fixture, &bad_peer)), "peers[0].address");
        let bad_limits = config_text(&fixture.keys, "[limits]\nwindow = 0\n");
        assert_eq!(field_of(load(&fixture, &bad_limits)), "limits");
        // A window whose new view could never fit a message, even with four validators.
        let too_wide = config_text(&fixture.keys, "[limits]\nwindow = 20000\n");
        assert_eq!(field_of(load(&fixture, &too_wide)), "limits");
        let error = load(&fixture, &too_wide).unwrap_err().to_string();
        assert!(error.contains("max_message_bytes"), "{error}");
        for threads in [0, 257] {
            let text = config_text(&fixture.keys, &format!("verify_threads = {threads}\n"));
            assert_eq!(field_of(load(&fixture, &text)), "verify_threads");
        }
        let unknown = config_text(&fixture.keys, "colour = \"blue\"\n");
        let message = field_of(load(&fixture, &unknown));
        assert!(message.contains("colour"), "{message}");
        let error = load(&fixture, &bad_key).unwrap_err().to_string();
        assert!(
            error.contains("node.toml") && error.contains("validators[1].key"),
            "{error}"
        );
    }

    #[test]
    fn key_files_are_private_and_never_overwritten() {
        let fixture = fixture();
        let path = fixture.dir.path().join("node.key");
        assert_eq!(
            read_key_file(&path).unwrap().public_key(),
            fixture.keys[2].public_key()
        );
        assert!(
            write_key_file(&path, &fixture.keys[0]).is_err(),
            "no overwrite"
        );
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{}\n", to_hex_for_test(&fixture.keys[2].seed()))
        );
        for (name, junk) in [
            ("short.key", "abcd\n".to_string()),
            ("long.key", "ab".repeat(100)),
            ("odd.key", format!("{}zz\n", "ab".repeat(31))),
        ] {
            let path = fixture.dir.path().join(name);
            write_private(&path, junk.as_bytes());
            let message = read_key_file(&path).unwrap_err().to_string();
            assert!(message.contains(name), "{message}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(read_key_file(&path), Err(FileError::Field { .. })));
            fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
            let message = read_key_file(&path).unwrap_err().to_string();
            assert!(
                message.contains("node.key") && message.contains("mode 640"),
                "{message}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_owned_by_another_user_is_refused() {
        let fixture = fixture();
        let path = fixture.dir.path().join("node.key");
        if rustix::process::geteuid().as_raw() != 0 {
            // Only root can give a file away; as anyone else there is nothing to check.
            eprintln!("not root: cannot make a file owned by another user, skipped");
            return;
        }
        std::os::unix::fs::chown(&path, Some(65_534), None).unwrap();
        let message = read_key_file(&path).unwrap_err().to_string();
        assert!(
            message.contains("node.key") && message.contains("owned by uid 65534"),
            "{message}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_to_a_private_key_file_is_refused() {
        let fixture = fixture();
        let target = fixture.dir.path().join("node.key");
        let link = fixture.dir.path().join("link.key");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(read_key_file(&target).is_ok(), "the file itself is fine");
        let error = read_key_file(&link).unwrap_err();
        assert!(matches!(error, FileError::Field { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.contains("symlink") && message.contains("link.key"),
            "{message}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_at_the_key_path_is_refused_without_hanging() {
        let fixture = fixture();
        let path = fixture.dir.path().join("fifo.key");
        let made = std::process::Command::new("mkfifo")
            .arg("-m")
            .arg("600")
            .arg(&path)
            .status();
        if !made.is_ok_and(|status| status.success()) {
            // No mkfifo on this system: nothing to check.
            return;
        }
        let message = read_key_file(&path).unwrap_err().to_string();
        assert!(
            message.contains("not a regular file") && message.contains("fifo.key"),
            "{message}"
        );
    }

    fn to_hex_for_test(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn write_private(path: &Path, bytes: &[u8]) {
        fs::write(path, bytes).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
        }
    }

    #[test]
    fn fresh_seeds_come_from_the_system_and_differ() {
        let (a, b) = (random_seed().unwrap(), random_seed().unwrap());
        assert_ne!(a, b);
        assert_ne!(a, [0; 32]);
    }
}
