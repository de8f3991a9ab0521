//! The domain's rules as specifications, one module per aggregate, plus property tests
//! that drive each aggregate with random command sequences. One test binary keeps
//! link time down.

mod cart;
mod errors;
mod events;
mod inventory;
mod order;
mod payment;
mod product;
mod properties;
mod support;
