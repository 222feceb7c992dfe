//! Peer management: misbehaviour penalties that decay, bans that expire and
//! survive restarts, the bounds on what is remembered about peers, and the
//! addresses kept connected with their backoff ([`Dialer`]).
//!
//! A peer earns penalty points for sending what consensus or the protocol
//! refuses (never for a node-local condition: a timeout, missing data).
//! Points decay linearly, [`DECAY_PER_MINUTE`] a minute, so an honest peer
//! that once relayed something stale is not banned a week later; reaching
//! [`BAN_SCORE`] bans the peer for [`BAN_DURATION`]. Bans are written to a
//! small file in the data dir and read back at start, so a restart does not
//! let a banned peer straight back in. Time is passed in, so every rule here
//! is tested without waiting.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

/// Penalty points at which a peer is disconnected and banned.
pub const BAN_SCORE: u32 = 100;

/// Points a penalty loses each minute: a peer must misbehave at more than
/// 100 points an hour to be banned by decaying offences.
pub const DECAY_PER_MINUTE: u32 = 2;

/// How long a ban lasts: a day, as Bitcoin Core's default `-bantime`.
pub const BAN_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Peers with penalties remembered at once; past it the lowest score is
/// forgotten first (a peer id costs nothing to mint, so the book must not
/// grow with them).
pub const MAX_PENALISED: usize = 4096;

/// Bans remembered at once; past it the one expiring first is dropped.
pub const MAX_BANS: usize = 4096;

/// The file bans are kept in, inside the data dir.
pub const BANS_FILE: &str = "bans.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Penalty {
    score: u32,
    /// Unix seconds of the last update, decay applied up to then.
    at: u64,
}

/// A ban as stored: the peer and the Unix second it ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct StoredBan {
    peer: String,
    until: u64,
}

/// What a penalty did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The peer's score after the penalty, below the ban score.
    Penalised(u32),
    /// The penalty reached the ban score: ban the peer (it was not banned).
    Banned(u32),
}

/// Penalties and bans.
#[derive(Debug, Default)]
pub struct PeerBook {
    penalties: HashMap<PeerId, Penalty>,
    bans: HashMap<PeerId, u64>,
    file: Option<PathBuf>,
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn decayed(penalty: Penalty, now: u64) -> u32 {
    let minutes = now.saturating_sub(penalty.at) / 60;
    let lost = minutes.saturating_mul(u64::from(DECAY_PER_MINUTE));
    u32::try_from(u64::from(penalty.score).saturating_sub(lost)).unwrap_or(0)
}

impl PeerBook {
    /// A book kept in memory only.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// A book whose bans persist in `data_dir`; bans already there (and not
    /// expired at `now`) are loaded. An unreadable file is logged and
    /// ignored: losing bans is a node-local inconvenience, not a reason to
    /// refuse to start.
    pub fn open(data_dir: &Path, now: u64) -> Self {
        let file = data_dir.join(BANS_FILE);
        let mut book = Self {
            file: Some(file.clone()),
            ..Self::default()
        };
        match std::fs::read(&file) {
            Ok(bytes) => match serde_json::from_slice::<Vec<StoredBan>>(&bytes) {
                Ok(stored) => {
                    for ban in stored {
                        match ban.peer.parse::<PeerId>() {
                            Ok(peer) if ban.until > now => {
                                book.bans.insert(peer, ban.until);
                            }
                            Ok(_) => {}
                            Err(err) => {
                                tracing::warn!(file = %file.display(), peer = %ban.peer, reason = %err, "ignoring a ban of an unreadable peer id")
                            }
                        }
                    }
                    book.bound_bans();
                }
                Err(err) => {
                    tracing::warn!(file = %file.display(), reason = %err, "ignoring an unreadable ban list")
                }
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(file = %file.display(), reason = %err, "cannot read the ban list")
            }
        }
        book
    }

    /// The peers banned at `now`.
    pub fn banned(&self, now: u64) -> Vec<PeerId> {
        self.bans
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(peer, _)| *peer)
            .collect()
    }

    /// Whether `peer` is banned at `now`.
    pub fn is_banned(&self, peer: &PeerId, now: u64) -> bool {
        self.bans.get(peer).is_some_and(|until| *until > now)
    }

    /// `peer`'s score at `now`, decay applied.
    pub fn score(&self, peer: &PeerId, now: u64) -> u32 {
        self.penalties
            .get(peer)
            .map_or(0, |penalty| decayed(*penalty, now))
    }

