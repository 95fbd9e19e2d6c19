//! A minimal Redis client: RESP2 over TCP, blocking, every call bounded by a deadline. What
//! shared online state needs (docs/shared-state.md): `GET` / `MGET` / `EXISTS` / `HGETALL` for
//! readers and pipelined `SET ... PXAT` for writers, without a Python-level client in the hot
//! path (redis-py costs about 80 us per command on top of the ~20 us loopback round trip:
//! bench/bench_shared_state.py). No TLS, no cluster redirections, no pub/sub: those go through
//! redis-py (`RemoteEngine(client=...)`).

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// One reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Nil,
    Status(String),
    Int(i64),
    Bulk(Vec<u8>),
    Array(Vec<Reply>),
    /// An error reply (`-ERR ...`): the command failed, the connection is fine.
    Error(String),
}

/// Where to connect.
#[derive(Clone, Debug, Default)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// The decimal digits of `v` in `buf` (no allocation: the writer formats a number per key).
pub fn int_bytes(buf: &mut [u8; 20], v: i64) -> &[u8] {
    let mut n = v.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        // i64::MIN has 19 digits: a sign still fits
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// Append one command (an array of bulk strings) to `out`.
pub fn pack(out: &mut Vec<u8>, args: &[&[u8]]) {
    let mut digits = [0u8; 20];
    out.push(b'*');
    out.extend_from_slice(int_bytes(&mut digits, args.len() as i64));
    out.extend_from_slice(b"\r\n");
    for a in args {
        out.push(b'$');
        out.extend_from_slice(int_bytes(&mut digits, a.len() as i64));
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn protocol(m: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("redis protocol: {m}"))
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "timed out")
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    let now = Instant::now();
    if now >= deadline {
        return Err(timed_out());
    }
    Ok(deadline - now)
}

/// The line at the front of `b` (without its CRLF) and the bytes it takes.
fn line(b: &[u8]) -> Option<(&[u8], usize)> {
    let i = b.windows(2).position(|w| w == b"\r\n")?;
    Some((&b[..i], i + 2))
}

fn int(s: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(s)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| protocol("bad integer"))
}

/// The length of the reply at the front of `b`, without building it: `Ok(None)` when `b`
/// holds only part of it. Skips bulk strings by their length, so checking a large reply that
/// arrives in many reads costs its headers per read, not its bytes (and no copies).
pub fn reply_len(b: &[u8]) -> io::Result<Option<usize>> {
    let Some(&kind) = b.first() else {
        return Ok(None);
    };
    let Some((head, used)) = line(&b[1..]) else {
        return Ok(None);
    };
    let used = used + 1;
    match kind {
        b'+' | b'-' | b':' => Ok(Some(used)),
        b'$' => {
            let n = int(head)?;
            if n < 0 {
                return Ok(Some(used));
            }
            let end = used.saturating_add(n as usize).saturating_add(2);
            Ok((b.len() >= end).then_some(end))
        }
        b'*' => {
            let n = int(head)?;
            let mut at = used;
            for _ in 0..n.max(0) {
                match reply_len(&b[at..])? {
                    Some(k) => at += k,
                    None => return Ok(None),
                }
            }
            Ok(Some(at))
        }
        other => Err(protocol(&format!(
            "unexpected reply type byte {other:#04x}"
        ))),
    }
}

/// Parse one reply from the front of `b`: `Ok(None)` when `b` holds only part of it.
pub fn parse(b: &[u8]) -> io::Result<Option<(Reply, usize)>> {
    let Some(&kind) = b.first() else {
        return Ok(None);
    };
    let Some((head, used)) = line(&b[1..]) else {
        return Ok(None);
    };
    let used = used + 1;
    let text = || String::from_utf8_lossy(head).into_owned();
    match kind {
        b'+' => Ok(Some((Reply::Status(text()), used))),
        b'-' => Ok(Some((Reply::Error(text()), used))),
        b':' => Ok(Some((Reply::Int(int(head)?), used))),
        b'$' => {
            let n = int(head)?;
            if n < 0 {
                return Ok(Some((Reply::Nil, used)));
            }
            let n = n as usize;
            if b.len() < used.saturating_add(n).saturating_add(2) {
                return Ok(None);
            }
            if &b[used + n..used + n + 2] != b"\r\n" {
                return Err(protocol("bulk string without CRLF"));
            }
            Ok(Some((
                Reply::Bulk(b[used..used + n].to_vec()),
                used + n + 2,
            )))
        }
        b'*' => {
            let n = int(head)?;
            if n < 0 {
                return Ok(Some((Reply::Nil, used)));
            }
            let mut items = Vec::with_capacity((n as usize).min(1 << 16));
            let mut at = used;
            for _ in 0..n {
                match parse(&b[at..])? {
                    Some((r, k)) => {
                        items.push(r);
                        at += k;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(items), at)))
        }
        other => Err(protocol(&format!(
            "unexpected reply type byte {other:#04x}"
        ))),
    }
}

