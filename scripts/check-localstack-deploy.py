#!/usr/bin/env python3
"""Deploys template.yaml (ApiType=RestApi) to a LocalStack started here without Docker, and checks
that every resource other than Lambda's is created as declared.

LocalStack's community edition serves the REST API (API Gateway v1) but not the HTTP API, and its
Lambda service needs Docker to create a function. So this check does what `sam deploy` does up to
CloudFormation - translate the SAM template (samtranslator), with the functions' code in an S3
object - then leaves out the Lambda resources (functions, permissions, the event source mapping,
the migrations custom resource that a function backs), deploys the rest, and reads every resource
back through its own service's API: the bucket's encryption, public access block, ownership,
lifecycle and TLS-only policy; the queues and their redrive; the signing-key secret; the REST
API's routes, their integration with the api function and the stage's throttling; the log
groups' retention; each function's role policy against infra/functions.json; the schedule; the
alarm topic and alarms; the outputs. It fails if anything left in the template refers to a Lambda
resource (the deploy would then need one).

    scripts/check-localstack-deploy.py [--keep]

Needs the tools venv of scripts/setup-tools.sh (cfn-lint, samtranslator, boto3) and LocalStack's
own venv ($TOOLS_DIR/localstack-venv). Ends with `deploy: N passed, M failed`.
"""

import copy
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import boto3
from cfnlint.decode import decode
from samtranslator.translator.transform import transform

ROOT = Path(__file__).resolve().parent.parent
TOOLS_DIR = Path(os.environ.get("TOOLS_DIR", Path.home() / ".cache/fhir-bulk-tools"))
LOCALSTACK_PYTHON = TOOLS_DIR / "localstack-venv/bin/python"
REGION = "us-east-1"
STACK = "fhir-bulk-check"
PARAMS = {
    "ApiType": "RestApi",
    "Architecture": "x86_64",
    "DatabaseUrl": "postgres://db.internal:5432/fhir",
    "DatabaseSslMode": "disable",
    "ExporterSchedule": "rate(5 minutes)",
    "LogRetentionDays": "14",
    "ExportRetentionDays": "3",
    "ApiRateLimit": "40",
    "ApiBurstLimit": "80",
    "TokenRateLimit": "4",
    "TokenBurstLimit": "8",
}

