//! The sandbox provider's books: authorizations, their capture, void and refunds,
//! and the first answer to every idempotency key. Synchronous and in memory; the
//! sandbox holds it under one lock for the whole of each request's decision, so two
//! requests racing on one authorization (or one key) are decided one after the
//! other and the limits hold under any interleaving.

use std::collections::HashMap;

use ring::digest;
use serde_json::{json, Value};
use uuid::Uuid;

use super::wire::{
    AuthorizationStatus, AuthorizationView, CreateAuthorization, CreateCapture, CreateRefund,
    RefundView, WebhookEvent,
};

/// Largest amount the sandbox takes in one request, in minor units.
pub const AMOUNT_MAX_MINOR: i64 = 1_000_000_000_000;
/// Most refunds of one authorization.
pub const REFUNDS_MAX_PER_AUTHORIZATION: usize = 100;
/// Longest merchant reference, in bytes.
const REFERENCE_MAX_BYTES: usize = 128;

/// The sandbox's test card tokens and what each does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestToken {
    /// Approves.
    Visa,
    /// Declines with `card_declined`.
    Decline,
    /// Declines with `insufficient_funds`.
    InsufficientFunds,
    /// Authorizes, then holds the answer past the client's timeout (every delivery
    /// of the answer, replays included).
    Hang,
    /// Every request on it not yet carried out fails with 503 at the configured
    /// share, before anything is done.
    Flaky,
    /// Every request on it is carried out, then the connection is dropped before
    /// the first answer for its idempotency key; a retry gets the answer.
    LostResponse,
}

impl TestToken {
    pub const ALL: [TestToken; 6] = [
        Self::Visa,
        Self::Decline,
        Self::InsufficientFunds,
        Self::Hang,
        Self::Flaky,
        Self::LostResponse,
    ];

    pub fn parse(token: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == token)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Visa => "tok_visa",
            Self::Decline => "tok_decline",
            Self::InsufficientFunds => "tok_insufficient_funds",
            Self::Hang => "tok_hang",
            Self::Flaky => "tok_flaky",
            Self::LostResponse => "tok_lost_response",
        }
    }

    fn decline_code(self) -> Option<&'static str> {
        match self {
            Self::Decline => Some("card_declined"),
            Self::InsufficientFunds => Some("insufficient_funds"),
            Self::Visa | Self::Hang | Self::Flaky | Self::LostResponse => None,
        }
    }
}

/// One POST, parsed.
#[derive(Debug, Clone)]
pub enum Operation {
    Authorize(CreateAuthorization),
    Capture {
        authorization: String,
        body: CreateCapture,
    },
    Void {
        authorization: String,
    },
    Refund(CreateRefund),
}

impl Operation {
    /// What identifies the request for its idempotency key: the operation and its
    /// whole body, in a canonical form (the typed request re-encoded).
    fn fingerprint(&self) -> [u8; 32] {
        let canonical = match self {
            Self::Authorize(body) => json!(["authorize", body]),
            Self::Capture {
                authorization,
                body,
            } => json!(["capture", authorization, body]),
            Self::Void { authorization } => json!(["void", authorization]),
            Self::Refund(body) => json!(["refund", body]),
        };
        let mut fingerprint = [0; 32];
        fingerprint.copy_from_slice(
            digest::digest(&digest::SHA256, canonical.to_string().as_bytes()).as_ref(),
        );
        fingerprint
    }

    fn is_authorize(&self) -> bool {
        matches!(self, Self::Authorize(_))
    }
}

/// An answer: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Self {
        Answer {
            status,
            body: json!({ "error": { "code": code, "message": message.into() } }),
        }
    }
}

/// What the ledger made of one POST.
#[derive(Debug)]
pub enum Decision {
    /// Carried out (or refused on its merits) now; the answer is kept for the key.
    Fresh {
        answer: Answer,
        token: Option<TestToken>,
        authorize: bool,
        events: Vec<WebhookEvent>,
    },
    /// The key was seen with the same request: its first answer.
    Replayed {
        answer: Answer,
        token: Option<TestToken>,
        authorize: bool,
    },
    /// The key was seen with another request.
    KeyReused,
    /// The fault injection said 503; nothing was done or kept.
    Unavailable,
    /// The ledger holds as many entries as it may.
    Full,
}

