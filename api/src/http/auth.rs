//! Bearer tokens, verified as RFC 8725 asks:
//! - The algorithm is pinned by configuration, per key: each verification key is an
//!   HS256 secret or an RS256 public key, and a token is checked only with the
//!   algorithm of the key it selects. `alg: none`, another algorithm, and an HS256
//!   token "signed" with an RS256 public key are refused before any signature check.
//! - Several keys may be configured, selected by the token's `kid`, so a new key can
//!   be introduced before the old one is retired. A key configured without a kid
//!   verifies the tokens of its algorithm that carry no kid.
//! - `exp`, `sub`, `iss` and `aud` are required; `iss` and `aud` must equal the
//!   configured values; `nbf` and `iat` are honoured with a small leeway.
//!
//! Every refusal is a 401 problem whose type names the rule that failed
//! (`token-expired`, `token-algorithm`, ...) and is counted in `/metrics` by rule
//! (`commerce_token_refusals_total`). The token itself is never logged.
//!
//! What each role may do is decided next to each route (`Principal::require`); the
//! ownership rule for customers (another customer's cart is a 404, never a 403) is
//! [`Principal::may_see_customer`].

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use base64::Engine as _;
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
/// Default clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
pub const CLOCK_LEEWAY_SECS: u64 = 5;
/// Default `iss` the server requires and `commerce token` mints.
pub const DEFAULT_ISSUER: &str = "commerce";
/// Default `aud` the server requires and `commerce token` mints.
pub const DEFAULT_AUDIENCE: &str = "commerce-api";
/// Longest token accepted, in bytes: a header, claims and an RS256 signature fit in
/// well under this; anything longer is refused before it is decoded.
pub const TOKEN_MAX_BYTES: usize = 4 * 1024;
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
    pub const ALL: [Role; 4] = [Role::Customer, Role::Admin, Role::Auditor, Role::Analyst];

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

/// The claims of a token this engine mints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    pub iss: String,
    pub aud: String,
}

impl Claims {
    /// Claims for `sub` in `role`, issued now, expiring at `exp`, with the default
    /// issuer and audience.
    pub fn new(sub: impl Into<String>, role: Role, exp: u64) -> Self {
        Claims {
            sub: sub.into(),
            role,
            exp,
            iat: Some(now_secs()),
            nbf: None,
            iss: DEFAULT_ISSUER.to_owned(),
            aud: DEFAULT_AUDIENCE.to_owned(),
        }
    }
}

/// What is read from a token's claims once its signature verifies. Every field is
/// optional here so that a missing one is reported by its rule, not as bad JSON.
#[derive(Deserialize)]
struct VerifiedClaims {
    sub: Option<String>,
    role: Option<String>,
    iat: Option<u64>,
    exp: u64,
}

/// The key material of one verification key.
pub enum KeyMaterial {
    /// A shared secret, at least [`HS256_SECRET_MIN_BYTES`] long.
    Hs256(Vec<u8>),
    /// A PEM RSA public key.
    Rs256Pem(Vec<u8>),
}

/// One configured verification key: its id (absent for the default key of its
/// algorithm) and what it verifies with.
pub struct KeySpec {
    pub kid: Option<String>,
    pub material: KeyMaterial,
}

/// The rules every token must pass besides its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRules {
    pub issuer: String,
    pub audience: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    pub leeway_secs: u64,
}

impl Default for TokenRules {
    fn default() -> Self {
        TokenRules {
            issuer: DEFAULT_ISSUER.to_owned(),
            audience: DEFAULT_AUDIENCE.to_owned(),
            leeway_secs: CLOCK_LEEWAY_SECS,
        }
    }
}

struct VerificationKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Verifies tokens against the configured key set and rules.
#[derive(Clone)]
pub struct Authenticator {
    inner: std::sync::Arc<KeySet>,
}

