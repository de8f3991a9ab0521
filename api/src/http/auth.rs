//! Bearer tokens: JWTs signed with HS256 (a shared secret) or RS256 (verified with a
//! configured public key), carrying `sub`, `role` and `exp`. The [`Principal`]
//! extractor turns a request's token into who is asking, or a 401 problem.
//!
//! What each role may do is decided next to each route (`Principal::require`); the
//! ownership rule for customers (another customer's cart is a 404, never a 403) is
//! [`Principal::may_see_customer`].

use std::fmt;
use std::str::FromStr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use domain::{CartOwner, CustomerId, GuestToken};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::problem::ApiError;
use super::AppState;

/// Longest `sub` accepted: it goes into every event's metadata as the actor.
pub const SUBJECT_MAX_BYTES: usize = 200;
/// Shortest HS256 secret accepted (256 bits, as RFC 7518 asks for HS256).
pub const HS256_SECRET_MIN_BYTES: usize = 32;
/// Clock skew tolerated on `exp`, in seconds.
pub const EXPIRY_LEEWAY_SECS: u64 = 5;
/// The `sub` prefix of a guest's token: `guest:<uuid>` owns guest carts.
pub const GUEST_SUBJECT_PREFIX: &str = "guest:";

/// Namespace of customer ids derived from subjects that are not UUIDs.
const CUSTOMER_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b1c_58a4_2f0e_4f4b_9c8e_63d0_c0a1_e51d);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Shops: their own carts and orders.
    Customer,
    /// Runs the shop: catalog, stock, any cart or order.
    Admin,
    /// Reads the event log.
    Auditor,
    /// Runs read-model rebuilds and reads.
    Analyst,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Admin => "admin",
            Role::Auditor => "auditor",
            Role::Analyst => "analyst",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "customer" => Ok(Role::Customer),
            "admin" => Ok(Role::Admin),
            "auditor" => Ok(Role::Auditor),
            "analyst" => Ok(Role::Analyst),
            other => Err(format!("unknown role {other:?}")),
        }
    }
}

/// The claims of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// Verifies tokens. Holds the keys of the algorithms configured: HS256 with a
/// secret, RS256 with a public key, or both (the token's header picks).
#[derive(Clone)]
pub struct Authenticator {
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the JWT secret must be at least {HS256_SECRET_MIN_BYTES} bytes long")]
    SecretTooShort,
    #[error("the RS256 public key is not a PEM RSA public key: {0}")]
    BadPublicKey(String),
    #[error("no token key configured: give an HS256 secret or an RS256 public key")]
    NoKey,
}

impl Authenticator {
    pub fn new(
        hs256_secret: Option<&[u8]>,
        rs256_public_pem: Option<&[u8]>,
    ) -> Result<Self, KeyError> {
        let hs256 = match hs256_secret {
            Some(secret) if secret.len() < HS256_SECRET_MIN_BYTES => {
                return Err(KeyError::SecretTooShort)
            }
            Some(secret) => Some(DecodingKey::from_secret(secret)),
            None => None,
        };
        let rs256 = rs256_public_pem
            .map(|pem| {
                DecodingKey::from_rsa_pem(pem).map_err(|e| KeyError::BadPublicKey(e.to_string()))
            })
            .transpose()?;
        if hs256.is_none() && rs256.is_none() {
            return Err(KeyError::NoKey);
        }
        Ok(Authenticator { hs256, rs256 })
    }

    /// The principal of a token, or why it is refused (401).
    pub fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| ApiError::unauthorized("the bearer token is not a JWT"))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or_else(|| {
            ApiError::unauthorized(format!(
                "tokens signed with {:?} are not accepted",
                header.alg
            ))
        })?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = EXPIRY_LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => ApiError::unauthorized("the token has expired"),
                ErrorKind::InvalidSignature => {
                    ApiError::unauthorized("the token's signature does not verify")
                }
                ErrorKind::MissingRequiredClaim(claim) => {
                    ApiError::unauthorized(format!("the token has no {claim} claim"))
                }
                _ => ApiError::unauthorized(format!("the token is not valid: {e}")),
            }
        })?;
        let Claims { sub, role, .. } = data.claims;
        if sub.is_empty() || sub.len() > SUBJECT_MAX_BYTES || sub.chars().any(char::is_control) {
            return Err(ApiError::unauthorized(format!(
                "the token's sub must be 1..={SUBJECT_MAX_BYTES} bytes without control characters"
            )));
        }
        Ok(Principal { sub, role })
    }
}

