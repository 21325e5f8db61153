//! What a follower may forward to the leader: only what its own clients could have asked it
//! for. Internal commands (health flips, session binds and expiry, the affinity secret) are
//! proposed by the leader itself, and proxies' session reports arrive as [`Report`] calls, so
//! a `Forward` carrying one of them is forged ([`Command::internal`] says which). The match
//! below is exhaustive on purpose: a new command does not compile until it is checked.

use crate::error::ApiError;
use crate::node::calls::Envelope;
use crate::pb::Pb;
use crate::state::{Command, Proposed, MAX_GUARDS};
use crate::validate;

/// Whether `env` is a call a follower could legitimately forward; the reason when not.
pub fn check(env: &Envelope) -> Result<(), ApiError> {
    match env {
        Envelope::Writes(w) => w.0.iter().try_for_each(admin_write),
        Envelope::AddNode(n) => validate::new_node(n.id, &n.addr),
        // Membership changes and reads an admin or a proxy asked a follower for. A report's
        // bindings are filtered to hashed keys where it is carried out.
        Envelope::Promote(_)
        | Envelope::Remove(_)
        | Envelope::ReadIndex(_)
        | Envelope::Report(_)
        | Envelope::Loads(_)
        | Envelope::ListProxies(_) => Ok(()),
    }
}

/// A write the Admin API makes, checked as the Admin API checks it.
fn admin_write(p: &Proposed) -> Result<(), ApiError> {
    if let Some(id) = &p.id {
        id.check()?;
    }
    if let Some(what) = p.cmd.internal() {
        return Err(ApiError::InvalidArgument(format!("{what} is internal to the leader and cannot be forwarded")));
    }
    admin_command(&p.cmd)
}

fn admin_command(cmd: &Command) -> Result<(), ApiError> {
    match cmd {
        Command::Guarded { guards, cmd } => {
            if guards.len() > MAX_GUARDS || matches!(**cmd, Command::Guarded { .. }) {
                return Err(ApiError::InvalidArgument(format!(
                    "a guarded write carries at most {MAX_GUARDS} guards and no guarded write"
                )));
            }
            admin_command(cmd)
        }
        Command::CreatePool(Pb(pool)) => validate::pool(pool.clone()).map(drop),
        // Merged with the stored pool and validated whole when applied.
        Command::UpdatePool { pool: Pb(pool), .. } => validate::name("pool", &pool.name),
        Command::DeletePool { name } => validate::name("pool", name),
        Command::AddBackend(Pb(b)) => validate::backend(b.clone()).map(drop),
        Command::SetBackendWeight { pool, address, weight } => {
            validate::name("pool", pool)?;
            validate::address(address)?;
            validate::weight(*weight)
        }
        Command::SetBackendState { pool, address, state } => {
            validate::name("pool", pool)?;
            validate::address(address)?;
            validate::admin_state(*state).map(drop)
        }
        Command::RemoveBackend { pool, address } => {
            validate::name("pool", pool)?;
            validate::address(address)
        }
        Command::SetRoute(Pb(r)) => validate::route(r.clone()).map(drop),
        Command::DeleteRoute { name } => validate::name("route", name),
        // Merged with the stored settings and validated whole when applied.
        Command::UpdateSettings { .. } => Ok(()),
        Command::DeleteSession { pool, .. } | Command::DeleteSessions { pool } => validate::name("pool", pool),
        // Refused above (`Command::internal`).
        Command::SetBackendHealth { .. }
        | Command::BindSessions { .. }
        | Command::ExpireSessions { .. }
        | Command::SetAffinitySecret(_)
        | Command::SetFeatureLevel(_) => Ok(()),
        // Token writes and audit notes come from the Admin API of the follower (an admin's
        // call, authorized there); the record's role is checked again when applied.
        Command::CreateToken(t) => {
            crate::auth::tokens::token_role(&t.role).map(drop).map_err(ApiError::InvalidArgument)
        }
        Command::RevokeToken { id } => validate::name("token", id),
        Command::Note => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use switchyard_proto::v1::{Pool, SessionBinding};

    use super::*;
    use crate::node::calls::{ListProxies, ReadIndex, Writes};
    use crate::state::{Guard, SecretBytes};

    fn writes(cmds: Vec<Command>) -> Envelope {
        Envelope::Writes(Writes(cmds.into_iter().map(Proposed::from).collect()))
    }

    #[test]
    fn only_admin_writes_and_client_calls_may_be_forwarded() {
        let pool = Pool { name: "p".into(), ..Default::default() };
        let admin = vec![
            Command::CreatePool(Pb(validate::pool(pool).unwrap())),
            Command::SetBackendState { pool: "p".into(), address: "127.0.0.1:1".into(), state: 2 },
            Command::DeleteSession { pool: "p".into(), key: "0123".into() },
        ];
        assert!(check(&writes(admin.clone())).is_ok());
        assert!(check(&Envelope::ReadIndex(ReadIndex)).is_ok());
        assert!(check(&Envelope::ListProxies(ListProxies)).is_ok());

        let internal = [
            Command::SetBackendHealth { pool: "p".into(), address: "127.0.0.1:1".into(), health: 2 },
            Command::BindSessions { now_ms: 1, bindings: vec![Pb(SessionBinding::default())] },
            Command::ExpireSessions { now_ms: u64::MAX },
            Command::SetAffinitySecret(SecretBytes(vec![0; 32])),
            Command::SetFeatureLevel(99),
        ];
        for cmd in internal {
            // Alone or hidden among legitimate writes, the whole call is refused.
            let mut mixed = admin.clone();
            mixed.push(cmd.clone());
            for env in [writes(vec![cmd.clone()]), writes(mixed)] {
                let e = check(&env).unwrap_err();
                assert!(matches!(e, ApiError::InvalidArgument(ref m) if m.contains("internal")), "{cmd:?}: {e}");
            }
        }
        // An admin write the Admin API would have refused is refused here too.
        let bad = Command::CreatePool(Pb(Pool { name: "bad name!".into(), ..Default::default() }));
        assert!(check(&writes(vec![bad])).is_err());
    }

    #[test]
    fn a_guarded_write_is_checked_as_the_write_it_guards() {
        let guarded = |guards: Vec<Guard>, cmd| Command::Guarded { guards, cmd: Box::new(cmd) };
        let drain = Command::SetBackendState { pool: "p".into(), address: "127.0.0.1:1".into(), state: 2 };
        assert!(check(&writes(vec![guarded(vec![Guard::KeepsABackend], drain.clone())])).is_ok());

        let health = Command::SetBackendHealth { pool: "p".into(), address: "127.0.0.1:1".into(), health: 2 };
        let e = check(&writes(vec![guarded(vec![Guard::KeepsABackend], health)])).unwrap_err();
        assert!(e.to_string().contains("internal"), "an internal command is no less internal guarded: {e}");
        let bad = Command::SetBackendState { pool: "bad name!".into(), address: "127.0.0.1:1".into(), state: 2 };
        assert!(check(&writes(vec![guarded(vec![], bad)])).is_err());

        let nested = guarded(vec![], guarded(vec![Guard::KeepsABackend], drain.clone()));
        let many = guarded(vec![Guard::KeepsABackend; MAX_GUARDS + 1], drain);
        for cmd in [nested, many] {
            let e = check(&writes(vec![cmd])).unwrap_err();
            assert!(e.to_string().contains("at most 4 guards and no guarded write"), "{e}");
        }
    }
}