struct KeySet {
    /// Keys with a kid, by kid.
    by_kid: HashMap<String, VerificationKey>,
    /// The key without a kid, per algorithm (at most one each).
    defaults: Vec<VerificationKey>,
    rules: TokenRules,
    verified: VerifiedTokens,
}

/// Tokens verified lately, by their text, with the principal and the `exp` each
/// carries. A client sends the same token with every request, and checking it again
/// (base64, the signature, the claims as JSON, the rules) costs more than the rest
/// of a request's checks; a token already found valid stays valid until its `exp`
/// (its `nbf` and `iat` were in the past when it was checked, and stay there), and
/// the key set never changes while the process runs. The map is bounded: when full,
/// it is emptied and fills again with the tokens in use.
#[derive(Default)]
struct VerifiedTokens {
    tokens: std::sync::Mutex<HashMap<Box<str>, (Principal, u64)>>,
}

/// Most tokens [`VerifiedTokens`] holds (each at most [`TOKEN_MAX_BYTES`]).
pub const VERIFIED_TOKENS_MAX: usize = 16_384;

impl VerifiedTokens {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, (Principal, u64)>> {
        // Each holder does one map operation: a panic cannot leave it half-changed.
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The principal of a token verified before, if any; a token past its `exp`
    /// (with the leeway) by `now` is forgotten and refused.
    fn get(&self, token: &str, now: u64, leeway: u64) -> Option<Result<Principal, TokenRefusal>> {
        let mut tokens = self.lock();
        let (principal, exp) = tokens.get(token)?;
        if now > exp.saturating_add(leeway) {
            tokens.remove(token);
            return Some(Err(TokenRefusal::Expired));
        }
        Some(Ok(principal.clone()))
    }

    fn insert(&self, token: &str, principal: &Principal, exp: u64) {
        let mut tokens = self.lock();
        if tokens.len() >= VERIFIED_TOKENS_MAX {
            tokens.clear();
        }
        tokens.insert(token.into(), (principal.clone(), exp));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the JWT secret must be at least {HS256_SECRET_MIN_BYTES} bytes long")]
    SecretTooShort,
    #[error("the RS256 public key is not a PEM RSA public key: {0}")]
    BadPublicKey(String),
    #[error("no token key configured: give an HS256 secret or an RS256 public key")]
    NoKey,
    #[error("the key id {0:?} is configured twice")]
    DuplicateKid(String),
    #[error("two keys without a kid verify {0:?} tokens: give one of them a kid")]
    DuplicateDefault(Algorithm),
    #[error("a key id must be 1 to 64 visible ASCII characters, got {0:?}")]
    BadKid(String),
    #[error("the token issuer and audience must not be empty")]
    EmptyRule,
}

/// Why a token is refused: each variant is one rule, with a stable problem type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer <JWT>`, or not a JWT.
    Malformed(String),
    /// `alg: none`, an algorithm not configured, or not the selected key's.
    Algorithm(String),
    /// The `kid` names no configured key (or no key verifies tokens without one).
    UnknownKey(String),
    Signature,
    Expired,
    NotYetValid,
    IssuedInFuture,
    Issuer,
    Audience,
    /// A required claim is missing or unusable (`exp`, `sub`, `role`, ...).
    Claims(String),
}

impl TokenRefusal {
    /// The rule's name: the problem code and the metric label.
    pub fn code(&self) -> &'static str {
        match self {
            TokenRefusal::Missing => "token-missing",
            TokenRefusal::Malformed(_) => "token-malformed",
            TokenRefusal::Algorithm(_) => "token-algorithm",
            TokenRefusal::UnknownKey(_) => "token-unknown-key",
            TokenRefusal::Signature => "token-signature",
            TokenRefusal::Expired => "token-expired",
            TokenRefusal::NotYetValid => "token-not-yet-valid",
            TokenRefusal::IssuedInFuture => "token-issued-in-future",
            TokenRefusal::Issuer => "token-issuer",
            TokenRefusal::Audience => "token-audience",
            TokenRefusal::Claims(_) => "token-claims",
        }
    }

