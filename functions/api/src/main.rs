//! Api Lambda: every HTTP route behind one function (the REST API front door, ApiType=RestApi).
//! Everything is in `shared` (see `shared::lambda::main`).

fn main() -> Result<(), lambda_runtime::Error> {
    shared::lambda::main(shared::app::Function::Api)
}
