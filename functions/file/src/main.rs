//! File Lambda: `GET $exportfilerequest` (redirect to a presigned URL).

use shared::http::file;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    shared::telemetry::init();
    let state = shared::app::state_for(shared::app::Function::File).await?;
    shared::lambda::run_http(shared::app::Function::File, move |req| {
        let state = state.clone();
        async move { file::handle(&state, req).await }
    })
    .await
}
