"""Checks the files of a $viewdefinition-export against rows computed here, independently of the
server, from the input ndjson the server loaded.

    check_views.py INPUT_DIR EXPORT_DIR

EXPORT_DIR holds <format>/<view>/<file> for the formats parquet, csv and ndjson and the views
patients, observations and conditions (tests/tests/it/views.rs defines them). Parquet is read
with pyarrow, CSV with the csv module, ndjson with json; the join of conditions to patients by
their keys is checked in DuckDB over the Parquet files. Exit status 0 when every file set holds
exactly the expected rows (as multisets), 1 otherwise.
"""

import collections
import csv
import decimal
import glob
import json
import os
import sys

import duckdb
import pyarrow.parquet as pq


def load(input_dir):
    by_type = collections.defaultdict(list)
    for path in sorted(glob.glob(os.path.join(input_dir, "*.ndjson"))):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    r = json.loads(line, parse_float=decimal.Decimal)
                    by_type[r["resourceType"]].append(r)
    return by_type


def ref_key(reference, rtype):
    """getReferenceKey(rtype): the id of a relative (or absolute) Type/id reference."""
    if not isinstance(reference, str):
        return None
    parts = reference.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == rtype:
        return parts[-1]
    return None


def expected(by_type):
    patients, observations, conditions = [], [], []
    for p in by_type["Patient"]:
        names = p.get("name") or [None]
        for n in names:
            given = " ".join(n.get("given", [])) if n else ""
            patients.append({
                "id": p["id"], "gender": p.get("gender"), "birth_date": p.get("birthDate"),
                "family": n.get("family") if n else None, "given": given or None,
            })
    for o in by_type["Observation"]:
        q = o.get("valueQuantity") or {}
        for c in (o.get("code") or {}).get("coding", []):
            observations.append({
                "id": o["id"], "patient": ref_key((o.get("subject") or {}).get("reference"), "Patient"),
                "value": q.get("value"), "unit": q.get("unit"),
                "system": c.get("system"), "code": c.get("code"),
            })
    for c in by_type["Condition"]:
        codings = (c.get("code") or {}).get("coding", [])
        conditions.append({
            "id": c["id"], "patient": ref_key((c.get("subject") or {}).get("reference"), "Patient"),
            "code": codings[0].get("code") if codings else None,
            "onset": c.get("onsetDateTime"),
        })
    return {"patients": patients, "observations": observations, "conditions": conditions}


def canon(value):
    """One text per value, whatever reader gave it: decimals by their exact value."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (decimal.Decimal, int, float)):
        d = decimal.Decimal(str(value)) if isinstance(value, float) else decimal.Decimal(value)
        return format(d.normalize(), "f")
    # CSV holds text: a number's text is compared by its value (both sides alike).
    try:
        d = decimal.Decimal(str(value))
    except decimal.InvalidOperation:
        return str(value)
    return format(d.normalize(), "f") if d.is_finite() else str(value)


def rows_key(rows, columns):
    return sorted(tuple(canon(r.get(c)) for c in columns) for r in rows)


def read(fmt, files):
    rows = []
    for path in files:
        if fmt == "parquet":
            rows.extend(pq.read_table(path).to_pylist())
        elif fmt == "csv":
            with open(path, newline="", encoding="utf-8") as f:
                for r in csv.DictReader(f):
                    rows.append({k: (v if v != "" else None) for k, v in r.items()})
        else:
            with open(path, encoding="utf-8") as f:
                rows.extend(json.loads(line, parse_float=decimal.Decimal) for line in f if line.strip())
    return rows


def main():
    input_dir, export_dir = sys.argv[1], sys.argv[2]
    want = expected(load(input_dir))
    failed = False
    for fmt in ("parquet", "csv", "ndjson"):
        for view, rows in want.items():
            files = sorted(glob.glob(os.path.join(export_dir, fmt, view, "*")))
            if not files:
                print(f"FAILED {fmt} {view}: no files")
                failed = True
                continue
            columns = list(rows[0].keys()) if rows else []
            got = read(fmt, files)
            if fmt == "parquet":
                schema = pq.read_schema(files[0])
                if list(schema.names) != columns:
                    print(f"FAILED {fmt} {view}: columns {schema.names} != {columns}")
                    failed = True
                if view == "observations":
                    t = str(schema.field("value").type)
                    if not t.startswith("decimal"):
                        print(f"FAILED parquet observations.value is {t}, not a decimal")
                        failed = True
            if rows_key(got, columns) != rows_key(rows, columns):
                print(f"FAILED {fmt} {view}: {len(got)} rows read, {len(rows)} expected, or values differ")
                failed = True
            else:
                print(f"ok {fmt} {view}: {len(got)} rows")
    # The analysts' join, in DuckDB over the Parquet files: conditions of known patients.
    pdir = os.path.join(export_dir, "parquet")
    joined = duckdb.connect().execute(
        f"SELECT count(*) FROM read_parquet('{pdir}/conditions/*.parquet') c "
        f"JOIN (SELECT DISTINCT id FROM read_parquet('{pdir}/patients/*.parquet')) p ON c.patient = p.id"
    ).fetchone()[0]
    patient_ids = {r["id"] for r in want["patients"]}
    expected_join = sum(1 for c in want["conditions"] if c["patient"] in patient_ids)
    if joined != expected_join:
        print(f"FAILED duckdb join: {joined} != {expected_join}")
        failed = True
    else:
        print(f"ok duckdb join conditions-patients: {joined} rows")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
