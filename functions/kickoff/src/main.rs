//! Kick-off Lambda: `$export` at system, Patient and Group level, and `metadata`.

use shared::http::kickoff;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    shared::telemetry::init();
    let state = shared::app::state_for(shared::app::Function::Kickoff).await?;
    shared::lambda::run_http(shared::app::Function::Kickoff, move |req| {
        let state = state.clone();
        async move { kickoff::handle(&state, req).await }
    })
    .await
}