/// One connection. Any I/O error leaves it unusable: drop it and connect again.
pub struct Conn {
    stream: TcpStream,
    /// Received bytes at `start..end`; the rest is room for the next read (zeroed once when
    /// the buffer grows, not before every read).
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// Room a read asks the socket to fill at least.
const READ_ROOM: usize = 64 * 1024;

impl Conn {
    /// Connect, authenticate and select the database, all before `deadline`.
    pub fn connect(t: &Target, deadline: Instant) -> io::Result<Conn> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        let mut stream = None;
        for addr in (t.host.as_str(), t.port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, remaining(deadline)?) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let stream = stream.ok_or(last)?;
        stream.set_nodelay(true)?;
        let mut c = Conn {
            stream,
            buf: Vec::new(),
            start: 0,
            end: 0,
        };
        let mut setup = Vec::new();
        let mut n = 0;
        if let Some(pw) = &t.password {
            match &t.username {
                Some(u) => pack(&mut setup, &[b"AUTH", u.as_bytes(), pw.as_bytes()]),
                None => pack(&mut setup, &[b"AUTH", pw.as_bytes()]),
            }
            n += 1;
        }
        if t.db != 0 {
            pack(&mut setup, &[b"SELECT", t.db.to_string().as_bytes()]);
            n += 1;
        }
        if n > 0 {
            c.send(&setup, deadline)?;
            for _ in 0..n {
                if let Reply::Error(e) = c.read(deadline)? {
                    return Err(io::Error::new(io::ErrorKind::PermissionDenied, e));
                }
            }
        }
        Ok(c)
    }

