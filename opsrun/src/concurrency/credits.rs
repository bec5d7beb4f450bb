//! Slot credits: a worker's own block of a key's slots, so that while a
//! key is far below its limit its runs are claimed without the key's shared
//! count (migration 000023 says why and how the limit stays exact).
//!
//! A worker takes a block as large as the jobs it runs at once when the
//! key has room for two such blocks and no run waits for a slot; it claims
//! runs against the block until the block has none free, then takes
//! another or, when refused, claims through the exact path (every claim
//! counted on the key's row). Here is the worker's side of the accounting:
//! the credits Postgres says it holds per key, and how many of them its
//! running runs use. A run's credit is free again once Postgres says the
//! run left `running` (completed, retried or taken over); a run whose end
//! could not be written keeps its credit, which then comes back only when
//! the block expires after the worker stops: never counted twice.
//!
//! Credits are given back, unused ones only, when the key has runs waiting
//! for a slot (so a block never holds them back), when the worker has
//! claimed nothing of the key for [`IDLE_RETURN`], and when the worker
//! stops. Held ones are renewed every [`RENEW_EVERY`]; Postgres lets them
//! expire [`CREDIT_TTL`] after their last renewal, and the reaper returns
//! expired ones.

use std::collections::HashMap;
use std::sync::Mutex;

use std::time::{Duration, Instant};
use tokio::sync::{Mutex as StatementLock, MutexGuard};

use crate::run::RunId;

/// How long credits last in Postgres after their last renewal.
pub const CREDIT_TTL: Duration = Duration::from_secs(10);
/// How often a worker renews its credits (and gives back idle ones).
pub const RENEW_EVERY: Duration = Duration::from_secs(1);
/// Unused credits of a key the worker has not claimed from for this long
/// are given back.
pub const IDLE_RETURN: Duration = Duration::from_secs(2);
/// After Postgres refused a block for a key, how long the worker claims
/// that key through the exact path before asking again.
const REFUSED_FOR: Duration = Duration::from_secs(1);

/// One key's credits as this worker knows them.
#[derive(Debug)]
struct KeyCredits {
    key: String,
    /// Credits Postgres holds for this worker (as of its last answer).
    held: u32,
    /// Credits used by this worker's runs claimed against them.
    in_use: u32,
    last_claim: Instant,
    refused_until: Option<Instant>,
}

impl KeyCredits {
    fn new(key: &str) -> Self {
        KeyCredits {
            key: key.to_string(),
            held: 0,
            in_use: 0,
            last_claim: Instant::now(),
            refused_until: None,
        }
    }

    /// Whether the entry still says anything: credits held or in use, or
    /// a refusal not over yet.
    fn live(&self, now: Instant) -> bool {
        self.held > 0 || self.in_use > 0 || self.refused_until.is_some_and(|t| t > now)
    }

    fn free(&self) -> u32 {
        self.held.saturating_sub(self.in_use)
    }
}

#[derive(Debug, Default)]
struct Book {
    /// By key digest, as stream entries name keys.
    keys: HashMap<String, KeyCredits>,
    /// The digest of each run claimed against a credit, until it ends.
    runs: HashMap<RunId, String>,
    /// Set when the worker stops: no more blocks are taken.
    closed: bool,
}

impl Book {
    /// Forget dead entries, so a worker that meets many keys keeps only
    /// the live ones.
    fn prune(&mut self) {
        let now = Instant::now();
        self.keys.retain(|_, k| k.live(now));
    }
}

/// A worker's credits (shared by its claim, completion and renewal tasks).
#[derive(Debug)]
pub struct Credits {
    holder: String,
    block: u32,
    book: Mutex<Book>,
    /// Held while a statement that changes this worker's credits in
    /// Postgres is in flight (a block taken, credits renewed or given
    /// back): their answers set what the worker holds, so an answer must
    /// not cross another statement's.
    statements: StatementLock<()>,
}

/// Credits to give back: (key, how many).
pub type Returns = Vec<(String, u32)>;

impl Credits {
    /// The credits of `holder`, taken in blocks of `block` (its concurrency).
    pub fn new(holder: impl Into<String>, block: u32) -> Self {
        Credits {
            holder: holder.into(),
            block: block.max(1),
            book: Mutex::default(),
            statements: StatementLock::new(()),
        }
    }

    /// Who holds them (the worker's consumer name, as on its runs).
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// How many credits a block is.
    pub fn block(&self) -> u32 {
        self.block
    }

    /// Taken around each statement that changes the credits in Postgres.
    pub async fn statement(&self) -> MutexGuard<'_, ()> {
        self.statements.lock().await
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `n` claims of `digest` need a block first: not enough free
    /// credits, and Postgres has not just refused one.
    pub fn wants_block(&self, digest: &str, n: u32) -> bool {
        let book = self.book();
        if book.closed {
            return false;
        }
        match book.keys.get(digest) {
            None => true,
            Some(k) => k.free() < n && k.refused_until.is_none_or(|t| t <= Instant::now()),
        }
    }

    /// Postgres granted a block: the worker now holds `held` credits of `key`.
    pub fn granted(&self, digest: &str, key: &str, held: u32) {
        let mut book = self.book();
        let entry = book
            .keys
            .entry(digest.to_string())
            .or_insert_with(|| KeyCredits::new(key));
        // (An entry may be a refusal remembered without its key.)
        entry.key = key.to_string();
        entry.held = held;
        entry.refused_until = None;
    }

    /// Postgres refused a block of `digest` (no room to spare, or runs wait).
    pub fn refused(&self, digest: &str) {
        // A key never granted is remembered without its name.
        let mut book = self.book();
        book.keys
            .entry(digest.to_string())
            .or_insert_with(|| KeyCredits::new(""))
            .refused_until = Some(Instant::now() + REFUSED_FOR);
    }

