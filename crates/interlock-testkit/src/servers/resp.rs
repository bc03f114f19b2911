//! A tiny Redis (RESP2) client over `std::net::TcpStream`, for readiness probes and fault hooks
//! (`CLIENT KILL`, `DEBUG SLEEP`, looking at keys), so the testkit needs no Redis crate. Not for
//! the backend under test: that uses its own client.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:42`
    Int(i64),
    /// `$n` bytes.
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`.
    Nil,
    /// `*n` replies.
    Array(Vec<Resp>),
}

impl Resp {
    /// The text of a simple string or bulk reply.
    pub fn text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    /// The integer of an integer reply.
    pub fn int(&self) -> Option<i64> {
        match self {
            Resp::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// `Err` with the message of an error reply, else the reply.
    ///
    /// # Errors
    ///
    /// An error reply, as `io::ErrorKind::Other`.
    pub fn ok(self) -> io::Result<Resp> {
        match self {
            Resp::Error(e) => Err(io::Error::other(e)),
            r => Ok(r),
        }
    }
}

/// One connection to a Redis server.
#[derive(Debug)]
pub struct RespConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RespConn {
    /// Connects to `addr`; reads and writes time out after `timeout`.
    ///
    /// # Errors
    ///
    /// When the connection fails.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<RespConn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(RespConn { reader: BufReader::new(stream.try_clone()?), writer: stream })
    }

    /// Sends one command and reads its reply (an error reply is `Ok(Resp::Error)`).
    ///
    /// # Errors
    ///
    /// I/O errors, a timeout, a closed connection (`UnexpectedEof`), a malformed reply.
    pub fn call(&mut self, args: &[&str]) -> io::Result<Resp> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&out)?;
        read_reply(&mut self.reader)
    }

    /// The local address of this connection, as `CLIENT LIST` shows it in `addr=`.
    ///
    /// # Errors
    ///
    /// When the socket has none.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.writer.local_addr()
    }
}

fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed by the server"));
    }
    let line = line.strip_suffix("\r\n").ok_or_else(|| bad(&line))?;
    Ok(line.to_owned())
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("malformed RESP: {what:?}"))
}

fn read_reply(r: &mut impl BufRead) -> io::Result<Resp> {
    let line = read_line(r)?;
    let (kind, rest) = line.split_at_checked(1).ok_or_else(|| bad(&line))?;
    let num = || rest.parse::<i64>().map_err(|_| bad(&line));
    Ok(match kind {
        "+" => Resp::Simple(rest.to_owned()),
        "-" => Resp::Error(rest.to_owned()),
        ":" => Resp::Int(num()?),
        "$" => match usize::try_from(num()?) {
            Err(_) => Resp::Nil,
            Ok(n) => {
                let mut buf = vec![0; n + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n);
                Resp::Bulk(buf)
            }
        },
        "*" => match usize::try_from(num()?) {
            Err(_) => Resp::Nil,
            Ok(n) => Resp::Array((0..n).map(|_| read_reply(r)).collect::<io::Result<_>>()?),
        },
        _ => return Err(bad(&line)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Resp {
        read_reply(&mut io::Cursor::new(s.as_bytes())).unwrap()
    }

    #[test]
    fn replies_parse() {
        assert_eq!(parse("+PONG\r\n"), Resp::Simple("PONG".into()));
        assert_eq!(parse("-ERR no\r\n"), Resp::Error("ERR no".into()));
        assert_eq!(parse(":-3\r\n"), Resp::Int(-3));
        assert_eq!(parse("$5\r\nab\r\nc\r\n"), Resp::Bulk(b"ab\r\nc".to_vec()));
        assert_eq!(parse("$-1\r\n"), Resp::Nil);
        assert_eq!(parse("*2\r\n$1\r\na\r\n:1\r\n"), Resp::Array(vec![Resp::Bulk(b"a".to_vec()), Resp::Int(1)]));
        assert!(read_reply(&mut io::Cursor::new(&b"?x\r\n"[..])).is_err());
        assert_eq!(read_reply(&mut io::Cursor::new(&b""[..])).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
