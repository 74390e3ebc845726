//! Every Lambda function of template.yaml: the one it is, by its Handler (Lambda's `_HANDLER`).
//! Everything is in `shared` (see `shared::lambda::main_from_handler`).

fn main() -> Result<(), lambda_runtime::Error> {
    shared::lambda::main_from_handler()
}
