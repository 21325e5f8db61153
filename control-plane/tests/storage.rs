//! openraft's storage conformance suite against the sled log store and state machine.

use openraft::testing::{StoreBuilder, Suite};
use switchyard_control::store::{self, log::LogStore, sm::StateMachineStore};
use switchyard_control::types::{StorageError, TypeConfig};
use tempfile::TempDir;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let db = store::open(&data, 1).expect("open sled");
        Ok((dir, LogStore::new(db.clone(), &data)?, StateMachineStore::open(db, &data)?))
    }
}

#[test]
fn sled_store_passes_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(SledBuilder)
}