/// Signs HS256 tokens (`commerce token`, tests).
pub fn mint_hs256(secret: &[u8], claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
}

/// Who is asking: the verified subject and role of the request's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub sub: String,
    pub role: Role,
}

impl Principal {
    /// 403 unless the principal has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "the {} role may not do this",
                self.role
            )))
        }
    }

    /// The actor recorded in the metadata of the events this principal causes.
    pub fn actor(&self) -> String {
        format!("{}:{}", self.role, self.sub)
    }

    /// A guest's token (`sub` = `guest:<uuid>`), if this is one.
    pub fn guest_token(&self) -> Option<GuestToken> {
        if self.role != Role::Customer {
            return None;
        }
        let id = self.sub.strip_prefix(GUEST_SUBJECT_PREFIX)?;
        Uuid::parse_str(id).ok().map(GuestToken::from_uuid)
    }

    /// The customer id of a signed-in customer: the `sub` itself when it is a UUID,
    /// else a UUID derived from it (v5), so any stable subject works.
    pub fn customer_id(&self) -> Option<CustomerId> {
        if self.role != Role::Customer || self.guest_token().is_some() {
            return None;
        }
        let id = Uuid::parse_str(&self.sub)
            .unwrap_or_else(|_| Uuid::new_v5(&CUSTOMER_ID_NAMESPACE, self.sub.as_bytes()));
        Some(CustomerId::from_uuid(id))
    }

    /// The owner of a cart this principal creates.
    pub fn cart_owner(&self) -> Option<CartOwner> {
        match (self.guest_token(), self.customer_id()) {
            (Some(token), _) => Some(CartOwner::Guest(token)),
            (None, Some(customer)) => Some(CartOwner::Customer(customer)),
            (None, None) => None,
        }
    }

    /// Staff may read any cart or order; a customer only their own.
    pub fn may_see_cart(&self, owner: Option<CartOwner>) -> bool {
        match self.role {
            Role::Admin | Role::Auditor => true,
            Role::Analyst => false,
            Role::Customer => owner.is_some() && owner == self.cart_owner(),
        }
    }

    pub fn may_see_customer(&self, customer: Option<CustomerId>) -> bool {
        match self.role {
            Role::Admin | Role::Auditor => true,
            Role::Analyst => false,
            Role::Customer => customer.is_some() && customer == self.customer_id(),
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("an Authorization: Bearer token is required"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
            })?;
        state.authenticator().verify(token).map_err(|mut e| {
            e.status = StatusCode::UNAUTHORIZED;
            e
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn claims(role: Role, exp: u64) -> Claims {
        Claims {
            sub: "alice".into(),
            role,
            exp,
            iat: None,
        }
    }

    fn now() -> u64 {
        chrono::Utc::now().timestamp() as u64
    }

    #[test]
    fn a_minted_token_verifies() {
        let auth = Authenticator::new(Some(SECRET), None).unwrap();
        let token = mint_hs256(SECRET, &claims(Role::Admin, now() + 60)).unwrap();
        let principal = auth.verify(&token).unwrap();
        assert_eq!(principal.role, Role::Admin);
        assert_eq!(principal.actor(), "admin:alice");
    }

    #[test]
    fn expired_and_foreign_tokens_are_refused() {
        let auth = Authenticator::new(Some(SECRET), None).unwrap();
        let expired = mint_hs256(SECRET, &claims(Role::Admin, now() - 600)).unwrap();
        assert_eq!(
            auth.verify(&expired).unwrap_err().detail,
            "the token has expired"
        );
        let other = mint_hs256(
            b"another secret, also long enough!",
            &claims(Role::Admin, now() + 60),
        )
        .unwrap();
        assert!(auth.verify(&other).is_err());
        assert!(auth.verify("not.a.jwt").is_err());
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(matches!(
            Authenticator::new(Some(b"short"), None),
            Err(KeyError::SecretTooShort)
        ));
    }

    #[test]
    fn customers_own_carts_by_subject() {
        let alice = Principal {
            sub: "alice".into(),
            role: Role::Customer,
        };
        let bob = Principal {
            sub: "bob".into(),
            role: Role::Customer,
        };
        assert!(alice.may_see_cart(alice.cart_owner()));
        assert!(!bob.may_see_cart(alice.cart_owner()));
        let guest = Principal {
            sub: format!("guest:{}", Uuid::from_u128(1)),
            role: Role::Customer,
        };
        assert!(matches!(guest.cart_owner(), Some(CartOwner::Guest(_))));
        assert!(guest.customer_id().is_none());
    }
}
