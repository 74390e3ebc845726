//! Migrate Lambda: the CloudFormation custom resource that applies the database migrations during
//! a deploy, before the other functions of the new version are updated (they depend on it, and
//! refuse a database with pending migrations at cold start).
//! Everything is in `shared` (see `shared::lambda::main`).

fn main() -> Result<(), lambda_runtime::Error> {
    shared::lambda::main(shared::app::Function::Migrate)
}