    pub fn send(&mut self, bytes: &[u8], deadline: Instant) -> io::Result<()> {
        self.stream.set_write_timeout(Some(remaining(deadline)?))?;
        self.stream.write_all(bytes).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock => timed_out(),
            _ => e,
        })
    }

    /// The next reply.
    pub fn read(&mut self, deadline: Instant) -> io::Result<Reply> {
        loop {
            // parse only a complete reply: a partial one would be parsed (and its bulk
            // strings copied) again after every read
            let pending = self.buf.get(self.start..self.end).unwrap_or_default();
            let complete = reply_len(pending)?.is_some();
            if let Some((r, used)) = if complete { parse(pending)? } else { None } {
                self.start += used;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
                return Ok(r);
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < READ_ROOM {
                self.buf.resize(self.end + READ_ROOM.max(self.end), 0);
            }
            self.stream.set_read_timeout(Some(remaining(deadline)?))?;
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "connection closed by the server",
                    ));
                }
                Ok(k) => self.end += k,
                // a signal interrupted the wait (a profiler, SIGCHLD, ...): wait again
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(match e.kind() {
                        io::ErrorKind::WouldBlock => timed_out(),
                        _ => e,
                    });
                }
            }
        }
    }

    /// One command, one reply.
    pub fn command(&mut self, args: &[&[u8]], deadline: Instant) -> io::Result<Reply> {
        let mut out = Vec::with_capacity(64);
        pack(&mut out, args);
        self.send(&out, deadline)?;
        self.read(deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_and_parse_round_trip() {
        let mut b = Vec::new();
        pack(&mut b, &[b"SET", b"k", b"v\r\n"]);
        assert_eq!(b, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n");
        let replies =
            b"+OK\r\n-ERR no\r\n:42\r\n$-1\r\n$3\r\na\r\n\r\n*3\r\n$1\r\nx\r\n$-1\r\n:7\r\n*0\r\n";
        let want = [
            Reply::Status("OK".into()),
            Reply::Error("ERR no".into()),
            Reply::Int(42),
            Reply::Nil,
            Reply::Bulk(b"a\r\n".to_vec()),
            Reply::Array(vec![Reply::Bulk(b"x".to_vec()), Reply::Nil, Reply::Int(7)]),
            Reply::Array(vec![]),
        ];
        let mut at = 0;
        for w in &want {
            let (r, used) = parse(&replies[at..]).unwrap().unwrap();
            assert_eq!(&r, w);
            at += used;
        }
        assert_eq!(at, replies.len());
        // every strict prefix of a reply is incomplete, never an error or a wrong reply
        let one = b"*2\r\n$5\r\nhello\r\n:12\r\n";
        for cut in 0..one.len() {
            assert_eq!(parse(&one[..cut]).unwrap(), None, "{cut}");
        }
        // reply_len agrees with parse on every reply and every prefix
        for cut in 0..=replies.len() {
            let b = &replies[..cut];
            assert_eq!(
                reply_len(b).unwrap(),
                parse(b).unwrap().map(|(_, n)| n),
                "{cut}"
            );
        }
        for cut in 0..one.len() {
            assert_eq!(reply_len(&one[..cut]).unwrap(), None, "{cut}");
        }
        assert_eq!(reply_len(one).unwrap(), Some(one.len()));
        assert!(reply_len(b"?what\r\n").is_err());
        assert!(reply_len(b"$99999999999999999999\r\n").is_err());
        assert_eq!(reply_len(b"$9223372036854775807\r\n").unwrap(), None);
        assert_eq!(parse(b"$9223372036854775807\r\n").unwrap(), None);
        assert!(parse(b"?what\r\n").is_err());
        for v in [0i64, 7, -7, 10, 99, 1_000_000_007, i64::MAX, i64::MIN] {
            let mut d = [0u8; 20];
            assert_eq!(int_bytes(&mut d, v), v.to_string().as_bytes());
        }
        assert!(parse(b"$3\r\nabcXY").is_err());
        assert!(parse(b":12a\r\n").is_err());
    }

    /// Replies cut at every kind of place across socket reads (a byte at a time, two replies in
    /// one write, a bulk string larger than the read buffer) read back as sent, in order.
    #[test]
    fn replies_across_reads_and_buffer_growth() {
        use std::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = Vec::new();
        wire.extend_from_slice(b":1\r\n+OK\r\n");
        let mut expect = vec![Reply::Int(1), Reply::Status("OK".into())];
        let mut arr = Vec::new();
        pack(&mut arr, &[b"a", &big[..5000], b"", &big]);
        wire.extend_from_slice(&arr);
        expect.push(Reply::Array(vec![
            Reply::Bulk(b"a".to_vec()),
            Reply::Bulk(big[..5000].to_vec()),
            Reply::Bulk(Vec::new()),
            Reply::Bulk(big.clone()),
        ]));
        wire.extend_from_slice(b"$-1\r\n:7\r\n");
        expect.extend([Reply::Nil, Reply::Int(7)]);
        let sender = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_nodelay(true).unwrap();
            // the first 64 bytes one at a time, then growing pieces
            let mut at = 0;
            let mut step = 1;
            while at < wire.len() {
                let end = (at + step).min(wire.len());
                s.write_all(&wire[at..end]).unwrap();
                s.flush().unwrap();
                at = end;
                if at >= 64 {
                    step = (step * 3).min(40_000);
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            // hold the connection open until the reader is done
            let mut b = [0u8; 1];
            let _ = s.read(&mut b);
        });
        let target = Target {
            host: "127.0.0.1".into(),
            port,
            db: 0,
            username: None,
            password: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut c = Conn::connect(&target, deadline).unwrap();
        for want in &expect {
            assert_eq!(&c.read(deadline).unwrap(), want);
        }
        assert_eq!((c.start, c.end), (0, 0));
        drop(c);
        sender.join().unwrap();
    }
}
