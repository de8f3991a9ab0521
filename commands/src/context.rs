//! Who sent a command and why: copied into the metadata of every event the command
//! writes, so the log answers "who did this, as part of what" for each event.

use eventstore::Metadata;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandContext {
    /// Identifies this command: a repeat with the same id gets the first outcome.
    pub command_id: Uuid,
    /// Shared by every command of one business flow (a checkout, a flash-sale order).
    pub correlation_id: Uuid,
    /// The command or event that caused this command, if any.
    pub causation_id: Option<Uuid>,
    /// The principal, e.g. `customer:42` or `system:checkout`.
    pub actor: String,
    /// The request this command answers, by key (an HTTP `Idempotency-Key`'s row
    /// id), if its first answer may already be kept: every append of the command
    /// carries it as a guard ([`eventstore::AppendRequest::guards`]) and is refused
    /// with `StoreError::AlreadyAnswered` if it is, so the caller need not look the
    /// key up before running the command.
    pub guard: Option<Uuid>,
}

impl CommandContext {
    /// A new command by `actor` that starts its own flow.
    pub fn new(actor: impl Into<String>) -> Self {
        let id = Uuid::now_v7();
        CommandContext {
            command_id: id,
            correlation_id: id,
            causation_id: None,
            actor: actor.into(),
            guard: None,
        }
    }

    /// A command that this one causes as its step `step`. The id is derived from this
    /// command's id and the step, so re-running the step after a crash or a retry
    /// sends the same command id and the store answers with the first outcome.
    pub fn follow_up(&self, step: &str) -> Self {
        CommandContext {
            command_id: Uuid::new_v5(&self.command_id, step.as_bytes()),
            correlation_id: self.correlation_id,
            causation_id: Some(self.command_id),
            actor: self.actor.clone(),
            guard: self.guard,
        }
    }

    pub(crate) fn metadata(&self) -> Metadata {
        Metadata {
            command_id: Some(self.command_id),
            correlation_id: Some(self.correlation_id),
            causation_id: self.causation_id,
            actor: Some(self.actor.clone()),
            custom: serde_json::Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follow_up_keeps_the_flow_and_derives_a_stable_id() {
        let first = CommandContext::new("customer:7");
        let step = first.follow_up("abandon-guest-cart");
        assert_eq!(step.correlation_id, first.correlation_id);
        assert_eq!(step.causation_id, Some(first.command_id));
        assert_eq!(
            step.command_id,
            first.follow_up("abandon-guest-cart").command_id
        );
        assert_ne!(step.command_id, first.follow_up("other").command_id);
        assert_eq!(step.actor, "customer:7");
    }
}
