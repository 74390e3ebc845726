#!/usr/bin/env bash
# Build template.yaml with SAM (cargo lambda) and deploy it to LocalStack.
#
#   localstack/deploy.sh [extra `sam deploy` args...]
#
# Needs: LocalStack running (docker-compose.yml here; the free community image is enough with the
# default API_TYPE=RestApi), sam or samlocal, cargo + cargo-lambda (zig for cross builds), aws or
# awslocal.
# Settings (environment variables, all optional):
#   STACK_NAME        fhir-bulk-export
#   ENDPOINT_URL      http://localhost:4566   (AWS_ENDPOINT_URL is used if set)
#   ARCHITECTURE      host architecture (arm64 | x86_64)
#   DATABASE_ADDRESS  postgres://postgres:5432/fhir_bulk  (as seen from Lambda containers; no password)
#   DATABASE_USER     fhir      } stored in a Secrets Manager secret in LocalStack, which the
#   DATABASE_PASSWORD fhir      } functions read at cold start (DatabaseSecretArn)
#   API_TYPE          RestApi (the front door LocalStack community serves) | HttpApi (LocalStack Pro)
#   PUBLIC_BASE_URL   "": with RestApi, LocalStack's URL of the deployed API
#                     (http://<api-id>.execute-api.localhost.localstack.cloud:<port>/fhir), set by
#                     a second, quick deploy; with HttpApi, API Gateway's domain
#   EXPORTER_SCHEDULE rate(1 minute)
#   LOG_FORMAT        text
#   ARTIFACT_BUCKET   fhir-bulk-sam-artifacts
#   SKIP_BUILD        1 to reuse .aws-sam/build
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"

STACK_NAME="${STACK_NAME:-fhir-bulk-export}"
ENDPOINT_URL="${ENDPOINT_URL:-${AWS_ENDPOINT_URL:-http://localhost:4566}}"
DATABASE_ADDRESS="${DATABASE_ADDRESS:-postgres://postgres:5432/fhir_bulk}"
DATABASE_USER="${DATABASE_USER:-fhir}"
DATABASE_PASSWORD="${DATABASE_PASSWORD:-fhir}"
PUBLIC_BASE_URL="${PUBLIC_BASE_URL:-}"
API_TYPE="${API_TYPE:-RestApi}"
EXPORTER_SCHEDULE="${EXPORTER_SCHEDULE:-rate(1 minute)}"
LOG_FORMAT="${LOG_FORMAT:-text}"
ARTIFACT_BUCKET="${ARTIFACT_BUCKET:-fhir-bulk-sam-artifacts}"
SKIP_BUILD="${SKIP_BUILD:-0}"

if [[ -z "${ARCHITECTURE:-}" ]]; then
  case "$(uname -m)" in
    aarch64 | arm64) ARCHITECTURE=arm64 ;;
    *) ARCHITECTURE=x86_64 ;;
  esac
fi

# Always talk to LocalStack with its dummy account, never a real AWS profile.
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
unset AWS_SESSION_TOKEN AWS_PROFILE
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
export AWS_REGION="$AWS_DEFAULT_REGION"
export AWS_ENDPOINT_URL="$ENDPOINT_URL"
export SAM_CLI_TELEMETRY=0
# Older SAM CLI releases gate rust-cargolambda behind a beta flag.
export SAM_CLI_BETA_RUST_CARGO_LAMBDA=1

# SAM splits --parameter-overrides on spaces unless the value is quoted, and
# rejects an empty value written as `Key=`; Key="value" handles both.
param() { printf '%s="%s"' "$1" "$2"; }
for value in "$API_TYPE" "$ARCHITECTURE" "$DATABASE_ADDRESS" "$PUBLIC_BASE_URL" "$EXPORTER_SCHEDULE" "$LOG_FORMAT"; do
  if [[ "$value" == *'"'* ]]; then
    echo "deploy.sh: parameter values must not contain a double quote" >&2
    exit 1
  fi
done

need() { command -v "$1" >/dev/null 2>&1 || { echo "deploy.sh: '$1' not found on PATH" >&2; exit 1; }; }

if command -v samlocal >/dev/null 2>&1; then SAM=samlocal; else need sam; SAM=sam; fi
if command -v awslocal >/dev/null 2>&1; then
  AWS=(awslocal)
