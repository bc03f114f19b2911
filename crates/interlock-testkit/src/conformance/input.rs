//! Bad input and status.

use interlock::{Error, HeldMode};

use crate::harness::Harness;
use crate::unique;

/// Empty, NUL-containing and over-long names are refused with `InvalidName`; odd but valid names
/// work and stay distinct.
pub async fn bad_names_are_refused<H: Harness>(h: &H) {
    let p = h.provider().await;
    for bad in [String::new(), "a\0b".to_string(), "x".repeat(10_000), "y".repeat(1025)] {
        assert!(matches!(p.mutex(&bad), Err(Error::InvalidName { .. })), "{bad:.20?}");
        assert!(matches!(p.rwlock(&bad), Err(Error::InvalidName { .. })));
        assert!(matches!(p.semaphore(&bad, 2), Err(Error::InvalidName { .. })));
        assert!(matches!(p.status(&bad).await, Err(Error::InvalidName { .. })));
    }
    assert!(matches!(p.semaphore("ok", 0), Err(Error::InvalidArgument(_))));
    let suffix = unique("");
    let odd = [
        format!("../../etc/passwd{suffix}"),
        format!("etc/passwd{suffix}"),
        format!("..%2F..%2Fetc{suffix}"),
        format!("ünï cødé 🔒{suffix}"),
        format!("{}{suffix}", "z".repeat(1000)),
    ];
    let guards: Vec<_> = {
        let mut v = Vec::new();
        for n in &odd {
            v.push(p.mutex(n).unwrap().try_lock().await.unwrap().expect("odd names are distinct locks"));
        }
        v
    };
    let other = h.provider().await;
    for n in &odd {
        assert!(other.mutex(n).unwrap().try_lock().await.unwrap().is_none(), "{n:.30}");
    }
    drop(guards);
}

/// `status` says held (exclusive or shared) and free.
pub async fn status_reports_holders<H: Harness>(h: &H) {
    let p = h.provider().await;
    let name = unique("status");
    assert_eq!(p.status(&name).await.unwrap().held, None);
    let g = p.mutex(&name).unwrap().lock().await.unwrap();
    assert_eq!(p.status(&name).await.unwrap().held, Some(HeldMode::Exclusive));
    g.release().await.unwrap();
    assert_eq!(p.status(&name).await.unwrap().held, None);
    let rw = p.rwlock(&name).unwrap();
    let (a, b) = (rw.read().await.unwrap(), rw.read().await.unwrap());
    assert_eq!(p.status(&name).await.unwrap().held, Some(HeldMode::Shared(2)));
    a.release().await.unwrap();
    b.release().await.unwrap();
    assert_eq!(p.status(&name).await.unwrap().held, None);
}

/// A primitive the backend declares it lacks is refused with `Unsupported` (by the core, before
/// the backend is asked); one it has is not.
pub async fn primitives_a_backend_lacks_are_refused<H: Harness>(h: &H) {
    let p = h.provider().await;
    let caps = p.capabilities();
    let name = unique("prims");
    let read = p.rwlock(&name).unwrap().try_read().await;
    let permit = p.semaphore(unique("prims-sem"), 2).unwrap().try_acquire().await;
    for (have, got, what) in [(caps.rwlock, read.map(drop), "read lock"), (caps.semaphore, permit.map(drop), "permit")]
    {
        match (have, got) {
            (true, Ok(())) => {}
            (false, Err(interlock::Error::Unsupported { .. })) => {}
            (have, got) => panic!("{what}: the backend declares support {have}, and got {got:?}"),
        }
    }
}