    /// Adds `points` to `peer`'s decayed score; at [`BAN_SCORE`] the peer is
    /// banned until `now +` [`BAN_DURATION`] and the ban is saved.
    pub fn penalise(&mut self, peer: PeerId, points: u32, now: u64) -> Verdict {
        let score = self.score(&peer, now).saturating_add(points);
        self.penalties.insert(peer, Penalty { score, at: now });
        if self.penalties.len() > MAX_PENALISED {
            let lowest = self
                .penalties
                .iter()
                .min_by_key(|(_, p)| decayed(**p, now))
                .map(|(peer, _)| *peer);
            if let Some(lowest) = lowest {
                self.penalties.remove(&lowest);
            }
        }
        if score < BAN_SCORE {
            return Verdict::Penalised(score);
        }
        let newly = !self.is_banned(&peer, now);
        self.bans
            .insert(peer, now.saturating_add(BAN_DURATION.as_secs()));
        self.bound_bans();
        self.save();
        if newly {
            Verdict::Banned(score)
        } else {
            Verdict::Penalised(score)
        }
    }

    /// Forgets bans that ended by `now` and penalties decayed to zero;
    /// returns the peers whose ban ended, to let back in.
    pub fn expire(&mut self, now: u64) -> Vec<PeerId> {
        let ended: Vec<PeerId> = self
            .bans
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in &ended {
            self.bans.remove(peer);
        }
        self.penalties
            .retain(|_, penalty| decayed(*penalty, now) > 0);
        if !ended.is_empty() {
            self.save();
        }
        ended
    }

    fn bound_bans(&mut self) {
        while self.bans.len() > MAX_BANS {
            let first = self
                .bans
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(peer, _)| *peer);
            match first {
                Some(peer) => {
                    self.bans.remove(&peer);
                }
                None => break,
            }
        }
    }

    /// Writes the bans (to a temporary file renamed over the old one, so a
    /// crash leaves one whole list or the other).
    fn save(&self) {
        let Some(file) = &self.file else {
            return;
        };
        let mut stored: Vec<StoredBan> = self
            .bans
            .iter()
            .map(|(peer, until)| StoredBan {
                peer: peer.to_string(),
                until: *until,
            })
            .collect();
        stored.sort_by(|a, b| a.peer.cmp(&b.peer));
        let result = serde_json::to_vec_pretty(&stored)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let tmp = file.with_extension("json.tmp");
                std::fs::write(&tmp, bytes)?;
                std::fs::rename(&tmp, file)
            });
        if let Err(err) = result {
            tracing::warn!(file = %file.display(), reason = %err, "cannot save the ban list");
        }
    }
}

/// Longest wait between two dials of an address this node keeps.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The first wait after a dial fails or a connection closes.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// The addresses this node keeps connected to (its bootstrap list and
/// those an operator dialled), each redialled after a failure or a closed
/// connection with a backoff that doubles up to [`MAX_BACKOFF`] and starts
/// over once a connection is established. Time and the dial itself are
/// passed in, so every rule here is tested without a network.
#[derive(Debug, Default)]
pub struct Dialer {
    entries: Vec<Dialed>,
}

#[derive(Debug)]
struct Dialed {
    addr: Multiaddr,
    peer: Option<PeerId>,
    connection: Option<ConnectionId>,
    connected: bool,
    next_attempt: Instant,
    backoff: Duration,
}

impl Dialed {
    fn back_off(&mut self, now: Instant) {
        self.connection = None;
        self.next_attempt = now + self.backoff;
        self.backoff = self.backoff.saturating_mul(2).min(MAX_BACKOFF);
    }
}

/// The peer id an address names (`/p2p/…`), if it names one.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

impl Dialer {
    /// Keeps `addrs`, each due a dial at `now`.
    pub fn new(addrs: &[Multiaddr], now: Instant) -> Self {
        let mut dialer = Self::default();
        for addr in addrs {
            dialer.add(addr.clone(), now);
        }
        dialer
    }

    /// Keeps `addr` too (once), due a dial at `now`.
    pub fn add(&mut self, addr: Multiaddr, now: Instant) {
        if self.entries.iter().any(|d| d.addr == addr) {
            return;
        }
        self.entries.push(Dialed {
            peer: peer_of(&addr),
            addr,
            connection: None,
            connected: false,
            next_attempt: now,
            backoff: FIRST_BACKOFF,
        });
    }