    pub fn detail(&self) -> String {
        match self {
            TokenRefusal::Missing => "an Authorization: Bearer token is required".to_owned(),
            TokenRefusal::Malformed(why)
            | TokenRefusal::Algorithm(why)
            | TokenRefusal::UnknownKey(why)
            | TokenRefusal::Claims(why) => why.clone(),
            TokenRefusal::Signature => "the token's signature does not verify".to_owned(),
            TokenRefusal::Expired => "the token has expired".to_owned(),
            TokenRefusal::NotYetValid => "the token is not valid yet (nbf)".to_owned(),
            TokenRefusal::IssuedInFuture => "the token was issued in the future (iat)".to_owned(),
            TokenRefusal::Issuer => "the token's issuer (iss) is not the one accepted".to_owned(),
            TokenRefusal::Audience => "the token's audience (aud) is not this API".to_owned(),
        }
    }
}

impl From<TokenRefusal> for ApiError {
    fn from(refusal: TokenRefusal) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, refusal.code(), refusal.detail())
            .with_field("Authorization")
    }
}

/// The part of a JOSE header read before choosing a key. Parsed here rather than by
/// `jsonwebtoken::decode_header`, which cannot represent `alg: none` and so could
/// not say that this was the rule broken.
#[derive(Deserialize)]
struct JoseHeader {
    alg: Option<String>,
    kid: Option<String>,
}

fn is_valid_kid(kid: &str) -> bool {
    (1..=64).contains(&kid.len()) && kid.bytes().all(|b| b.is_ascii_graphic())
}

