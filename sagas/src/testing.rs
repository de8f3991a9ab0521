//! An in-process payment provider for tests and the deterministic simulation: it
//! keeps a ledger of authorizations, answers repeats of an idempotency key with the
//! first answer, and injects faults drawn from a seeded random source (the provider
//! is down, a call times out before or after the provider acted). The ledger is what
//! the simulation checks the shop's log against: what was really captured and
//! refunded.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use domain::{Money, PaymentId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{
    Authorization, AuthorizeRequest, GatewayError, MoneyMovement, PaymentGateway, Receipt,
};

/// A payment method token the simulated provider always declines.
pub const DECLINED_TOKEN: &str = "tok_decline";

/// Probabilities (0.0..=1.0) of each fault per call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GatewayFaults {
    /// The provider is down: nothing is done, `Unavailable`.
    pub unavailable: f64,
    /// No answer and nothing done: `Timeout`.
    pub timeout_before: f64,
    /// The provider acted but the answer was lost: `Timeout`.
    pub timeout_after: f64,
    /// An authorization is declined (on top of `DECLINED_TOKEN`).
    pub decline: f64,
}

impl GatewayFaults {
    pub const NONE: GatewayFaults = GatewayFaults {
        unavailable: 0.0,
        timeout_before: 0.0,
        timeout_after: 0.0,
        decline: 0.0,
    };
}

/// One authorization as the provider holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub payment_id: PaymentId,
    pub amount: Money,
    pub captured: i64,
    pub refunded: i64,
    pub voided: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Authorization(Authorization),
    Receipt(Receipt),
    Refused { code: String, message: String },
}

struct Inner {
    rng: StdRng,
    faults: GatewayFaults,
    entries: HashMap<String, LedgerEntry>,
    by_payment: HashMap<PaymentId, Vec<String>>,
    answers: HashMap<String, Answer>,
    next_ref: u64,
    calls: u64,
}

/// The simulated provider. Deterministic for a given seed and sequence of calls.
pub struct SimulatedGateway {
    inner: Mutex<Inner>,
}

enum Fault {
    None,
    Before(GatewayError),
    After,
}

