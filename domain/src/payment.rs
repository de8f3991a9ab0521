//! One payment for one order, as the provider reported it: authorized (or declined),
//! then captured at most once for at most the authorized amount, or voided before
//! capture; after capture, refunded in parts whose sum never exceeds the captured
//! amount. A declined or voided payment takes no further commands.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    codec, text, Aggregate, DecodeError, DomainError, DomainEvent, Money, OrderId, PaymentId,
    RefundId,
};

pub const MAX_REFUNDS_PER_PAYMENT: u32 = 100;
const MAX_PROVIDER_REF_CHARS: usize = 128;
const MAX_REASON_CHARS: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Authorized,
    Declined,
    Captured,
    Voided,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authorized => "authorized",
            Self::Declined => "declined",
            Self::Captured => "captured",
            Self::Voided => "voided",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentCommand {
    /// The provider authorized `amount`; `provider_ref` is its id for the payment.
    Authorize {
        payment_id: PaymentId,
        order_id: OrderId,
        amount: Money,
        provider_ref: String,
        at: DateTime<Utc>,
    },
    /// The provider declined the authorization.
    RecordDecline {
        payment_id: PaymentId,
        order_id: OrderId,
        amount: Money,
        provider_ref: String,
        reason: String,
        at: DateTime<Utc>,
    },
    Capture {
        payment_id: PaymentId,
        amount: Money,
        at: DateTime<Utc>,
    },
    Void {
        payment_id: PaymentId,
        at: DateTime<Utc>,
    },
    Refund {
        payment_id: PaymentId,
        refund_id: RefundId,
        amount: Money,
        at: DateTime<Utc>,
    },
}

impl PaymentCommand {
    pub fn payment_id(&self) -> PaymentId {
        match self {
            Self::Authorize { payment_id, .. }
            | Self::RecordDecline { payment_id, .. }
            | Self::Capture { payment_id, .. }
            | Self::Void { payment_id, .. }
            | Self::Refund { payment_id, .. } => *payment_id,
        }
    }

    pub fn stream_id(&self) -> String {
        Payment::stream_id(&self.payment_id())
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Authorize { .. } => "Authorize",
            Self::RecordDecline { .. } => "RecordDecline",
            Self::Capture { .. } => "Capture",
            Self::Void { .. } => "Void",
            Self::Refund { .. } => "Refund",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentEvent {
    PaymentAuthorized {
        payment_id: PaymentId,
        order_id: OrderId,
        amount: Money,
        provider_ref: String,
        at: DateTime<Utc>,
    },
    PaymentDeclined {
        payment_id: PaymentId,
        order_id: OrderId,
        amount: Money,
        provider_ref: String,
        reason: String,
        at: DateTime<Utc>,
    },
    PaymentCaptured {
        amount: Money,
        at: DateTime<Utc>,
    },
    PaymentVoided {
        at: DateTime<Utc>,
    },
    PaymentRefunded {
        refund_id: RefundId,
        amount: Money,
        at: DateTime<Utc>,
    },
}

impl PaymentEvent {
    /// Every event type with its current schema version.
    pub const TYPES: &'static [(&'static str, u32)] = &[
        ("PaymentAuthorized", 1),
        ("PaymentDeclined", 1),
        ("PaymentCaptured", 1),
        ("PaymentVoided", 1),
        ("PaymentRefunded", 1),
    ];
}