impl Authenticator {
    /// Keys without a kid: an HS256 secret, an RS256 public key or both, with the
    /// default rules.
    pub fn new(
        hs256_secret: Option<&[u8]>,
        rs256_public_pem: Option<&[u8]>,
    ) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        if let Some(secret) = hs256_secret {
            keys.push(KeySpec {
                kid: None,
                material: KeyMaterial::Hs256(secret.to_vec()),
            });
        }
        if let Some(pem) = rs256_public_pem {
            keys.push(KeySpec {
                kid: None,
                material: KeyMaterial::Rs256Pem(pem.to_vec()),
            });
        }
        Self::with_keys(keys, TokenRules::default())
    }

    /// A key set (each key with its algorithm) and the rules tokens must pass.
    pub fn with_keys(keys: Vec<KeySpec>, rules: TokenRules) -> Result<Self, KeyError> {
        if rules.issuer.is_empty() || rules.audience.is_empty() {
            return Err(KeyError::EmptyRule);
        }
        let mut by_kid = HashMap::new();
        let mut defaults: Vec<VerificationKey> = Vec::new();
        for spec in keys {
            let (algorithm, key) = match spec.material {
                KeyMaterial::Hs256(secret) if secret.len() < HS256_SECRET_MIN_BYTES => {
                    return Err(KeyError::SecretTooShort)
                }
                KeyMaterial::Hs256(secret) => (Algorithm::HS256, DecodingKey::from_secret(&secret)),
                KeyMaterial::Rs256Pem(pem) => (
                    Algorithm::RS256,
                    DecodingKey::from_rsa_pem(&pem)
                        .map_err(|e| KeyError::BadPublicKey(e.to_string()))?,
                ),
            };
            let key = VerificationKey {
                kid: spec.kid.clone(),
                algorithm,
                key,
            };
            match spec.kid {
                Some(kid) if !is_valid_kid(&kid) => return Err(KeyError::BadKid(kid)),
                Some(kid) => {
                    if by_kid.insert(kid.clone(), key).is_some() {
                        return Err(KeyError::DuplicateKid(kid));
                    }
                }
                None => {
                    if defaults.iter().any(|k| k.algorithm == algorithm) {
                        return Err(KeyError::DuplicateDefault(algorithm));
                    }
                    defaults.push(key);
                }
            }
        }
        if by_kid.is_empty() && defaults.is_empty() {
            return Err(KeyError::NoKey);
        }
        Ok(Authenticator {
            inner: std::sync::Arc::new(KeySet {
                by_kid,
                defaults,
                rules,
                verified: VerifiedTokens::default(),
            }),
        })
    }

    pub fn rules(&self) -> &TokenRules {
        &self.inner.rules
    }

    /// The principal of a token, or the rule it breaks.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenRefusal> {
        if token.len() > TOKEN_MAX_BYTES {
            return Err(TokenRefusal::Malformed(format!(
                "the token is longer than {TOKEN_MAX_BYTES} bytes"
            )));
        }
        let set = &self.inner;
        if let Some(known) = set.verified.get(token, now_secs(), set.rules.leeway_secs) {
            return known;
        }
        let (principal, exp) = self.check(token)?;
        set.verified.insert(token, &principal, exp);
        Ok(principal)
    }

    /// Every check of a token not verified before: its principal and `exp`.
    fn check(&self, token: &str) -> Result<(Principal, u64), TokenRefusal> {
        let header = read_header(token)?;
        let alg = header
            .alg
            .ok_or_else(|| TokenRefusal::Algorithm("the token's header names no alg".into()))?;
        if alg.eq_ignore_ascii_case("none") {
            return Err(TokenRefusal::Algorithm(
                "unsigned tokens (alg: none) are never accepted".into(),
            ));
        }
        let algorithm = match alg.as_str() {
            "HS256" => Algorithm::HS256,
            "RS256" => Algorithm::RS256,
            other => {
                return Err(TokenRefusal::Algorithm(format!(
                    "tokens signed with {other:?} are not accepted"
                )))
            }
        };
        let set = &self.inner;
        let key = match &header.kid {
            Some(kid) => set.by_kid.get(kid).ok_or_else(|| {
                TokenRefusal::UnknownKey(format!("the key id (kid) {kid:?} is not configured"))
            })?,
            None => set
                .defaults
                .iter()
                .find(|k| k.algorithm == algorithm)
                .or_else(|| set.defaults.first())
                .ok_or_else(|| {
                    TokenRefusal::UnknownKey("the token must name its key (kid)".into())
                })?,
        };
        // The key decides the algorithm, never the token: this is what refuses an
        // HS256 token whose "secret" is the RS256 public key.
        if key.algorithm != algorithm {
            return Err(TokenRefusal::Algorithm(format!(
                "{} verifies {:?} tokens only, this one says {alg}",
                key.kid
                    .as_deref()
                    .map_or_else(|| "the default key".to_owned(), |k| format!("key {k:?}")),
                key.algorithm
            )));
        }
        let rules = &set.rules;
        let mut validation = Validation::new(key.algorithm);
        validation.algorithms = vec![key.algorithm];
        validation.leeway = rules.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&rules.issuer]);
        validation.set_audience(&[&rules.audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        let data = jsonwebtoken::decode::<VerifiedClaims>(token, &key.key, &validation)
            .map_err(refusal_of)?;
        let VerifiedClaims {
            sub,
            role,
            iat,
            exp,
        } = data.claims;
        if iat.is_some_and(|iat| iat > now_secs().saturating_add(rules.leeway_secs)) {
            return Err(TokenRefusal::IssuedInFuture);
        }
        let role = role
            .ok_or_else(|| TokenRefusal::Claims("the token has no role claim".into()))?
            .parse::<Role>()
            .map_err(|e| TokenRefusal::Claims(format!("the token's role: {e}")))?;
        let sub = sub.unwrap_or_default();
        if sub.is_empty() || sub.len() > SUBJECT_MAX_BYTES || sub.chars().any(char::is_control) {
            return Err(TokenRefusal::Claims(format!(
                "the token's sub must be 1..={SUBJECT_MAX_BYTES} bytes without control characters"
            )));
        }
        Ok((Principal { sub, role }, exp))
    }
}

