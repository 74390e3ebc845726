//! The stack of template.yaml, run the way Lambda runs it, on this machine: each function is the
//! shipped bootstrap (`bulk-export-lambda`) under AWS's Runtime Interface Emulator with the
//! Handler, timeout and environment the template gives it (`scripts/lib/stack_env.py` resolves
//! them against the stand-ins below); a front door turns HTTP into API Gateway events; a poller
//! delivers the export queue's real SQS messages as Lambda's event source mapping does; the
//! schedule and CloudFormation's custom-resource requests are invoked with their real events.
//!
//! Stand-ins: the local Postgres (a database per stack), s3s-fs for the bucket (it checks
//! signatures, so presigned downloads are real), moto for SQS and Secrets Manager (the token
//! signing key and the database credentials are read at cold start, as deployed).
//! Test infrastructure only: nothing here is part of the product.

pub mod emulator;
pub mod front_door;
mod poller;
pub mod stall;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

pub use emulator::{Emulator, FunctionSpec, Invocation};
pub use front_door::{ApiType, FrontDoor, LAMBDA_PAYLOAD_LIMIT};
pub use poller::Poller;
pub use stall::StallRelay;

use crate::TestDb;

/// How to deploy the stack.
pub struct StackOptions {
    pub api_type: ApiType,
    /// Template parameters beyond the harness's own (`ExportItemBytes`, …).
    pub parameters: Vec<(String, String)>,
    /// Exporter instances (emulators) the queue's messages are spread over: the exporter's
    /// concurrency.
    pub exporters: usize,
    /// The exporter's timeout instead of the template's (AWS allows any up to 900 s).
    pub exporter_timeout: Option<u64>,
    /// The queue's visibility timeout instead of the template's.
    pub visibility_timeout: Option<u64>,
    /// Whether SQS messages are delivered to the exporter as they arrive.
    pub poll_queue: bool,
    /// Environment added to every function beyond the template's (a deliberate override a test
    /// names; empty for a stack as deployed).
    pub extra_env: Vec<(String, String)>,
    /// Where the functions reach S3 instead of s3s-fs itself (a [`StallRelay`] in front of it).
    pub s3_endpoint: Option<String>,
    /// How often EventBridge invokes the exporter (`ExporterSchedule`, `rate(1 minute)` by
    /// default), in an instance of its own; `None`: only when a test calls [`Stack::schedule`].
    pub schedule_every: Option<Duration>,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            api_type: ApiType::HttpApi,
            parameters: Vec::new(),
            exporters: 1,
            exporter_timeout: None,
            visibility_timeout: None,
            poll_queue: true,
            extra_env: Vec::new(),
            s3_endpoint: None,
            schedule_every: Some(Duration::from_secs(60)),
        }
    }
}

pub struct Stack {
    pub base_url: String,
    pub bucket: String,
    pub queue_url: String,
    pub dlq_url: String,
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
    pub signing_key: String,
    /// Every deployed function but the exporter, by Handler.
    pub functions: BTreeMap<String, Arc<Emulator>>,
    pub exporters: Vec<Arc<Emulator>>,
    pub batch_size: usize,
    pub visibility_timeout: u64,
    pub max_receive_count: u64,
    /// The resolved deployment of each function (Handler → spec), as emulated.
    pub specs: BTreeMap<String, FunctionSpec>,
    /// The instance the schedule's invocations run in.
    pub sweeper: Arc<Emulator>,
    pollers: Vec<Poller>,
    sweeps: Option<tokio::task::JoinHandle<()>>,
    _front_door: FrontDoor,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(task) = self.sweeps.take() {
            task.abort();
        }
    }
}

/// What the template resolves to for this stack (scripts/lib/stack_env.py's answer).
pub fn resolve_template(values: &Value) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let values_file = crate::temp_dir().join("stack-values.json");
    std::fs::write(&values_file, values.to_string()).expect("write values");
    let python = std::env::var("TOOLS_VENV")
        .map(|v| format!("{v}/bin/python"))
        .expect("TOOLS_VENV is not set: run the tests with scripts/test.sh");
    let out = std::process::Command::new(python)
        .arg(root.join("scripts/lib/stack_env.py"))
        .arg(&values_file)
        .arg(root.join("template.yaml"))
        .output()
        .expect("run stack_env.py");
    assert!(
        out.status.success(),
        "stack_env.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stack_env.py JSON")
}

/// The routes of infra/functions.json, by function.
fn declared_routes() -> BTreeMap<String, Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/functions.json");
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("functions.json"))
        .expect("json");
    spec["functions"]
        .as_object()
        .expect("functions")
        .iter()
        .map(|(name, f)| {
            let routes = f["routes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect();
            (name.clone(), routes)
        })
        .collect()
}

