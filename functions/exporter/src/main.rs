//! Exporter Lambda: woken by SQS (partial batch failures) and by an EventBridge schedule.
//! Everything is in `shared` (see `shared::lambda::main`).

fn main() -> Result<(), lambda_runtime::Error> {
    shared::lambda::main(shared::app::Function::Exporter)
}