struct Authorization {
    view: AuthorizationView,
    token: TestToken,
}

struct KeptAnswer {
    fingerprint: [u8; 32],
    answer: Answer,
    token: Option<TestToken>,
    authorize: bool,
}

pub struct Ledger {
    authorizations: HashMap<String, Authorization>,
    by_reference: HashMap<String, Vec<String>>,
    keys: HashMap<String, KeptAnswer>,
    /// Most authorizations plus kept answers.
    max_entries: usize,
}

impl Ledger {
    pub fn new(max_entries: usize) -> Self {
        Ledger {
            authorizations: HashMap::new(),
            by_reference: HashMap::new(),
            keys: HashMap::new(),
            max_entries,
        }
    }

    /// Decides `operation` under idempotency key `key` at `now` (Unix seconds).
    /// `inject_503` is asked, for a request not carried out before, whether the
    /// fault injection fails it (it gets the token the request is on, if known).
    pub fn execute(
        &mut self,
        key: &str,
        operation: Operation,
        now: i64,
        inject_503: impl FnOnce(Option<TestToken>) -> bool,
    ) -> Decision {
        let fingerprint = operation.fingerprint();
        if let Some(kept) = self.keys.get(key) {
            if kept.fingerprint != fingerprint {
                return Decision::KeyReused;
            }
            return Decision::Replayed {
                answer: kept.answer.clone(),
                token: kept.token,
                authorize: kept.authorize,
            };
        }
        let token = self.token_of(&operation);
        if inject_503(token) {
            return Decision::Unavailable;
        }
        if self.authorizations.len() + self.keys.len() + 2 > self.max_entries {
            return Decision::Full;
        }
        let authorize = operation.is_authorize();
        let (answer, events) = self.apply(operation, now);
        self.keys.insert(
            key.to_owned(),
            KeptAnswer {
                fingerprint,
                answer: answer.clone(),
                token,
                authorize,
            },
        );
        Decision::Fresh {
            answer,
            token,
            authorize,
            events,
        }
    }

    pub fn authorization(&self, id: &str) -> Option<AuthorizationView> {
        self.authorizations.get(id).map(|a| a.view.clone())
    }

    pub fn by_reference(&self, reference: &str) -> Vec<AuthorizationView> {
        self.by_reference
            .get(reference)
            .into_iter()
            .flatten()
            .filter_map(|id| self.authorization(id))
            .collect()
    }

    fn token_of(&self, operation: &Operation) -> Option<TestToken> {
        match operation {
            Operation::Authorize(body) => TestToken::parse(&body.payment_method),
            Operation::Capture { authorization, .. } | Operation::Void { authorization } => {
                self.authorizations.get(authorization).map(|a| a.token)
            }
            Operation::Refund(body) => self
                .authorizations
                .get(&body.authorization)
                .map(|a| a.token),
        }
    }

    fn apply(&mut self, operation: Operation, now: i64) -> (Answer, Vec<WebhookEvent>) {
        let result = match operation {
            Operation::Authorize(body) => self.authorize(body, now),
            Operation::Capture {
                authorization,
                body,
            } => self.capture(&authorization, body),
            Operation::Void { authorization } => self.void(&authorization),
            Operation::Refund(body) => self.refund(body, now),
        };
        match result {
            Ok((status, event_type, data)) => {
                let event = WebhookEvent {
                    id: format!("evt_{}", Uuid::new_v4().simple()),
                    event_type: event_type.to_owned(),
                    created: now,
                    data: data.clone(),
                };
                (Answer { status, body: data }, vec![event])
            }
            Err(refusal) => (refusal, Vec::new()),
        }
    }

