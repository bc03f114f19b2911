//! The ports a server opens besides the ones it leased. A server that exits saying "address
//! already in use" either lost one of its own leased ports to another program (start it again,
//! elsewhere or later) or tried a port its [`super::Spec`] does not lease, such as ZooKeeper's
//! admin server on 8080 (a mistake in the Spec: starting again cannot help). A server that
//! starts and listens on a port it did not lease is the same mistake, waiting for a parallel test
//! to take that port first. This module tells these apart from the kernel's own tables.

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;

/// True when nothing listens on `port` of 127.0.0.1 (or of every address) right now: it binds.
pub(crate) fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The TCP ports (IPv4 and IPv6) on which process `pid` or one of its descendants listens,
/// sorted; `None` when `/proc` does not tell (its descriptors are not ours to read).
pub(crate) fn listening_ports(pid: u32) -> Option<Vec<u16>> {
    let mut inodes = HashSet::new();
    for p in std::iter::once(pid).chain(descendants(pid)) {
        match socket_inodes(p) {
            Some(i) => inodes.extend(i),
            // The process itself must be readable; a child may have exited meanwhile.
            None if p == pid => return None,
            None => {}
        }
    }
    let mut ports: Vec<u16> =
        listeners().into_iter().filter(|(inode, _)| inodes.contains(inode)).map(|(_, p)| p).collect();
    ports.sort_unstable();
    ports.dedup();
    Some(ports)
}

/// Every descendant of `pid` (from `/proc/*/stat`).
fn descendants(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    for e in entries.filter_map(Result::ok) {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        // The parent's pid is the second field after the command name, which is in parentheses.
        let ppid = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(p);
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).map_or(&[][..], Vec::as_slice) {
            if !out.contains(&c) {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

/// The inodes of the sockets among `pid`'s descriptors (`socket:[INODE]` links).
fn socket_inodes(pid: u32) -> Option<HashSet<u64>> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        entries
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
            .collect(),
    )
}

/// Every listening TCP socket of this network namespace: `(inode, local port)`.
fn listeners() -> Vec<(u64, u16)> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| text.lines().skip(1).filter_map(parse_listener).collect::<Vec<_>>())
        .collect()
}

/// One line of `/proc/net/tcp`: `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`,
/// `local` as `HEXADDR:HEXPORT`, state `0A` for LISTEN.
fn parse_listener(line: &str) -> Option<(u64, u16)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 || f[3] != "0A" {
        return None;
    }
    let port = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
    Some((f[9].parse().ok()?, port))
}

/// True when `log` (what a server wrote since its start) says that an address was in use.
pub(crate) fn says_in_use(log: &str) -> bool {
    let lower = log.to_ascii_lowercase();
    lower.contains("address already in use") || lower.contains("address in use")
}

/// Whose port a server that exited over an address in use could not have.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Clash {
    /// One of its own (leased) ports: another program holds it, or held it a moment ago.
    Own,
    /// Another port (those the log names), while its own ports were free.
    Other(Vec<u16>),
}

/// Decides whose port was taken, from the kernel first: one of `ours` that does not bind now is
/// held by another program. All of them free, the log decides: a port of ours that a line saying
/// "in use" or "already" names was held a moment ago (a squatter that just left; start again),
/// and other ports named while ours were free were the clash. When the log names none, it is
/// taken for ours: starting again costs a little, failing for good a start that would succeed
/// costs a flaky test.
pub(crate) fn whose_port(log: &str, ours: &[u16]) -> Clash {
    if ours.iter().any(|p| !bindable(*p)) {
        return Clash::Own;
    }
    let named = ports_named_in(log);
    if named.iter().any(|(p, strong)| *strong && ours.contains(p)) {
        return Clash::Own;
    }
    let other: Vec<u16> = named.into_iter().map(|(p, _)| p).filter(|p| !ours.contains(p)).collect();
    if other.is_empty() { Clash::Own } else { Clash::Other(other) }
}

/// The ports that `log`'s lines about a taken or bound address name, each with whether its line
/// says "in use" or "already" (else it only says "bind"): a number right after an address and
/// `:` (`127.0.0.1:8080`, `0.0.0.0/0.0.0.0:8080`, `[::1]:8080`, `localhost:8080`) or after the
/// word `port` (`port 5432`, `port: 3306`). Timestamps (`13:10:57`) are no address. In order,
/// without repeats.
fn ports_named_in(log: &str) -> Vec<(u16, bool)> {
    let mut out: Vec<(u16, bool)> = Vec::new();
    for line in log.lines() {
        let lower = line.to_ascii_lowercase();
        let strong = lower.contains("in use") || lower.contains("already");
        if !strong && !lower.contains("bind") {
            continue;
        }
        let b = lower.as_bytes();
        for (i, _) in lower.match_indices(|c: char| c.is_ascii_digit()) {
            if i > 0 && b[i - 1].is_ascii_digit() {
                continue; // inside a number already seen
            }
            let after_address = i > 0 && b[i - 1] == b':' && is_address(address_before(&lower[..i - 1]));
            let after_port_word = lower[..i].trim_end_matches([' ', ':']).ends_with("port");
            if !(after_address || after_port_word) {
                continue;
            }
            let end = lower[i..].find(|c: char| !c.is_ascii_digit()).map_or(lower.len(), |n| i + n);
            let Ok(port) = lower[i..end].parse::<u16>() else { continue };
            match out.iter_mut().find(|(p, _)| *p == port) {
                Some(seen) => seen.1 |= strong,
                None if port != 0 => out.push((port, strong)),
                None => {}
            }
        }
    }
    out
}

