//! The redis backend over TLS (`rediss://`) against a private `redis-server` with `--tls-port`,
//! with certificates made for the test by `openssl`: locks work with the test CA (`?ca=`), a
//! wrong CA and a missing client certificate are refused with one clear line, a client
//! certificate (`?cert=&key=`) is presented when the server asks for one, the conformance
//! suite's core cases run over TLS, and Redlock runs over TLS to three masters (`redlocks://`).
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use interlock::{Error, Provider};
use interlock_testkit::servers::redis_tls::{RedisTls, TlsFiles};
use interlock_testkit::{one_line, unique};

fn ca(files: &TlsFiles, which: &str) -> String {
    RedisTls::ca_option(&files.path(which))
}

/// `p` takes `name` (`check` runs while it holds it); `q` is kept out, and a waiter of `q` is woken
/// by the release (BLPOP or pub/sub over TLS) with a higher token.
async fn holds_then_hands_over(p: &Provider, q: &Provider, name: &str, check: impl FnOnce()) {
    let g = p.mutex(name).unwrap().lock().await.unwrap();
    check();
    assert!(q.mutex(name).unwrap().try_lock().await.unwrap().is_none(), "two holders over TLS");
    let m = q.mutex(name).unwrap();
    let waiter = tokio::spawn(async move { m.lock_timeout(Duration::from_secs(20)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let token = g.fencing_token().unwrap();
    g.release().await.unwrap();
    let g2 = waiter.await.unwrap().expect("the waiter is woken over TLS");
    assert!(g2.fencing_token().unwrap() > token);
    g2.release().await.unwrap();
}

/// Acquire, contend, release and a waiter woken by the release, over TLS with the test CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn locks_over_tls_with_the_servers_ca() {
    let Some(files) = TlsFiles::generate_or_skip() else { return };
    let Some(r) = RedisTls::start_or_skip(&files, false) else { return };
    let url = format!("{}?{}", r.url(1), ca(&files, "ca.crt"));
    let (p, q) = (interlock::connect(&url).await.expect("connect over TLS"), interlock::connect(&url).await.unwrap());
    let name = unique("tls");
    holds_then_hands_over(&p, &q, &name, || {}).await;
    let s = p.semaphore(&name, 2).unwrap().acquire().await.unwrap();
    s.release().await.unwrap();
}

/// A CA that did not sign the server's certificate, and the system's roots (which do not know
/// the test CA): `connect` fails with one line saying the certificate is not trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_ca_is_refused_with_one_clear_line() {
    let Some(files) = TlsFiles::generate_or_skip() else { return };
    let Some(r) = RedisTls::start_or_skip(&files, false) else { return };
    for url in [format!("{}?{}", r.url(0).replace("rediss://", "rediss://:pw@"), ca(&files, "wrong-ca.crt")), r.url(0)]
    {
        let e = interlock::connect(&url).await.map(drop).unwrap_err();
        let s = one_line(&e);
        assert!(matches!(e, Error::Auth { backend: "redis", .. }), "{url}: {e:?}");
        assert!(s.contains("certificate") && !s.contains("pw@"), "{s}");
    }
    // Plain redis:// to a TLS port is not a lock server either (the handshake is garbage to it).
    let plain = r.url(0).replace("rediss://", "redis://") + "?command_timeout=2s";
    assert!(interlock::connect(&plain).await.is_err());
}

/// A server that requires client certificates: without one, a one-line error; with the test
/// client's certificate and key, locks work.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_certificate_is_presented_when_the_server_asks() {
    let Some(files) = TlsFiles::generate_or_skip() else { return };
    let Some(r) = RedisTls::start_or_skip(&files, true) else { return };
    let base = format!("{}?{}", r.url(0), ca(&files, "ca.crt"));
    // The server's alert (Auth), or, when the first command's write finds the connection
    // already closed by it (TLS 1.3 rejects the client after the handshake), Unavailable; both
    // say what to give.
    let e = interlock::connect(&base).await.map(drop).unwrap_err();
    assert!(matches!(e, Error::Auth { backend: "redis", .. } | Error::Unavailable { backend: "redis", .. }), "{e:?}");
    assert!(one_line(&e).contains("client certificate"), "{e}");
    let url = format!("{base}&cert={}&key={}", files.path("client.crt").display(), files.path("client.key").display());
    let p = interlock::connect(&url).await.expect("connect with a client certificate");
    let g = p.mutex(unique("mtls")).unwrap().try_lock().await.unwrap().expect("free");
    g.release().await.unwrap();
}

