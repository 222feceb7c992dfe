//! Workspace-level integration tests for gradchain: several real nodes on
//! 127.0.0.1 in one process, talking libp2p to each other (see `tests/`).
//!
//! The library itself is empty; the tests drive the node through its public
//! API (`node::start`, `node::testkit`) and must never reach into its
//! internals or sleep for a fixed time: every wait polls with a deadline.
