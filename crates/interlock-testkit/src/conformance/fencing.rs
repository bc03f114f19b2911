//! Fencing tokens: strictly increasing for exclusive holders, never below the last exclusive one
//! for shared holders, across providers, processes and restarts.

use crate::harness::Harness;
use crate::process::Hold;
use crate::unique;

use super::not_applicable;

/// Sequential exclusive acquisitions from several providers (a new provider stands for a
/// restarted client) get strictly increasing tokens.
pub async fn fencing_tokens_strictly_increase<H: Harness>(h: &H) {
    let name = unique("fence");
    let mut last = 0;
    for round in 0..3 {
        let p = h.provider().await;
        for _ in 0..5 {
            let g = p.mutex(&name).unwrap().lock().await.unwrap();
            let t = g.fencing_token().expect("every backend gives a token");
            assert!(t > last, "round {round}: token {t} after {last}");
            last = t;
            g.release().await.unwrap();
        }
        let g = p.rwlock(&name).unwrap().write().await.unwrap();
        let t = g.fencing_token().unwrap();
        assert!(t > last, "writer token {t} after {last}");
        last = t;
        drop(g);
    }
    let p = h.provider().await;
    if !p.capabilities().semaphore {
        return super::not_applicable("fencing_tokens_strictly_increase (semaphore part)", "no semaphores");
    }
    let s = p.semaphore(unique("fencesem"), 2).unwrap();
    let (a, b) = (s.acquire().await.unwrap(), s.acquire().await.unwrap());
    let (ta, tb) = (a.fencing_token().unwrap(), b.fencing_token().unwrap());
    drop(a);
    let c = s.acquire().await.unwrap();
    assert!(c.fencing_token().unwrap() > ta.max(tb), "a permit holder's token must exceed earlier ones");
}

/// A reader's token is not smaller than the last writer's.
pub async fn fencing_tokens_shared_holders<H: Harness>(h: &H) {
    let name = unique("fenceread");
    let p = h.provider().await;
    if !super::has(&p, "fencing_tokens_shared_holders", &[super::Needs::RwLock]) {
        return;
    }
    let rw = p.rwlock(&name).unwrap();
    let w = rw.write().await.unwrap();
    let tw = w.fencing_token().unwrap();
    w.release().await.unwrap();
    let (r1, r2) = (rw.read().await.unwrap(), rw.read().await.unwrap());
    assert!(r1.fencing_token().unwrap() >= tw && r2.fencing_token().unwrap() >= tw);
    drop((r1, r2));
    let w2 = rw.write().await.unwrap();
    assert!(w2.fencing_token().unwrap() > tw);
}

/// Tokens keep increasing when holders alternate between this process and `interlock hold`
/// processes (each a fresh process: a restart).
pub async fn fencing_tokens_across_processes<H: Harness>(h: &H) {
    let Some(bin) = h.bin() else {
        return not_applicable("fencing_tokens_across_processes", "no cross-process support");
    };
    let name = unique("fenceproc");
    let p = h.provider().await;
    let mut last = 0;
    for _ in 0..3 {
        let hold = Hold::start(bin, &h.url(), &name, &[]).await;
        let t = hold.token.expect("hold prints a token");
        assert!(t > last, "process token {t} after {last}");
        assert_eq!(hold.release().await, Some(0));
        let g = p.mutex(&name).unwrap().lock().await.unwrap();
        let t2 = g.fencing_token().unwrap();
        assert!(t2 > t, "in-process token {t2} after process token {t}");
        last = t2;
        g.release().await.unwrap();
    }
}
