//! Key and config files for a local cluster on loopback, for trying pbft out and for tests.

use std::fmt::Write as _;
use std::fs;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};

use pbft_core::Keypair;

use crate::config::{FileError, write_key_file};

/// The files of a local cluster.
#[derive(Clone, Debug)]
pub struct Testnet {
    /// Each validator's config file, by id.
    pub nodes: Vec<PathBuf>,
    /// The config clients use: the chain and the validators.
    pub network: PathBuf,
    /// Each validator's metrics address, by id.
    pub metrics: Vec<SocketAddr>,
    /// Each gateway's config file (none unless asked for).
    pub gateways: Vec<PathBuf>,
    /// Each gateway's metrics address.
    pub gateway_metrics: Vec<SocketAddr>,
}

/// A loopback port free for both UDP and TCP right now (the OS may hand it out again
/// before a node binds it; a local cluster accepts that race).
pub fn free_port() -> std::io::Result<u16> {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
}

/// Writes keys and configs for `validators` nodes on loopback under `dir`, with fresh keys
/// from `seed_of(index)` (random in operation, fixed in tests).
pub fn create(
    dir: &Path,
    validators: usize,
    chain: &str,
    seed_of: impl Fn(usize) -> [u8; 32],
) -> Result<Testnet, FileError> {
    create_with_gateways(dir, (validators, 0), chain, seed_of)
}

/// [`create`] with `gateways` gateways too: their keys (seeds `seed_of(validators + i)`),
/// their configs (`gateway<i>.toml`), and each listed in `network.toml`, which clients use.
pub fn create_with_gateways(
    dir: &Path,
    nodes: (usize, usize),
    chain: &str,
    seed_of: impl Fn(usize) -> [u8; 32],
) -> Result<Testnet, FileError> {
    create_with(dir, nodes, (chain, false), seed_of)
}

/// [`create_with_gateways`], gateway-attested if `attested`: every config (the nodes', the
/// gateways' and `network.toml`) then says `authentication = "gateway-attested"` and lists
/// the gateways, which are part of the chain id.
pub fn create_with(
    dir: &Path,
    (validators, gateways): (usize, usize),
    (chain, attested): (&str, bool),
    seed_of: impl Fn(usize) -> [u8; 32],
) -> Result<Testnet, FileError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FileError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    // All or nothing: a second testnet written over a first would leave configs that name
    // keys no node holds.
    let node_files =
        (0..validators).flat_map(|i| [format!("node{i}.key"), format!("node{i}.toml")]);
    let gateway_files =
        (0..gateways).flat_map(|i| [format!("gateway{i}.key"), format!("gateway{i}.toml")]);
    let mut files = node_files
        .chain(gateway_files)
        .chain(["network.toml".to_string()]);
    if let Some(taken) = files.find(|name| dir.join(name).exists()) {
        let path = dir.join(taken);
        let source = std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "a testnet is already there; nothing was written: use a new --dir",
        );
        return Err(FileError::Io { path, source });
    }
    let keys: Vec<Keypair> = (0..validators)
        .map(|index| Keypair::from_seed(&seed_of(index)))
        .collect();
    let mut ports = Vec::new();
    let mut metrics = Vec::new();
    for _ in 0..validators {
        ports.push(free_port().map_err(io(dir))?);
        metrics.push(SocketAddr::from((
            [127, 0, 0, 1],
            free_port().map_err(io(dir))?,
        )));
    }
    // Every node of a local testnet runs on this machine's cores: check threads of their own
    // would only take turns on the same cores (measured: no gain at 4 nodes on 2 cores).
    const SHARED_CORES: &str = "# The nodes share this machine's cores.\nverify_threads = 1\n";
    let mut set = String::new();
    for (key, port) in keys.iter().zip(&ports) {
        let _ = write!(
            set,
            "\n[[validators]]\nkey = \"{}\"\naddress = \"127.0.0.1:{port}\"\n",
            key.public_key()
        );
    }
    let mut listed = String::new();
    let mut gateway_keys = Vec::new();
    let mut gateway_ports = Vec::new();
    for index in 0..gateways {
        let key = Keypair::from_seed(&seed_of(validators + index));
        let port = free_port().map_err(io(dir))?;
        let _ = write!(
            listed,
            "\n[[gateways]]\nkey = \"{}\"\naddress = \"127.0.0.1:{port}\"\n",
            key.public_key()
        );
        gateway_keys.push(key);
        gateway_ports.push(port);
    }
    // Gateway-attested, every member must know the gateways: they are part of the chain id.
    if attested {
        set = format!("authentication = \"gateway-attested\"\n{set}{listed}");
    }
    let mut gateway_files = Vec::new();
    let mut gateway_metrics = Vec::new();
    for (index, (key, port)) in gateway_keys.iter().zip(gateway_ports).enumerate() {
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().map_err(io(dir))?));
        gateway_metrics.push(metrics);
        let key_file = dir.join(format!("gateway{index}.key"));
        write_key_file(&key_file, key)?;
        let config = dir.join(format!("gateway{index}.toml"));
        let text = format!(
            "chain = \"{chain}\"\nkey_file = \"gateway{index}.key\"\nlisten = \"127.0.0.1:{port}\"\nmetrics = \"{metrics}\"\n{set}"
        );
        fs::write(&config, text).map_err(io(&config))?;
        gateway_files.push(config);
    }
    if attested {
        listed.clear();
    }
    let network = dir.join("network.toml");
    fs::write(&network, format!("chain = \"{chain}\"\n{set}{listed}")).map_err(io(&network))?;
    let mut nodes = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        let key_file = dir.join(format!("node{index}.key"));
        write_key_file(&key_file, key)?;
        let config = dir.join(format!("node{index}.toml"));
        let text = format!(
            "chain = \"{chain}\"\nkey_file = \"node{index}.key\"\ndata_dir = \"node{index}-data\"\nlisten = \"127.0.0.1:{}\"\nmetrics = \"{}\"\n{SHARED_CORES}{set}",
            ports[index], metrics[index]
        );
        fs::write(&config, text).map_err(io(&config))?;
        nodes.push(config);
    }
    Ok(Testnet {
        nodes,
        network,
        metrics,
        gateways: gateway_files,
        gateway_metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_testnet_is_not_written_over_another() {
        let dir = tempfile::tempdir().unwrap();
        let first = create(dir.path(), 4, "first", |i| [i as u8; 32]).unwrap();
        let network = fs::read(&first.network).unwrap();
        let again = create_with_gateways(dir.path(), (4, 2), "second", |i| [i as u8 + 9; 32]);
        let Err(FileError::Io { path, source }) = again else {
            panic!("a second testnet over the first was written");
        };
        assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists);
        assert!(path.ends_with("node0.key"), "{}", path.display());
        assert_eq!(
            fs::read(&first.network).unwrap(),
            network,
            "network.toml changed"
        );
        assert!(!dir.path().join("gateway0.toml").exists());
    }
}
