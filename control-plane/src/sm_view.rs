//! A read guard over the live state, so the Query service reads one consistent revision.

pub struct View<'a>(pub std::sync::RwLockReadGuard<'a, crate::store::sm::Live>);
