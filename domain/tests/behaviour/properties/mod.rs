//! Random command sequences against each aggregate. Commands are drawn from a small
//! alphabet (a few SKUs, warehouses, ids and amounts) so that they collide and reach
//! the interesting states. After every accepted command the aggregate's invariants
//! must hold, and the state rebuilt from `Default` out of the stored form of every
//! event so far must equal the live state.

mod cart;
mod inventory;
mod order;
mod payment;
mod product;

use std::fmt::Debug;

use domain::Aggregate;
use proptest::prelude::*;

use crate::support::stored;

/// Runs `commands`; `check(before, after, events)` sees every accepted command's
/// effect.
pub fn run<A>(commands: &[A::Command], mut check: impl FnMut(&A, &A, &[A::Event]))
where
    A: Aggregate + PartialEq + Debug,
    A::Event: Debug + PartialEq,
{
    let mut state = A::default();
    let mut replayed = A::default();
    for command in commands {
        let decision = state.decide(command);
        assert_eq!(decision, state.decide(command), "decide is deterministic");
        let Ok(events) = decision else { continue };
        let before = state.clone();
        for event in &events {
            state = state.evolve(event);
            replayed = replayed.evolve(&stored(event));
        }
        check(&before, &state, &events);
        assert_eq!(
            state, replayed,
            "replaying the stored events rebuilds the state"
        );
    }
}

/// A command history that opens with `opening` (usually the creating command, so the
/// rest of the run reaches past "not found") followed by up to `max` commands.
pub fn history<C: Clone + Debug>(
    opening: impl Strategy<Value = C>,
    command: impl Strategy<Value = C>,
    max: usize,
) -> impl Strategy<Value = Vec<C>> {
    (opening, prop::collection::vec(command, 0..max)).prop_map(|(first, rest)| {
        let mut all = Vec::with_capacity(rest.len() + 1);
        all.push(first);
        all.extend(rest);
        all
    })
}