fn read_header(token: &str) -> Result<JoseHeader, TokenRefusal> {
    let not_a_jwt = || TokenRefusal::Malformed("the bearer token is not a JWT".into());
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(not_a_jwt());
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| not_a_jwt())?;
    serde_json::from_slice(&bytes).map_err(|_| not_a_jwt())
}

fn refusal_of(error: jsonwebtoken::errors::Error) -> TokenRefusal {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => TokenRefusal::Expired,
        ErrorKind::ImmatureSignature => TokenRefusal::NotYetValid,
        ErrorKind::InvalidSignature => TokenRefusal::Signature,
        ErrorKind::InvalidIssuer => TokenRefusal::Issuer,
        ErrorKind::InvalidAudience => TokenRefusal::Audience,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            TokenRefusal::Algorithm("the token's algorithm is not the key's".into())
        }
        ErrorKind::MissingRequiredClaim(claim) => {
            TokenRefusal::Claims(format!("the token has no {claim} claim"))
        }
        ErrorKind::Json(e) => TokenRefusal::Claims(format!("the token's claims: {e}")),
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
            TokenRefusal::Malformed("the bearer token is not a JWT".into())
        }
        _ => TokenRefusal::Malformed(format!("the token cannot be verified: {error}")),
    }
}

fn now_secs() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0)
}

/// Signs HS256 tokens (`commerce token`, tests), with a `kid` in the header if given.
pub fn mint_hs256_with_kid(
    secret: &[u8],
    kid: Option<&str>,
    claims: &Claims,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret))
}

/// Signs HS256 tokens without a `kid`.
pub fn mint_hs256(secret: &[u8], claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    mint_hs256_with_kid(secret, None, claims)
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
        // Verified already by the access layer (`policy`) on routes that need a role.
        if let Some(principal) = parts.extensions.get::<Principal>() {
            return Ok(principal.clone());
        }
        bearer_principal(parts, state.authenticator()).map_err(TokenRefusal::counted)
    }
}

impl TokenRefusal {
    /// The 401 problem, counted by rule in `/metrics`; the token itself goes
    /// nowhere (not even the logs).
    pub(crate) fn counted(self) -> ApiError {
        metrics::counter!("commerce_token_refusals_total", "rule" => self.code()).increment(1);
        self.into()
    }
}

