//! Status Lambda: `GET|DELETE $exportstatus`.

use shared::http::status;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    shared::telemetry::init();
    let state = shared::app::state_for(shared::app::Function::Status).await?;
    shared::lambda::run_http(shared::app::Function::Status, move |req| {
        let state = state.clone();
        async move { status::handle(&state, req).await }
    })
    .await
}
