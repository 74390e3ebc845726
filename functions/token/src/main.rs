//! Token Lambda: SMART Backend Services `POST [base]/auth/token` and
//! `GET .well-known/smart-configuration`.

use shared::auth::token;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    shared::telemetry::init();
    let state = shared::app::state_for(shared::app::Function::Token).await?;
    shared::lambda::run_http(shared::app::Function::Token, move |req| {
        let state = state.clone();
        async move { token::handle(&state, req).await }
    })
    .await
}
