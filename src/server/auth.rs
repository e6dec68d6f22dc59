//! Bearer-token authentication with three roles.
//!
//! Tokens come from `--token ROLE:TOKEN` flags and the `SLUICE_TOKENS`
//! environment variable (`ROLE:TOKEN,ROLE:TOKEN`). Without a valid token every
//! route but `/healthz` answers 401; a valid token whose role is too weak gets 403.

use std::collections::HashMap;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::api::ApiError;
use super::AppState;

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read: list and watch queries, read metrics, SHOW/DESCRIBE/EXPLAIN.
    Viewer,
    /// Also submit, stop and delete queries.
    Editor,
    /// Also change the catalog (CREATE/DROP).
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "viewer" => Ok(Role::Viewer),
            "editor" => Ok(Role::Editor),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role '{other}' (viewer, editor, admin)")),
        }
    }
}

/// Tokens and the role each grants.
#[derive(Debug, Default, Clone)]
pub struct Tokens(HashMap<String, Role>);

impl Tokens {
    /// Parses `ROLE:TOKEN` entries.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut tokens = HashMap::new();
        for entry in entries.into_iter().map(str::trim).filter(|e| !e.is_empty()) {
            let (role, token) = entry.split_once(':').ok_or_else(|| format!("token '{entry}' is not ROLE:TOKEN"))?;
            if token.is_empty() {
                return Err(format!("empty token for role {role}"));
            }
            tokens.insert(token.to_string(), role.parse()?);
        }
        Ok(Tokens(tokens))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn role_of(&self, token: &str) -> Option<Role> {
        self.0.get(token).copied()
    }
}

/// Resolves the caller's role, answering 401 without a valid token.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match token.and_then(|t| state.tokens.role_of(t)) {
        Some(role) => {
            request.extensions_mut().insert(role);
            next.run(request).await
        }
        None => ApiError::new(StatusCode::UNAUTHORIZED, "a valid bearer token is required").into_response(),
    }
}

/// 403 unless `role` includes `needed`.
pub fn require(role: Role, needed: Role) -> Result<(), ApiError> {
    if role >= needed {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::FORBIDDEN, format!("this needs the {needed:?} role; the token has {role:?}").to_lowercase()))
    }
}
