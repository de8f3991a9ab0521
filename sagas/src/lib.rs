//! Process managers of the engine: the checkout saga and its compensations.

pub mod gateway;
pub mod psp;

pub use gateway::{
    Authorization, AuthorizeRequest, GatewayError, MoneyMovement, PaymentGateway, Receipt,
};