else
  need aws
  AWS=(aws --endpoint-url "$ENDPOINT_URL")
fi

echo "==> LocalStack at $ENDPOINT_URL"
if ! curl -fsS "$ENDPOINT_URL/_localstack/health" >/dev/null; then
  echo "deploy.sh: LocalStack is not reachable at $ENDPOINT_URL" >&2
  echo "           start it with: docker compose -f $HERE/docker-compose.yml up -d" >&2
  exit 1
fi

cd "$ROOT"

if [[ "$SKIP_BUILD" != "1" ]]; then
  need cargo
  need cargo-lambda
  echo "==> sam build ($ARCHITECTURE)"
  "$SAM" build \
    --template-file template.yaml \
    --parameter-overrides "$(param Architecture "$ARCHITECTURE")"
fi

echo "==> artifact bucket s3://$ARTIFACT_BUCKET"
"${AWS[@]}" s3api head-bucket --bucket "$ARTIFACT_BUCKET" >/dev/null 2>&1 \
  || "${AWS[@]}" s3api create-bucket --bucket "$ARTIFACT_BUCKET" >/dev/null

echo "==> database credentials secret"
DB_SECRET_NAME="$STACK_NAME-database"
DB_SECRET_JSON="$(python3 -c 'import json,sys; print(json.dumps({"username": sys.argv[1], "password": sys.argv[2]}))' "$DATABASE_USER" "$DATABASE_PASSWORD")"
if DB_SECRET_ARN="$("${AWS[@]}" secretsmanager describe-secret --secret-id "$DB_SECRET_NAME" --query ARN --output text 2>/dev/null)"; then
  "${AWS[@]}" secretsmanager put-secret-value --secret-id "$DB_SECRET_NAME" --secret-string "$DB_SECRET_JSON" >/dev/null
else
  DB_SECRET_ARN="$("${AWS[@]}" secretsmanager create-secret --name "$DB_SECRET_NAME" \
    --secret-string "$DB_SECRET_JSON" --query ARN --output text)"
fi

deploy() {
  echo "==> sam deploy stack $STACK_NAME ($API_TYPE)"
  "$SAM" deploy \
    --template-file .aws-sam/build/template.yaml \
    --stack-name "$STACK_NAME" \
    --s3-bucket "$ARTIFACT_BUCKET" \
    --region "$AWS_DEFAULT_REGION" \
    --capabilities CAPABILITY_IAM \
    --no-confirm-changeset \
    --no-fail-on-empty-changeset \
    --parameter-overrides \
      "$(param ApiType "$API_TYPE")" \
      "$(param Architecture "$ARCHITECTURE")" \
      "$(param DatabaseUrl "$DATABASE_ADDRESS")" \
      "$(param DatabaseSecretArn "$DB_SECRET_ARN")" \
      "$(param DatabaseSslMode disable)" \
      "$(param PublicBaseUrl "$PUBLIC_BASE_URL")" \
      "$(param ExporterSchedule "$EXPORTER_SCHEDULE")" \
      "$(param LogFormat "$LOG_FORMAT")" \
    "$@"
}
deploy "$@"

# The functions take their base URL from API Gateway's request context, which in LocalStack names
# an https host it does not serve: give them LocalStack's own URL of the REST API instead.
if [[ "$API_TYPE" == RestApi && -z "$PUBLIC_BASE_URL" ]]; then
  API_ID="$("${AWS[@]}" cloudformation describe-stack-resource --stack-name "$STACK_NAME" \
    --logical-resource-id FhirRestApi --query StackResourceDetail.PhysicalResourceId --output text)"
  PORT="$(sed -E 's#^.*:([0-9]+)/?$#\1#' <<<"$ENDPOINT_URL")"
  PUBLIC_BASE_URL="http://$API_ID.execute-api.localhost.localstack.cloud:$PORT/fhir"
  echo "==> PublicBaseUrl=$PUBLIC_BASE_URL"
  deploy "$@"
fi

echo "==> outputs"
"${AWS[@]}" cloudformation describe-stacks --stack-name "$STACK_NAME" \
  --query 'Stacks[0].Outputs[].[OutputKey,OutputValue]' --output table