impl DomainEvent for PaymentEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::PaymentAuthorized { .. } => "PaymentAuthorized",
            Self::PaymentDeclined { .. } => "PaymentDeclined",
            Self::PaymentCaptured { .. } => "PaymentCaptured",
            Self::PaymentVoided { .. } => "PaymentVoided",
            Self::PaymentRefunded { .. } => "PaymentRefunded",
        }
    }

    fn schema_version(&self) -> u32 {
        match self {
            Self::PaymentAuthorized { .. }
            | Self::PaymentDeclined { .. }
            | Self::PaymentCaptured { .. }
            | Self::PaymentVoided { .. }
            | Self::PaymentRefunded { .. } => 1,
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
struct PaymentData {
    id: PaymentId,
    order_id: OrderId,
    /// The authorized amount (or the amount that was declined).
    amount: Money,
    provider_ref: String,
    status: PaymentStatus,
    decline_reason: Option<String>,
    captured: Option<Money>,
    refunded: Money,
    refunds: Vec<RefundId>,
}

/// The state of one `payment-<uuid>` stream; empty until authorized or declined.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    data: Option<PaymentData>,
}

impl Payment {
    pub fn stream_id(id: &PaymentId) -> String {
        crate::uuid_stream_name(Self::CATEGORY, id.as_uuid())
    }

    pub fn id(&self) -> Option<PaymentId> {
        self.data.as_ref().map(|d| d.id)
    }
    pub fn order_id(&self) -> Option<OrderId> {
        self.data.as_ref().map(|d| d.order_id)
    }
    pub fn status(&self) -> Option<PaymentStatus> {
        self.data.as_ref().map(|d| d.status)
    }
    pub fn provider_ref(&self) -> Option<&str> {
        self.data.as_ref().map(|d| d.provider_ref.as_str())
    }
    pub fn decline_reason(&self) -> Option<&str> {
        self.data.as_ref().and_then(|d| d.decline_reason.as_deref())
    }
    /// The authorized amount; for a declined payment, the amount that was asked for.
    pub fn authorized(&self) -> Option<Money> {
        self.data.as_ref().map(|d| d.amount)
    }
    pub fn captured(&self) -> Option<Money> {
        self.data.as_ref().and_then(|d| d.captured)
    }
    /// The sum of the refunds so far (zero before any).
    pub fn refunded(&self) -> Option<Money> {
        self.data.as_ref().map(|d| d.refunded)
    }
    pub fn refunds(&self) -> &[RefundId] {
        self.data.as_ref().map_or(&[], |d| d.refunds.as_slice())
    }

    fn existing(&self, command: &PaymentCommand) -> Result<&PaymentData, DomainError> {
        let data = self.data.as_ref().ok_or(DomainError::NotFound {
            aggregate: Self::CATEGORY,
        })?;
        if data.id != command.payment_id() {
            return Err(DomainError::WrongStream {
                expected: Self::stream_id(&data.id),
                actual: command.stream_id(),
            });
        }
        Ok(data)
    }

    fn in_status(
        &self,
        command: &PaymentCommand,
        allowed: PaymentStatus,
    ) -> Result<&PaymentData, DomainError> {
        let data = self.existing(command)?;
        if data.status == allowed {
            Ok(data)
        } else {
            Err(DomainError::InvalidTransition {
                from: data.status.as_str(),
                command: command.name(),
            })
        }
    }

    fn check_new(&self, amount: Money, provider_ref: &str) -> Result<(), DomainError> {
        if self.data.is_some() {
            return Err(DomainError::AlreadyExists {
                aggregate: Self::CATEGORY,
            });
        }
        check_amount(amount)?;
        text::required("provider_ref", provider_ref, MAX_PROVIDER_REF_CHARS)
    }
}

fn check_amount(amount: Money) -> Result<(), DomainError> {
    if amount.is_positive() {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "amount",
            format!("must be positive, got {amount}"),
        ))
    }
}

impl Aggregate for Payment {
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    const CATEGORY: &'static str = "payment";