/// The token that ends `text` (what comes before a `:`): a bracketed IPv6 address, or letters,
/// digits, `.`, `-` and `*`.
fn address_before(text: &str) -> &str {
    if text.ends_with(']') {
        return text.rfind('[').map_or("", |i| &text[i..]);
    }
    let start = text.rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '*'))).map_or(0, |i| i + 1);
    &text[start..]
}

/// An IPv4 address, a bracketed IPv6 one, `localhost` or `*`.
fn is_address(token: &str) -> bool {
    token.parse::<std::net::Ipv4Addr>().is_ok()
        || (token.starts_with('[') && token.ends_with(']'))
        || token == "localhost"
        || token == "*"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines_parse() {
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
        assert_eq!(parse_listener(header), None);
        let listen = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0";
        assert_eq!(parse_listener(listen), Some((4242, 8080)));
        let established =
            "   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 4243 1";
        assert_eq!(parse_listener(established), None);
        let v6 = "   0: 00000000000000000000000000000000:4E21 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   100        0 77 1";
        assert_eq!(parse_listener(v6), Some((77, 20001)));
    }

    #[test]
    fn our_own_listener_is_seen() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let ports = listening_ports(std::process::id()).expect("our own descriptors are readable");
        assert!(ports.contains(&port), "{port} not in {ports:?}");
        assert!(!bindable(port));
        drop(l);
        assert!(!listening_ports(std::process::id()).unwrap().contains(&port));
    }

    #[test]
    fn the_ports_a_log_names_are_found() {
        let logs = [
            (
                "5921:M 07 Dec 2026 13:10:57.105 # Warning: Could not create server TCP listening socket \
                 127.0.0.1:20001: bind: Address already in use",
                20001,
            ),
            ("listen tcp 127.0.0.1:22380: bind: address already in use", 22380),
            (
                "2026-12-07 13:10:57 WARN Failed to bind to 0.0.0.0/0.0.0.0:8080\n\
                 java.net.BindException: Address already in use",
                8080,
            ),
            (
                "[ERROR] Can't start server: Bind on TCP/IP port. Got error: 98: Address already in use\n\
                 [ERROR] Do you already have another server running on port: 3306 ?",
                3306,
            ),
            (
                "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use\n\
                 HINT:  Is another postmaster already running on port 54329?",
                54329,
            ),
            ("bind [::1]:2380: address already in use", 2380),
        ];
        for (log, port) in logs {
            assert!(says_in_use(log), "{log}");
            assert_eq!(ports_named_in(log).iter().map(|(p, _)| *p).collect::<Vec<_>>(), [port], "{log}");
        }
        assert!(ports_named_in("Ready to accept connections on port 20001").is_empty());
        assert!(ports_named_in("13:10:57.105 bind: 12:30").is_empty(), "timestamps are no address");
        assert!(!says_in_use("Ready to accept connections"));
    }

    #[test]
    fn whose_port_a_clash_was_on() {
        // Two free ports (nothing listens on them once their probe is dropped).
        let free = |_| TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let ours: Vec<u16> = (0..2).map(free).collect();
        let (a, b) = (ours[0], ours[1]);
        // Ours named on a line that says "in use": held a moment ago, start again.
        let log = format!("socket 127.0.0.1:{a}: bind: Address already in use");
        assert_eq!(whose_port(&log, &ours), Clash::Own);
        // ZooKeeper: its client port on a "binding" line, then 8080 taken: not ours.
        let log = format!(
            "INFO binding to port 0.0.0.0/0.0.0.0:{b}\nWARN Failed to bind to 0.0.0.0/0.0.0.0:8080\n\
             java.net.BindException: Address already in use"
        );
        assert_eq!(whose_port(&log, &ours), Clash::Other(vec![8080]));
        // Nothing named: taken for ours.
        assert_eq!(whose_port("java.net.BindException: Address already in use", &ours), Clash::Own);
        // One of ours held right now: ours, whatever the log says.
        let held = TcpListener::bind(("127.0.0.1", b)).unwrap();
        let log = "WARN Failed to bind to 0.0.0.0/0.0.0.0:8080: Address already in use";
        assert_eq!(whose_port(log, &ours), Clash::Own);
        drop(held);
        assert_eq!(whose_port(log, &ours), Clash::Other(vec![8080]));
    }
}
