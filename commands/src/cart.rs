//! Cart commands as a client may send them: without prices. A line's unit price is
//! read from the Product aggregate when the line is added, in the cart's currency;
//! a merge takes the guest cart's lines from its stream.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use domain::{
    Cart, CartCommand, CartEvent, CartId, CartOwner, CartStatus, Currency, DomainError, Money,
    OrderId, Product, ProductId, Quantity, Sku,
};
use serde::{Deserialize, Serialize};

use crate::{CommandContext, CommandError, Commands, Committed};

/// Most carts whose facts are remembered; past it the memory starts over.
pub const CART_FACTS_MAX: usize = 100_000;

/// What never changes about a cart once it is created: who owns it and its currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CartFacts {
    pub owner: CartOwner,
    pub currency: Currency,
}

/// The facts of the carts seen lately, so that neither the check of who may change a
/// cart nor the pricing of a line asks the cart's stream on every command. Facts are
/// fixed when a cart is created, so an entry can never be wrong, only missing.
#[derive(Default)]
pub(crate) struct CartFactsMemory {
    facts: Mutex<HashMap<CartId, CartFacts>>,
}

impl CartFactsMemory {
    fn lock(&self) -> MutexGuard<'_, HashMap<CartId, CartFacts>> {
        // Each holder does one map operation: a panic cannot leave it half-updated.
        self.facts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, cart_id: CartId) -> Option<CartFacts> {
        self.lock().get(&cart_id).copied()
    }

    fn remember(&self, cart_id: CartId, facts: CartFacts) {
        let mut known = self.lock();
        if known.len() >= CART_FACTS_MAX {
            known.clear();
        }
        known.insert(cart_id, facts);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CartAction {
    Create {
        cart_id: CartId,
        owner: CartOwner,
        currency: Currency,
    },
    /// Adds `quantity` of a SKU of a published product, at its catalog price.
    AddItem {
        cart_id: CartId,
        product_id: ProductId,
        sku: Sku,
        quantity: Quantity,
    },
    ChangeQuantity {
        cart_id: CartId,
        sku: Sku,
        quantity: Quantity,
    },
    RemoveLine {
        cart_id: CartId,
        sku: Sku,
    },
    /// The owner of `cart_id` signed in holding the open guest cart `guest_cart_id`:
    /// its lines move into `cart_id` (same SKU: the larger quantity wins) and the
    /// guest cart is abandoned.
    MergeGuestCart {
        cart_id: CartId,
        guest_cart_id: CartId,
    },
    CheckOut {
        cart_id: CartId,
    },
    Reopen {
        cart_id: CartId,
    },
    Abandon {
        cart_id: CartId,
    },
    Close {
        cart_id: CartId,
        order_id: OrderId,
    },
}

impl Commands {
    /// The owner and currency of `cart_id` (`None`: no such cart), from memory once
    /// known. They never change once the cart is created, so the state this process
    /// holds answers; a cart it has not seen created is read from the log.
    pub async fn cart_facts(&self, cart_id: CartId) -> Result<Option<CartFacts>, CommandError> {
        if let Some(facts) = self.cart_facts.get(cart_id) {
            return Ok(Some(facts));
        }
        let facts = |cart: &Cart| {
            cart.owner()
                .zip(cart.currency())
                .map(|(owner, currency)| CartFacts { owner, currency })
        };
        let mut found = facts(&self.carts.peek(&Cart::stream_id(&cart_id)).await?.state);
        if found.is_none() {
            found = facts(&self.load_cart(cart_id).await?.state);
        }
        if let Some(found) = found {
            self.cart_facts.remember(cart_id, found);
        }
        Ok(found)
    }

    pub async fn cart(
        &self,
        action: CartAction,
        context: &CommandContext,
    ) -> Result<Committed<CartEvent>, CommandError> {
        let command = match action {
            CartAction::Create {
                cart_id,
                owner,
                currency,
            } => {
                let created = self
                    .carts
                    .execute(
                        CartCommand::CreateCart {
                            cart_id,
                            owner,
                            currency,
                        },
                        context,
                    )
                    .await?;
                // A repeat of a command id is answered with the first outcome, which
                // may have created the cart otherwise: only a create that wrote its
                // event says what the cart is.
                if !created.replayed {
                    self.cart_facts
                        .remember(cart_id, CartFacts { owner, currency });
                }
                return Ok(created);
            }
            CartAction::AddItem {
                cart_id,
                product_id,
                sku,
                quantity,
            } => {
                return self
                    .add_item(cart_id, product_id, sku, quantity, context)
                    .await
            }
            CartAction::ChangeQuantity {
                cart_id,
                sku,
                quantity,
            } => CartCommand::ChangeQuantity {
                cart_id,
                sku,
                quantity,
            },
            CartAction::RemoveLine { cart_id, sku } => CartCommand::RemoveLine { cart_id, sku },
            CartAction::MergeGuestCart {
                cart_id,
                guest_cart_id,
            } => return self.merge_guest_cart(cart_id, guest_cart_id, context).await,
            CartAction::CheckOut { cart_id } => CartCommand::CheckOut { cart_id },
            CartAction::Reopen { cart_id } => CartCommand::Reopen { cart_id },
            CartAction::Abandon { cart_id } => CartCommand::Abandon { cart_id },
            CartAction::Close { cart_id, order_id } => CartCommand::Close { cart_id, order_id },
        };
        self.carts.execute(command, context).await
    }

    /// Prices the line from the catalog as this process holds it, and appends it
    /// with the product at the version read as a precondition: no round trip to ask
    /// whether the product is current, and a price changed meanwhile (by another
    /// process) fails the append, after which the product is read from the log and
    /// the line priced again. A refusal is only given on a product read from the
    /// log.
    async fn add_item(
        &self,
        cart_id: CartId,
        product_id: ProductId,
        sku: Sku,
        quantity: Quantity,
        context: &CommandContext,
    ) -> Result<Committed<CartEvent>, CommandError> {
        let currency = self
            .cart_facts(cart_id)
            .await?
            .ok_or(DomainError::NotFound { aggregate: "cart" })?
            .currency;
        self.carts
            .execute_decided_on(
                &self.products,
                &Product::stream_id(&product_id),
                context,
                |product| {
                    Ok(CartCommand::AddLine {
                        cart_id,
                        sku: sku.clone(),
                        quantity,
                        unit_price: catalog_price(product, product_id, &sku, currency)?,
                    })
                },
            )
            .await
    }

    async fn merge_guest_cart(
        &self,
        cart_id: CartId,
        guest_cart_id: CartId,
        context: &CommandContext,
    ) -> Result<Committed<CartEvent>, CommandError> {
        let guest = self.load_cart(guest_cart_id).await?.state;
        match (guest.owner(), guest.status()) {
            (Some(CartOwner::Guest(_)), Some(CartStatus::Open)) => {}
            (Some(CartOwner::Guest(_)), Some(status)) => {
                return Err(DomainError::CartLocked {
                    status: status.as_str(),
                }
                .into())
            }
            (Some(CartOwner::Customer(_)), _) => {
                return Err(DomainError::Invalid {
                    field: "guest_cart_id",
                    reason: "is a customer's cart".into(),
                }
                .into())
            }
            (None, _) | (_, None) => {
                return Err(DomainError::NotFound { aggregate: "cart" }.into());
            }
        }
        let merged = self
            .carts
            .execute(
                CartCommand::MergeGuestCart {
                    cart_id,
                    guest_cart_id,
                    lines: guest.lines().to_vec(),
                },
                context,
            )
            .await?;
        // Not atomic with the merge (two streams). The follow-up has a command id
        // derived from the merge's, so a caller retrying the whole merge after a
        // failure here repeats neither step.
        self.carts
            .execute(
                CartCommand::Abandon {
                    cart_id: guest_cart_id,
                },
                &context.follow_up("abandon-merged-guest-cart"),
            )
            .await?;
        Ok(merged)
    }
}

/// The unit price of `sku` for a cart in `currency`: the SKU must belong to the
/// product, the product must be on sale, and it must have a price in that currency
/// (the SKU's own, else the product's).
pub(crate) fn catalog_price(
    product: &Product,
    product_id: ProductId,
    sku: &Sku,
    currency: Currency,
) -> Result<Money, CommandError> {
    let Some(status) = product.status() else {
        return Err(DomainError::NotFound {
            aggregate: "product",
        }
        .into());
    };
    if !product.skus().iter().any(|s| &s.sku == sku) {
        return Err(DomainError::UnknownSku { sku: sku.clone() }.into());
    }
    if !product.is_sellable() {
        return Err(CommandError::ProductNotSellable {
            product_id,
            status: status.as_str(),
        });
    }
    product
        .price_for(sku, currency)
        .ok_or_else(|| CommandError::PriceMissing {
            sku: sku.clone(),
            currency,
        })
}