    fn authorize(
        &mut self,
        body: CreateAuthorization,
        now: i64,
    ) -> Result<(u16, &'static str, Value), Answer> {
        check_money(body.amount, &body.currency)?;
        if body.reference.is_empty() || body.reference.len() > REFERENCE_MAX_BYTES {
            return Err(Answer::error(
                400,
                "invalid_reference",
                format!("reference must be 1 to {REFERENCE_MAX_BYTES} bytes"),
            ));
        }
        let token = TestToken::parse(&body.payment_method).ok_or_else(|| {
            Answer::error(
                400,
                "unknown_payment_method",
                format!(
                    "{:?} is not a test token of this sandbox",
                    body.payment_method
                ),
            )
        })?;
        let decline_code = token.decline_code();
        let view = AuthorizationView {
            id: format!("auth_{}", Uuid::new_v4().simple()),
            status: if decline_code.is_some() {
                AuthorizationStatus::Declined
            } else {
                AuthorizationStatus::Authorized
            },
            amount: body.amount,
            currency: body.currency,
            payment_method: body.payment_method,
            reference: body.reference,
            decline_code: decline_code.map(str::to_owned),
            captured_amount: 0,
            refunded_amount: 0,
            capture_count: 0,
            refunds: Vec::new(),
            created: now,
        };
        let event_type = if decline_code.is_some() {
            "authorization.declined"
        } else {
            "authorization.authorized"
        };
        let data = to_json(&view);
        self.by_reference
            .entry(view.reference.clone())
            .or_default()
            .push(view.id.clone());
        self.authorizations
            .insert(view.id.clone(), Authorization { view, token });
        Ok((201, event_type, data))
    }

    fn capture(
        &mut self,
        id: &str,
        body: CreateCapture,
    ) -> Result<(u16, &'static str, Value), Answer> {
        check_money(body.amount, &body.currency)?;
        let authorization = self.found(id)?;
        let view = &mut authorization.view;
        if body.currency != view.currency {
            return Err(currency_mismatch(&view.currency));
        }
        match view.status {
            AuthorizationStatus::Authorized => {}
            AuthorizationStatus::Captured => {
                return Err(Answer::error(
                    409,
                    "already_captured",
                    "the authorization was captured already",
                ))
            }
            AuthorizationStatus::Declined => return Err(declined()),
            AuthorizationStatus::Voided => return Err(voided()),
        }
        if body.amount > view.amount {
            return Err(Answer::error(
                409,
                "amount_exceeds_authorized",
                format!(
                    "cannot capture {} of an authorization of {}",
                    body.amount, view.amount
                ),
            ));
        }
        view.status = AuthorizationStatus::Captured;
        view.captured_amount = body.amount;
        view.capture_count += 1;
        debug_assert_eq!(view.capture_count, 1);
        Ok((200, "authorization.captured", to_json(view)))
    }

    fn void(&mut self, id: &str) -> Result<(u16, &'static str, Value), Answer> {
        let authorization = self.found(id)?;
        let view = &mut authorization.view;
        match view.status {
            AuthorizationStatus::Authorized => {}
            AuthorizationStatus::Captured => {
                return Err(Answer::error(
                    409,
                    "already_captured",
                    "a captured authorization cannot be voided; refund it",
                ))
            }
            AuthorizationStatus::Declined => return Err(declined()),
            AuthorizationStatus::Voided => return Err(voided()),
        }
        view.status = AuthorizationStatus::Voided;
        Ok((200, "authorization.voided", to_json(view)))
    }

    fn refund(
        &mut self,
        body: CreateRefund,
        now: i64,
    ) -> Result<(u16, &'static str, Value), Answer> {
        check_money(body.amount, &body.currency)?;
        let authorization = self.found(&body.authorization)?;
        let view = &mut authorization.view;
        if body.currency != view.currency {
            return Err(currency_mismatch(&view.currency));
        }
        if view.status != AuthorizationStatus::Captured {
            return Err(Answer::error(
                409,
                "not_captured",
                "only a captured authorization can be refunded",
            ));
        }
        if view.refunds.len() >= REFUNDS_MAX_PER_AUTHORIZATION {
            return Err(Answer::error(
                409,
                "too_many_refunds",
                format!("an authorization takes at most {REFUNDS_MAX_PER_AUTHORIZATION} refunds"),
            ));
        }
        let left = view.captured_amount - view.refunded_amount;
        if body.amount > left {
            return Err(Answer::error(
                409,
                "amount_exceeds_captured",
                format!(
                    "cannot refund {}: {left} of the capture is left",
                    body.amount
                ),
            ));
        }
        let refund = RefundView {
            id: format!("re_{}", Uuid::new_v4().simple()),
            authorization: view.id.clone(),
            amount: body.amount,
            currency: body.currency,
            created: now,
        };
        view.refunded_amount += refund.amount;
        debug_assert!(view.refunded_amount <= view.captured_amount);
        let data = to_json(&refund);
        view.refunds.push(refund);
        Ok((201, "refund.created", data))
    }

