//! The web console (placeholder until the pages land).
use crate::Ctx;
pub fn router(ctx: Ctx) -> axum::Router {
    axum::Router::new().with_state(ctx)
}