impl Stack {
    /// Deploys the stack over `db` (already holding its data, or empty: the migrate function
    /// applies the schema, as the deploy's custom resource does).
    pub async fn deploy(db: &TestDb, options: StackOptions) -> Stack {
        let aws = crate::aws_config().await;
        let sqs = aws_sdk_sqs::Client::new(&aws);
        let secrets = aws_sdk_secretsmanager::Client::new(&aws);
        let (s3, bucket) = crate::new_s3s_bucket().await;
        let signing_key = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let signing_secret = crate::new_secret(&secrets, &signing_key).await;
        let db_secret = crate::new_secret(
            &secrets,
            &json!({"username": "postgres", "password": "trust-auth-ignores-it"}).to_string(),
        )
        .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind front door");
        let base_url = format!(
            "http://{}{}",
            listener.local_addr().expect("addr"),
            options.api_type.base_path()
        );
        let admin = url::Url::parse(&crate::admin_url()).expect("admin url");
        let database_url = format!(
            "postgres://{}:{}/{}",
            admin.host_str().unwrap_or("127.0.0.1"),
            admin.port().unwrap_or(5432),
            db.name
        );
        // The queue names are what the template's resources resolve to; the visibility timeout
        // and redrive come from the template unless a test shortens them.
        let mut parameters: BTreeMap<String, String> = [
            ("ApiType", options.api_type.name().to_string()),
            ("DatabaseUrl", database_url),
            ("DatabaseSslMode", "disable".to_string()),
            ("DatabaseSecretArn", db_secret),
            ("PublicBaseUrl", base_url.clone()),
            ("Architecture", "x86_64".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        parameters.extend(options.parameters.iter().cloned());
        let queue_name = format!("bulkt-{}", uuid::Uuid::new_v4().simple());
        let queue_url = format!("{}/123456789012/{queue_name}", crate::aws_endpoint());
        let resolved = resolve_template(&json!({
            "parameters": parameters,
            "resources": {
                "ExportBucket": bucket,
                "ExportQueue": queue_url,
                "TokenSigningSecret": signing_secret,
            },
        }));
        let queue = &resolved["queue"];
        let visibility_timeout = options
            .visibility_timeout
            .unwrap_or(queue["visibility_timeout"].as_u64().expect("visibility"));
        let max_receive_count = queue["max_receive_count"]
            .as_u64()
            .expect("maxReceiveCount");
        let dlq_url = create_queue(&sqs, &format!("{queue_name}-dlq"), &[]).await;
        let dlq_arn = format!("arn:aws:sqs:us-east-1:123456789012:{queue_name}-dlq");
        let created = create_queue(
            &sqs,
            &queue_name,
            &[
                ("VisibilityTimeout", visibility_timeout.to_string()),
                (
                    "RedrivePolicy",
                    json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count})
                        .to_string(),
                ),
            ],
        )
        .await;
        assert_eq!(created, queue_url, "moto's queue URL");

        // What Lambda sets besides the function's own environment: region and credentials
        // (here those of s3s-fs, which moto accepts too), and the endpoints of the stand-ins.
        let s3s = crate::s3s();
        let mut aws_env: BTreeMap<String, String> = [
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_DEFAULT_REGION", "us-east-1".to_string()),
            ("AWS_ACCESS_KEY_ID", s3s.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", s3s.secret_key.clone()),
            ("AWS_ENDPOINT_URL", crate::aws_endpoint()),
            (
                "AWS_ENDPOINT_URL_S3",
                options.s3_endpoint.clone().unwrap_or(s3s.endpoint.clone()),
            ),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        aws_env.extend(options.extra_env.iter().cloned());

        let mut specs = BTreeMap::new();
        for (handler, f) in resolved["functions"].as_object().expect("functions") {
            let mut timeout = f["timeout"].as_u64().expect("timeout");
            if handler == "exporter" {
                timeout = options.exporter_timeout.unwrap_or(timeout);
            }
            let env: BTreeMap<String, String> =
                serde_json::from_value(f["env"].clone()).expect("env");
            specs.insert(
                handler.clone(),
                FunctionSpec {
                    name: format!("fhir-bulk-local-{handler}"),
                    handler: handler.clone(),
                    timeout_seconds: timeout,
                    memory_mb: f["memory"].as_u64().expect("memory"),
                    env,
                },
            );
        }
        let mut functions = BTreeMap::new();
        let mut exporters = Vec::new();
        let mut sweeper = None;
        for (handler, spec) in &specs {
            if handler == "exporter" {
                let mut sweep = spec.clone();
                sweep.name = format!("{}-schedule", sweep.name);
                sweeper = Some(Arc::new(Emulator::start(sweep, &aws_env).await));
                for i in 0..options.exporters.max(1) {
                    let mut spec = spec.clone();
                    spec.name = format!("{}-{i}", spec.name);
                    exporters.push(Arc::new(Emulator::start(spec, &aws_env).await));
                }
            } else {
                functions.insert(
                    handler.clone(),
                    Arc::new(Emulator::start(spec.clone(), &aws_env).await),
                );
            }
        }
        let routes = declared_routes();
        let front = functions
            .iter()
            .filter(|(name, _)| name.as_str() != "migrate")
            .flat_map(|(name, f)| {
                routes
                    .get(name)
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|r| (r, f.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let front_door = FrontDoor::start(listener, options.api_type, front);
        assert_eq!(front_door.base_url, base_url);
        let batch_size = resolved["batch_size"].as_u64().expect("batch size") as usize;
        let mut stack = Stack {
            base_url,
            bucket,
            queue_url: queue_url.clone(),
            dlq_url,
            sqs: sqs.clone(),
            s3,
            signing_key,
            functions,
            exporters,
            batch_size,
            visibility_timeout,
            max_receive_count,
            specs,
            sweeper: sweeper.expect("an exporter function"),
            pollers: Vec::new(),
            sweeps: None,
            _front_door: front_door,
        };
        let migrated = stack.custom_resource("Create").await;
        assert_eq!(migrated["Status"], "SUCCESS", "migrations: {migrated}");
        if options.poll_queue {
            stack.start_pollers();
        }
        if let Some(every) = options.schedule_every {
            let sweeper = stack.sweeper.clone();
            stack.sweeps = Some(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    sweeper.invoke(&scheduled_event()).await;
                }
            }));
        }
        stack
    }

    /// One poller per exporter instance, as Lambda's event source mapping scales to the
    /// function's concurrency.
    pub fn start_pollers(&mut self) {
        for exporter in &self.exporters {
            self.pollers.push(Poller::start(
                self.sqs.clone(),
                self.queue_url.clone(),
                self.batch_size,
                exporter.clone(),
            ));
        }
    }

    pub fn stop_pollers(&mut self) {
        self.pollers.clear();
    }

    pub fn function(&self, handler: &str) -> &Arc<Emulator> {
        self.functions
            .get(handler)
            .unwrap_or_else(|| panic!("the stack has no {handler} function"))
    }

    /// Every exporter instance: the queue's and the schedule's.
    pub fn all_exporters(&self) -> impl Iterator<Item = &Arc<Emulator>> {
        self.exporters.iter().chain(std::iter::once(&self.sweeper))
    }

    /// The EventBridge scheduled event (the sweep of `ExporterSchedule`), now.
    pub async fn schedule(&self) -> Invocation {
        self.sweeper.invoke(&scheduled_event()).await
    }

    /// A CloudFormation custom-resource request (`Create`, `Update`, `Delete`) to the migrate
    /// function; returns the response it PUT to the presigned ResponseURL.
    pub async fn custom_resource(&self, request_type: &str) -> Value {
        custom_resource(self.function("migrate"), request_type).await
    }

    /// Messages waiting in the dead-letter queue.
    pub async fn dead_letters(&self) -> Vec<String> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.dlq_url)
            .max_number_of_messages(10)
            .send()
            .await
            .expect("receive DLQ");
        out.messages()
            .iter()
            .filter_map(|m| m.body().map(str::to_string))
            .collect()
    }

