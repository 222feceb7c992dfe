//! The node's on-disk store: blocks, the block index, undo data, the main
//! chain, the state at the tip, the tip itself and an index of main-chain
//! transactions (for the HTTP API's `/api/tx/{id}`), in one redb file.
//!
//! Connecting or disconnecting a block is exactly one write transaction
//! committed with immediate durability, so a node killed at any moment
//! restarts on a consistent tip. This module stores and loads values; it
//! never decides which chain is best or whether a block is valid.

use std::path::Path;

use protocol::codec::{self, CodecError};
use protocol::pow::Work;
use protocol::{Account, Address, Block, BlockHash, BlockUndo, Height, JobId, JobRecord, State};
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
pub struct Store {
    db: Database,
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
        let store = Self { db };
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
                Self::index_txs(&mut index, &block, &BlockHash(hash), Height(height))?;
            }
            txn.open_table(META)?
                .insert(TXINDEX_KEY, [1u8].as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    fn index_txs(
        index: &mut redb::Table<&[u8; 32], &[u8; 44]>,
        block: &Block,
        hash: &BlockHash,
        height: Height,
    ) -> Result<(), StoreError> {
        for (position, tx) in block.txs.iter().enumerate() {
            let place = TxPlace {
                block: *hash,
                height,
                position: u32::try_from(position).unwrap_or(u32::MAX),
            };
            index.insert(tx.id()?.as_bytes(), &place.encode())?;
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

    /// Loads the index, the main chain and the tip state.
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
            let (_, value) = row?;
            main.push(BlockHash(*value.value()));
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
        if main.last().map(|h| h.as_bytes().as_slice()) != Some(tip.as_slice()) {
            return Err(StoreError::Missing("main chain ending at the tip".into()));
        }
        Ok(Loaded {
            index,
            main,
            state: State::from_entries(accounts, jobs),
        })
    }

    /// Stores a block and its index entry without connecting it.
    pub fn put_block(&self, block: &Block, entry: &StoredIndex) -> Result<(), StoreError> {
        let hash = block.hash();
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            txn.open_table(BLOCKS)?
                .insert(hash.as_bytes(), codec::encode(block)?.as_slice())?;
            txn.open_table(INDEX)?
                .insert(hash.as_bytes(), codec::encode(entry)?.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes a block that turned out invalid (never a main-chain block).
    pub fn forget(&self, hash: &BlockHash) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            txn.open_table(BLOCKS)?.remove(hash.as_bytes())?;
            txn.open_table(INDEX)?.remove(hash.as_bytes())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// A stored block.
    pub fn block(&self, hash: &BlockHash) -> Result<Option<Block>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BLOCKS)?;
        let value = table.get(hash.as_bytes())?;
        match value {
            Some(bytes) => Ok(Some(codec::decode(bytes.value())?)),
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

    /// Connects `block` (`hash`) at `height` as the new tip: its undo
    /// data, its main-chain slot, its transactions' index entries, the state
    /// changes and the tip, in one transaction.
    pub fn connect(
        &self,
        block: &Block,
        hash: &BlockHash,
        height: Height,
        undo: &BlockUndo,
        delta: &StateDelta,
    ) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            Self::index_txs(&mut txn.open_table(TXINDEX)?, block, hash, height)?;
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
    /// writing the rolled-back state, in one transaction.
    pub fn disconnect(
        &self,
        block: &Block,
        hash: &BlockHash,
        height: Height,
        delta: &StateDelta,
    ) -> Result<(), StoreError> {
        let parent = &block.header.prev;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
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
