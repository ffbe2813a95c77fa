//! API errors: JSON `{"error": "..."}` with the right status. Internal
//! failures are logged and answered with a generic message. Requests that
//! axum cannot extract (path, query, body) are answered the same way,
//! through [`Input`].

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let mut response = (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl ApiError {
    /// What axum refused to extract, by its status: a body over the limit
    /// is 413, a fault of the route itself (a 5xx) is internal, anything
    /// else is the caller's 400 with axum's text.
    fn rejected(status: StatusCode, text: String) -> Self {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(super::BODY_LIMIT)
        } else if status.is_server_error() {
            ApiError::Internal(anyhow::anyhow!(text))
        } else {
            ApiError::BadRequest(text)
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError::rejected(e.status(), e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::rejected(e.status(), e.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::rejected(e.status(), e.body_text())
    }
}

/// Any axum extractor (`Path`, `Query`, `Json`) whose rejection is an
/// [`ApiError`], so bad input is answered like every other error:
/// `Input(Json(body)): Input<Json<T>>`. Take `Result<Input<E>, ApiError>`
/// to decide when a bad input counts (after a 404, say).
pub struct Input<E>(pub E);

// axum asks a path or query of the request's parts and a body of the
// whole request: one impl for each, alike by design.
impl<S, E> FromRequestParts<S> for Input<E>
where
    S: Send + Sync,
    E: FromRequestParts<S>,
    ApiError: From<E::Rejection>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Ok(Input(E::from_request_parts(parts, state).await?))
    }
}

impl<S, E> FromRequest<S> for Input<E>
where
    S: Send + Sync,
    E: FromRequest<S>,
    ApiError: From<E::Rejection>,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        Ok(Input(E::from_request(request, state).await?))
    }
}
