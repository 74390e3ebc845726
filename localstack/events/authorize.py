#!/usr/bin/env python3
"""Prints an API Gateway event of this folder with a bearer token, for authorization on.

    TOKEN_SIGNING_KEY=… localstack/events/authorize.py kickoff-system.json CLIENT_ID [SCOPE] > event.json

The token is what the token function would issue to CLIENT_ID (a client registered in the
database, `bulk-export client add`): an HS256 JWT signed with TOKEN_SIGNING_KEY (the key the
functions are started with), for the FHIR base of the event (https://<requestContext.domainName>),
valid 300 s, with SCOPE (default system/*.read). For local runs only (`cargo lambda invoke`,
`sam local invoke`): in AWS the key is in Secrets Manager and clients get tokens from /auth/token.
Python's standard library only.
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import time
import uuid
from pathlib import Path


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(key: bytes, base: str, client_id: str, scope: str) -> str:
    now = int(time.time())
    header = {"typ": "JWT", "alg": "HS256"}
    claims = {
        "iss": base,
        "sub": client_id,
        "aud": base,
        "exp": now + 300,
        "iat": now,
        "jti": str(uuid.uuid4()),
        "scope": scope,
    }
    signing_input = ".".join(
        b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def main() -> int:
    if len(sys.argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    key = os.environ.get("TOKEN_SIGNING_KEY", "").strip()
    if len(key) < 32:
        print("authorize.py: set TOKEN_SIGNING_KEY (at least 32 bytes) to the functions' key", file=sys.stderr)
        return 2
    path = Path(sys.argv[1])
    if not path.exists():
        path = Path(__file__).parent / sys.argv[1]
    event = json.loads(path.read_text())
    context = event["requestContext"]
    base = "https://" + context["domainName"]
    # A REST API (v1) event: the stage is part of the base (https://{domain}/fhir).
    if event.get("version") != "2.0" and context.get("stage") not in (None, "", "$default"):
        base += "/" + context["stage"]
    scope = sys.argv[3] if len(sys.argv) == 4 else "system/*.read"
    bearer = "Bearer " + token(key.encode(), base, sys.argv[2], scope)
    event.setdefault("headers", {})["authorization"] = bearer
    if isinstance(event.get("multiValueHeaders"), dict):
        event["multiValueHeaders"]["authorization"] = [bearer]
    print(json.dumps(event, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