    fn found(&mut self, id: &str) -> Result<&mut Authorization, Answer> {
        self.authorizations.get_mut(id).ok_or_else(|| {
            Answer::error(
                404,
                "authorization_not_found",
                format!("no authorization {id:?}"),
            )
        })
    }
}

fn check_money(amount: i64, currency: &str) -> Result<(), Answer> {
    if !(1..=AMOUNT_MAX_MINOR).contains(&amount) {
        return Err(Answer::error(
            400,
            "invalid_amount",
            format!("amount must be 1 to {AMOUNT_MAX_MINOR} minor units"),
        ));
    }
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Answer::error(
            400,
            "invalid_currency",
            "currency must be three upper-case letters (ISO 4217)",
        ));
    }
    Ok(())
}

fn currency_mismatch(expected: &str) -> Answer {
    Answer::error(
        400,
        "currency_mismatch",
        format!("the authorization is in {expected}"),
    )
}

fn declined() -> Answer {
    Answer::error(
        409,
        "authorization_declined",
        "the authorization was declined",
    )
}

fn voided() -> Answer {
    Answer::error(409, "already_voided", "the authorization was voided")
}

fn to_json(value: &impl serde::Serialize) -> Value {
    // The views are plain structs of strings and numbers: encoding cannot fail.
    serde_json::to_value(value).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authorize(ledger: &mut Ledger, key: &str, token: &str, amount: i64) -> Answer {
        let operation = Operation::Authorize(CreateAuthorization {
            amount,
            currency: "EUR".into(),
            payment_method: token.into(),
            reference: "pay-1".into(),
        });
        match ledger.execute(key, operation, 0, |_| false) {
            Decision::Fresh { answer, .. } | Decision::Replayed { answer, .. } => answer,
            other => panic!("{other:?}"),
        }
    }

    fn capture(ledger: &mut Ledger, key: &str, id: &str, amount: i64) -> Answer {
        let operation = Operation::Capture {
            authorization: id.into(),
            body: CreateCapture {
                amount,
                currency: "EUR".into(),
            },
        };
        match ledger.execute(key, operation, 0, |_| false) {
            Decision::Fresh { answer, .. } | Decision::Replayed { answer, .. } => answer,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_key_replays_its_first_answer_and_refuses_another_request() {
        let mut ledger = Ledger::new(1_000);
        let first = authorize(&mut ledger, "k1", "tok_visa", 500);
        assert_eq!(first.status, 201);
        assert_eq!(authorize(&mut ledger, "k1", "tok_visa", 500), first);
        let other = Operation::Authorize(CreateAuthorization {
            amount: 501,
            currency: "EUR".into(),
            payment_method: "tok_visa".into(),
            reference: "pay-1".into(),
        });
        assert!(matches!(
            ledger.execute("k1", other, 0, |_| false),
            Decision::KeyReused
        ));
        assert_eq!(ledger.by_reference("pay-1").len(), 1);
    }

    #[test]
    fn capture_is_once_and_at_most_the_authorized_amount() {
        let mut ledger = Ledger::new(1_000);
        let id = authorize(&mut ledger, "a", "tok_visa", 500).body["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(capture(&mut ledger, "c1", &id, 501).status, 409);
        assert_eq!(capture(&mut ledger, "c2", &id, 400).status, 200);
        let again = capture(&mut ledger, "c3", &id, 100);
        assert_eq!(again.body["error"]["code"], "already_captured");
        let view = ledger.authorization(&id).unwrap();
        assert_eq!((view.captured_amount, view.capture_count), (400, 1));
    }

    #[test]
    fn an_injected_503_does_nothing_and_keeps_no_answer() {
        let mut ledger = Ledger::new(1_000);
        let operation = Operation::Authorize(CreateAuthorization {
            amount: 1,
            currency: "EUR".into(),
            payment_method: "tok_flaky".into(),
            reference: "r".into(),
        });
        let decision = ledger.execute("k", operation, 0, |token| {
            assert_eq!(token, Some(TestToken::Flaky));
            true
        });
        assert!(matches!(decision, Decision::Unavailable));
        assert!(ledger.by_reference("r").is_empty());
        assert_eq!(authorize(&mut ledger, "k2", "tok_flaky", 1).status, 201);
    }
}
