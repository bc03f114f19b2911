//! The flash sale's stock in the lock's own Redis (`demo flash-sale -u redis://...`): the
//! classic example, a plain string key `count` that each buyer reads with `GET` and writes back
//! with `SET` (the count minus one), and a list `sales` with one entry per item sold (`RPUSH`),
//! both under a namespace of the run's own, `PREFIX` + `interlock-demo:flash-sale:RUN:` (the
//! URL's `prefix`, then the demo's pid and a nonce). The demo creates them and deletes them at
//! the end.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use interlock::LockUrl;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, Value};

use crate::exit::{self, Failure};

/// How long connecting, and each command, may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to the lock's Redis and the run's two keys.
pub(super) struct RedisStock {
    conn: MultiplexedConnection,
    namespace: String,
    count: String,
    sales: String,
    /// The server, for messages (`host:port`, never the password).
    server: String,
}

impl std::fmt::Debug for RedisStock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStock").field("count", &self.count).field("server", &self.server).finish_non_exhaustive()
    }
}

/// A fresh namespace for one run: the URL's `prefix`, then `interlock-demo:flash-sale:PID-NONCE:`.
pub(super) fn new_namespace(url: &str) -> Result<String, Failure> {
    let url = parse(url)?;
    let prefix = url.query().iter().find(|(k, _)| k == "prefix").map_or("", |(_, v)| v.as_str());
    let nonce = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    Ok(format!("{prefix}interlock-demo:flash-sale:{}-{nonce:x}:", std::process::id()))
}

fn parse(url: &str) -> Result<LockUrl, Failure> {
    LockUrl::parse(url).map_err(|e| Failure::from_lock(&e, exit::CONFLICT_DEFAULT))
}

impl RedisStock {
    /// Connects to the server of the lock URL `url` (its host, port, database and credentials);
    /// the keys are `NAMESPACE count` and `NAMESPACE sales`.
    pub(super) async fn connect(url: &str, namespace: &str) -> Result<RedisStock, Failure> {
        let url = parse(url)?;
        let (host, port) = host_port(url.hosts().first().map_or("127.0.0.1", String::as_str));
        let server = format!("{host}:{port}");
        let db = url.path().trim_start_matches('/').parse::<i64>().unwrap_or(0);
        let mut settings = RedisConnectionInfo::default().set_db(db).set_skip_set_lib_name();
        if let Some(u) = url.user() {
            settings = settings.set_username(u);
        }
        if let Some(p) = url.password() {
            settings = settings.set_password(p);
        }
        let unavailable = |e: redis::RedisError| {
            Failure::new(exit::UNAVAILABLE, format!("cannot connect to redis at {server} for the demo's stock: {e}"))
        };
        let info =
            ConnectionAddr::Tcp(host, port).into_connection_info().map_err(unavailable)?.set_redis_settings(settings);
        let config =
            AsyncConnectionConfig::new().set_connection_timeout(Some(TIMEOUT)).set_response_timeout(Some(TIMEOUT));
        let conn = Client::open(info)
            .map_err(unavailable)?
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(unavailable)?;
        let (count, sales) = (format!("{namespace}count"), format!("{namespace}sales"));
        Ok(RedisStock { conn, namespace: namespace.to_owned(), count, sales, server })
    }

    /// The run's namespace (what the buyers get with `--redis-ns`).
    pub(super) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The stock key.
    pub(super) fn count_key(&self) -> &str {
        &self.count
    }

    async fn cmd(&mut self, what: &str, cmd: &redis::Cmd) -> Result<Value, Failure> {
        cmd.query_async::<Value>(&mut self.conn).await.map_err(|e| {
            Failure::new(exit::UNAVAILABLE, format!("redis at {}: cannot {what} {:?}: {e}", self.server, self.count))
        })
    }

    /// `SET count STOCK` (and no sales yet).
    pub(super) async fn create(&mut self, stock: u64) -> Result<(), Failure> {
        let del = redis::cmd("DEL").arg(&self.sales).clone();
        self.cmd("clear the sales of", &del).await?;
        self.write(stock).await
    }

    /// `GET count`.
    pub(super) async fn read(&mut self) -> Result<u64, Failure> {
        let get = redis::cmd("GET").arg(&self.count).clone();
        match self.cmd("read the stock", &get).await? {
            Value::BulkString(b) => String::from_utf8_lossy(&b).trim().parse().map_err(|_| {
                Failure::new(
                    exit::IO_ERROR,
                    format!("the key {:?} holds {:?}, not a stock count", self.count, String::from_utf8_lossy(&b)),
                )
            }),
            Value::Nil => Err(Failure::new(exit::IO_ERROR, format!("the stock key {:?} is gone", self.count))),
            other => Err(Failure::new(exit::IO_ERROR, format!("the key {:?} holds {other:?}", self.count))),
        }
    }

    /// `SET count STOCK`.
    pub(super) async fn write(&mut self, stock: u64) -> Result<(), Failure> {
        let set = redis::cmd("SET").arg(&self.count).arg(stock).clone();
        self.cmd("write the stock", &set).await.map(drop)
    }

    /// `RPUSH sales LINE`: one item sold.
    pub(super) async fn record_sale(&mut self, line: &str) -> Result<(), Failure> {
        let push = redis::cmd("RPUSH").arg(&self.sales).arg(line).clone();
        self.cmd("record a sale next to", &push).await.map(drop)
    }

    /// `LLEN sales`: the items sold.
    pub(super) async fn sales(&mut self) -> Result<u64, Failure> {
        let len = redis::cmd("LLEN").arg(&self.sales).clone();
        match self.cmd("count the sales next to", &len).await? {
            Value::Int(n) => Ok(u64::try_from(n).unwrap_or(0)),
            other => Err(Failure::new(exit::IO_ERROR, format!("LLEN {:?} answered {other:?}", self.sales))),
        }
    }

    /// Deletes the run's keys.
    pub(super) async fn remove(&mut self) -> Result<(), Failure> {
        let del = redis::cmd("DEL").arg(&self.count).arg(&self.sales).clone();
        self.cmd("remove the demo's keys with", &del).await.map(drop)
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` (already checked by the backend's own parser).
fn host_port(h: &str) -> (String, u16) {
    let (host, port) = match h.strip_prefix('[').and_then(|r| r.split_once(']')) {
        Some((v6, after)) => (v6, after.strip_prefix(':')),
        None => match h.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (h, None),
        },
    };
    (host.to_owned(), port.and_then(|p| p.parse().ok()).unwrap_or(6379))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_ports() {
        assert_eq!(host_port("127.0.0.1:6380"), ("127.0.0.1".to_owned(), 6380));
        assert_eq!(host_port("redis.example"), ("redis.example".to_owned(), 6379));
        assert_eq!(host_port("[::1]:7000"), ("::1".to_owned(), 7000));
        assert_eq!(host_port("[::1]"), ("::1".to_owned(), 6379));
    }

    #[test]
    fn the_namespace_starts_with_the_urls_prefix() {
        let ns = new_namespace("redis://127.0.0.1:6379/2?prefix=app:&lease=5s").unwrap();
        assert!(ns.starts_with("app:interlock-demo:flash-sale:"), "{ns}");
        assert!(ns.ends_with(':'));
        assert!(new_namespace("redis://h/0").unwrap().starts_with("interlock-demo:flash-sale:"));
    }
}
