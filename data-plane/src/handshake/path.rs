//! The request path, normalized as [`switchyard_model::path`] says (the control plane holds
//! route prefixes to the same form); a path that cannot be is the client's 400.

use std::borrow::Cow;

pub use switchyard_model::path::without_params;

use super::Reject;

/// `target` with its path normalized (see [`switchyard_model::path::normalize`]).
pub fn normalize(target: &str) -> Result<Cow<'_, str>, Reject> {
    switchyard_model::path::normalize(target).map_err(Reject::BadRequest)
}
