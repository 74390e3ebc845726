//! Kick-off Lambda: `$export` at system, Patient and Group level, `metadata` and the
//! OperationDefinitions.
//! Everything is in `shared` (see `shared::lambda::main`).

fn main() -> Result<(), lambda_runtime::Error> {
    shared::lambda::main(shared::app::Function::Kickoff)
}
