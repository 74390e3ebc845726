#!/usr/bin/env python3
"""What template.yaml deploys for each Lambda function, resolved against local stand-ins.

    stack_env.py VALUES.json [template.yaml]

VALUES.json names what a deployment would create: {"parameters": {Name: value} (overrides of the
template's defaults), "resources": {LogicalId: what !Ref gives}, "attributes": {"LogicalId.Attr":
what !GetAtt gives}, "pseudo": {"AWS::Region": …}}. Prints JSON: for each function the stack
deploys under those parameters (Conditions evaluated), keyed by its Handler: its logical id,
Timeout, MemorySize and the environment variables (Globals merged with its own) with every
intrinsic resolved; plus the export queue's VisibilityTimeout and maxReceiveCount and the
exporter's SQS BatchSize. A reference this file cannot resolve is an error naming it, so a new
variable in the template cannot slip past the Lambda tests (tests/src/lambda_rig).

Needs cfn-lint's YAML loader (the tools venv of scripts/test.sh), as scripts/check-functions.py.
"""

import json
import re
import sys
from pathlib import Path

from cfnlint.decode import decode

ROOT = Path(__file__).resolve().parent.parent.parent


class Unresolved(Exception):
    pass


def main():
    values = json.loads(Path(sys.argv[1]).read_text())
    template_path = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "template.yaml"
    template, matches = decode(str(template_path))
    if matches:
        raise SystemExit(f"stack_env: cannot read {template_path}: {matches}")

    params = {
        name: str(p.get("Default", "")) if not isinstance(p.get("Default"), list) else p["Default"]
        for name, p in template.get("Parameters", {}).items()
    }
    for name, value in values.get("parameters", {}).items():
        if name not in params:
            raise SystemExit(f"stack_env: template.yaml has no parameter {name}")
        params[name] = value
    resources = values.get("resources", {})
    attributes = values.get("attributes", {})
    pseudo = {
        "AWS::Region": "us-east-1",
        "AWS::AccountId": "123456789012",
        "AWS::Partition": "aws",
        "AWS::StackName": "fhir-bulk-local",
        "AWS::URLSuffix": "amazonaws.com",
        "AWS::NoValue": None,
    }
    pseudo.update(values.get("pseudo", {}))

    def ref(name):
        if name in params:
            return params[name]
        if name in pseudo:
            return pseudo[name]
        if name in resources:
            return resources[name]
        raise Unresolved(f"!Ref {name}")

    def getatt(spec):
        key = spec if isinstance(spec, str) else ".".join(spec)
        if key in attributes:
            return attributes[key]
        raise Unresolved(f"!GetAtt {key}")

    conditions = template.get("Conditions", {})

    def condition(name):
        return bool(resolve(conditions[name]))

    def sub(text, variables):
        def one(m):
            name = m.group(1)
            if name in variables:
                return str(resolve(variables[name]))
            if "." in name and name.split(".", 1)[0] not in params:
                return str(getatt(name))
            return str(ref(name))

        return re.sub(r"\$\{([^}!]+)\}", one, text)

    def resolve(node):
        if isinstance(node, dict) and len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                return ref(arg)
            if key == "Fn::GetAtt":
                return getatt(arg)
            if key == "Fn::Sub":
                if isinstance(arg, str):
                    return sub(arg, {})
                return sub(arg[0], arg[1])
            if key == "Fn::Join":
                return arg[0].join(str(resolve(x)) for x in resolve(arg[1]))
            if key == "Fn::If":
                return resolve(arg[1] if condition(arg[0]) else arg[2])
            if key == "Fn::Equals":
                return str(resolve(arg[0])) == str(resolve(arg[1]))
            if key == "Fn::Not":
                return not resolve(arg[0])
            if key == "Fn::And":
                return all(resolve(x) for x in arg)
            if key == "Fn::Or":
                return any(resolve(x) for x in arg)
            if key == "Condition":
                return condition(arg)
        if isinstance(node, dict):
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(x) for x in node]
        return node

    glob = template.get("Globals", {}).get("Function", {})
    out = {"functions": {}}
    for logical_id, r in template["Resources"].items():
        if r.get("Condition") and not condition(r["Condition"]):
            continue
        props = r.get("Properties", {})
        if r.get("Type") == "AWS::Serverless::Function":
            env = dict(glob.get("Environment", {}).get("Variables", {}))
            env.update(props.get("Environment", {}).get("Variables", {}))
            try:
                resolved = {k: resolve(v) for k, v in env.items()}
            except Unresolved as e:
                raise SystemExit(f"stack_env: {logical_id}: cannot resolve {e}")
            out["functions"][props["Handler"]] = {
                "logical_id": logical_id,
                "timeout": int(resolve(props.get("Timeout", glob.get("Timeout", 3)))),
                "memory": int(resolve(props.get("MemorySize", glob.get("MemorySize", 128)))),
                "env": {k: str(v) for k, v in resolved.items() if v is not None},
            }
        elif r.get("Type") == "AWS::SQS::Queue" and "RedrivePolicy" in props:
            out["queue"] = {
                "logical_id": logical_id,
                "visibility_timeout": int(props.get("VisibilityTimeout", 30)),
                "max_receive_count": int(props["RedrivePolicy"]["maxReceiveCount"]),
            }
        elif r.get("Type") == "AWS::Lambda::EventSourceMapping":
            out["batch_size"] = int(resolve(props.get("BatchSize", 10)))
    print(json.dumps(out, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
