#!/usr/bin/env python3
"""Routes and least privilege per function: template.yaml against infra/functions.json, both ways.

infra/functions.json declares, per Lambda function, the HTTP routes it answers (the route table of
`serve` and the Lambda adapters), the environment variables the stack passes it
and the AWS actions its code calls (the composition root, shared/src/app.rs, builds a function's
clients from the same file). A function that `serves` others (api, behind the REST API front door)
has their variables and actions together, and answers their routes behind its REST API events;
it and the functions it serves are never deployed together (opposite conditions). Every function
builds the one declared binary and names itself by its Handler.
This check fails when template.yaml gives a function a variable or
an action it does not declare, or lacks one it does; when an action's Resource does not name the
declared resource; when Globals passes more than the variables every function reads; or when a
policy is written as a SAM policy template (whose actions this check cannot see).

    scripts/check-functions.py [template.yaml] [infra/functions.json]

Needs cfn-lint's YAML loader (the tools venv of scripts/test.sh). Ends with
`functions: N passed, M failed`.
"""

import json
import sys
from pathlib import Path

from cfnlint.decode import decode

ROOT = Path(__file__).resolve().parent.parent


def actions_of(statement):
    action = statement.get("Action", [])
    return [action] if isinstance(action, str) else list(action)


def merge_served(functions):
    """What shared::app::Declaration::merge_served does: a server has its served ones' env and actions."""
    for f in functions.values():
        for served in f.get("serves", []):
            other = functions[served]
            f["env"] = f["env"] + [v for v in other["env"] if v not in f["env"]]
            for action, use in other["actions"].items():
                mine = f["actions"].setdefault(action, {"on": [], "by": use["by"]})
                mine["on"] = mine["on"] + [o for o in use["on"] if o not in mine["on"]]


def definition_routes(resources):
    """`METHOD /path` of every REST/HTTP API DefinitionBody, by the function its integration names."""
    routes = {}
    for r in resources.values():
        body = r.get("Properties", {}).get("DefinitionBody")
        if r.get("Type") not in ("AWS::Serverless::Api", "AWS::Serverless::HttpApi") or not body:
            continue
        for path, methods in body.get("paths", {}).items():
            for method, op in methods.items():
                uri = json.dumps(op.get("x-amazon-apigateway-integration", {}).get("uri"))
                target = uri.split(":function:${AWS::StackName}-", 1)[-1].split("/", 1)[0]
                verb = "ANY" if method == "x-amazon-apigateway-any-method" else method.upper()
                routes.setdefault(target, set()).add(f"{verb} {path}")
    return routes


def main():
    template_path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "template.yaml"
    spec_path = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "infra/functions.json"
    template, matches = decode(str(template_path))
    if matches:
        print(f"functions: cannot read {template_path}: {matches}")
        return 1
    spec = json.loads(spec_path.read_text())
    merge_served(spec["functions"])
    common = set(spec["common_env"])
    resources = template["Resources"]
    globals_env = set(
        template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    )
    by_definition = definition_routes(resources)
    passed, failed = 0, 0

    def check(ok, what):
        nonlocal passed, failed
        if ok:
            passed += 1
        else:
            failed += 1
            print(f"FAIL {what}")

    check(
        globals_env == common,
        f"Globals passes {sorted(globals_env)}; only what every function reads: {sorted(common)}",
    )
    declared = {f["resource"] for f in spec["functions"].values()}
    in_template = {
        name for name, r in resources.items() if r.get("Type") == "AWS::Serverless::Function"
    }
    check(
        declared == in_template,
        f"functions in template.yaml {sorted(in_template)} vs infra/functions.json {sorted(declared)}",
    )
    for name, f in spec["functions"].items():
        res = resources.get(f["resource"])
        if res is None:
            check(False, f"{name}: no resource {f['resource']} in the template")
            continue
        props = res.get("Properties", {})
        # Built once: the same binary and build for every function, told apart by its Handler.
        metadata = res.get("Metadata", {})
        check(
            metadata.get("BuildMethod") == "rust-cargolambda"
            and metadata.get("BuildProperties") == {"Binary": spec["binary"]}
            and props.get("CodeUri") == ".",
            f"{name}: {f['resource']} does not build the one binary {spec['binary']!r} "
            f"from the workspace root ({metadata}, CodeUri {props.get('CodeUri')!r})",
        )
        check(props.get("Handler") == name, f"{name}: Handler is {props.get('Handler')!r}")
        # Named after the stack: the REST API, the schedule and the alarms name it so.
        check(
            props.get("FunctionName") == {"Fn::Sub": f"${{AWS::StackName}}-{name}"},
            f"{name}: FunctionName is {props.get('FunctionName')!r}, not ${{AWS::StackName}}-{name}",
        )
        for served in f.get("serves", []):
            other = resources.get(spec["functions"][served]["resource"], {})
            check(
                res.get("Condition") is not None
                and other.get("Condition") is not None
                and res.get("Condition") != other.get("Condition"),
                f"{name} serves {served}: they need opposite conditions "
                f"({res.get('Condition')!r}, {other.get('Condition')!r})",
            )
        events = props.get("Events", {}) or {}
        routes = {
            f'{e["Properties"]["Method"].upper()} {e["Properties"]["Path"]}'
            for e in events.values()
            if e.get("Type") in ("HttpApi", "Api")
        } | by_definition.get(name, set())
        want_routes = set(f["routes"])
        check(
            routes == want_routes,
            f"{name}: HttpApi/Api events missing {sorted(want_routes - routes)}, "
            f"not declared {sorted(routes - want_routes)}",
        )
        check(
            len(f["routes"]) == len(want_routes),
            f"{name}: a route is declared twice",
        )
        env = globals_env | set(props.get("Environment", {}).get("Variables", {}))
        want = common | set(f["env"])
        check(
            env == want,
            f"{name}: environment missing {sorted(want - env)}, not declared {sorted(env - want)}",
        )
        granted = {}
        for policy in props.get("Policies", []):
            if not isinstance(policy, dict) or "Statement" not in policy:
                check(False, f"{name}: policy {policy} is not an inline statement list")
                continue
            for st in policy["Statement"]:
                if st.get("Effect") != "Allow":
                    continue
                for a in actions_of(st):
                    granted.setdefault(a, []).append(json.dumps(st.get("Resource")))
        uses = {a: list(u["on"]) for a, u in f["actions"].items()}
        for a, u in spec.get("common_actions", {}).items():
            uses[a] = uses.get(a, []) + list(u["on"])
        want_actions = set(uses)
        check(
            set(granted) == want_actions,
            f"{name}: IAM actions missing {sorted(want_actions - set(granted))}, "
            f"not declared {sorted(set(granted) - want_actions)}",
        )
        for action, on in uses.items():
            resources_granted = granted.get(action, [])
            for resource in resources_granted:
                check(
                    any(f'"{o}' in resource or f"${{{o}" in resource for o in on),
                    f"{name}: {action} on {resource}, declared on {on}",
                )
            for o in on:
                check(
                    any(f'"{o}' in r or f"${{{o}" in r for r in resources_granted),
                    f"{name}: {action} declared on {o}, not granted on it",
                )
            if "*" in action:
                check(False, f"{name}: wildcard action {action}")
    print(f"functions: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
