#!/usr/bin/env python3
"""The point migration of seed 002 (readings → point_readings), for guard's Turso tests.

It talks to the database the way the real migration talks to Turso: Hrana over HTTP
(`POST {url}/v2/pipeline`, `Authorization: Bearer $TURSO_DB_TOKEN`).

usage: points_migration.py DB_URL [--bug] [--drop-agg] [--crash]
  --bug    also "cleans up" system 3's readings: rows of a table that must stay untouched
  --drop-agg  also drops readings_agg_5m (the aggregates "are now computed from point_readings")
  --crash  deletes readings of system 2, then fails with exit status 3
"""
import json
import os
import sys
import urllib.request


def pipeline(url, stmts):
    reqs = [{"type": "execute", "stmt": {"sql": s}} for s in stmts] + [{"type": "close"}]
    body = json.dumps({"baton": None, "requests": reqs}).encode()
    req = urllib.request.Request(
        url.rstrip("/") + "/v2/pipeline",
        data=body,
        headers={"Authorization": "Bearer " + os.environ["TURSO_DB_TOKEN"], "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as r:
        resp = json.load(r)
    out = []
    for s, res in zip(stmts, resp["results"]):
        if res["type"] != "ok":
            print(f"error: {s}: {res['error']['message']}", file=sys.stderr)
            sys.exit(1)
        out.append(res["response"]["result"])
    return out


def value(result):
    return result["rows"][0][0]["value"]


def main():
    url = sys.argv[1]
    bug = "--bug" in sys.argv
    crash = "--crash" in sys.argv
    drop_agg = "--drop-agg" in sys.argv
    pipeline(url, [
        "ALTER TABLE point_info ADD COLUMN migrated INTEGER DEFAULT 0",
        "INSERT INTO point_readings (system_id, point_id, measurement_time, value, created_at) "
        "SELECT system_id, 1, inverter_time * 1000, solar_w, 'migration' FROM readings",
        "INSERT INTO point_readings (system_id, point_id, measurement_time, value, created_at) "
        "SELECT system_id, 2, inverter_time * 1000, load_w * 1000, 'migration' FROM readings",
        "INSERT OR REPLACE INTO migration_progress (migration_name, system_id, rows_migrated, last_migrated_timestamp) "
        "SELECT 'readings_to_points', system_id, count(*), max(inverter_time) FROM readings GROUP BY system_id",
        "UPDATE point_info SET migrated = 1",
    ])
    n = value(pipeline(url, ["SELECT count(*) FROM point_readings"])[0])
    print(f"point_readings inserted: {n}")
    if bug:
        pipeline(url, ["DELETE FROM readings WHERE system_id = 3"])
        print("cleaned up readings of system 3")
    if drop_agg:
        pipeline(url, ["DROP TABLE readings_agg_5m"])
        print("dropped readings_agg_5m")
    if crash:
        pipeline(url, ["DELETE FROM readings WHERE system_id = 2"])
        print("error: aggregation failed after deleting system 2 readings", file=sys.stderr)
        sys.exit(3)
    print("migration complete")


if __name__ == "__main__":
    main()