impl SimulatedGateway {
    pub fn new(seed: u64, faults: GatewayFaults) -> Self {
        SimulatedGateway {
            inner: Mutex::new(Inner {
                rng: StdRng::seed_from_u64(seed),
                faults,
                entries: HashMap::new(),
                by_payment: HashMap::new(),
                answers: HashMap::new(),
                next_ref: 0,
                calls: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No holder awaits or panics mid-update.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the fault rates (a simulation heals the provider to let the run
    /// settle).
    pub fn set_faults(&self, faults: GatewayFaults) {
        self.lock().faults = faults;
    }

    /// Every authorization the provider made for a payment.
    pub fn entries_of(&self, payment_id: PaymentId) -> Vec<LedgerEntry> {
        let inner = self.lock();
        inner
            .by_payment
            .get(&payment_id)
            .map(|refs| {
                refs.iter()
                    .filter_map(|r| inner.entries.get(r).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn calls(&self) -> u64 {
        self.lock().calls
    }

    fn answer(
        &self,
        key: &str,
        act: impl FnOnce(&mut Inner) -> Answer,
    ) -> Result<Answer, GatewayError> {
        let mut inner = self.lock();
        inner.calls += 1;
        let faults = inner.faults;
        let roll: f64 = inner.rng.random();
        let fault = if roll < faults.unavailable {
            Fault::Before(GatewayError::Unavailable("simulated outage".into()))
        } else if roll < faults.unavailable + faults.timeout_before {
            Fault::Before(GatewayError::Timeout)
        } else if roll < faults.unavailable + faults.timeout_before + faults.timeout_after {
            Fault::After
        } else {
            Fault::None
        };
        if let Fault::Before(error) = fault {
            return Err(error);
        }
        let answer = match inner.answers.get(key) {
            Some(first) => first.clone(),
            None => {
                let answer = act(&mut inner);
                inner.answers.insert(key.to_owned(), answer.clone());
                answer
            }
        };
        match fault {
            Fault::After => Err(GatewayError::Timeout),
            Fault::None | Fault::Before(_) => Ok(answer),
        }
    }
}

fn refused(code: &str, message: &str) -> Answer {
    Answer::Refused {
        code: code.to_owned(),
        message: message.to_owned(),
    }
}

fn receipt(answer: Answer) -> Result<Receipt, GatewayError> {
    match answer {
        Answer::Receipt(receipt) => Ok(receipt),
        Answer::Refused { code, message } => Err(GatewayError::Refused { code, message }),
        Answer::Authorization(_) => Err(GatewayError::Refused {
            code: "key_reused".into(),
            message: "the idempotency key belongs to an authorization".into(),
        }),
    }
}

#[async_trait]
impl PaymentGateway for SimulatedGateway {
    async fn authorize(&self, request: AuthorizeRequest) -> Result<Authorization, GatewayError> {
        let answer = self.answer(&request.idempotency_key, |inner| {
            inner.next_ref += 1;
            let provider_ref = format!("sim_{}", inner.next_ref);
            let decline = request.payment_method == DECLINED_TOKEN
                || inner.rng.random::<f64>() < inner.faults.decline;
            if decline {
                return Answer::Authorization(Authorization::Declined {
                    provider_ref,
                    reason: "card declined".into(),
                });
            }
            inner.entries.insert(
                provider_ref.clone(),
                LedgerEntry {
                    payment_id: request.payment_id,
                    amount: request.amount,
                    captured: 0,
                    refunded: 0,
                    voided: false,
                },
            );
            inner
                .by_payment
                .entry(request.payment_id)
                .or_default()
                .push(provider_ref.clone());
            Answer::Authorization(Authorization::Approved { provider_ref })
        })?;
        match answer {
            Answer::Authorization(authorization) => Ok(authorization),
            Answer::Refused { code, message } => Err(GatewayError::Refused { code, message }),
            Answer::Receipt(_) => Err(GatewayError::Refused {
                code: "key_reused".into(),
                message: "the idempotency key belongs to another call".into(),
            }),
        }
    }

    async fn capture(&self, request: MoneyMovement) -> Result<Receipt, GatewayError> {
        receipt(self.answer(&request.idempotency_key, |inner| {
            let Some(entry) = inner.entries.get_mut(&request.provider_ref) else {
                return refused("unknown_authorization", "no such authorization");
            };
            if entry.voided {
                return refused("voided", "the authorization was voided");
            }
            if entry.captured > 0 {
                return refused("already_captured", "the authorization was captured");
            }
            if request.amount.minor > entry.amount.minor {
                return refused("amount_too_large", "more than authorized");
            }
            entry.captured = request.amount.minor;
            Answer::Receipt(Receipt {
                provider_ref: request.provider_ref.clone(),
            })
        })?)
    }

    async fn void(&self, request: MoneyMovement) -> Result<Receipt, GatewayError> {
        receipt(self.answer(&request.idempotency_key, |inner| {
            let Some(entry) = inner.entries.get_mut(&request.provider_ref) else {
                return refused("unknown_authorization", "no such authorization");
            };
            if entry.captured > 0 {
                return refused(
                    "already_captured",
                    "a captured authorization cannot be voided",
                );
            }
            entry.voided = true;
            Answer::Receipt(Receipt {
                provider_ref: request.provider_ref.clone(),
            })
        })?)
    }

    async fn refund(&self, request: MoneyMovement) -> Result<Receipt, GatewayError> {
        receipt(self.answer(&request.idempotency_key, |inner| {
            let Some(entry) = inner.entries.get_mut(&request.provider_ref) else {
                return refused("unknown_authorization", "no such authorization");
            };
            if entry.captured == 0 {
                return refused("not_captured", "nothing was captured");
            }
            if request.amount.minor > entry.captured - entry.refunded {
                return refused("amount_too_large", "more than is left to refund");
            }
            entry.refunded += request.amount.minor;
            Answer::Receipt(Receipt {
                provider_ref: request.provider_ref.clone(),
            })
        })?)
    }
}
