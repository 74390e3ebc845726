//! Status Lambda: `GET|DELETE $exportstatus`.
//! Everything is in `shared` (see `shared::lambda::main`).

fn main() -> Result<(), lambda_runtime::Error> {
    shared::lambda::main(shared::app::Function::Status)
}
