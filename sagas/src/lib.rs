//! Process managers of the engine: the checkout saga and its compensations.

pub mod gateway;

pub use gateway::{
    Authorization, AuthorizeRequest, GatewayError, MoneyMovement, PaymentGateway, Receipt,
};
