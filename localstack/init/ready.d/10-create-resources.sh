#!/usr/bin/env bash
# LocalStack ready hook (runs inside the LocalStack container once it is up):
# creates the bucket and queues that the functions use when they run outside a
# deployed stack (cargo lambda watch / cargo test against LocalStack).
# The SAM stack (deploy.sh) creates its own, separately named, resources.
set -euo pipefail

export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
BUCKET="${FHIR_BULK_BUCKET:-fhir-bulk-exports}"
QUEUE="${FHIR_BULK_QUEUE:-fhir-bulk-export-jobs}"
DLQ="${QUEUE}-dlq"

if ! command -v awslocal >/dev/null 2>&1; then
  # Outside the LocalStack image: fall back to the plain AWS CLI.
  awslocal() { aws --endpoint-url "${AWS_ENDPOINT_URL:-http://localhost:4566}" "$@"; }
fi

# --- bucket ----------------------------------------------------------------
if awslocal s3api head-bucket --bucket "$BUCKET" >/dev/null 2>&1; then
  echo "bucket $BUCKET already exists"
else
  awslocal s3api create-bucket --bucket "$BUCKET" >/dev/null
  echo "created bucket $BUCKET"
fi

awslocal s3api put-public-access-block --bucket "$BUCKET" \
  --public-access-block-configuration \
  BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true

awslocal s3api put-bucket-lifecycle-configuration --bucket "$BUCKET" \
  --lifecycle-configuration '{
    "Rules": [
      {"ID": "expire-exports", "Status": "Enabled",
       "Filter": {"Prefix": "exports/"}, "Expiration": {"Days": 7}},
      {"ID": "abort-incomplete-multipart-uploads", "Status": "Enabled",
       "Filter": {"Prefix": ""}, "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}
    ]
  }'

# --- queues (same shape as the template: DLQ, maxReceiveCount 5) ------------
dlq_url=$(awslocal sqs create-queue --queue-name "$DLQ" \
  --attributes MessageRetentionPeriod=1209600 --query QueueUrl --output text)
dlq_arn=$(awslocal sqs get-queue-attributes --queue-url "$dlq_url" \
  --attribute-names QueueArn --query Attributes.QueueArn --output text)

redrive=$(printf '{"deadLetterTargetArn":"%s","maxReceiveCount":"5"}' "$dlq_arn")
attrs=$(printf '{"VisibilityTimeout":"1800","MessageRetentionPeriod":"345600","RedrivePolicy":%s}' \
  "$(printf '%s' "$redrive" | sed 's/"/\\"/g; s/^/"/; s/$/"/')")

queue_url=$(awslocal sqs create-queue --queue-name "$QUEUE" --query QueueUrl --output text)
awslocal sqs set-queue-attributes --queue-url "$queue_url" --attributes "$attrs"

echo "queue  $queue_url (dead letters -> $dlq_url)"
echo "STORAGE_PATH=s3://$BUCKET/exports QUEUE_URL=$queue_url"