/// `rediss+cluster://`: a 3-master cluster whose clients and cluster bus speak TLS. Locks on each
/// master with a waiter woken by the release; a wrong CA is refused with one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn locks_on_a_cluster_over_tls() {
    use interlock_testkit::servers::redis_cluster::RedisCluster;
    let Some(files) = TlsFiles::generate_or_skip() else { return };
    if interlock_testkit::servers::which("redis-server").is_none() {
        return interlock_testkit::skip("redis-server (server program) is not installed");
    }
    let c = RedisCluster::start_tls(3, &files).expect("a TLS cluster");
    let url = format!("{}?{}", c.url(), ca(&files, "ca.crt"));
    assert!(url.starts_with("rediss+cluster://"), "{url}");
    let (p, q) = (interlock::connect(&url).await.expect("connect"), interlock::connect(&url).await.unwrap());
    for node in 0..3 {
        let name = (0..)
            .map(|i| format!("{}-{i}", unique("tlsnode")))
            .find(|n| c.node_of_slot(c.keyslot(n).unwrap()).unwrap() == node)
            .unwrap();
        holds_then_hands_over(&p, &q, &name, || {
            assert_eq!(c.cmd_on(node, &["EXISTS", &name]).unwrap().int(), Some(1), "not on master {node}");
        })
        .await;
    }
    let wrong = format!("{}?{}", c.url(), ca(&files, "wrong-ca.crt"));
    let e = interlock::connect(&wrong).await.map(drop).unwrap_err();
    assert!(matches!(e, Error::Auth { backend: "redis", .. }), "{e:?}");
    assert!(one_line(&e).contains("not trusted"), "{e:?}");
}

/// `redlocks://`: Redlock over TLS to three masters (each a private TLS `redis-server`): locks,
/// the key on a quorum of masters, a second client kept out, a waiter woken by the release
/// (pub/sub over TLS); a wrong CA is refused with one line.
#[cfg(feature = "redlock")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redlock_over_tls_on_three_masters() {
    let Some(files) = TlsFiles::generate_or_skip() else { return };
    let Some(first) = RedisTls::start_or_skip(&files, false) else { return };
    let masters = [first, RedisTls::start(&files, false).unwrap(), RedisTls::start(&files, false).unwrap()];
    let hosts: Vec<String> =
        masters.iter().map(|m| m.url(0).trim_start_matches("rediss://").trim_end_matches("/0").to_owned()).collect();
    let url = format!("redlocks://{}/1?{}", hosts.join(","), ca(&files, "ca.crt"));
    let (p, q) = (interlock::connect(&url).await.expect("connect over TLS"), interlock::connect(&url).await.unwrap());
    assert_eq!(p.backend(), "redlock");
    let name = unique("tlsredlock");
    holds_then_hands_over(&p, &q, &name, || {
        let on = masters.iter().filter(|m| m.cmd(1, &["EXISTS", &name]).unwrap().int() == Some(1)).count();
        assert!(on >= 2, "the key is on {on} of 3 masters");
    })
    .await;

    let wrong = format!("redlocks://{}/1?{}", hosts.join(","), ca(&files, "wrong-ca.crt"));
    let e = interlock::connect(&wrong).await.map(drop).unwrap_err();
    assert!(matches!(e, Error::Auth { backend: "redlock", .. }), "{e:?}");
    assert!(one_line(&e).contains("certificate is not trusted"), "{e}");
}
