use super::*;

#[test]
fn every_function_is_declared_once_with_what_its_code_builds() {
    let d = declaration().unwrap();
    assert_eq!(d.functions.len(), Function::ALL.len());
    // Every function reads the database credentials from their secret.
    assert_eq!(
        d.common_actions["secretsmanager:GetSecretValue"].on,
        ["DatabaseSecretArn"]
    );
    assert!(d.common_env.iter().any(|v| v == "DATABASE_SECRET"));
    for f in Function::ALL {
        assert_eq!(
            f.spec().resource.to_lowercase(),
            format!("{}function", f.name())
        );
    }
    // What the composition root builds for each, from the declaration.
    let built = |f: Function| {
        let s = f.spec();
        (s.uses_storage(), s.sends_wake_ups(), s.reads_signing_key())
    };
    assert_eq!(built(Function::Kickoff), (false, true, true));
    assert_eq!(built(Function::Status), (false, true, true));
    assert_eq!(built(Function::File), (true, false, true));
    assert_eq!(built(Function::Token), (false, false, true));
    // The api function answers the four HTTP functions' routes with all they use.
    assert_eq!(built(Function::Api), (true, true, true));
    assert!(!Function::Api.spec().writes_storage());
    let api_env = &Function::Api.spec().env;
    for f in [
        Function::Kickoff,
        Function::Status,
        Function::File,
        Function::Token,
    ] {
        assert!(f.spec().env.iter().all(|v| api_env.contains(v)), "{f:?}");
    }
    assert_eq!(Function::from_name("api"), Some(Function::Api));
    assert_eq!(Function::from_name("bootstrap"), None);
    assert_eq!(d.binary, "bulk-export-lambda");
    assert_eq!(built(Function::Exporter), (true, true, false));
    assert_eq!(built(Function::Migrate), (false, false, false));
    assert!(Function::Exporter.spec().writes_storage());
    assert!(!Function::File.spec().writes_storage());
}

#[tokio::test]
#[cfg(not(debug_assertions))]
async fn an_undeclared_client_refuses_every_call() {
    let store = NotDeclared(Function::Token);
    assert!(store.writer("a/b").await.is_err());
    assert!(JobQueue::send(&store, Uuid::nil()).await.is_err());
}

#[tokio::test]
#[cfg(debug_assertions)]
#[should_panic(expected = "the token function does not declare sqs:SendMessage")]
async fn an_undeclared_client_panics_in_debug_builds() {
    let _ = JobQueue::send(&NotDeclared(Function::Token), Uuid::nil()).await;
}
