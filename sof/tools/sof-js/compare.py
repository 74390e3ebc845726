#!/usr/bin/env python3
"""Compares two view_rows outputs (rows as multisets, numbers by value); exits 1 on a difference.

Numbers compare to 15 significant digits: serde_json, as this workspace builds it (without
arbitrary_precision or float_roundtrip), may read a long decimal one unit in the last place off
(41.578780225363204 becomes 41.5787802253632). That happens in parsing the resource, before
the view sees it; with arbitrary_precision the outputs are identical.
"""
import json
import sys
from collections import Counter


def canon(v):
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return float(f"{float(v):.15g}")
    if isinstance(v, list):
        return tuple(canon(x) for x in v)
    return tuple(sorted((k, canon(x)) for k, x in v.items()))


def main():
    a, b = (json.load(open(p, encoding="utf-8")) for p in sys.argv[1:3])
    differ = False
    for x, y in zip(a, b):
        i = x["view"]
        if "error" in x or "error" in y:
            print(f"view {i}: sof-js {x.get('error', 'ok')!r}, sof {y.get('error', 'ok')!r}")
            differ |= ("error" in x) != ("error" in y)
            continue
        cx, cy = Counter(map(canon, x["rows"])), Counter(map(canon, y["rows"]))
        if cx == cy:
            print(f"view {i}: same {len(x['rows'])} rows")
            continue
        differ = True
        print(f"view {i}: DIFFERENT: sof-js {len(x['rows'])} rows, sof {len(y['rows'])} rows")
        for r in list(cx - cy)[:3]:
            print("  only sof-js:", dict(r))
        for r in list(cy - cx)[:3]:
            print("  only sof:   ", dict(r))
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
