//! A shopping cart in one currency, owned by a guest or a customer. Lines change only
//! while the cart is `open`; `CheckOut` locks it while the order goes through, and the
//! cart then ends `closed` (order confirmed), goes back to `open` (`Reopen`, the order
//! failed) or is `abandoned`. Unit prices come from the catalog through the command
//! handler, never from the client.

use serde::{Deserialize, Serialize};

use crate::line_item::{check_unit_price, sum};
use crate::{
    codec, Aggregate, CartId, Currency, CustomerId, DecodeError, DomainError, DomainEvent,
    GuestToken, LineItem, Money, OrderId, Quantity, Sku,
};

pub const MAX_CART_LINES: u32 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum CartOwner {
    Guest(GuestToken),
    Customer(CustomerId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CartStatus {
    Open,
    CheckedOut,
    Abandoned,
    Closed,
}

impl CartStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::CheckedOut => "checked_out",
            Self::Abandoned => "abandoned",
            Self::Closed => "closed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CartCommand {
    CreateCart {
        cart_id: CartId,
        owner: CartOwner,
        currency: Currency,
    },
    /// Adds `quantity` units; a SKU already in the cart grows its line (and takes the
    /// new unit price) instead of getting a second one.
    AddLine {
        cart_id: CartId,
        sku: Sku,
        quantity: Quantity,
        unit_price: Money,
    },
    /// Sets a line's quantity (use `RemoveLine` for zero).
    ChangeQuantity {
        cart_id: CartId,
        sku: Sku,
        quantity: Quantity,
    },
    RemoveLine {
        cart_id: CartId,
        sku: Sku,
    },
    /// A guest signed in: fold the guest cart's lines into this customer cart. For a
    /// SKU in both, the larger quantity wins and this cart's unit price is kept.
    MergeGuestCart {
        cart_id: CartId,
        guest_cart_id: CartId,
        lines: Vec<LineItem>,
    },
    CheckOut {
        cart_id: CartId,
    },
    /// The order for a checked-out cart failed: the cart is editable again.
    Reopen {
        cart_id: CartId,
    },
    Abandon {
        cart_id: CartId,
    },
    /// The order for a checked-out cart was confirmed.
    Close {
        cart_id: CartId,
        order_id: OrderId,
    },
}

impl CartCommand {
    pub fn cart_id(&self) -> CartId {
        match self {
            Self::CreateCart { cart_id, .. }
            | Self::AddLine { cart_id, .. }
            | Self::ChangeQuantity { cart_id, .. }
            | Self::RemoveLine { cart_id, .. }
            | Self::MergeGuestCart { cart_id, .. }
            | Self::CheckOut { cart_id }
            | Self::Reopen { cart_id }
            | Self::Abandon { cart_id }
            | Self::Close { cart_id, .. } => *cart_id,
        }
    }

    pub fn stream_id(&self) -> String {
        Cart::stream_id(&self.cart_id())
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::CreateCart { .. } => "CreateCart",
            Self::AddLine { .. } => "AddLine",
            Self::ChangeQuantity { .. } => "ChangeQuantity",
            Self::RemoveLine { .. } => "RemoveLine",
            Self::MergeGuestCart { .. } => "MergeGuestCart",
            Self::CheckOut { .. } => "CheckOut",
            Self::Reopen { .. } => "Reopen",
            Self::Abandon { .. } => "Abandon",
            Self::Close { .. } => "Close",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CartEvent {
    CartCreated {
        cart_id: CartId,
        owner: CartOwner,
        currency: Currency,
    },
    /// `quantity` units were added; an existing line for the SKU grows by that much
    /// and takes `unit_price`.
    CartLineAdded {
        sku: Sku,
        quantity: Quantity,
        unit_price: Money,
    },
    CartLineQuantityChanged {
        sku: Sku,
        quantity: Quantity,
    },
    CartLineRemoved {
        sku: Sku,
    },
    /// `lines` are the lines as they are after the merge, for the SKUs the merge
    /// changed (new lines, or lines whose quantity grew); each replaces any line for
    /// its SKU.
    GuestCartMerged {
        guest_cart_id: CartId,
        lines: Vec<LineItem>,
    },
    CartCheckedOut {
        total: Money,
    },
    CartReopened {},
    CartAbandoned {},
    CartClosed {
        order_id: OrderId,
    },
}

impl CartEvent {
    /// Every event type with its current schema version.
    pub const TYPES: &'static [(&'static str, u32)] = &[
        ("CartCreated", 1),
        ("CartLineAdded", 1),
        ("CartLineQuantityChanged", 1),
        ("CartLineRemoved", 1),
        ("GuestCartMerged", 1),
        ("CartCheckedOut", 1),
        ("CartReopened", 1),
        ("CartAbandoned", 1),
        ("CartClosed", 1),
    ];
}

impl DomainEvent for CartEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::CartCreated { .. } => "CartCreated",
            Self::CartLineAdded { .. } => "CartLineAdded",
            Self::CartLineQuantityChanged { .. } => "CartLineQuantityChanged",
            Self::CartLineRemoved { .. } => "CartLineRemoved",
            Self::GuestCartMerged { .. } => "GuestCartMerged",
            Self::CartCheckedOut { .. } => "CartCheckedOut",
            Self::CartReopened {} => "CartReopened",
            Self::CartAbandoned {} => "CartAbandoned",
            Self::CartClosed { .. } => "CartClosed",
        }
    }

    fn schema_version(&self) -> u32 {
        match self {
            Self::CartCreated { .. }
            | Self::CartLineAdded { .. }
            | Self::CartLineQuantityChanged { .. }
            | Self::CartLineRemoved { .. }
            | Self::GuestCartMerged { .. }
            | Self::CartCheckedOut { .. }
            | Self::CartReopened {}
            | Self::CartAbandoned {}
            | Self::CartClosed { .. } => 1,
        }
    }

    fn to_data(&self) -> serde_json::Value {
        codec::to_data(self)
    }

    fn from_stored(
        event_type: &str,
        schema_version: u32,
        data: serde_json::Value,
    ) -> Result<Self, DecodeError> {
        codec::from_stored(
            Self::TYPES,
            event_type,
            schema_version,
            data,
            codec::no_upcasts,
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CartData {
    id: CartId,
    owner: CartOwner,
    currency: Currency,
    status: CartStatus,
    /// In the order the SKUs were first added; at most one line per SKU.
    lines: Vec<LineItem>,
}

impl CartData {
    fn line(&self, sku: &Sku) -> Option<&LineItem> {
        self.lines.iter().find(|l| &l.sku == sku)
    }

    fn upsert(&mut self, line: LineItem) {
        match self.lines.iter_mut().find(|l| l.sku == line.sku) {
            Some(existing) => *existing = line,
            None => self.lines.push(line),
        }
    }
}

/// The state of one `cart-<uuid>` stream; empty until `CartCreated`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cart {
    data: Option<CartData>,
}

impl Cart {
    pub fn stream_id(id: &CartId) -> String {
        crate::uuid_stream_name(Self::CATEGORY, id.as_uuid())
    }

    pub fn id(&self) -> Option<CartId> {
        self.data.as_ref().map(|d| d.id)
    }
    pub fn owner(&self) -> Option<CartOwner> {
        self.data.as_ref().map(|d| d.owner)
    }
    pub fn currency(&self) -> Option<Currency> {
        self.data.as_ref().map(|d| d.currency)
    }
    pub fn status(&self) -> Option<CartStatus> {
        self.data.as_ref().map(|d| d.status)
    }
    pub fn lines(&self) -> &[LineItem] {
        self.data.as_ref().map_or(&[], |d| d.lines.as_slice())
    }
    pub fn line(&self, sku: &Sku) -> Option<&LineItem> {
        self.data.as_ref()?.line(sku)
    }

    /// The sum of the lines. `decide` refuses every change that would make this
    /// overflow, so for an existing cart it is always `Ok`.
    pub fn total(&self) -> Result<Money, DomainError> {
        let data = self.data.as_ref().ok_or(DomainError::NotFound {
            aggregate: Self::CATEGORY,
        })?;
        sum(data.currency, &data.lines)
    }

    fn existing(&self, command: &CartCommand) -> Result<&CartData, DomainError> {
        let data = self.data.as_ref().ok_or(DomainError::NotFound {
            aggregate: Self::CATEGORY,
        })?;
        if data.id != command.cart_id() {
            return Err(DomainError::WrongStream {
                expected: Self::stream_id(&data.id),
                actual: command.stream_id(),
            });
        }
        Ok(data)
    }

    /// The cart, if its lines may change.
    fn open(&self, command: &CartCommand) -> Result<&CartData, DomainError> {
        let data = self.existing(command)?;
        match data.status {
            CartStatus::Open => Ok(data),
            CartStatus::CheckedOut | CartStatus::Abandoned | CartStatus::Closed => {
                Err(DomainError::CartLocked {
                    status: data.status.as_str(),
                })
            }
        }
    }

    /// Refuses an event whose resulting cart would break a bound: too many lines or
    /// a total that overflows. The cart is small (at most `MAX_CART_LINES`), so trying
    /// the event on a copy is cheap and keeps the rule in one place.
    fn checked(&self, event: CartEvent) -> Result<Vec<CartEvent>, DomainError> {
        let after = self.clone().evolve(&event);
        if after.lines().len() > MAX_CART_LINES as usize {
            return Err(DomainError::LimitExceeded {
                limit: "cart_lines",
                max: MAX_CART_LINES,
            });
        }
        after.total()?;
        Ok(vec![event])
    }

    fn transition_error(data: &CartData, command: &CartCommand) -> DomainError {
        DomainError::InvalidTransition {
            from: data.status.as_str(),
            command: command.name(),
        }
    }
}

fn check_price(currency: Currency, unit_price: Money) -> Result<(), DomainError> {
    Money::zero(currency).same_currency(unit_price)?;
    check_unit_price(unit_price)
}

impl Aggregate for Cart {
    type Command = CartCommand;
    type Event = CartEvent;
    const CATEGORY: &'static str = "cart";

    fn decide(&self, command: &CartCommand) -> Result<Vec<CartEvent>, DomainError> {
        match command {
            CartCommand::CreateCart {
                cart_id,
                owner,
                currency,
            } => {
                if self.data.is_some() {
                    return Err(DomainError::AlreadyExists {
                        aggregate: Self::CATEGORY,
                    });
                }
                Ok(vec![CartEvent::CartCreated {
                    cart_id: *cart_id,
                    owner: *owner,
                    currency: *currency,
                }])
            }
            CartCommand::AddLine {
                sku,
                quantity,
                unit_price,
                ..
            } => {
                let data = self.open(command)?;
                check_price(data.currency, *unit_price)?;
                if let Some(line) = data.line(sku) {
                    line.quantity.checked_add(*quantity)?;
                }
                self.checked(CartEvent::CartLineAdded {
                    sku: sku.clone(),
                    quantity: *quantity,
                    unit_price: *unit_price,
                })
            }
            CartCommand::ChangeQuantity { sku, quantity, .. } => {
                let data = self.open(command)?;
                if data.line(sku).is_none() {
                    return Err(DomainError::LineNotFound { sku: sku.clone() });
                }
                self.checked(CartEvent::CartLineQuantityChanged {
                    sku: sku.clone(),
                    quantity: *quantity,
                })
            }
            CartCommand::RemoveLine { sku, .. } => {
                let data = self.open(command)?;
                if data.line(sku).is_none() {
                    return Err(DomainError::LineNotFound { sku: sku.clone() });
                }
                Ok(vec![CartEvent::CartLineRemoved { sku: sku.clone() }])
            }
            CartCommand::MergeGuestCart {
                cart_id,
                guest_cart_id,
                lines,
            } => {
                let data = self.open(command)?;
                if guest_cart_id == cart_id {
                    return Err(DomainError::invalid(
                        "guest_cart_id",
                        "a cart cannot absorb itself",
                    ));
                }
                match data.owner {
                    CartOwner::Customer(_) => {}
                    CartOwner::Guest(_) => {
                        return Err(DomainError::invalid(
                            "owner",
                            "only a customer's cart can absorb a guest cart",
                        ))
                    }
                }
                if lines.len() > MAX_CART_LINES as usize {
                    return Err(DomainError::LimitExceeded {
                        limit: "cart_lines",
                        max: MAX_CART_LINES,
                    });
                }
                let mut merged: Vec<LineItem> = Vec::with_capacity(lines.len());
                for guest in lines {
                    check_price(data.currency, guest.unit_price)?;
                    if let Some(seen) = merged.iter_mut().find(|m| m.sku == guest.sku) {
                        // The same SKU twice in the guest lines: the larger one wins,
                        // as it would against a line of this cart.
                        seen.quantity = seen.quantity.max(guest.quantity);
                        continue;
                    }
                    match data.line(&guest.sku) {
                        Some(own) if own.quantity >= guest.quantity => {}
                        Some(own) => merged.push(LineItem {
                            quantity: guest.quantity,
                            ..own.clone()
                        }),
                        None => merged.push(guest.clone()),
                    }
                }
                self.checked(CartEvent::GuestCartMerged {
                    guest_cart_id: *guest_cart_id,
                    lines: merged,
                })
            }
            CartCommand::CheckOut { .. } => {
                let data = self.existing(command)?;
                match data.status {
                    CartStatus::Open => {}
                    CartStatus::CheckedOut | CartStatus::Abandoned | CartStatus::Closed => {
                        return Err(Self::transition_error(data, command))
                    }
                }
                if data.lines.is_empty() {
                    return Err(DomainError::CartEmpty);
                }
                Ok(vec![CartEvent::CartCheckedOut {
                    total: self.total()?,
                }])
            }
            CartCommand::Reopen { .. } => {
                let data = self.existing(command)?;
                match data.status {
                    CartStatus::CheckedOut => Ok(vec![CartEvent::CartReopened {}]),
                    CartStatus::Open | CartStatus::Abandoned | CartStatus::Closed => {
                        Err(Self::transition_error(data, command))
                    }
                }
            }
            CartCommand::Abandon { .. } => {
                let data = self.existing(command)?;
                match data.status {
                    CartStatus::Open => Ok(vec![CartEvent::CartAbandoned {}]),
                    CartStatus::CheckedOut | CartStatus::Abandoned | CartStatus::Closed => {
                        Err(Self::transition_error(data, command))
                    }
                }
            }
            CartCommand::Close { order_id, .. } => {
                let data = self.existing(command)?;
                match data.status {
                    CartStatus::CheckedOut => Ok(vec![CartEvent::CartClosed {
                        order_id: *order_id,
                    }]),
                    CartStatus::Open | CartStatus::Abandoned | CartStatus::Closed => {
                        Err(Self::transition_error(data, command))
                    }
                }
            }
        }
    }

    fn evolve(mut self, event: &CartEvent) -> Self {
        if let CartEvent::CartCreated {
            cart_id,
            owner,
            currency,
        } = event
        {
            self.data = Some(CartData {
                id: *cart_id,
                owner: *owner,
                currency: *currency,
                status: CartStatus::Open,
                lines: Vec::new(),
            });
            return self;
        }
        let Some(data) = &mut self.data else {
            return self;
        };
        match event {
            CartEvent::CartCreated { .. } => {}
            CartEvent::CartLineAdded {
                sku,
                quantity,
                unit_price,
            } => {
                match data.lines.iter_mut().find(|l| &l.sku == sku) {
                    Some(line) => {
                        // decide refused a sum past the bound; keep the old quantity
                        // rather than panic on a log written by a buggy build.
                        line.quantity = line
                            .quantity
                            .checked_add(*quantity)
                            .unwrap_or(line.quantity);
                        line.unit_price = *unit_price;
                    }
                    None => data.lines.push(LineItem {
                        sku: sku.clone(),
                        quantity: *quantity,
                        unit_price: *unit_price,
                    }),
                }
            }
            CartEvent::CartLineQuantityChanged { sku, quantity } => {
                if let Some(line) = data.lines.iter_mut().find(|l| &l.sku == sku) {
                    line.quantity = *quantity;
                }
            }
            CartEvent::CartLineRemoved { sku } => data.lines.retain(|l| &l.sku != sku),
            CartEvent::GuestCartMerged { lines, .. } => {
                for line in lines {
                    data.upsert(line.clone());
                }
            }
            CartEvent::CartCheckedOut { .. } => data.status = CartStatus::CheckedOut,
            CartEvent::CartReopened {} => data.status = CartStatus::Open,
            CartEvent::CartAbandoned {} => data.status = CartStatus::Abandoned,
            CartEvent::CartClosed { .. } => data.status = CartStatus::Closed,
        }
        self
    }
}