    /// Dials every address due at `now` that is neither connected nor being
    /// dialled, skipping those whose peer `hold_off` names. `dial` starts a
    /// dial and returns its connection id, or why it could not start (then
    /// the address backs off).
    pub fn redial(
        &mut self,
        now: Instant,
        hold_off: impl Fn(&PeerId) -> bool,
        mut dial: impl FnMut(Option<PeerId>, &Multiaddr) -> Result<ConnectionId, String>,
    ) {
        for entry in &mut self.entries {
            if entry.connected || entry.connection.is_some() || now < entry.next_attempt {
                continue;
            }
            if entry.peer.as_ref().is_some_and(&hold_off) {
                continue;
            }
            match dial(entry.peer, &entry.addr) {
                Ok(connection) => entry.connection = Some(connection),
                Err(reason) => {
                    tracing::debug!(addr = %entry.addr, %reason, "dial failed");
                    entry.back_off(now);
                }
            }
        }
    }

    /// A connection was established: if it is one of ours, its address is
    /// connected to `peer` and its backoff starts over.
    pub fn established(&mut self, connection: ConnectionId, peer: PeerId) {
        for entry in &mut self.entries {
            if entry.connection == Some(connection) {
                entry.connected = true;
                entry.peer = Some(peer);
                entry.backoff = FIRST_BACKOFF;
            }
        }
    }

    /// A connection closed, or a dial failed: its address backs off.
    pub fn lost(&mut self, connection: ConnectionId, now: Instant, reason: &str) {
        for entry in &mut self.entries {
            if entry.connection == Some(connection) {
                tracing::debug!(addr = %entry.addr, %reason, "connection lost, redialling in {:?}", entry.backoff);
                entry.connected = false;
                entry.back_off(now);
            }
        }
    }

