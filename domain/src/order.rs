//! An order from placement to delivery. The happy path is
//! `placed -> stock_reserved -> payment_authorized -> confirmed -> shipped -> delivered`;
//! `Reject` (the system could not fulfil it: no stock, payment declined) is allowed up
//! to `payment_authorized`, `Cancel` (customer or staff) up to `confirmed`. Cancelled,
//! rejected and delivered orders take no further transitions. Each transition command
//! carries its business timestamp and the event records it; timestamps are not
//! checked for monotonicity, because clocks of different nodes may disagree slightly.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::line_item::{check_unit_price, sum};
use crate::{
    codec, text, Aggregate, CartId, CustomerId, DecodeError, DomainError, DomainEvent, LineItem,
    Money, OrderId, PaymentId, ReservationId, ShippingAddress,
};

pub const MAX_ORDER_LINES: u32 = 100;
const MAX_REASON_CHARS: usize = 500;
const MAX_TRACKING_NUMBER_CHARS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum OrderStatus {
    Placed,
    StockReserved,
    PaymentAuthorized,
    Confirmed,
    Shipped,
    Delivered,
    Cancelled { reason: String },
    Rejected { reason: String },
}

impl OrderStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Placed => "placed",
            Self::StockReserved => "stock_reserved",
            Self::PaymentAuthorized => "payment_authorized",
            Self::Confirmed => "confirmed",
            Self::Shipped => "shipped",
            Self::Delivered => "delivered",
            Self::Cancelled { .. } => "cancelled",
            Self::Rejected { .. } => "rejected",
        }
    }

    /// No command changes an order in a terminal status.
    pub fn is_terminal(&self) -> bool {
        match self {
            Self::Delivered | Self::Cancelled { .. } | Self::Rejected { .. } => true,
            Self::Placed
            | Self::StockReserved
            | Self::PaymentAuthorized
            | Self::Confirmed
            | Self::Shipped => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderCommand {
    PlaceOrder {
        order_id: OrderId,
        customer_id: CustomerId,
        cart_id: CartId,
        lines: Vec<LineItem>,
        shipping_address: ShippingAddress,
        placed_at: DateTime<Utc>,
    },
    /// Every line's stock is reserved; `reservations` are the ids to release if the
    /// order fails later.
    MarkStockReserved {
        order_id: OrderId,
        reservations: Vec<ReservationId>,
        at: DateTime<Utc>,
    },
    /// `amount` must equal the order total.
    MarkPaymentAuthorized {
        order_id: OrderId,
        payment_id: PaymentId,
        amount: Money,
        at: DateTime<Utc>,
    },
    Confirm {
        order_id: OrderId,
        at: DateTime<Utc>,
    },
    Ship {
        order_id: OrderId,
        tracking_number: Option<String>,
        at: DateTime<Utc>,
    },
    MarkDelivered {
        order_id: OrderId,
        at: DateTime<Utc>,
    },
    Cancel {
        order_id: OrderId,
        reason: String,
        at: DateTime<Utc>,
    },
    Reject {
        order_id: OrderId,
        reason: String,
        at: DateTime<Utc>,
    },
}

impl OrderCommand {
    pub fn order_id(&self) -> OrderId {
        match self {
            Self::PlaceOrder { order_id, .. }
            | Self::MarkStockReserved { order_id, .. }
            | Self::MarkPaymentAuthorized { order_id, .. }
            | Self::Confirm { order_id, .. }
            | Self::Ship { order_id, .. }
            | Self::MarkDelivered { order_id, .. }
            | Self::Cancel { order_id, .. }
            | Self::Reject { order_id, .. } => *order_id,
        }
    }

    pub fn stream_id(&self) -> String {
        Order::stream_id(&self.order_id())
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::PlaceOrder { .. } => "PlaceOrder",
            Self::MarkStockReserved { .. } => "MarkStockReserved",
            Self::MarkPaymentAuthorized { .. } => "MarkPaymentAuthorized",
            Self::Confirm { .. } => "Confirm",
            Self::Ship { .. } => "Ship",
            Self::MarkDelivered { .. } => "MarkDelivered",
            Self::Cancel { .. } => "Cancel",
            Self::Reject { .. } => "Reject",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderEvent {
    OrderPlaced {
        order_id: OrderId,
        customer_id: CustomerId,
        cart_id: CartId,
        lines: Vec<LineItem>,
        /// Boxed only to keep the other variants small; stored as a plain object.
        shipping_address: Box<ShippingAddress>,
        total: Money,
        placed_at: DateTime<Utc>,
    },
    OrderStockReserved {
        reservations: Vec<ReservationId>,
        at: DateTime<Utc>,
    },
    OrderPaymentAuthorized {
        payment_id: PaymentId,
        amount: Money,
        at: DateTime<Utc>,
    },
    OrderConfirmed {
        at: DateTime<Utc>,
    },
    OrderShipped {
        tracking_number: Option<String>,
        at: DateTime<Utc>,
    },
    OrderDelivered {
        at: DateTime<Utc>,
    },
    OrderCancelled {
        reason: String,
        at: DateTime<Utc>,
    },
    OrderRejected {
        reason: String,
        at: DateTime<Utc>,
    },
}

impl OrderEvent {
    /// Every event type with its current schema version.
    pub const TYPES: &'static [(&'static str, u32)] = &[
        ("OrderPlaced", 1),
        ("OrderStockReserved", 1),
        ("OrderPaymentAuthorized", 1),
        ("OrderConfirmed", 1),
        ("OrderShipped", 1),
        ("OrderDelivered", 1),
        ("OrderCancelled", 1),
        ("OrderRejected", 1),
    ];
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::OrderPlaced { .. } => "OrderPlaced",
            Self::OrderStockReserved { .. } => "OrderStockReserved",
            Self::OrderPaymentAuthorized { .. } => "OrderPaymentAuthorized",
            Self::OrderConfirmed { .. } => "OrderConfirmed",
            Self::OrderShipped { .. } => "OrderShipped",
            Self::OrderDelivered { .. } => "OrderDelivered",
            Self::OrderCancelled { .. } => "OrderCancelled",
            Self::OrderRejected { .. } => "OrderRejected",
        }
    }

    fn schema_version(&self) -> u32 {
        match self {
            Self::OrderPlaced { .. }
            | Self::OrderStockReserved { .. }
            | Self::OrderPaymentAuthorized { .. }
            | Self::OrderConfirmed { .. }
            | Self::OrderShipped { .. }
            | Self::OrderDelivered { .. }
            | Self::OrderCancelled { .. }
            | Self::OrderRejected { .. } => 1,
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
struct OrderData {
    id: OrderId,
    customer_id: CustomerId,
    cart_id: CartId,
    lines: Vec<LineItem>,
    shipping_address: ShippingAddress,
    total: Money,
    placed_at: DateTime<Utc>,
    status: OrderStatus,
    status_changed_at: DateTime<Utc>,
    reservations: Vec<ReservationId>,
    payment_id: Option<PaymentId>,
    tracking_number: Option<String>,
}

/// The state of one `order-<uuid>` stream; empty until `OrderPlaced`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    data: Option<OrderData>,
}

impl Order {
    pub fn stream_id(id: &OrderId) -> String {
        crate::uuid_stream_name(Self::CATEGORY, id.as_uuid())
    }

    pub fn id(&self) -> Option<OrderId> {
        self.data.as_ref().map(|d| d.id)
    }
    pub fn customer_id(&self) -> Option<CustomerId> {
        self.data.as_ref().map(|d| d.customer_id)
    }
    pub fn cart_id(&self) -> Option<CartId> {
        self.data.as_ref().map(|d| d.cart_id)
    }
    pub fn status(&self) -> Option<&OrderStatus> {
        self.data.as_ref().map(|d| &d.status)
    }
    pub fn lines(&self) -> &[LineItem] {
        self.data.as_ref().map_or(&[], |d| d.lines.as_slice())
    }
    /// The sum of the lines, fixed at placement.
    pub fn total(&self) -> Option<Money> {
        self.data.as_ref().map(|d| d.total)
    }
    pub fn shipping_address(&self) -> Option<&ShippingAddress> {
        self.data.as_ref().map(|d| &d.shipping_address)
    }
    pub fn placed_at(&self) -> Option<DateTime<Utc>> {
        self.data.as_ref().map(|d| d.placed_at)
    }
    /// When the order entered its current status.
    pub fn status_changed_at(&self) -> Option<DateTime<Utc>> {
        self.data.as_ref().map(|d| d.status_changed_at)
    }
    /// The stock reservations to release should the order fail.
    pub fn reservations(&self) -> &[ReservationId] {
        self.data
            .as_ref()
            .map_or(&[], |d| d.reservations.as_slice())
    }
    pub fn payment_id(&self) -> Option<PaymentId> {
        self.data.as_ref().and_then(|d| d.payment_id)
    }
    pub fn tracking_number(&self) -> Option<&str> {
        self.data
            .as_ref()
            .and_then(|d| d.tracking_number.as_deref())
    }

    fn existing(&self, command: &OrderCommand) -> Result<&OrderData, DomainError> {
        let data = self.data.as_ref().ok_or(DomainError::NotFound {
            aggregate: Self::CATEGORY,
        })?;
        if data.id != command.order_id() {
            return Err(DomainError::WrongStream {
                expected: Self::stream_id(&data.id),
                actual: command.stream_id(),
            });
        }
        Ok(data)
    }

    /// The order, if its status is one of `allowed` for `command`.
    fn in_status(
        &self,
        command: &OrderCommand,
        allowed: fn(&OrderStatus) -> bool,
    ) -> Result<&OrderData, DomainError> {
        let data = self.existing(command)?;
        if allowed(&data.status) {
            Ok(data)
        } else {
            Err(DomainError::InvalidTransition {
                from: data.status.as_str(),
                command: command.name(),
            })
        }
    }
}

fn check_lines(lines: &[LineItem]) -> Result<Money, DomainError> {
    let Some(first) = lines.first() else {
        return Err(DomainError::invalid(
            "lines",
            "an order needs at least one line",
        ));
    };
    if lines.len() > MAX_ORDER_LINES as usize {
        return Err(DomainError::LimitExceeded {
            limit: "order_lines",
            max: MAX_ORDER_LINES,
        });
    }
    for (i, line) in lines.iter().enumerate() {
        check_unit_price(line.unit_price)?;
        if lines[..i].iter().any(|earlier| earlier.sku == line.sku) {
            return Err(DomainError::DuplicateSku {
                sku: line.sku.clone(),
            });
        }
    }
    sum(first.unit_price.currency, lines)
}

fn check_reservations(reservations: &[ReservationId]) -> Result<(), DomainError> {
    if reservations.is_empty() {
        return Err(DomainError::invalid(
            "reservations",
            "at least one reservation",
        ));
    }
    if reservations.len() > MAX_ORDER_LINES as usize {
        return Err(DomainError::LimitExceeded {
            limit: "reservations",
            max: MAX_ORDER_LINES,
        });
    }
    for (i, id) in reservations.iter().enumerate() {
        if reservations[..i].contains(id) {
            return Err(DomainError::invalid(
                "reservations",
                format!("{id} appears twice"),
            ));
        }
    }
    Ok(())
}

impl Aggregate for Order {
    type Command = OrderCommand;
    type Event = OrderEvent;
    const CATEGORY: &'static str = "order";

    fn decide(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, DomainError> {
        use OrderStatus as S;
        match command {
            OrderCommand::PlaceOrder {
                order_id,
                customer_id,
                cart_id,
                lines,
                shipping_address,
                placed_at,
            } => {
                if self.data.is_some() {
                    return Err(DomainError::AlreadyExists {
                        aggregate: Self::CATEGORY,
                    });
                }
                let total = check_lines(lines)?;
                Ok(vec![OrderEvent::OrderPlaced {
                    order_id: *order_id,
                    customer_id: *customer_id,
                    cart_id: *cart_id,
                    lines: lines.clone(),
                    shipping_address: Box::new(shipping_address.clone()),
                    total,
                    placed_at: *placed_at,
                }])
            }
            OrderCommand::MarkStockReserved {
                reservations, at, ..
            } => {
                self.in_status(command, |s| matches!(s, S::Placed))?;
                check_reservations(reservations)?;
                Ok(vec![OrderEvent::OrderStockReserved {
                    reservations: reservations.clone(),
                    at: *at,
                }])
            }
            OrderCommand::MarkPaymentAuthorized {
                payment_id,
                amount,
                at,
                ..
            } => {
                // Only from stock_reserved, and no path leads back there: an order is
                // paid at most once.
                let data = self.in_status(command, |s| matches!(s, S::StockReserved))?;
                data.total.same_currency(*amount)?;
                if *amount != data.total {
                    return Err(DomainError::AmountMismatch {
                        expected: data.total,
                        actual: *amount,
                    });
                }
                Ok(vec![OrderEvent::OrderPaymentAuthorized {
                    payment_id: *payment_id,
                    amount: *amount,
                    at: *at,
                }])
            }
            OrderCommand::Confirm { at, .. } => {
                self.in_status(command, |s| matches!(s, S::PaymentAuthorized))?;
                Ok(vec![OrderEvent::OrderConfirmed { at: *at }])
            }
            OrderCommand::Ship {
                tracking_number,
                at,
                ..
            } => {
                self.in_status(command, |s| matches!(s, S::Confirmed))?;
                if let Some(tracking_number) = tracking_number {
                    text::required(
                        "tracking_number",
                        tracking_number,
                        MAX_TRACKING_NUMBER_CHARS,
                    )?;
                }
                Ok(vec![OrderEvent::OrderShipped {
                    tracking_number: tracking_number.clone(),
                    at: *at,
                }])
            }
            OrderCommand::MarkDelivered { at, .. } => {
                self.in_status(command, |s| matches!(s, S::Shipped))?;
                Ok(vec![OrderEvent::OrderDelivered { at: *at }])
            }
            OrderCommand::Cancel { reason, at, .. } => {
                self.in_status(command, |s| {
                    matches!(
                        s,
                        S::Placed | S::StockReserved | S::PaymentAuthorized | S::Confirmed
                    )
                })?;
                text::required("reason", reason, MAX_REASON_CHARS)?;
                Ok(vec![OrderEvent::OrderCancelled {
                    reason: reason.clone(),
                    at: *at,
                }])
            }
            OrderCommand::Reject { reason, at, .. } => {
                self.in_status(command, |s| {
                    matches!(s, S::Placed | S::StockReserved | S::PaymentAuthorized)
                })?;
                text::required("reason", reason, MAX_REASON_CHARS)?;
                Ok(vec![OrderEvent::OrderRejected {
                    reason: reason.clone(),
                    at: *at,
                }])
            }
        }
    }

    fn evolve(mut self, event: &OrderEvent) -> Self {
        if let OrderEvent::OrderPlaced {
            order_id,
            customer_id,
            cart_id,
            lines,
            shipping_address,
            total,
            placed_at,
        } = event
        {
            self.data = Some(OrderData {
                id: *order_id,
                customer_id: *customer_id,
                cart_id: *cart_id,
                lines: lines.clone(),
                shipping_address: ShippingAddress::clone(shipping_address),
                total: *total,
                placed_at: *placed_at,
                status: OrderStatus::Placed,
                status_changed_at: *placed_at,
                reservations: Vec::new(),
                payment_id: None,
                tracking_number: None,
            });
            return self;
        }
        let Some(data) = &mut self.data else {
            return self;
        };
        let (status, at) = match event {
            OrderEvent::OrderPlaced { .. } => return self,
            OrderEvent::OrderStockReserved { reservations, at } => {
                data.reservations = reservations.clone();
                (OrderStatus::StockReserved, at)
            }
            OrderEvent::OrderPaymentAuthorized { payment_id, at, .. } => {
                data.payment_id = Some(*payment_id);
                (OrderStatus::PaymentAuthorized, at)
            }
            OrderEvent::OrderConfirmed { at } => (OrderStatus::Confirmed, at),
            OrderEvent::OrderShipped {
                tracking_number,
                at,
            } => {
                data.tracking_number = tracking_number.clone();
                (OrderStatus::Shipped, at)
            }
            OrderEvent::OrderDelivered { at } => (OrderStatus::Delivered, at),
            OrderEvent::OrderCancelled { reason, at } => (
                OrderStatus::Cancelled {
                    reason: reason.clone(),
                },
                at,
            ),
            OrderEvent::OrderRejected { reason, at } => (
                OrderStatus::Rejected {
                    reason: reason.clone(),
                },
                at,
            ),
        };
        data.status = status;
        data.status_changed_at = *at;
        self
    }
}