passed, failed = 0, 0
# Properties LocalStack's community resource providers do not apply (4.13: the S3 bucket's
# lifecycle, a log group's retention, a stage's method settings): when the live value is absent
# it is listed, not passed; when LocalStack applies it, it is checked like the rest.
not_applied = []


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {what}", flush=True)
    return ok


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_localstack(port, log):
    env = dict(
        os.environ,
        GATEWAY_LISTEN=f"127.0.0.1:{port}",
        LOCALSTACK_HOST=f"127.0.0.1:{port}",
        SERVICES="s3,sqs,cloudformation,iam,sts,secretsmanager,apigateway,logs,sns,cloudwatch,events",
        SQS_ENDPOINT_STRATEGY="path",
        DNS_ADDRESS="0",
        SKIP_SSL_CERT_DOWNLOAD="1",
        DISABLE_EVENTS="1",
        FILESYSTEM_ROOT=STATE_DIR,
    )
    proc = subprocess.Popen(
        [str(LOCALSTACK_PYTHON), "-m", "localstack.runtime.main"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/_localstack/health"
    for _ in range(240):
        if proc.poll() is not None:
            raise SystemExit(f"LocalStack exited ({proc.returncode}); see {log.name}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"LocalStack did not start in 120 s; see {log.name}")


def condition_true(conditions, params, name):
    def ev(x):
        if isinstance(x, dict):
            (fn, arg), = x.items()
            if fn == "Ref":
                return params.get(arg, TEMPLATE_DEFAULTS.get(arg, ""))
            if fn == "Condition":
                return ev(conditions[arg])
            if fn == "Fn::Equals":
                return ev(arg[0]) == ev(arg[1])
            if fn == "Fn::Not":
                return not ev(arg[0])
            if fn == "Fn::And":
                return all(ev(a) for a in arg)
            if fn == "Fn::Or":
                return any(ev(a) for a in arg)
            if fn == "Fn::Join":
                v = ev(arg[1])
                return arg[0].join(v if isinstance(v, list) else [v])
            raise ValueError(f"condition function {fn}")
        return x

    return name is None or ev(conditions[name])


def refers_to(value, names):
    """The names among `names` that `value` (a template fragment) refers to."""
    found = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "Ref" and v in names:
                found.add(v)
            elif k == "Fn::GetAtt":
                target = v[0] if isinstance(v, list) else v.split(".")[0]
                if target in names:
                    found.add(target)
            elif k == "Fn::Sub":
                text = v[0] if isinstance(v, list) else v
                found |= {n for n in names if "${" + n + "}" in text or "${" + n + "." in text}
                if isinstance(v, list):
                    found |= refers_to(v[1], names)
            else:
                found |= refers_to(v, names)
    elif isinstance(value, list):
        for v in value:
            found |= refers_to(v, names)
    return found


def applied(live, what):
    """False (and listed) when LocalStack left `what` unset; True when there is a value to check."""
    if live:
        return True
    not_applied.append(what)
    return False


def call(what, fn, **kwargs):
    """fn(**kwargs), or None (a failed check) when the service says there is no such thing."""
    try:
        return fn(**kwargs)
    except Exception as e:  # noqa: BLE001 (botocore's ClientError and friends)
        check(False, f"{what}: {e}")
        return None


def policy_actions(doc):
    if isinstance(doc, str):
        doc = json.loads(urllib.parse.unquote(doc))
    actions = {}
    for st in doc.get("Statement", []):
        acts = st.get("Action", [])
        res = st.get("Resource", [])
        for a in [acts] if isinstance(acts, str) else acts:
            actions.setdefault(a, []).extend([res] if isinstance(res, str) else res)
    return actions


TEMPLATE_DEFAULTS = {}
STATE_DIR = tempfile.mkdtemp(prefix="localstack-state-")


def main():
    keep = "--keep" in sys.argv
    template, matches = decode(str(ROOT / "template.yaml"))
    if matches:
        print(f"deploy: cannot read template.yaml: {matches}")
        return 1
    for name, p in template["Parameters"].items():
        if "Default" in p:
            TEMPLATE_DEFAULTS[name] = str(p["Default"])
    declaration = json.loads((ROOT / "infra/functions.json").read_text())

    # --- what `sam build` + `sam package` would give CloudFormation ---------------------------
    for r in template["Resources"].values():
        if r["Type"] == "AWS::Serverless::Function":
            r["Properties"]["CodeUri"] = "s3://artifacts/bulk-export-lambda.zip"
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)

    class NoManagedPolicies:
        def load(self):
            return {}

    translated = transform(json.loads(json.dumps(template, default=str)), {}, NoManagedPolicies())
    resources = translated["Resources"]
    lambda_resources = {
        n
        for n, r in resources.items()
        if r["Type"].startswith("AWS::Lambda::") or r["Type"].startswith("Custom::")
    }
    check(len(lambda_resources) >= 8, f"Lambda resources found: {sorted(lambda_resources)}")
    # What CloudFormation creates for ApiType=RestApi, less Lambda's resources.
    conditions = translated.get("Conditions", {})
    deployable = copy.deepcopy(translated)
    for n, r in translated["Resources"].items():
        if n in lambda_resources or not condition_true(conditions, PARAMS, r.get("Condition")):
            del deployable["Resources"][n]
    gone = set(translated["Resources"]) - set(deployable["Resources"])
    for n, r in deployable["Resources"].items():
        users = refers_to({k: v for k, v in r.items() if k != "DependsOn"}, lambda_resources)
        check(not users, f"{n} refers to Lambda resources {sorted(users)}: it could not be created without them")
        deps = r.get("DependsOn")
        if deps:
            left = [d for d in ([deps] if isinstance(deps, str) else deps) if d not in gone]
            if left:
                r["DependsOn"] = left
            else:
                del r["DependsOn"]
    for n, o in list(deployable.get("Outputs", {}).items()):
        check(not refers_to(o, lambda_resources), f"output {n} refers to a Lambda resource")
    expected = deployable["Resources"]

    # --- LocalStack, without Docker -----------------------------------------------------------
    if not LOCALSTACK_PYTHON.exists():
        print(f"deploy: no LocalStack at {LOCALSTACK_PYTHON}: run scripts/setup-tools.sh")
        return 1
    port = free_port()
    log = tempfile.NamedTemporaryFile("w", prefix="localstack-", suffix=".log", delete=False)
    proc = start_localstack(port, log)
    try:
        return deploy_and_check(port, deployable, expected, declaration)
    finally:
        if keep:
            print(f"LocalStack kept at http://127.0.0.1:{port} (pid {proc.pid}), log {log.name}")
        else:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
            shutil.rmtree(STATE_DIR, ignore_errors=True)
            if failed == 0:
                os.unlink(log.name)
            else:
                print(f"LocalStack's log: {log.name}")


def deploy_and_check(port, deployable, expected, declaration):
    endpoint = f"http://127.0.0.1:{port}"
    kw = dict(
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    client = lambda service: boto3.client(service, **kw)  # noqa: E731
    s3, cf, sm = client("s3"), client("cloudformation"), client("secretsmanager")

    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as z:
        z.writestr("bootstrap", "#!/bin/sh\nexit 1\n")
    s3.create_bucket(Bucket="artifacts")
    s3.put_object(Bucket="artifacts", Key="bulk-export-lambda.zip", Body=code.getvalue())
    s3.put_object(Bucket="artifacts", Key="template.json", Body=json.dumps(deployable, default=str))
    db_secret = sm.create_secret(
        Name=f"{STACK}-database", SecretString=json.dumps({"username": "fhir", "password": "pw"})
    )["ARN"]
    params = dict(PARAMS, DatabaseSecretArn=db_secret)
    cf.create_stack(
        StackName=STACK,
        TemplateURL=f"{endpoint}/artifacts/template.json",
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    for _ in range(600):
        stack = cf.describe_stacks(StackName=STACK)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS"):
            break
        time.sleep(0.5)
    created = {
        r["LogicalResourceId"]: r for r in cf.describe_stack_resources(StackName=STACK)["StackResources"]
    }
    if not check(stack["StackStatus"] == "CREATE_COMPLETE", f"stack is {stack['StackStatus']}"):
        for r in created.values():
            if r["ResourceStatus"] != "CREATE_COMPLETE":
                print(f"  {r['LogicalResourceId']}: {r['ResourceStatus']} {r.get('ResourceStatusReason', '')}")
        return 1
    for n, r in expected.items():
        got = created.get(n)
        check(
            got is not None and got["ResourceStatus"] == "CREATE_COMPLETE" and got["ResourceType"] == r["Type"],
            f"{n} ({r['Type']}) created: {got and got['ResourceStatus']}",
        )
    extra = set(created) - set(expected)
    check(not extra, f"created but not expected for ApiType=RestApi: {sorted(extra)}")
    physical = {n: r["PhysicalResourceId"] for n, r in created.items()}
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}

    # --- storage ------------------------------------------------------------------------------
    bucket = physical["ExportBucket"]
    enc = call("bucket encryption", s3.get_bucket_encryption, Bucket=bucket) or {}
    enc = enc.get("ServerSideEncryptionConfiguration", {}).get("Rules", [{}])[0]
    check(enc.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm") == "AES256", f"bucket encryption {enc}")
    pab = call("public access block", s3.get_public_access_block, Bucket=bucket) or {}
    pab = pab.get("PublicAccessBlockConfiguration", {})
    check(all(pab.values()) and len(pab) == 4, f"public access block {pab}")
    own = call("ownership controls", s3.get_bucket_ownership_controls, Bucket=bucket) or {}
    own = own.get("OwnershipControls", {}).get("Rules")
    check(own == [{"ObjectOwnership": "BucketOwnerEnforced"}], f"ownership {own}")
    try:
        rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    except s3.exceptions.ClientError:
        rules = []
    if applied(rules, "the export bucket's lifecycle rules"):
        rules = {r["ID"]: r for r in rules}
        expire = rules.get("expire-exports", {})
        check(
            expire.get("Expiration", {}).get("Days") == int(PARAMS["ExportRetentionDays"])
            and "exports/" in json.dumps(expire.get("Filter", expire.get("Prefix"))),
            f"lifecycle expire-exports {expire}",
        )
        abort = rules.get("abort-incomplete-multipart-uploads", {})
        check(
            abort.get("AbortIncompleteMultipartUpload", {}).get("DaysAfterInitiation") == 1,
            f"lifecycle abort-incomplete-multipart-uploads {abort}",
        )
    policy = json.loads((call("bucket policy", s3.get_bucket_policy, Bucket=bucket) or {}).get("Policy", "{}"))
    deny = [st for st in policy.get("Statement", []) if st["Effect"] == "Deny"]
    check(
        len(deny) == 1 and deny[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}},
        f"bucket policy denies plain HTTP: {policy}",
    )
    check(outputs.get("StoragePath") == f"s3://{bucket}/exports", f"StoragePath output {outputs}")

    # --- queues -------------------------------------------------------------------------------
    sqs = client("sqs")
    attrs = lambda url: sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]  # noqa: E731
    queue, dlq = attrs(physical["ExportQueue"]), attrs(physical["ExportDeadLetterQueue"])
    check(queue.get("VisibilityTimeout") == "1800", f"queue visibility {queue.get('VisibilityTimeout')}")
    check(queue.get("MessageRetentionPeriod") == "345600", "queue retention 4 days")
    redrive = json.loads(queue.get("RedrivePolicy", "{}"))
    check(
        redrive.get("deadLetterTargetArn") == dlq.get("QueueArn") and int(redrive.get("maxReceiveCount", 0)) == 5,
        f"redrive {redrive}",
    )
    check(dlq.get("MessageRetentionPeriod") == "1209600", "dead-letter queue retention 14 days")
    check(outputs.get("ExportQueueUrl") == physical["ExportQueue"], "ExportQueueUrl output")

    # --- signing key --------------------------------------------------------------------------
    key = sm.get_secret_value(SecretId=physical["TokenSigningSecret"])["SecretString"]
    check(len(key) == 64 and key.isalnum(), "token signing key: 64 generated characters")

    # --- the REST API front door --------------------------------------------------------------
    apigw = client("apigateway")
    api_id = physical["FhirRestApi"]
    api_resources = apigw.get_resources(restApiId=api_id, embed=["methods"])["items"]
    routes = {}
    for res in api_resources:
        for method in res.get("resourceMethods", {}):
            integration = apigw.get_integration(restApiId=api_id, resourceId=res["id"], httpMethod=method)
            routes[f"{method} {res['path']}"] = integration
    want = set(declaration["functions"]["api"]["routes"])
    check(set(routes) == want, f"REST API routes {sorted(routes)}, declared {sorted(want)}")
    account = client("sts").get_caller_identity()["Account"]
    function_arn = f"arn:aws:lambda:{REGION}:{account}:function:{STACK}-api"
    for route, integration in routes.items():
        check(
            integration.get("type") == "AWS_PROXY"
            and integration.get("httpMethod") == "POST"
            and integration.get("uri", "").endswith(f"/functions/{function_arn}/invocations"),
            f"{route} integrates with {integration.get('uri')}",
        )
    stage = apigw.get_stage(restApiId=api_id, stageName="fhir")
    settings = stage.get("methodSettings", {})
    all_methods = settings.get("*/*", {})
    token = settings.get("~1auth~1token/POST", {})
    throttled = applied(settings, "the REST API stage's throttling (method settings)")
    throttled and check(
        all_methods.get("throttlingRateLimit") == float(PARAMS["ApiRateLimit"])
        and all_methods.get("throttlingBurstLimit") == int(PARAMS["ApiBurstLimit"]),
        f"stage throttling */* {all_methods}",
    )
    throttled and check(
        token.get("throttlingRateLimit") == float(PARAMS["TokenRateLimit"])
        and token.get("throttlingBurstLimit") == int(PARAMS["TokenBurstLimit"]),
        f"stage throttling on POST /auth/token {token} (all: {sorted(settings)})",
    )
    # https://{api}.execute-api.{region}.amazonaws.com/fhir in AWS; LocalStack puts its own host
    # in place of the region and domain.
    base = outputs.get("FhirBaseUrl", "")
    check(
        base.startswith(f"https://{api_id}.execute-api.") and base.endswith("/fhir"),
        f"FhirBaseUrl output {base}",
    )

    # --- logs ---------------------------------------------------------------------------------
    logs = client("logs")
    for n, r in expected.items():
        if r["Type"] == "AWS::Logs::LogGroup":
            groups = logs.describe_log_groups(logGroupNamePrefix=physical[n])["logGroups"]
            group = next((g for g in groups if g["logGroupName"] == physical[n]), None)
            if check(group is not None, f"log group {n} exists") and applied(
                group.get("retentionInDays"), f"log group {n}'s retention"
            ):
                check(group["retentionInDays"] == int(PARAMS["LogRetentionDays"]), f"log group {n} retention {group}")

    # --- least privilege: each deployed function's role is what it declares ---------------------
    iam = client("iam")
    common = declaration["common_actions"]
    functions = declaration["functions"]
    for name, f in functions.items():
        role = f["resource"] + "Role"
        if role not in expected:
            check(name in ("kickoff", "status", "file", "token"), f"{name}: no role for ApiType=RestApi")
            continue
        role_name = physical[role]
        actions = {}
        for policy_name in iam.list_role_policies(RoleName=role_name)["PolicyNames"]:
            doc = iam.get_role_policy(RoleName=role_name, PolicyName=policy_name)["PolicyDocument"]
            for a, res in policy_actions(doc).items():
                actions.setdefault(a, []).extend(res)
        declared = set(common)
        for served in f.get("serves", []) + [name]:
            declared |= set(functions[served]["actions"])
        check(set(actions) == declared, f"{name}: role allows {sorted(actions)}, declares {sorted(declared)}")
        check("*" not in json.dumps(sorted(actions)), f"{name}: a wildcard action")
        # Logs, and the network interfaces of a function in a VPC: SAM attaches
        # AWSLambdaVPCAccessExecutionRole whenever VpcConfig is present, even when its !If gives
        # AWS::NoValue (the template's Globals say so); a database in RDS needs the VPC anyway.
        attached = iam.list_attached_role_policies(RoleName=role_name)["AttachedPolicies"]
        check(
            sorted(p["PolicyName"] for p in attached)
            == ["AWSLambdaBasicExecutionRole", "AWSLambdaVPCAccessExecutionRole"],
            f"{name}: managed policies {attached}",
        )

    # --- the schedule -------------------------------------------------------------------------
    events = client("events")
    rule = events.describe_rule(Name=physical["ExporterSweepRule"].split("|")[-1])
    check(rule["ScheduleExpression"] == PARAMS["ExporterSchedule"] and rule["State"] == "ENABLED", f"schedule {rule}")
    targets = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
    check(
        [t["Arn"] for t in targets] == [f"arn:aws:lambda:{REGION}:{account}:function:{STACK}-exporter"],
        f"schedule targets {targets}",
    )

    # --- what an operator is told -------------------------------------------------------------
    topic = physical["AlarmTopic"]
    check(outputs.get("AlarmTopicArn") == topic, "AlarmTopicArn output")
    alarms = {
        a["AlarmName"]: a
        for a in client("cloudwatch").describe_alarms(
            AlarmNames=[physical[n] for n, r in expected.items() if r["Type"] == "AWS::CloudWatch::Alarm"]
        )["MetricAlarms"]
    }
    check(len(alarms) == 4, f"alarms {sorted(alarms)}")
    for a in alarms.values():
        check(a.get("AlarmActions") == [topic], f"alarm {a['AlarmName']} notifies {a.get('AlarmActions')}")
    for n in ("FunctionErrorsAlarm", "FunctionThrottlesAlarm"):
        a = alarms.get(physical[n], {})
        named = {
            d["Value"]
            for m in a.get("Metrics", [])
            for d in m.get("MetricStat", {}).get("Metric", {}).get("Dimensions", [])
        }
        want = {f"{STACK}-{x}" for x in ("api", "exporter", "migrate")}
        check(named == want, f"{n} watches {sorted(named)}, want {sorted(want)}")
        total = [m for m in a.get("Metrics", []) if m.get("ReturnData")]
        check(
            len(total) == 1 and total[0].get("Expression") == "SUM([m4, m5, m6])",
            f"{n} sums {total}",
        )
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    rc = 1
    try:
        rc = main()
    finally:
        for what in not_applied:
            print(f"NOT APPLIED by LocalStack (not checked): {what}")
        print(f"deploy: {passed} passed, {failed if rc == 0 or failed else failed + 1} failed")
    sys.exit(rc)
