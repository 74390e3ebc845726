//! Token Lambda: SMART Backend Services `POST [base]/auth/token` and
//! `GET .well-known/smart-configuration`.
//! Everything is in `shared` (see `shared::lambda::main`).

fn main() -> Result<(), lambda_runtime::Error> {
    shared::lambda::main(shared::app::Function::Token)
}
