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

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex as StdMutex};

use redis::{PushInfo, PushKind, Value};
use tokio::sync::watch;

use super::raw::{Master, round};
use crate::raw::Tasks;

/// How many recent wake-up messages a channel keeps for its waiters to look through.
const RECENT: usize = 16;

/// The wake-ups of one channel: a counter, and the recent messages with their numbers (a
/// message names the waiter it wakes, `w:TOKEN`, or is `*` for every waiter).
#[derive(Clone, Debug, Default)]
pub(crate) struct Wake {
    pub(crate) seq: u64,
    pub(crate) recent: VecDeque<(u64, String)>,
}

impl Wake {
    fn push(&mut self, message: String) {
        self.seq = self.seq.wrapping_add(1);
        if self.recent.len() >= RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((self.seq, message));
    }

    /// Whether a message after `seen` wakes `member` (names it, or everyone).
    pub(crate) fn wakes(&self, seen: u64, member: &str) -> bool {
        self.recent.iter().any(|(n, m)| *n > seen && (m == "*" || m == member))
    }
}

/// How long a channel stays subscribed after its last waiter left, for the next one (a lock
/// taken again and again by waiters of one process subscribes once).
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// One channel: its waiters, whether it is subscribed, its wake-ups.
#[derive(Debug)]
struct Chan {
    count: usize,
    subscribed: bool,
    tx: watch::Sender<Wake>,
}

/// The provider's subscriptions, by channel.
#[derive(Debug)]
pub(crate) struct Wakeups {
    table: StdMutex<HashMap<String, Chan>>,
    /// Serialises SUBSCRIBE and UNSUBSCRIBE, so that an unsubscribe of a channel's last interest
    /// never overtakes the subscribe of the next one.
    order: tokio::sync::Mutex<()>,
    /// The provider's tasks: a channel's unsubscribe, which lingers, is one of them (the
    /// provider's close stops it; the connection's close unsubscribes anyway).
    tasks: Tasks,
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
    pub(crate) fn new(tasks: Tasks) -> Wakeups {
        Wakeups { table: StdMutex::default(), order: tokio::sync::Mutex::default(), tasks }
    }

    fn on_push(&self, info: &PushInfo) {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        match info.kind {
            PushKind::Message => {
                let text = |v: Option<&Value>| match v {
                    Some(Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                    Some(Value::SimpleString(s)) => Some(s.clone()),
                    _ => None,
                };
                let (Some(channel), message) = (text(info.data.first()), text(info.data.get(1))) else { return };
                if let Some(c) = table.get(&channel) {
                    let message = message.unwrap_or_else(|| "*".to_owned());
                    c.tx.send_modify(|w| w.push(message));
                }
            }
            // A connection dropped: its subscriptions may have missed a release meanwhile, so
            // every waiter re-checks now (the connection resubscribes when it reconnects).
            PushKind::Disconnection => {
                for c in table.values() {
                    c.tx.send_modify(|w| w.push("*".to_owned()));
                }
            }
            _ => {}
        }
    }

    /// Whether `channel` is subscribed (an interest from now on needs no round trip).
    pub(crate) fn is_subscribed(&self, channel: &str) -> bool {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).get(channel).is_some_and(|c| c.subscribed)
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
            let entry = table.entry(channel.to_owned()).or_insert_with(|| Chan {
                count: 0,
                subscribed: false,
                tx: watch::Sender::new(Wake::default()),
            });
            entry.count += 1;
            (!entry.subscribed, entry.tx.subscribe())
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
            if let Some(c) = self.table.lock().unwrap_or_else(|p| p.into_inner()).get_mut(channel) {
                c.subscribed = true;
            }
        }
        interest
    }
}

/// One waiter's interest in a lock's releases; when the last interest of its channel is dropped,
/// the channel is unsubscribed in the background, [`LINGER`] later unless a new waiter came.
#[derive(Debug)]
pub(crate) struct Interest {
    wakeups: Arc<Wakeups>,
    masters: Arc<[Arc<Master>]>,
    channel: String,
    pub(crate) rx: watch::Receiver<Wake>,
}

impl Drop for Interest {
    fn drop(&mut self) {
        let (wakeups, masters, channel) =
            (self.wakeups.clone(), self.masters.clone(), std::mem::take(&mut self.channel));
        let last = {
            let mut table = wakeups.table.lock().unwrap_or_else(|p| p.into_inner());
            match table.get_mut(&channel) {
                Some(c) => {
                    c.count = c.count.saturating_sub(1);
                    c.count == 0
                }
                None => false,
            }
        };
        if !last {
            return;
        }
        let tasks = wakeups.tasks.clone();
        tasks.spawn(async move {
            tokio::time::sleep(LINGER).await;
            let _order = wakeups.order.lock().await;
            let unsubscribe = {
                let mut table = wakeups.table.lock().unwrap_or_else(|p| p.into_inner());
                match table.get(&channel) {
                    Some(c) if c.count == 0 => table.remove(&channel).is_some_and(|c| c.subscribed),
                    _ => false,
                }
            };
            if unsubscribe {
                let mut replies = round(&masters, move |m| {
                    let ch = channel.clone();
                    async move { m.unsubscribe(&ch).await }
                });
                while replies.recv().await.is_some() {}
            }
        });
    }
}
