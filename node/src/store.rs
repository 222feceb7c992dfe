//! The node's on-disk store: blocks, the block index, undo data, the main
//! chain, the state at the tip, the tip itself and an index of main-chain
//! transactions (for the HTTP API's `/api/tx/{id}`), in one redb file.
//!
//! Connecting or disconnecting a block, and forgetting a block with all its
//! descendants, is each exactly one write transaction committed with
//! immediate durability, so a node killed at any moment restarts on a
//! consistent tip. [`Store::load`] checks what it loads: the main chain must
//! link up from genesis, the state must hash to the tip header's state root,
//! and blocks no longer reachable from genesis (left behind by an older
//! version that forgot them one at a time) are deleted. This module stores
//! and loads values; it never decides which chain is best or whether a
//! block is valid.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use protocol::codec::{self, CodecError};
use protocol::pow::Work;
use protocol::{
    Account, Address, Block, BlockHash, BlockUndo, Height, JobId, JobRecord, State, StateRoot, TxId,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const BLOCKS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("blocks");
const INDEX: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("index");
const UNDO: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("undo");
const MAIN: TableDefinition<u64, &[u8; 32]> = TableDefinition::new("main");
const ACCOUNTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("accounts");
const JOBS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("jobs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Main-chain transactions: txid -> block hash (32 bytes), height (8, LE)
/// and position in the block (4, LE). Written and removed with the block's
/// connect and disconnect, in the same transaction.
const TXINDEX: TableDefinition<&[u8; 32], &[u8; 44]> = TableDefinition::new("txindex");

const TIP_KEY: &str = "tip";
const CHAIN_KEY: &str = "chain";
/// Present once TXINDEX covers the whole main chain.
const TXINDEX_KEY: &str = "txindex";

/// Where a main-chain transaction is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxPlace {
    /// The block holding it.
    pub block: BlockHash,
    /// That block's height.
    pub height: Height,
    /// Its position in the block (0: the coinbase).
    pub position: u32,
}

impl TxPlace {
    fn encode(&self) -> [u8; 44] {
        let mut out = [0u8; 44];
        let (hash, rest) = out.split_at_mut(32);
        let (height, position) = rest.split_at_mut(8);
        hash.copy_from_slice(self.block.as_bytes());
        height.copy_from_slice(&self.height.0.to_le_bytes());
        position.copy_from_slice(&self.position.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8; 44]) -> Self {
        let mut hash = [0u8; 32];
        let mut height = [0u8; 8];
        let mut position = [0u8; 4];
        hash.copy_from_slice(&bytes[..32]);
        height.copy_from_slice(&bytes[32..40]);
        position.copy_from_slice(&bytes[40..]);
        Self {
            block: BlockHash(hash),
            height: Height(u64::from_le_bytes(height)),
            position: u32::from_le_bytes(position),
        }
    }
}

/// What the store keeps about every block it holds, main chain or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredIndex {
    /// The block's header, so start-up never decodes block bodies.
    pub header: protocol::Header,
    /// Height of the block.
    pub height: Height,
    /// Cumulative work from genesis up to and including this block.
    pub work: Work,
    /// Order in which this node first saw the block (ties in work go to the
    /// earlier one).
    pub seq: u64,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("database: {0}")]
    Database(#[from] redb::Error),
    /// A stored value did not decode.
    #[error("stored value is corrupt: {0}")]
    Codec(#[from] CodecError),
    /// The data dir belongs to another chain.
    #[error("data dir holds chain {found:?}, expected {expected:?}")]
    WrongChain {
        /// The chain the store was created for.
        found: String,
        /// The chain this node runs.
        expected: String,
    },
    /// An entry the store's own invariants require is absent.
    #[error("store is missing {0}")]
    Missing(String),
    /// The stored main chain does not link up from genesis to the tip.
    #[error(
        "the stored main chain is broken at height {height} (block {hash}): {problem}; \
         the data dir is damaged: restore it or resync into a fresh --data-dir"
    )]
    BrokenMainChain {
        /// The first height at which the main chain is broken.
        height: Height,
        /// The main-chain hash stored at that height.
        hash: BlockHash,
        /// What is wrong there.
        problem: String,
    },
    /// The stored state does not hash to the state root the tip commits to.
    #[error(
        "the stored state at height {height} does not match the tip header's state root: \
         stored {stored}, header {header}; the data dir is damaged: restore it or resync \
         into a fresh --data-dir"
    )]
    StateMismatch {
        /// Height of the tip.
        height: Height,
        /// The root of the state as stored.
        stored: StateRoot,
        /// The root the tip header commits to.
        header: StateRoot,
    },
    /// A main-chain block was asked to be forgotten; nothing was removed.
    #[error("refusing to forget block {hash}: it is on the main chain at height {height}")]
    ForgetMainChain {
        /// The block.
        hash: BlockHash,
        /// Its main-chain height.
        height: Height,
    },
}

