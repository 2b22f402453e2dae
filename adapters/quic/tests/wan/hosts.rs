//! Separate network hosts on one machine: one Linux network namespace per validator, each
//! with its own address on a veth pair to the test's namespace, and nothing else. Every
//! packet between validators (and from the test's clients) crosses the test's namespace,
//! where the [`super::forwarder`] decides its fate: the kernel here has no `netem`.
//!
//! Layout for host `i` of network `net`:
//! - the host's address `10.{70+net}.{i}.2/24` on its veth end inside its namespace;
//! - the test's end `10.{70+net}.{i}.1/24`, its gateway;
//! - the address the others reach it at, `10.{80+net}.0.{i+1}`, on the test's loopback,
//!   where the forwarder listens for it: a host's only route to the others leads there.
//!
//! Created with `ip` (iproute2) and removed on drop, also when the test panics.

use std::net::Ipv4Addr;
use std::process::Command;

/// Network namespaces that exist for one test run.
pub(crate) struct Hosts {
    names: Vec<String>,
    net: u8,
    /// Whether each host's forwarded address was added to the loopback.
    listening: Vec<bool>,
}

/// Runs `ip args`; the error says which command failed and what `ip` printed.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|err| format!("`ip` could not run ({err}): is iproute2 installed?"))?;
    match output.status.success() {
        true => Ok(()),
        false => Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}

impl Hosts {
    /// `count` hosts on network `net` (0..10: tests running at once use different ones).
    ///
    /// # Errors
    ///
    /// Why namespaces cannot be made here (no privilege, no iproute2, a kernel without
    /// network namespaces): the caller skips the test with that message.
    pub(crate) fn create(count: usize, net: u8) -> Result<Hosts, String> {
        let tag = std::process::id() % 10_000;
        let mut hosts = Hosts {
            names: Vec::new(),
            net,
            listening: Vec::new(),
        };
        for index in 0..count {
            let name = format!("pbftwan{tag}n{net}h{index}");
            ip(&["netns", "add", &name])?;
            hosts.names.push(name.clone());
            hosts.listening.push(false);
            // Interface names are at most 15 bytes.
            let (outer, inner) = (
                format!("pw{tag}{net}{index}o"),
                format!("pw{tag}{net}{index}i"),
            );
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &name,
            ])?;
            let gateway = format!("{}/24", hosts.gateway(index));
            ip(&["addr", "add", &gateway, "dev", &outer])?;
            ip(&["link", "set", &outer, "up"])?;
            let own = format!("{}/24", hosts.address(index));
            ip(&["-n", &name, "addr", "add", &own, "dev", &inner])?;
            ip(&["-n", &name, "link", "set", &inner, "up"])?;
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
            let forwarded = format!("10.{}.0.0/24", 80 + net);
            let via = hosts.gateway(index).to_string();
            ip(&["-n", &name, "route", "add", &forwarded, "via", &via])?;
            ip(&[
                "addr",
                "add",
                &format!("{}/32", hosts.forwarded(index)),
                "dev",
                "lo",
            ])?;
            hosts.listening[index] = true;
        }
        Ok(hosts)
    }

    /// Host `index`'s own address, inside its namespace.
    pub(crate) fn address(&self, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 70 + self.net, index as u8, 2)
    }

    /// The test's end of host `index`'s link.
    fn gateway(&self, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 70 + self.net, index as u8, 1)
    }

    /// Where everyone else reaches host `index`: the forwarder, in the test's namespace.
    pub(crate) fn forwarded(&self, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 80 + self.net, 0, index as u8 + 1)
    }

    /// The host a packet from `source` left, if it is one of these hosts' addresses.
    pub(crate) fn host_of(&self, source: Ipv4Addr) -> Option<usize> {
        let [a, b, index, d] = source.octets();
        (a == 10 && b == 70 + self.net && d == 2 && usize::from(index) < self.names.len())
            .then_some(usize::from(index))
    }

    /// The command prefix that runs a program on host `index`.
    pub(crate) fn exec(&self, index: usize) -> Vec<String> {
        ["ip", "netns", "exec", &self.names[index]]
            .map(String::from)
            .to_vec()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth pair with it.
        for (index, name) in self.names.iter().enumerate() {
            let _ = ip(&["netns", "del", name]);
            if self.listening.get(index) == Some(&true) {
                let forwarded = format!("{}/32", self.forwarded(index));
                let _ = ip(&["addr", "del", &forwarded, "dev", "lo"]);
            }
        }
    }
}
