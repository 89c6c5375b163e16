//! An in-memory store (tests only, feature `test-util`): see tests/engine.rs.