    /// Set `n` free credits of `digest` aside for claims about to be sent;
    /// returns the key they count against, or `None` when there are not `n`
    /// free (the claims go through the exact path).
    pub fn reserve(&self, digest: &str, n: u32) -> Option<String> {
        let mut book = self.book();
        let k = book.keys.get_mut(digest)?;
        if k.key.is_empty() || k.free() < n {
            return None;
        }
        k.in_use += n;
        k.last_claim = Instant::now();
        Some(k.key.clone())
    }

    /// The claims sent against reserved credits came back: `claimed` runs
    /// now use them; the credits of the others are free again.
    pub fn settle_reserved(&self, digest: &str, reserved: u32, claimed: &[RunId]) {
        let mut book = self.book();
        if let Some(k) = book.keys.get_mut(digest) {
            k.in_use -= reserved - claimed.len() as u32;
        }
        for run in claimed {
            book.runs.insert(*run, digest.to_string());
        }
    }

    /// `run` has left `running` in Postgres: its credit, if it used one,
    /// is free again.
    pub fn run_ended(&self, run: RunId) {
        let mut book = self.book();
        if let Some(digest) = book.runs.remove(&run)
            && let Some(k) = book.keys.get_mut(&digest)
        {
            k.in_use = k.in_use.saturating_sub(1);
        }
    }

    /// Take the unused credits of `keys` (all keys when `None`) out of
    /// use, to give back: they are no longer free from now on, whatever
    /// Postgres answers, so no claim is sent against a credit being given
    /// back. (If the statement fails, the next renewal says what is held.)
    pub fn take_unused(&self, keys: Option<&[String]>) -> Returns {
        self.take(|k| keys.is_none_or(|keys| keys.contains(&k.key)))
    }

    /// Take out of use, to give back, the unused credits of keys not
    /// claimed from for [`IDLE_RETURN`].
    pub fn take_idle(&self) -> Returns {
        self.take(|k| k.last_claim.elapsed() >= IDLE_RETURN)
    }

    fn take(&self, which: impl Fn(&KeyCredits) -> bool) -> Returns {
        let mut book = self.book();
        book.prune();
        book.keys
            .values_mut()
            .filter(|k| k.free() > 0 && which(k))
            .map(|k| {
                let n = k.free();
                k.held -= n;
                (k.key.clone(), n)
            })
            .collect()
    }

    /// Postgres took back those of `offered` whose keys are in `returned`;
    /// a key offered and not returned holds no credits there any more (they
    /// expired and the reaper returned them).
    pub fn given_back(&self, offered: &Returns, returned: &[String]) {
        let mut book = self.book();
        for k in book.keys.values_mut() {
            if offered.iter().any(|(key, _)| *key == k.key) && !returned.contains(&k.key) {
                k.held = 0;
            }
        }
        book.prune();
    }

    /// The keys whose credits to renew.
    pub fn held_keys(&self) -> Vec<String> {
        let book = self.book();
        book.keys
            .values()
            .filter(|k| k.held > 0)
            .map(|k| k.key.clone())
            .collect()
    }

    /// Postgres renewed `renewed` (key, credits held): the others of `asked`
    /// had expired and were returned by the reaper.
    pub fn renewed(&self, asked: &[String], renewed: &[(String, i32)]) {
        let mut book = self.book();
        for k in book.keys.values_mut() {
            if asked.contains(&k.key) {
                k.held = renewed
                    .iter()
                    .find(|(key, _)| *key == k.key)
                    .map_or(0, |(_, held)| (*held).max(0) as u32);
            }
        }
        book.prune();
    }

    /// The worker stops: no more blocks.
    pub fn close(&self) {
        self.book().closed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_in_use_are_never_given_back_or_reused() {
        let credits = Credits::new("w", 3);
        assert!(credits.wants_block("d", 2));
        credits.granted("d", "t/1", 3);
        assert!(!credits.wants_block("d", 2));
        assert_eq!(credits.reserve("d", 2).as_deref(), Some("t/1"));
        // One of the two claims found its run; the other's credit is free.
        credits.settle_reserved("d", 2, &[RunId(7)]);
        assert!(credits.book().runs.contains_key(&RunId(7)));
        assert!(credits.reserve("d", 3).is_none(), "only two are free");
        // Giving back the unused ones leaves the one in use held.
        let offered = credits.take_unused(None);
        assert_eq!(offered, vec![("t/1".to_string(), 2)]);
        assert!(
            credits.reserve("d", 1).is_none(),
            "credits being given back are not free"
        );
        credits.given_back(&offered, &["t/1".to_string()]);
        assert_eq!(credits.take_unused(None), vec![]);
        assert!(credits.reserve("d", 1).is_none());
        // The run ended: its credit, still held, is free again.
        credits.run_ended(RunId(7));
        assert!(!credits.book().runs.contains_key(&RunId(7)));
        assert_eq!(credits.held_keys(), vec!["t/1".to_string()]);
        assert_eq!(credits.reserve("d", 1).as_deref(), Some("t/1"));
    }

    #[test]
    fn expired_credits_are_forgotten_and_refusals_remembered() {
        let credits = Credits::new("w", 2);
        credits.granted("d", "t/1", 2);
        credits.renewed(&["t/1".to_string()], &[]);
        assert!(
            credits.reserve("d", 1).is_none(),
            "expired credits are not used"
        );
        credits.refused("e");
        assert!(
            !credits.wants_block("e", 1),
            "asked again only after a while"
        );
        credits.close();
        assert!(!credits.wants_block("f", 1), "a stopping worker takes none");
    }
}