/// The principal of a request's `Authorization: Bearer` token.
pub(crate) fn bearer_principal(
    parts: &Parts,
    authenticator: &Authenticator,
) -> Result<Principal, TokenRefusal> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or(TokenRefusal::Missing)?;
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
            TokenRefusal::Malformed("the Authorization header must be `Bearer <token>`".into())
        })?;
    authenticator.verify(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn claims(role: Role, exp: u64) -> Claims {
        Claims::new("alice", role, exp)
    }

    #[test]
    fn a_minted_token_verifies() {
        let auth = Authenticator::new(Some(SECRET), None).unwrap();
        let token = mint_hs256(SECRET, &claims(Role::Admin, now_secs() + 60)).unwrap();
        let principal = auth.verify(&token).unwrap();
        assert_eq!(principal.role, Role::Admin);
        assert_eq!(principal.actor(), "admin:alice");
    }

    #[test]
    fn expired_and_foreign_tokens_are_refused() {
        let auth = Authenticator::new(Some(SECRET), None).unwrap();
        let expired = mint_hs256(SECRET, &claims(Role::Admin, now_secs() - 600)).unwrap();
        assert_eq!(auth.verify(&expired), Err(TokenRefusal::Expired));
        let other = mint_hs256(
            b"another secret, also long enough!",
            &claims(Role::Admin, now_secs() + 60),
        )
        .unwrap();
        assert_eq!(auth.verify(&other), Err(TokenRefusal::Signature));
        assert_eq!(
            auth.verify("not.a.jwt").unwrap_err().code(),
            "token-malformed"
        );
    }

    #[test]
    fn a_verified_token_is_remembered_until_its_exp_and_refusals_are_not() {
        let auth = Authenticator::new(Some(SECRET), None).unwrap();
        let exp = now_secs() + 60;
        let token = mint_hs256(SECRET, &claims(Role::Customer, exp)).unwrap();
        let principal = auth.verify(&token).unwrap();
        let verified = &auth.inner.verified;
        let leeway = auth.rules().leeway_secs;
        assert_eq!(
            verified.get(&token, now_secs(), leeway),
            Some(Ok(principal.clone()))
        );
        assert_eq!(auth.verify(&token), Ok(principal.clone()));
        // Past its exp and the leeway, the remembered token is refused and forgotten.
        assert_eq!(
            verified.get(&token, exp + leeway + 1, leeway),
            Some(Err(TokenRefusal::Expired))
        );
        assert_eq!(verified.get(&token, now_secs(), leeway), None);
        // Refused tokens are checked every time, never remembered.
        let other = mint_hs256(
            b"another secret, also long enough!",
            &claims(Role::Admin, exp),
        )
        .unwrap();
        assert_eq!(auth.verify(&other), Err(TokenRefusal::Signature));
        assert_eq!(verified.get(&other, now_secs(), leeway), None);
        // Bounded: a full map is emptied before it takes another token.
        for i in 0..VERIFIED_TOKENS_MAX {
            verified.insert(&format!("token-{i}"), &principal, exp);
        }
        assert_eq!(verified.lock().len(), VERIFIED_TOKENS_MAX);
        verified.insert(&token, &principal, exp);
        assert_eq!(verified.lock().len(), 1);
    }

    #[test]
    fn keys_are_selected_by_kid_and_pin_their_algorithm() {
        let old = b"the-old-secret-of-thirty-two-bytes!!".to_vec();
        let new = b"the-new-secret-of-thirty-two-bytes!!".to_vec();
        let auth = Authenticator::with_keys(
            vec![
                KeySpec {
                    kid: Some("2026-10".into()),
                    material: KeyMaterial::Hs256(old.clone()),
                },
                KeySpec {
                    kid: Some("2026-11".into()),
                    material: KeyMaterial::Hs256(new.clone()),
                },
            ],
            TokenRules::default(),
        )
        .unwrap();
        let c = claims(Role::Customer, now_secs() + 60);
        for (kid, secret) in [("2026-10", &old), ("2026-11", &new)] {
            let token = mint_hs256_with_kid(secret, Some(kid), &c).unwrap();
            assert!(auth.verify(&token).is_ok(), "{kid}");
        }
        let crossed = mint_hs256_with_kid(&old, Some("2026-11"), &c).unwrap();
        assert_eq!(auth.verify(&crossed), Err(TokenRefusal::Signature));
        let unknown = mint_hs256_with_kid(&old, Some("2025-01"), &c).unwrap();
        assert_eq!(
            auth.verify(&unknown).unwrap_err().code(),
            "token-unknown-key"
        );
        let no_kid = mint_hs256(&old, &c).unwrap();
        assert_eq!(
            auth.verify(&no_kid).unwrap_err().code(),
            "token-unknown-key"
        );
    }

    #[test]
    fn bad_key_sets_are_refused() {
        assert!(matches!(
            Authenticator::new(Some(b"short"), None),
            Err(KeyError::SecretTooShort)
        ));
        assert!(matches!(
            Authenticator::new(None, None),
            Err(KeyError::NoKey)
        ));
        let twice = |kid: Option<&str>| {
            Authenticator::with_keys(
                vec![
                    KeySpec {
                        kid: kid.map(Into::into),
                        material: KeyMaterial::Hs256(SECRET.to_vec()),
                    },
                    KeySpec {
                        kid: kid.map(Into::into),
                        material: KeyMaterial::Hs256(SECRET.to_vec()),
                    },
                ],
                TokenRules::default(),
            )
        };
        assert!(matches!(twice(Some("a")), Err(KeyError::DuplicateKid(_))));
        assert!(matches!(twice(None), Err(KeyError::DuplicateDefault(_))));
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
