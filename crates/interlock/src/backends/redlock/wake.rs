//! Wake-ups on release: one RESP3 pub/sub subscription per lock channel and provider, on every
//! master, shared by the provider's waiters of that lock (within a process the core sends one
//! waiter per name anyway). A release that frees the lock PUBLISHes on its channel on every master
//! where it freed it; the messages arrive as RESP3 pushes on the masters' connections and bump
//! the channel's counter, which the waiters watch.
//!
//! A waiter takes its [`Interest`] BEFORE its first attempt, and the subscription is confirmed by
//! a quorum of masters before the attempt is sent: a release after that attempt publishes on a
//! quorum (or the lock would still be held on a quorum), which meets ours in at least one master,
//! so it cannot be missed. When the last interest of a channel ends, the provider unsubscribes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};

use redis::{PushInfo, PushKind, Value};
use tokio::sync::watch;

use super::raw::{Master, round};
use crate::raw::spawn_cleanup;

/// The provider's subscriptions: channel → (interests, wake-up counter).
#[derive(Debug, Default)]
pub(crate) struct Wakeups {
    table: StdMutex<HashMap<String, (usize, watch::Sender<u64>)>>,
    /// Serialises SUBSCRIBE and UNSUBSCRIBE, so that an unsubscribe of a channel's last interest
    /// never overtakes the subscribe of the next one.
    order: tokio::sync::Mutex<()>,
}

/// The push sender of every master connection of one provider.
pub(crate) struct PushRouter(pub(crate) Arc<Wakeups>);

impl redis::aio::AsyncPushSender for PushRouter {
    fn send(&self, info: PushInfo) -> Result<(), redis::aio::SendError> {
        self.0.on_push(&info);
        Ok(())
    }
}

impl Wakeups {
    fn on_push(&self, info: &PushInfo) {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        match info.kind {
            PushKind::Message => {
                let channel = match info.data.first() {
                    Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                    Some(Value::SimpleString(s)) => s.clone(),
                    _ => return,
                };
                if let Some((_, tx)) = table.get(&channel) {
                    tx.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
            // A connection dropped: its subscriptions may have missed a release meanwhile, so
            // every waiter re-checks now (the connection resubscribes when it reconnects).
            PushKind::Disconnection => {
                for (_, tx) in table.values() {
                    tx.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
            _ => {}
        }
    }

    /// Registers interest in `channel`, subscribing on the masters if this is its first one, and
    /// returns when a quorum of masters confirmed the subscription (or every master answered).
    pub(crate) async fn interest(
        self: &Arc<Self>,
        masters: &Arc<[Arc<Master>]>,
        channel: &str,
        quorum: usize,
    ) -> Interest {
        let _order = self.order.lock().await;
        let (first, rx) = {
            let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
            let entry = table.entry(channel.to_owned()).or_insert_with(|| (0, watch::Sender::new(0)));
            entry.0 += 1;
            (entry.0 == 1, entry.1.subscribe())
        };
        // Armed at once: if we are dropped while subscribing, the interest is given back.
        let interest = Interest { wakeups: self.clone(), masters: masters.clone(), channel: channel.to_owned(), rx };
        if first {
            let ch = channel.to_owned();
            let mut replies = round(masters, move |m| {
                let ch = ch.clone();
                async move { m.subscribe(&ch).await }
            });
            let mut ok = 0;
            while let Some((_, r)) = replies.recv().await {
                match r {
                    Ok(()) => ok += 1,
                    Err(e) => tracing::debug!(error = %e, "redlock: subscribe failed on a master"),
                }
                if ok >= quorum {
                    break;
                }
            }
        }
        interest
    }
}

/// One waiter's interest in a lock's releases; unsubscribes (in the background) when the last
/// interest of its channel is dropped.
#[derive(Debug)]
pub(crate) struct Interest {
    wakeups: Arc<Wakeups>,
    masters: Arc<[Arc<Master>]>,
    channel: String,
    pub(crate) rx: watch::Receiver<u64>,
}

impl Drop for Interest {
    fn drop(&mut self) {
        let (wakeups, masters, channel) =
            (self.wakeups.clone(), self.masters.clone(), std::mem::take(&mut self.channel));
        spawn_cleanup(async move {
            let _order = wakeups.order.lock().await;
            let last = {
                let mut table = wakeups.table.lock().unwrap_or_else(|p| p.into_inner());
                match table.get_mut(&channel) {
                    Some(e) if e.0 <= 1 => {
                        table.remove(&channel);
                        true
                    }
                    Some(e) => {
                        e.0 -= 1;
                        false
                    }
                    None => false,
                }
            };
            if last {
                let mut replies = round(&masters, move |m| {
                    let ch = channel.clone();
                    async move { m.unsubscribe(&ch).await }
                });
                while replies.recv().await.is_some() {}
            }
        });
    }
}