    /// Every log line of every emulator so far.
    pub fn logs(&self) -> String {
        self.functions
            .values()
            .chain(self.exporters.iter())
            .chain(std::iter::once(&self.sweeper))
            .map(|e| format!("==== {}\n{}", e.spec.name, e.log()))
            .collect()
    }
}

/// What EventBridge sends for a schedule rule.
pub fn scheduled_event() -> Value {
    json!({
        "version": "0",
        "id": uuid::Uuid::new_v4().to_string(),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/fhir-bulk-local-ExporterSweepRule"],
        "detail": {},
    })
}

async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    attributes: &[(&str, String)],
) -> String {
    let mut req = sqs.create_queue().queue_name(name);
    for (k, v) in attributes {
        req = req.attributes(aws_sdk_sqs::types::QueueAttributeName::from(*k), v);
    }
    req.send()
        .await
        .expect("create queue")
        .queue_url()
        .expect("queue url")
        .to_string()
}

/// A CloudFormation custom-resource request (`Create`, `Update`, `Delete`) to a migrate
/// function; returns the response it PUT to the presigned ResponseURL.
pub async fn custom_resource(migrate: &Emulator, request_type: &str) -> Value {
    let (s3, bucket) = crate::new_bucket().await;
    let key = format!("responses/{}", uuid::Uuid::new_v4());
    let presigned = s3
        .put_object()
        .bucket(&bucket)
        .key(&key)
        .presigned(
            aws_sdk_s3::presigning::PresigningConfig::expires_in(Duration::from_secs(3600))
                .expect("presigning"),
        )
        .await
        .expect("presign");
    let mut event = json!({
        "RequestType": request_type,
        "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:fhir-bulk-local-migrate",
        "ResponseURL": presigned.uri(),
        "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/fhir-bulk-local/1",
        "RequestId": uuid::Uuid::new_v4().to_string(),
        "LogicalResourceId": "DatabaseMigrations",
        "ResourceType": "Custom::DatabaseMigrations",
        "ResourceProperties": {
            "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:fhir-bulk-local-migrate",
            "SchemaVersion": "local",
        },
    });
    if request_type != "Create" {
        event["PhysicalResourceId"] = json!("database-migrations");
    }
    let invocation = migrate.invoke(&event).await;
    assert_eq!(invocation.status, 200, "{}", migrate.log());
    let object = s3
        .get_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .expect("the migrate function answered CloudFormation");
    let body = object.body.collect().await.expect("body").into_bytes();
    serde_json::from_slice(&body).expect("a custom resource response")
}