macro_rules! from_redb {
    ($($ty:ty),*) => {$(
        impl From<$ty> for StoreError {
            fn from(err: $ty) -> Self {
                Self::Database(err.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Everything loaded from disk at start-up.
#[derive(Debug)]
pub struct Loaded {
    /// Every stored block header's index entry with its header.
    pub index: Vec<(BlockHash, protocol::Header, StoredIndex)>,
    /// Main-chain hashes by height, genesis first.
    pub main: Vec<BlockHash>,
    /// The state at the tip.
    pub state: State,
}

/// The state changes of one connected or disconnected block: the new value
/// of every account and job the block touched (`None` removes it).
#[derive(Debug, Default)]
pub struct StateDelta {
    /// Accounts to write.
    pub accounts: Vec<(Address, Option<Account>)>,
    /// Jobs to write.
    pub jobs: Vec<(JobId, Option<JobRecord>)>,
}

impl StateDelta {
    /// The current values in `state` of every key `undo` mentions.
    pub fn after(state: &State, undo: &BlockUndo) -> Self {
        Self {
            accounts: undo
                .accounts
                .iter()
                .map(|(address, _)| {
                    let value = state.has_account(address).then(|| state.account(address));
                    (*address, value)
                })
                .collect(),
            jobs: undo
                .jobs
                .iter()
                .map(|(id, _)| (*id, state.job(id).cloned()))
                .collect(),
        }
    }
}

/// The redb store.
///
/// Storing, connecting and disconnecting blocks commit atomically but not
/// durably (redb's `Durability::None`: one write to the page cache, no
/// `fsync`); [`Store::make_durable`] then makes every such commit durable
/// at once. The chain calls it before it reports anything it changed (a
/// reply, a note, a new tip), so what a node has said about its chain
/// survives a crash, and a batch of blocks (a sync response, a reorg, a
/// run of orphans) costs one `fsync` instead of one or two per block. A
/// crash between the two loses only commits nobody was told about: the
/// store reopens at the last durable one, itself consistent.
pub struct Store {
    db: Database,
    /// Hash of the genesis block the store was opened for.
    genesis: BlockHash,
    /// Whether a commit since the last durable one is not yet durable.
    pending: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// Opens or creates the store at `path` for `chain`, writing `genesis`
    /// and `genesis_state` when the store is new.
    pub fn open(
        path: &Path,
        chain: &str,
        genesis: &Block,
        genesis_state: &State,
    ) -> Result<Self, StoreError> {
        let db = Database::create(path)?;
        let store = Self {
            db,
            genesis: genesis.hash(),
            pending: std::sync::atomic::AtomicBool::new(false),
        };
        let existing = {
            let txn = store.db.begin_read()?;
            match txn.open_table(META) {
                Ok(meta) => meta.get(CHAIN_KEY)?.map(|v| v.value().to_vec()),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(err) => return Err(err.into()),
            }
        };
        match existing {
            Some(found) => {
                let found = String::from_utf8_lossy(&found).into_owned();
                if found != chain {
                    return Err(StoreError::WrongChain {
                        found,
                        expected: chain.to_owned(),
                    });
                }
            }
            None => store.write_genesis(chain, genesis, genesis_state)?,
        }
        store.build_txindex()?;
        Ok(store)
    }

    fn write_genesis(&self, chain: &str, genesis: &Block, state: &State) -> Result<(), StoreError> {
        let hash = genesis.hash();
        let work = genesis
            .header
            .bits
            .to_target()
            .map(|t| t.work())
            .unwrap_or(Work::ZERO);
        let entry = StoredIndex {
            header: genesis.header,
            height: Height::GENESIS,
            work,
            seq: 0,
        };
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            txn.open_table(BLOCKS)?
                .insert(hash.as_bytes(), codec::encode(genesis)?.as_slice())?;
            txn.open_table(INDEX)?
                .insert(hash.as_bytes(), codec::encode(&entry)?.as_slice())?;
            txn.open_table(UNDO)?;
            txn.open_table(MAIN)?.insert(0, hash.as_bytes())?;
            let mut accounts = txn.open_table(ACCOUNTS)?;
            for (address, account) in state.accounts() {
                accounts.insert(address.as_bytes(), codec::encode(account)?.as_slice())?;
            }
            let mut jobs = txn.open_table(JOBS)?;
            for (id, job) in state.jobs() {
                jobs.insert(id.as_bytes(), codec::encode(job)?.as_slice())?;
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(CHAIN_KEY, chain.as_bytes())?;
            meta.insert(TIP_KEY, hash.as_bytes().as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Indexes the transactions of the whole main chain when the store
    /// predates the index (once; later blocks are indexed as they connect).
    fn build_txindex(&self) -> Result<(), StoreError> {
        {
            let txn = self.db.begin_read()?;
            if let Ok(meta) = txn.open_table(META) {
                if meta.get(TXINDEX_KEY)?.is_some() {
                    return Ok(());
                }
            }
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let main: Vec<(u64, [u8; 32])> = {
                let table = txn.open_table(MAIN)?;
                let mut rows = Vec::new();
                for row in table.iter()? {
                    let (height, hash) = row?;
                    rows.push((height.value(), *hash.value()));
                }
                rows
            };
            let blocks = txn.open_table(BLOCKS)?;
            let mut index = txn.open_table(TXINDEX)?;
            for (height, hash) in main {
                let Some(bytes) = blocks.get(&hash)? else {
                    return Err(StoreError::Missing(format!(
                        "main-chain block {} at height {height}",
                        BlockHash(hash)
                    )));
                };
                let block: Block = codec::decode(bytes.value())?;
                Self::index_txs(
                    &mut index,
                    &block.tx_ids()?,
                    &BlockHash(hash),
                    Height(height),
                )?;
            }
            txn.open_table(META)?
                .insert(TXINDEX_KEY, [1u8].as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    fn index_txs(
        index: &mut redb::Table<&[u8; 32], &[u8; 44]>,
        ids: &[TxId],
        hash: &BlockHash,
        height: Height,
    ) -> Result<(), StoreError> {
        for (position, id) in ids.iter().enumerate() {
            let place = TxPlace {
                block: *hash,
                height,
                position: u32::try_from(position).unwrap_or(u32::MAX),
            };
            index.insert(id.as_bytes(), &place.encode())?;
        }
        Ok(())
    }

    /// Where the main-chain transaction `id` is, if it is on the main chain.
    pub fn tx_place(&self, id: &protocol::TxId) -> Result<Option<TxPlace>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(TXINDEX) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        let place = table
            .get(id.as_bytes())?
            .map(|v| TxPlace::decode(v.value()));
        Ok(place)
    }

    /// The main-chain block hash at `height`.
    pub fn main_hash(&self, height: Height) -> Result<Option<BlockHash>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(MAIN)?;
        let hash = table.get(height.0)?.map(|v| BlockHash(*v.value()));
        Ok(hash)
    }

    /// Loads the index, the main chain and the tip state, checking them
    /// first.
    ///
    /// The main chain must run from genesis to the tip, each block stored
    /// (header and body) and each the child of the one below it; the state
    /// must hash to the root the tip's header commits to. Either failing is
    /// refused ([`StoreError::BrokenMainChain`], [`StoreError::StateMismatch`])
    /// and nothing is written. Index entries and bodies not reachable from
    /// genesis through stored parents (a block whose ancestor was forgotten,
    /// or that lost its body) are then deleted in one transaction, with a
    /// warning that says how many.
    ///
    /// Cost, once per start: one pass over every stored block (the check
    /// that each indexed block has its body and the search for bodies
    /// nothing indexes), of the order of the chain's size on disk, and one
    /// state-root computation, as costly as the root check of one block.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let txn = self.db.begin_read()?;
        let mut index = Vec::new();
        for row in txn.open_table(INDEX)?.iter()? {
            let (key, value) = row?;
            let hash = BlockHash(*key.value());
            let entry: StoredIndex = codec::decode(value.value())?;
            index.push((hash, entry.header, entry));
        }
        let mut main = Vec::new();
        for row in txn.open_table(MAIN)?.iter()? {
            let (height, value) = row?;
            main.push((height.value(), BlockHash(*value.value())));
        }
        let mut bodies = HashSet::new();
        for row in txn.open_table(BLOCKS)?.iter()? {
            let (key, _) = row?;
            bodies.insert(BlockHash(*key.value()));
        }
        let mut accounts = Vec::new();
        for row in txn.open_table(ACCOUNTS)?.iter()? {
            let (key, value) = row?;
            accounts.push((
                Address(*key.value()),
                codec::decode::<Account>(value.value())?,
            ));
        }
        let mut jobs = Vec::new();
        for row in txn.open_table(JOBS)?.iter()? {
            let (key, value) = row?;
            jobs.push((
                JobId(*key.value()),
                codec::decode::<JobRecord>(value.value())?,
            ));
        }
        let tip = txn
            .open_table(META)?
            .get(TIP_KEY)?
            .map(|v| v.value().to_vec())
            .ok_or_else(|| StoreError::Missing("tip".into()))?;
        drop(txn);

        let main = self.check_main(&main, &index, &bodies, &tip)?;
        let state = State::from_entries(accounts, jobs);
        Self::check_state(&state, &main, &index)?;

        let reachable = self.reachable(&index, &bodies);
        let dropped_entries: Vec<BlockHash> = index
            .iter()
            .map(|(hash, _, _)| *hash)
            .filter(|hash| !reachable.contains(hash))
            .collect();
        let dropped_bodies: Vec<BlockHash> = bodies
            .iter()
            .filter(|hash| !reachable.contains(*hash))
            .copied()
            .collect();
        if !dropped_entries.is_empty() || !dropped_bodies.is_empty() {
            self.delete_unreachable(&dropped_entries, &dropped_bodies)?;
            tracing::warn!(
                index_entries = dropped_entries.len(),
                bodies = dropped_bodies.len(),
                "deleted stored blocks not reachable from genesis through stored parents (what an interrupted invalidation leaves)"
            );
            index.retain(|(hash, _, _)| reachable.contains(hash));
        }
        Ok(Loaded { index, main, state })
    }

    /// Checks that the stored main chain runs from this store's genesis to
    /// the tip, every block indexed, with its body, at its height and the
    /// child of the block below; returns its hashes by height.
    fn check_main(
        &self,
        main: &[(u64, BlockHash)],
        index: &[(BlockHash, protocol::Header, StoredIndex)],
        bodies: &HashSet<BlockHash>,
        tip: &[u8],
    ) -> Result<Vec<BlockHash>, StoreError> {
        let entries: HashMap<&BlockHash, &StoredIndex> =
            index.iter().map(|(hash, _, entry)| (hash, entry)).collect();
        let broken = |height: u64, hash: BlockHash, problem: String| StoreError::BrokenMainChain {
            height: Height(height),
            hash,
            problem,
        };
        let mut hashes = Vec::with_capacity(main.len());
        for (position, (height, hash)) in main.iter().enumerate() {
            let expected = u64::try_from(position).unwrap_or(u64::MAX);
            if *height != expected {
                return Err(broken(
                    expected,
                    *hash,
                    format!(
                        "no main-chain block is stored at this height (the next is at {height})"
                    ),
                ));
            }
            if position == 0 && *hash != self.genesis {
                return Err(broken(
                    0,
                    *hash,
                    format!("it is not this chain's genesis {}", self.genesis),
                ));
            }
            let Some(entry) = entries.get(hash) else {
                return Err(broken(*height, *hash, "its index entry is missing".into()));
            };
            if !bodies.contains(hash) {
                return Err(broken(*height, *hash, "its block body is missing".into()));
            }
            if entry.height.0 != *height {
                return Err(broken(
                    *height,
                    *hash,
                    format!("its index entry says height {}", entry.height),
                ));
            }
            if let Some(below) = hashes.last() {
                if entry.header.prev != *below {
                    return Err(broken(
                        *height,
                        *hash,
                        format!(
                            "its parent is {}, not the main-chain block {below} below it",
                            entry.header.prev
                        ),
                    ));
                }
            }
            hashes.push(*hash);
        }
        match hashes.last() {
            None => Err(StoreError::Missing(
                "the main chain (not even genesis)".into(),
            )),
            Some(last) if last.as_bytes().as_slice() != tip => {
                let height = u64::try_from(hashes.len().saturating_sub(1)).unwrap_or(u64::MAX);
                Err(broken(
                    height,
                    *last,
                    format!(
                        "the main chain ends here, but the stored tip is {}",
                        hex::encode(tip)
                    ),
                ))
            }
            Some(_) => Ok(hashes),
        }
    }

    /// Checks that `state` hashes to the state root of the tip's header.
    fn check_state(
        state: &State,
        main: &[BlockHash],
        index: &[(BlockHash, protocol::Header, StoredIndex)],
    ) -> Result<(), StoreError> {
        let tip = main
            .last()
            .ok_or_else(|| StoreError::Missing("the main chain (not even genesis)".into()))?;
        let entry = index
            .iter()
            .find(|(hash, _, _)| hash == tip)
            .map(|(_, _, entry)| entry)
            .ok_or_else(|| StoreError::Missing(format!("index entry of tip {tip}")))?;
        let stored = state.root()?;
        if stored != entry.header.state_root {
            return Err(StoreError::StateMismatch {
                height: entry.height,
                stored,
                header: entry.header.state_root,
            });
        }
        Ok(())
    }

    /// The indexed blocks that reach genesis through indexed parents, each
    /// with its body stored.
    fn reachable(
        &self,
        index: &[(BlockHash, protocol::Header, StoredIndex)],
        bodies: &HashSet<BlockHash>,
    ) -> HashSet<BlockHash> {
        let mut children: HashMap<BlockHash, Vec<BlockHash>> = HashMap::new();
        for (hash, header, _) in index {
            if *hash != self.genesis {
                children.entry(header.prev).or_default().push(*hash);
            }
        }
        let mut reachable = HashSet::new();
        let mut frontier = Vec::new();
        if bodies.contains(&self.genesis) && index.iter().any(|(hash, _, _)| *hash == self.genesis)
        {
            reachable.insert(self.genesis);
            frontier.push(self.genesis);
        }
        while let Some(parent) = frontier.pop() {
            for child in children.get(&parent).into_iter().flatten() {
                if bodies.contains(child) && reachable.insert(*child) {
                    frontier.push(*child);
                }
            }
        }
        reachable
    }

    /// Deletes index entries and bodies in one transaction.
    fn delete_unreachable(
        &self,
        entries: &[BlockHash],
        bodies: &[BlockHash],
    ) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut index = txn.open_table(INDEX)?;
            for hash in entries {
                index.remove(hash.as_bytes())?;
            }
            let mut blocks = txn.open_table(BLOCKS)?;
            for hash in entries.iter().chain(bodies) {
                blocks.remove(hash.as_bytes())?;
            }
            let mut undo = txn.open_table(UNDO)?;
            for hash in entries.iter().chain(bodies) {
                undo.remove(hash.as_bytes())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// A write transaction whose commit is atomic but not durable until
    /// [`Self::make_durable`].
    fn begin_deferred(&self) -> Result<redb::WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        self.pending
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(txn)
    }

    /// Makes every commit so far durable: one empty durable commit (redb
    /// writes the latest root and syncs the file), skipped when there is
    /// nothing to make durable. Who pays: the caller, once per batch of
    /// blocks, before it reports them.
    pub fn make_durable(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        if !self.pending.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let result = (|| {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            txn.commit()?;
            Ok::<_, StoreError>(())
        })();
        if result.is_err() {
            self.pending.store(true, Ordering::Release);
        }
        result
    }

    /// Whether a commit is waiting for [`Self::make_durable`].
    pub fn has_pending(&self) -> bool {
        self.pending.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stores a block and its index entry without connecting it (durable
    /// at the next [`Self::make_durable`]).
    pub fn put_block(&self, block: &Block, entry: &StoredIndex) -> Result<(), StoreError> {
        self.put_encoded(&block.hash(), &codec::encode(block)?, entry)
    }

    /// [`Self::put_block`] for a block already encoded (`encoded`, whose
    /// hash is `hash`).
    pub fn put_encoded(
        &self,
        hash: &BlockHash,
        encoded: &[u8],
        entry: &StoredIndex,
    ) -> Result<(), StoreError> {
        let txn = self.begin_deferred()?;
        {
            txn.open_table(BLOCKS)?.insert(hash.as_bytes(), encoded)?;
            txn.open_table(INDEX)?
                .insert(hash.as_bytes(), codec::encode(entry)?.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes blocks that turned out invalid (a block and its
    /// descendants), all in one transaction: after a crash either all of
    /// them are still stored or none is. A main-chain block among them
    /// fails the call ([`StoreError::ForgetMainChain`]) and removes nothing.
    pub fn forget_all(&self, hashes: &[BlockHash]) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let refused = {
            let main = txn.open_table(MAIN)?;
            let mut index = txn.open_table(INDEX)?;
            let mut blocks = txn.open_table(BLOCKS)?;
            let mut refused = None;
            for hash in hashes {
                let height = match index.get(hash.as_bytes())? {
                    Some(value) => Some(codec::decode::<StoredIndex>(value.value())?.height),
                    None => None,
                };
                if let Some(height) = height {
                    if main.get(height.0)?.map(|v| *v.value()) == Some(*hash.as_bytes()) {
                        refused = Some(StoreError::ForgetMainChain {
                            hash: *hash,
                            height,
                        });
                        break;
                    }
                }
                index.remove(hash.as_bytes())?;
                blocks.remove(hash.as_bytes())?;
            }
            refused
        };
        if let Some(err) = refused {
            txn.abort()?;
            return Err(err);
        }
        txn.commit()?;
        Ok(())
    }

    /// A stored block.
    pub fn block(&self, hash: &BlockHash) -> Result<Option<Block>, StoreError> {
        Ok(self.block_and_size(hash)?.map(|(block, _)| block))
    }

    /// A stored block with its encoded size, read from the store rather
    /// than encoded again.
    pub fn block_and_size(&self, hash: &BlockHash) -> Result<Option<(Block, usize)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BLOCKS)?;
        let value = table.get(hash.as_bytes())?;
        match value {
            Some(bytes) => Ok(Some((codec::decode(bytes.value())?, bytes.value().len()))),
            None => Ok(None),
        }
    }

    /// The undo data of a connected block.
    pub fn undo(&self, hash: &BlockHash) -> Result<BlockUndo, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(UNDO)?;
        let value = table
            .get(hash.as_bytes())?
            .ok_or_else(|| StoreError::Missing(format!("undo data of {hash}")))?;
        Ok(codec::decode(value.value())?)
    }

    /// Connects the block `hash` at `height` as the new tip: its undo
    /// data, its main-chain slot, its transactions' (`ids`) index entries, the state
    /// changes and the tip, in one transaction (durable at the next
    /// [`Self::make_durable`]).
    pub fn connect(
        &self,
        ids: &[TxId],
        hash: &BlockHash,
        height: Height,
        undo: &BlockUndo,
        delta: &StateDelta,
    ) -> Result<(), StoreError> {
        let txn = self.begin_deferred()?;
        {
            Self::index_txs(&mut txn.open_table(TXINDEX)?, ids, hash, height)?;
            txn.open_table(UNDO)?
                .insert(hash.as_bytes(), codec::encode(undo)?.as_slice())?;
            txn.open_table(MAIN)?.insert(height.0, hash.as_bytes())?;
            Self::write_delta(&txn, delta)?;
            txn.open_table(META)?
                .insert(TIP_KEY, hash.as_bytes().as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Disconnects the tip `hash` at `height`, making `parent` the tip and
    /// writing the rolled-back state, in one transaction (durable at the
    /// next [`Self::make_durable`]).
    pub fn disconnect(
        &self,
        block: &Block,
        hash: &BlockHash,
        height: Height,
        delta: &StateDelta,
    ) -> Result<(), StoreError> {
        let parent = &block.header.prev;
        let txn = self.begin_deferred()?;
        {
            let mut index = txn.open_table(TXINDEX)?;
            for tx in &block.txs {
                index.remove(tx.id()?.as_bytes())?;
            }
            drop(index);
            txn.open_table(UNDO)?.remove(hash.as_bytes())?;
            txn.open_table(MAIN)?.remove(height.0)?;
            Self::write_delta(&txn, delta)?;
            txn.open_table(META)?
                .insert(TIP_KEY, parent.as_bytes().as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    fn write_delta(txn: &redb::WriteTransaction, delta: &StateDelta) -> Result<(), StoreError> {
        let mut accounts = txn.open_table(ACCOUNTS)?;
        for (address, account) in &delta.accounts {
            match account {
                Some(account) => {
                    accounts.insert(address.as_bytes(), codec::encode(account)?.as_slice())?;
                }
                None => {
                    accounts.remove(address.as_bytes())?;
                }
            }
        }
        let mut jobs = txn.open_table(JOBS)?;
        for (id, job) in &delta.jobs {
            match job {
                Some(job) => {
                    jobs.insert(id.as_bytes(), codec::encode(job)?.as_slice())?;
                }
                None => {
                    jobs.remove(id.as_bytes())?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use protocol::{ChainParams, Coinbase, Header, Transaction};

    use crate::chain::{BlockOutcome, Chain, ChainError, NoTrainingEngine};
    use crate::mempool::MempoolLimits;

    const NOW: u32 = 1_767_225_600 + 1000;

    fn work(amount: u64) -> Work {
        let mut bytes = [0u8; 32];
        bytes[24..].copy_from_slice(&amount.to_be_bytes());
        Work::from_be_bytes(&bytes)
    }

    fn path(dir: &tempfile::TempDir) -> std::path::PathBuf {
        dir.path().join("chain.redb")
    }

    fn open_chain(dir: &tempfile::TempDir) -> Result<Chain, ChainError> {
        Chain::open(
            &path(dir),
            ChainParams::regtest(),
            Arc::new(NoTrainingEngine),
            MempoolLimits::default(),
        )
    }

    fn open_store(dir: &tempfile::TempDir) -> Store {
        let params = ChainParams::regtest();
        Store::open(
            &path(dir),
            params.name,
            &params.genesis_block().unwrap(),
            &params.genesis_state(),
        )
        .unwrap()
    }

    /// Mines the chain's template for `miner` and connects it.
    fn mine_on(chain: &mut Chain, miner: u8, now: u32) -> Block {
        let mut block = chain.template(Address([miner; 32]), now).unwrap().block;
        let target = block.header.bits.to_target().unwrap();
        while !target.is_met_by(&block.header.hash()) {
            block.header.nonce += 1;
        }
        assert!(matches!(
            chain.process_block(block.clone(), now).unwrap(),
            BlockOutcome::NewTip { .. }
        ));
        block
    }

    /// A coinbase-only block on `prev` at `height` that nothing stored
    /// connects to (its state root is made up).
    fn loose_block(prev: BlockHash, height: u64, tag: u8) -> Block {
        let params = ChainParams::regtest();
        let coinbase = Transaction::Coinbase(Coinbase {
            height: Height(height),
            miner: Address([tag; 32]),
            amount: params.subsidy(Height(height)),
        });
        let id = coinbase.id().unwrap();
        let mut header = Header {
            version: params.block_version,
            prev,
            merkle_root: protocol::merkle_root(&[id]),
            state_root: StateRoot([tag; 32]),
            time: NOW,
            bits: params.pow_limit,
            nonce: 0,
        };
        let target = header.bits.to_target().unwrap();
        while !target.is_met_by(&header.hash()) {
            header.nonce += 1;
        }
        Block {
            header,
            txs: vec![coinbase],
        }
    }

    /// A chain of three mined blocks in `dir`; returns the main-chain
    /// blocks after genesis.
    fn three_blocks(dir: &tempfile::TempDir) -> Vec<Block> {
        let mut chain = open_chain(dir).unwrap();
        (0..3).map(|i| mine_on(&mut chain, 1, NOW + i)).collect()
    }

    fn stored(store: &Store, hash: &BlockHash) -> (bool, bool) {
        let txn = store.db.begin_read().unwrap();
        let body = txn
            .open_table(BLOCKS)
            .unwrap()
            .get(hash.as_bytes())
            .unwrap()
            .is_some();
        let entry = txn
            .open_table(INDEX)
            .unwrap()
            .get(hash.as_bytes())
            .unwrap()
            .is_some();
        (body, entry)
    }

    /// Stores `blocks` as a branch with more work than anything else.
    fn put_heavy(store: &Store, blocks: &[Block], first_height: u64) {
        for (i, block) in blocks.iter().enumerate() {
            let i = u64::try_from(i).unwrap();
            let entry = StoredIndex {
                header: block.header,
                height: Height(first_height + i),
                work: work((1 << 40) + i),
                seq: 100 + i,
            };
            store.put_block(block, &entry).unwrap();
        }
    }

    /// The tip height of a copy of the store file taken now, opened as a
    /// node restarting after a crash at this moment would open it.
    fn tip_after_crash(dir: &tempfile::TempDir) -> Height {
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(path(dir), path(&copy)).unwrap();
        open_chain(&copy).unwrap().height()
    }

    #[test]
    fn blocks_of_a_batch_become_durable_together_when_the_batch_ends() {
        let dir = tempfile::tempdir().unwrap();
        let mut chain = open_chain(&dir).unwrap();
        mine_on(&mut chain, 1, NOW);
        // A block processed alone is durable when the call returns.
        assert_eq!(tip_after_crash(&dir), Height(1));
        for i in 1..4 {
            let mut block = chain.template(Address([2; 32]), NOW + i).unwrap().block;
            let target = block.header.bits.to_target().unwrap();
            while !target.is_met_by(&block.header.hash()) {
                block.header.nonce += 1;
            }
            assert!(matches!(
                chain.process_in_batch(block, NOW + i).unwrap(),
                BlockOutcome::NewTip { .. }
            ));
        }
        assert_eq!(chain.height(), Height(4));
        // A crash before the batch ends loses the whole batch, and the
        // store opens on the last durable tip, consistent.
        assert_eq!(tip_after_crash(&dir), Height(1));
        chain.make_durable().unwrap();
        assert_eq!(tip_after_crash(&dir), Height(4));
        assert!(!chain.store_has_pending());
    }

    #[test]
    fn forget_all_removes_all_or_nothing_and_never_a_main_chain_block() {
        let dir = tempfile::tempdir().unwrap();
        let main = three_blocks(&dir);
        let store = open_store(&dir);
        let genesis = store.main_hash(Height::GENESIS).unwrap().unwrap();
        let side: Vec<Block> = {
            let first = loose_block(genesis, 1, 0x51);
            let second = loose_block(first.hash(), 2, 0x52);
            vec![first, second]
        };
        for (i, block) in side.iter().enumerate() {
            let i = u64::try_from(i).unwrap();
            let entry = StoredIndex {
                header: block.header,
                height: Height(1 + i),
                work: Work::ZERO,
                seq: 50 + i,
            };
            store.put_block(block, &entry).unwrap();
        }
        let side_hashes: Vec<BlockHash> = side.iter().map(Block::hash).collect();

        // A main-chain block last in the list: refused, and the side blocks
        // listed before it are still there.
        let mut with_main = side_hashes.clone();
        with_main.push(main[1].hash());
        let err = store.forget_all(&with_main).unwrap_err();
        assert!(
            matches!(err, StoreError::ForgetMainChain { hash, height } if hash == main[1].hash() && height == Height(2)),
            "{err}"
        );
        assert!(err.to_string().contains("main chain at height 2"), "{err}");
        for hash in &side_hashes {
            assert_eq!(stored(&store, hash), (true, true), "nothing was removed");
        }
        assert_eq!(stored(&store, &main[1].hash()), (true, true));

        // The side branch alone: gone, body and index entry, and the store
        // loads on the same tip.
        store.forget_all(&side_hashes).unwrap();
        for hash in &side_hashes {
            assert_eq!(stored(&store, hash), (false, false));
        }
        let loaded = store.load().unwrap();
        assert_eq!(loaded.main.last(), Some(&main[2].hash()));
        assert_eq!(loaded.index.len(), 4, "genesis and three main blocks");
    }

    #[test]
    fn load_deletes_blocks_not_reachable_from_genesis_and_the_chain_opens_on_its_tip() {
        let dir = tempfile::tempdir().unwrap();
        let main = three_blocks(&dir);
        let store = open_store(&dir);
        // What forgetting an invalid block one transaction at a time left
        // behind when killed half way: descendants whose ancestor is gone,
        // with more work than the main chain, so the chain would pick them.
        let gone = loose_block(main[0].hash(), 2, 0x61);
        let orphans = {
            let first = loose_block(gone.hash(), 3, 0x62);
            let second = loose_block(first.hash(), 4, 0x63);
            let third = loose_block(second.hash(), 5, 0x64);
            vec![first, second, third]
        };
        put_heavy(&store, &orphans, 3);
        // A reachable side block that stays.
        let side = loose_block(main[0].hash(), 2, 0x65);
        store
            .put_block(
                &side,
                &StoredIndex {
                    header: side.header,
                    height: Height(2),
                    work: Work::ZERO,
                    seq: 90,
                },
            )
            .unwrap();
        // An indexed block whose body is missing, and a body nothing
        // indexes.
        let bodiless = loose_block(main[2].hash(), 4, 0x66);
        let unindexed = loose_block(main[2].hash(), 4, 0x67);
        {
            let txn = store.db.begin_write().unwrap();
            {
                let entry = StoredIndex {
                    header: bodiless.header,
                    height: Height(4),
                    work: work(1 << 41),
                    seq: 91,
                };
                txn.open_table(INDEX)
                    .unwrap()
                    .insert(
                        bodiless.hash().as_bytes(),
                        codec::encode(&entry).unwrap().as_slice(),
                    )
                    .unwrap();
                txn.open_table(BLOCKS)
                    .unwrap()
                    .insert(
                        unindexed.hash().as_bytes(),
                        codec::encode(&unindexed).unwrap().as_slice(),
                    )
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        drop(store);

        let chain = open_chain(&dir).expect("the chain opens after the repair");
        assert_eq!(chain.tip(), main[2].hash());
        assert_eq!(chain.height(), Height(3));
        for block in orphans.iter().chain([&bodiless, &unindexed]) {
            assert!(!chain.has_block(&block.hash()));
        }
        assert!(
            chain.has_block(&side.hash()),
            "a reachable side block stays"
        );
        drop(chain);

        let store = open_store(&dir);
        for block in orphans.iter().chain([&bodiless, &unindexed]) {
            assert_eq!(
                stored(&store, &block.hash()),
                (false, false),
                "deleted from the store"
            );
        }
        assert_eq!(stored(&store, &side.hash()), (true, true));
        let loaded = store.load().unwrap();
        assert_eq!(
            loaded.index.len(),
            5,
            "genesis, three main blocks, one side block"
        );
    }

    #[test]
    fn a_state_that_does_not_hash_to_the_tip_state_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let main = three_blocks(&dir);
        let tip_root = main[2].header.state_root;
        let store = open_store(&dir);
        {
            let txn = store.db.begin_write().unwrap();
            {
                let account = Account {
                    balance: protocol::Amount(1_000),
                    nonce: 0,
                };
                txn.open_table(ACCOUNTS)
                    .unwrap()
                    .insert(
                        Address([0x77; 32]).as_bytes(),
                        codec::encode(&account).unwrap().as_slice(),
                    )
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        match store.load() {
            Err(StoreError::StateMismatch {
                height,
                stored,
                header,
            }) => {
                assert_eq!(height, Height(3));
                assert_eq!(header, tip_root);
                assert_ne!(stored, tip_root);
            }
            other => panic!("expected a state mismatch, got {other:?}"),
        }
        drop(store);
        let err = open_chain(&dir).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(
                "the stored state at height 3 does not match the tip header's state root"
            ) && text.contains(&format!("header {tip_root}"))
                && text.contains("restore it or resync into a fresh --data-dir"),
            "{text}"
        );
    }

    #[test]
    fn a_broken_main_chain_is_refused_naming_the_height_and_block() {
        // The body of a main-chain block is missing.
        let dir = tempfile::tempdir().unwrap();
        let main = three_blocks(&dir);
        let store = open_store(&dir);
        {
            let txn = store.db.begin_write().unwrap();
            txn.open_table(BLOCKS)
                .unwrap()
                .remove(main[1].hash().as_bytes())
                .unwrap();
            txn.commit().unwrap();
        }
        let err = store.load().unwrap_err();
        assert!(
            matches!(&err, StoreError::BrokenMainChain { height, hash, .. } if *height == Height(2) && *hash == main[1].hash()),
            "{err}"
        );
        assert!(err.to_string().contains("block body is missing"), "{err}");
        drop(store);
        let text = open_chain(&dir).unwrap_err().to_string();
        assert!(
            text.contains(&format!("broken at height 2 (block {})", main[1].hash()))
                && text.contains("--data-dir"),
            "{text}"
        );

        // A main-chain index entry is missing.
        let dir = tempfile::tempdir().unwrap();
        let main = three_blocks(&dir);
        let store = open_store(&dir);
        {
            let txn = store.db.begin_write().unwrap();
            txn.open_table(INDEX)
                .unwrap()
                .remove(main[0].hash().as_bytes())
                .unwrap();
            txn.commit().unwrap();
        }
        let err = store.load().unwrap_err();
        assert!(
            matches!(&err, StoreError::BrokenMainChain { height, hash, .. } if *height == Height(1) && *hash == main[0].hash()),
            "{err}"
        );
        assert!(err.to_string().contains("index entry is missing"), "{err}");

        // A height is missing from the main chain.
        let dir = tempfile::tempdir().unwrap();
        let main = three_blocks(&dir);
        let store = open_store(&dir);
        {
            let txn = store.db.begin_write().unwrap();
            txn.open_table(MAIN).unwrap().remove(2).unwrap();
            txn.commit().unwrap();
        }
        let err = store.load().unwrap_err();
        assert!(
            matches!(&err, StoreError::BrokenMainChain { height, hash, .. } if *height == Height(2) && *hash == main[2].hash()),
            "{err}"
        );
        // Nothing was deleted: a refused store is left as it was.
        for block in &main {
            assert_eq!(stored(&store, &block.hash()), (true, true));
        }
    }
}