    fn decide(&self, command: &PaymentCommand) -> Result<Vec<PaymentEvent>, DomainError> {
        match command {
            PaymentCommand::Authorize {
                payment_id,
                order_id,
                amount,
                provider_ref,
                at,
            } => {
                self.check_new(*amount, provider_ref)?;
                Ok(vec![PaymentEvent::PaymentAuthorized {
                    payment_id: *payment_id,
                    order_id: *order_id,
                    amount: *amount,
                    provider_ref: provider_ref.clone(),
                    at: *at,
                }])
            }
            PaymentCommand::RecordDecline {
                payment_id,
                order_id,
                amount,
                provider_ref,
                reason,
                at,
            } => {
                self.check_new(*amount, provider_ref)?;
                text::required("reason", reason, MAX_REASON_CHARS)?;
                Ok(vec![PaymentEvent::PaymentDeclined {
                    payment_id: *payment_id,
                    order_id: *order_id,
                    amount: *amount,
                    provider_ref: provider_ref.clone(),
                    reason: reason.clone(),
                    at: *at,
                }])
            }
            PaymentCommand::Capture { amount, at, .. } => {
                // Only from authorized, and capture leaves it: captured at most once.
                let data = self.in_status(command, PaymentStatus::Authorized)?;
                data.amount.same_currency(*amount)?;
                check_amount(*amount)?;
                if amount.minor > data.amount.minor {
                    return Err(DomainError::ExceedsAuthorized {
                        authorized: data.amount,
                        requested: *amount,
                    });
                }
                Ok(vec![PaymentEvent::PaymentCaptured {
                    amount: *amount,
                    at: *at,
                }])
            }
            PaymentCommand::Void { at, .. } => {
                self.in_status(command, PaymentStatus::Authorized)?;
                Ok(vec![PaymentEvent::PaymentVoided { at: *at }])
            }
            PaymentCommand::Refund {
                refund_id,
                amount,
                at,
                ..
            } => {
                let data = self.in_status(command, PaymentStatus::Captured)?;
                if data.refunds.contains(refund_id) {
                    return Err(DomainError::RefundExists {
                        refund_id: *refund_id,
                    });
                }
                data.amount.same_currency(*amount)?;
                check_amount(*amount)?;
                if data.refunds.len() >= MAX_REFUNDS_PER_PAYMENT as usize {
                    return Err(DomainError::LimitExceeded {
                        limit: "refunds",
                        max: MAX_REFUNDS_PER_PAYMENT,
                    });
                }
                let captured = data.captured.unwrap_or(Money::zero(data.amount.currency));
                let refundable = captured.checked_sub(data.refunded)?;
                if amount.minor > refundable.minor {
                    return Err(DomainError::RefundExceedsCaptured {
                        refundable,
                        requested: *amount,
                    });
                }
                Ok(vec![PaymentEvent::PaymentRefunded {
                    refund_id: *refund_id,
                    amount: *amount,
                    at: *at,
                }])
            }
        }
    }

    fn evolve(mut self, event: &PaymentEvent) -> Self {
        let new = |payment_id: &PaymentId,
                   order_id: &OrderId,
                   amount: &Money,
                   provider_ref: &String,
                   status| PaymentData {
            id: *payment_id,
            order_id: *order_id,
            amount: *amount,
            provider_ref: provider_ref.clone(),
            status,
            decline_reason: None,
            captured: None,
            refunded: Money::zero(amount.currency),
            refunds: Vec::new(),
        };
        match event {
            PaymentEvent::PaymentAuthorized {
                payment_id,
                order_id,
                amount,
                provider_ref,
                ..
            } => {
                self.data = Some(new(
                    payment_id,
                    order_id,
                    amount,
                    provider_ref,
                    PaymentStatus::Authorized,
                ));
            }
            PaymentEvent::PaymentDeclined {
                payment_id,
                order_id,
                amount,
                provider_ref,
                reason,
                ..
            } => {
                let mut data = new(
                    payment_id,
                    order_id,
                    amount,
                    provider_ref,
                    PaymentStatus::Declined,
                );
                data.decline_reason = Some(reason.clone());
                self.data = Some(data);
            }
            PaymentEvent::PaymentCaptured { amount, .. } => {
                if let Some(data) = &mut self.data {
                    data.status = PaymentStatus::Captured;
                    data.captured = Some(*amount);
                }
            }
            PaymentEvent::PaymentVoided { .. } => {
                if let Some(data) = &mut self.data {
                    data.status = PaymentStatus::Voided;
                }
            }
            PaymentEvent::PaymentRefunded {
                refund_id, amount, ..
            } => {
                if let Some(data) = &mut self.data {
                    // decide kept the sum within the captured amount; keep the old sum
                    // rather than panic on a log written by a buggy build.
                    data.refunded = data.refunded.checked_add(*amount).unwrap_or(data.refunded);
                    data.refunds.push(*refund_id);
                }
            }
        }
        self
    }
}