    /// `peer` may be dialled again at once (an operator unblocked it).
    pub fn reset(&mut self, peer: &PeerId, now: Instant) {
        for entry in self
            .entries
            .iter_mut()
            .filter(|d| d.peer.as_ref() == Some(peer))
        {
            entry.next_attempt = now;
            entry.backoff = FIRST_BACKOFF;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000;

    #[test]
    fn penalties_add_up_to_a_ban_and_decay_with_time() {
        let mut book = PeerBook::in_memory();
        let peer = PeerId::random();
        assert_eq!(book.penalise(peer, 60, T0), Verdict::Penalised(60));
        // Ten minutes later 20 points have decayed.
        assert_eq!(book.score(&peer, T0 + 600), 40);
        assert_eq!(book.penalise(peer, 50, T0 + 600), Verdict::Penalised(90));
        assert!(!book.is_banned(&peer, T0 + 600));
        assert_eq!(book.penalise(peer, 10, T0 + 600), Verdict::Banned(100));
        assert!(book.is_banned(&peer, T0 + 601));
        // Without decay the same offences, spaced an hour apart, never ban.
        let patient = PeerId::random();
        for hour in 0..10 {
            let verdict = book.penalise(patient, 60, T0 + hour * 3600);
            assert_eq!(verdict, Verdict::Penalised(60), "hour {hour}");
        }
    }

    #[test]
    fn bans_expire_and_are_let_back_in() {
        let mut book = PeerBook::in_memory();
        let peer = PeerId::random();
        assert_eq!(book.penalise(peer, 100, T0), Verdict::Banned(100));
        assert_eq!(book.score(&peer, T0), 100, "the score that banned it stays");
        let end = T0 + BAN_DURATION.as_secs();
        assert!(book.is_banned(&peer, end - 1));
        assert!(book.expire(end - 1).is_empty());
        assert_eq!(book.expire(end), vec![peer]);
        assert!(!book.is_banned(&peer, end));
        assert_eq!(
            book.score(&peer, end),
            0,
            "it has decayed when the ban ends"
        );
    }

    #[test]
    fn bans_survive_a_restart_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let (banned, other) = (PeerId::random(), PeerId::random());
        {
            let mut book = PeerBook::open(dir.path(), T0);
            assert_eq!(book.penalise(banned, 150, T0), Verdict::Banned(150));
            assert_eq!(book.penalise(other, 30, T0), Verdict::Penalised(30));
        }
        let book = PeerBook::open(dir.path(), T0 + 60);
        assert!(book.is_banned(&banned, T0 + 60));
        assert_eq!(book.banned(T0 + 60), vec![banned]);
        assert!(!book.is_banned(&other, T0 + 60));
        let later = PeerBook::open(dir.path(), T0 + BAN_DURATION.as_secs() + 1);
        assert!(later.banned(T0 + BAN_DURATION.as_secs() + 1).is_empty());
    }

    #[test]
    fn an_unreadable_ban_list_is_ignored_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(BANS_FILE), b"{ not json").unwrap();
        let book = PeerBook::open(dir.path(), T0);
        assert!(book.banned(T0).is_empty());
    }

    #[test]
    fn the_book_is_bounded() {
        let mut book = PeerBook::in_memory();
        let loud = PeerId::random();
        book.penalise(loud, 90, T0);
        for _ in 0..MAX_PENALISED {
            book.penalise(PeerId::random(), 1, T0);
        }
        assert!(book.penalties.len() <= MAX_PENALISED);
        assert_eq!(book.score(&loud, T0), 90, "the lowest scores go first");
        for _ in 0..(MAX_BANS + 10) {
            book.penalise(PeerId::random(), BAN_SCORE, T0);
        }
        assert!(book.bans.len() <= MAX_BANS);
    }

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
    }

    /// Dials every due address, handing out connection ids in order.
    fn dial_all(dialer: &mut Dialer, now: Instant, next: &mut usize) -> Vec<Multiaddr> {
        let mut dialled = Vec::new();
        dialer.redial(
            now,
            |_| false,
            |_, addr| {
                dialled.push(addr.clone());
                *next += 1;
                Ok(ConnectionId::new_unchecked(*next))
            },
        );
        dialled
    }

    #[test]
    fn a_lost_address_backs_off_doubling_to_the_cap_and_starts_over_once_connected() {
        let start = Instant::now();
        let mut next = 0;
        let mut dialer = Dialer::new(&[addr(1), addr(1), addr(2)], start);
        assert_eq!(
            dial_all(&mut dialer, start, &mut next),
            vec![addr(1), addr(2)]
        );
        // Being dialled: not dialled twice.
        assert!(dial_all(&mut dialer, start, &mut next).is_empty());
        let mut now = start;
        let mut waits = Vec::new();
        // The first address's dial (connection 1) fails, again and again;
        // the second's stays in flight.
        let mut connection = ConnectionId::new_unchecked(1);
        for _ in 0..8 {
            dialer.lost(connection, now, "refused");
            let mut wait = Duration::ZERO;
            loop {
                let dialled = dial_all(&mut dialer, now + wait, &mut next);
                if !dialled.is_empty() {
                    assert_eq!(dialled, vec![addr(1)]);
                    break;
                }
                wait += Duration::from_millis(250);
            }
            connection = ConnectionId::new_unchecked(next);
            waits.push(wait);
            now += wait;
        }
        let expected: Vec<Duration> = [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]
            .into_iter()
            .map(Duration::from_millis)
            .collect();
        assert_eq!(waits, expected);
        // Connected: the backoff starts over after the next loss.
        let peer = PeerId::random();
        dialer.established(connection, peer);
        assert!(
            dial_all(&mut dialer, now + MAX_BACKOFF, &mut next).is_empty(),
            "connected"
        );
        dialer.lost(connection, now, "closed");
        assert!(dial_all(&mut dialer, now, &mut next).is_empty());
        assert_eq!(
            dial_all(&mut dialer, now + FIRST_BACKOFF, &mut next),
            vec![addr(1)]
        );
    }

    #[test]
    fn a_held_off_peer_is_not_dialled_and_a_reset_makes_it_due_at_once() {
        let now = Instant::now();
        let peer = PeerId::random();
        let named: Multiaddr = format!("/ip4/127.0.0.1/tcp/9/p2p/{peer}").parse().unwrap();
        assert_eq!(peer_of(&named), Some(peer));
        assert_eq!(peer_of(&addr(9)), None);
        let mut dialer = Dialer::new(std::slice::from_ref(&named), now);
        let mut dialled = 0;
        dialer.redial(
            now,
            |p| *p == peer,
            |_, _| {
                dialled += 1;
                Ok(ConnectionId::new_unchecked(1))
            },
        );
        assert_eq!(dialled, 0, "held off");
        // A dial that cannot start backs off; a reset makes it due again.
        dialer.redial(now, |_| false, |_, _| Err("no route".into()));
        let mut next = 1;
        assert!(dial_all(&mut dialer, now, &mut next).is_empty());
        dialer.reset(&peer, now);
        assert_eq!(dial_all(&mut dialer, now, &mut next), vec![named]);
    }
}
