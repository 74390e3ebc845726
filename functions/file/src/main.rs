//! File Lambda: `$exportfilerequest`, a redirect to a presigned URL.
//! Everything is in `shared` (see `shared::lambda::main`).

fn main() -> Result<(), lambda_runtime::Error> {
    shared::lambda::main(shared::app::Function::File)
}
