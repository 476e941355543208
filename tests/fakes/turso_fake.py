#!/usr/bin/env python3
"""A local fake of the parts of Turso that guard uses, for tests. Python 3 standard library only.

It honours the contract in shared/docs/reference.md sections 1 and 2:

* Platform API under /v1/organizations/{org}/... (create with a `database` seed, get, list,
  delete, mint a database token), requiring `Authorization: Bearer <platform token>` and
  answering errors as `{"error": "..."}` with 400/401/404/409.
* Each database is served on its own 127.0.0.1 port (its `Hostname` is `127.0.0.1:PORT`) with
  Hrana over HTTP (`POST /v2/pipeline`, `/v3/pipeline`; batons keep a stream's connection and
  transaction between requests) and `GET /dump`, requiring a database token minted for THAT
  database.
* Every database is a real SQLite file; a branch is a copy made with SQLite's backup API.

Known differences from the real service (documented in README):
* Point in time is "now": a branch seeded at timestamp T copies the source's current state
  (T is still validated: RFC 3339, not in the future, inside a 24 h window).
* Tokens are HS256 JWTs signed with a per-process secret (Turso's are EdDSA).
* `sequence`, `describe`, `store_sql` and cursors are not implemented (guard does not use them).

Test-only helpers, not part of Turso: `POST /_fake/databases {"name", "group"}` creates an
empty database and returns its file path; `GET /_fake/databases` lists databases with paths;
`GET /_fake/requests` returns the Platform API requests received (method, path, query, body);
`POST /_fake/squat {"prefix"}` makes another client take a name: a create whose name starts
with the prefix finds a database of that name already there (a genuine 409).

Usage: turso_fake.py --data DIR --org ORG --api-token TOKEN [--group NAME]... [--port N]
Prints `READY <port>` on stdout once listening.
"""

import argparse
import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME_RE = re.compile(r"^[a-z0-9-]{1,64}$")
EXPIRATION_RE = re.compile(r"^(never|(\d+[wdhms])+)$")
STREAM_IDLE_SECONDS = 10.0
PITR_WINDOW = dt.timedelta(hours=24)


class ApiError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class Database:
    def __init__(self, state, name, group, path, parent=None):
        self.state = state
        self.name = name
        self.group = group
        self.path = path
        self.db_id = str(uuid.uuid4())
        self.parent = parent
        self.streams = {}
        self.streams_lock = threading.Lock()
        handler = type("BoundDbHandler", (DbHandler,), {"db": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def hostname(self):
        return f"127.0.0.1:{self.port}"

    def describe(self):
        return {
            "Name": self.name,
            "DbId": self.db_id,
            "Hostname": self.hostname,
            "group": self.group,
            "regions": ["fake"],
            "primaryRegion": "fake",
            "type": "logical",
            "is_schema": False,
            "block_reads": False,
            "block_writes": False,
            "parent": self.parent,
        }

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        with self.streams_lock:
            for s in self.streams.values():
                s.close()
            self.streams.clear()


class State:
    def __init__(self, data, org, api_token, groups):
        self.data = data
        self.org = org
        self.api_token = api_token
        self.groups = set(groups)
        self.secret = os.urandom(32)
        self.lock = threading.RLock()
        self.dbs = {}
        self.requests = []
        self.squat = []

    def create(self, name, group, seed_from=None):
        path = os.path.join(self.data, f"{name}.db")
        for suffix in ("", "-wal", "-shm", "-journal"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
        dst = sqlite3.connect(path)
        parent = None
        if seed_from is not None:
            src = sqlite3.connect(seed_from.path, timeout=10)
            src.backup(dst)
            src.close()
            parent = {
                "id": seed_from.db_id,
                "name": seed_from.name,
                "branched_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        dst.close()
        db = Database(self, name, group, path, parent)
        self.dbs[name] = db
        return db

    def mint(self, db, authorization, expiration):
        header = {"alg": "HS256", "typ": "JWT"}
        now = int(time.time())
        claims = {"a": "ro" if authorization == "read-only" else "rw", "iat": now, "id": db.db_id}
        if expiration != "never":
            seconds = 0
            for n, unit in re.findall(r"(\d+)([wdhms])", expiration):
                seconds += int(n) * {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}[unit]
            claims["exp"] = now + seconds
        signing = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
        sig = hmac.new(self.secret, signing.encode(), hashlib.sha256).digest()
        return signing + "." + b64url(sig)

    def check_db_token(self, db, token):
        """The claims of a valid token for `db`, or an error message."""
        parts = token.split(".")
        if len(parts) != 3:
            return None, "token is not a JWT"
        signing = parts[0] + "." + parts[1]
        want = hmac.new(self.secret, signing.encode(), hashlib.sha256).digest()
        try:
            got = b64url_decode(parts[2])
            claims = json.loads(b64url_decode(parts[1]))
        except Exception:
            return None, "token is malformed"
        if not hmac.compare_digest(want, got):
            return None, "token signature is invalid"
        if claims.get("id") != db.db_id:
            return None, "token was not issued for this database"
        if "exp" in claims and claims["exp"] < time.time():
            return None, "token has expired"
        return claims, None


# ---------------------------------------------------------------------------------------------
# HTTP plumbing


class JsonHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep test output quiet
        pass

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def json_body(self):
        raw = self.body()
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise ApiError(400, "chunked request bodies are not supported")
        try:
            return json.loads(raw or b"null")
        except ValueError as e:
            raise ApiError(400, f"invalid JSON body: {e}")

    def send(self, status, payload, content_type="application/json"):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def bearer(self):
        h = self.headers.get("Authorization", "")
        if not h.startswith("Bearer ") or not h[7:].strip():
            return None
        return h[7:].strip()


# ---------------------------------------------------------------------------------------------
# Platform API


class ApiHandler(JsonHandler):
    state = None  # set at startup

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_DELETE(self):
        self.route("DELETE")

    def do_PATCH(self):
        self.route("PATCH")

    def route(self, method):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        try:
            if parts[:1] == ["_fake"]:
                return self.fake_admin(method, parts[1:])
            body = self.json_body() if method in ("POST", "PATCH") else None
            with self.state.lock:
                self.state.requests.append({"method": method, "path": url.path, "query": query, "body": body})
            token = self.bearer()
            if token is None:
                raise ApiError(401, "missing Authorization header with a Bearer token")
            if not hmac.compare_digest(token.encode(), self.state.api_token.encode()):
                raise ApiError(401, "token is invalid or has expired")
            if len(parts) < 4 or parts[0] != "v1" or parts[1] != "organizations" or parts[3] != "databases":
                raise ApiError(404, f"no route for {method} {url.path}")
            if parts[2] != self.state.org:
                raise ApiError(404, f"organization {parts[2]} not found")
            rest = parts[4:]
            with self.state.lock:
                if method == "GET" and not rest:
                    return self.send(200, {"databases": [d.describe() for d in self.state.dbs.values()]})
                if method == "POST" and not rest:
                    return self.create(body)
                if rest:
                    db = self.state.dbs.get(rest[0])
                    if db is None:
                        raise ApiError(404, f"could not find database with name {rest[0]}")
                    if method == "GET" and len(rest) == 1:
                        return self.send(200, {"database": db.describe()})
                    if method == "DELETE" and len(rest) == 1:
                        del self.state.dbs[db.name]
                        db.stop()
                        for suffix in ("", "-wal", "-shm", "-journal"):
                            if os.path.exists(db.path + suffix):
                                os.remove(db.path + suffix)
                        return self.send(200, {"database": db.name})
                    if method == "POST" and rest[1:] == ["auth", "tokens"]:
                        return self.mint(db, query)
            raise ApiError(404, f"no route for {method} {url.path}")
        except ApiError as e:
            self.send(e.status, {"error": e.message})

    def create(self, body):
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        name, group, seed = body.get("name"), body.get("group"), body.get("seed")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ApiError(400, f"invalid database name {name!r}: use 1-64 lowercase letters, digits and dashes")
        if not isinstance(group, str) or not group:
            raise ApiError(400, "group is required")
        if group not in self.state.groups:
            raise ApiError(400, "group not found")
        for prefix in self.state.squat:
            if name.startswith(prefix) and name not in self.state.dbs:
                self.state.create(name, group)  # another client took the name first
        if name in self.state.dbs:
            raise ApiError(409, f"database with name {name} already exists")
        source = None
        if seed is not None:
            if not isinstance(seed, dict):
                raise ApiError(400, "seed must be an object")
            if seed.get("type") != "database":
                raise ApiError(400, f"unsupported seed type {seed.get('type')!r} (this fake supports \"database\")")
            src_name = seed.get("name", seed.get("value"))
            if not isinstance(src_name, str) or not src_name:
                raise ApiError(400, "seed.name is required for a database seed")
            source = self.state.dbs.get(src_name)
            if source is None:
                raise ApiError(404, f"could not find database with name {src_name}")
            ts = seed.get("timestamp")
            if ts is not None:
                if not isinstance(ts, str):
                    raise ApiError(400, "seed.timestamp must be an RFC 3339 string")
                try:
                    when = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
                except ValueError:
                    raise ApiError(400, f"seed.timestamp {ts!r} is not RFC 3339")
                if when.tzinfo is None or "T" not in ts:
                    raise ApiError(400, f"seed.timestamp {ts!r} is not RFC 3339 (needs a date, a time and an offset)")
                now = dt.datetime.now(dt.timezone.utc)
                if when > now + dt.timedelta(seconds=1):
                    raise ApiError(400, f"seed.timestamp {ts} is in the future")
                if when < now - PITR_WINDOW:
                    raise ApiError(400, f"seed.timestamp {ts} is outside the point-in-time recovery window")
        db = self.state.create(name, group, source)
        self.send(200, {"database": {"DbId": db.db_id, "Hostname": db.hostname, "Name": db.name}})

    def mint(self, db, query):
        expiration = query.get("expiration", "never")
        authorization = query.get("authorization", "full-access")
        if not EXPIRATION_RE.match(expiration):
            raise ApiError(400, f"invalid expiration {expiration!r}")
        if authorization not in ("full-access", "read-only"):
            raise ApiError(400, f"invalid authorization {authorization!r}")
        self.send(200, {"jwt": self.state.mint(db, authorization, expiration)})

    def fake_admin(self, method, rest):
        with self.state.lock:
            if rest == ["databases"] and method == "GET":
                return self.send(200, {"databases": [dict(d.describe(), path=d.path) for d in self.state.dbs.values()]})
            if rest == ["databases"] and method == "POST":
                body = self.json_body()
                name = body.get("name")
                if not isinstance(name, str) or not NAME_RE.match(name) or name in self.state.dbs:
                    raise ApiError(400, f"bad or taken name {name!r}")
                db = self.state.create(name, body.get("group", "default"))
                return self.send(200, dict(db.describe(), path=db.path))
            if rest == ["squat"] and method == "POST":
                self.state.squat.append(self.json_body()["prefix"])
                return self.send(200, {"squat": self.state.squat})
            if rest == ["requests"] and method == "GET":
                return self.send(200, {"requests": self.state.requests})
        raise ApiError(404, "unknown fake admin route")


# ---------------------------------------------------------------------------------------------
# Hrana over HTTP, one server per database


class HranaError(Exception):
    def __init__(self, message, code):
        super().__init__(message)
        self.message = message
        self.code = code


class Stream:
    def __init__(self, path, read_only):
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5)
        if read_only:
            self.conn.execute("PRAGMA query_only=ON")
        self.used = time.monotonic()
        self.closed = False

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self.conn.close()


def decode_value(v):
    if not isinstance(v, dict):
        raise ApiError(400, f"invalid value {v!r}")
    t = v.get("type")
    if t == "null":
        return None
    if t == "integer":
        if not isinstance(v.get("value"), str) or not re.match(r"^-?\d+$", v["value"]):
            raise ApiError(400, "integer values must be strings of digits")
        return int(v["value"])
    if t == "float":
        if not isinstance(v.get("value"), (int, float)):
            raise ApiError(400, "float values must be JSON numbers")
        return float(v["value"])
    if t == "text":
        if not isinstance(v.get("value"), str):
            raise ApiError(400, "text values must be strings")
        return v["value"]
    if t == "blob":
        b = v.get("base64")
        if not isinstance(b, str):
            raise ApiError(400, "blob values need base64")
        return base64.b64decode(b + "=" * (-len(b) % 4))
    raise ApiError(400, f"unknown value type {t!r}")


def encode_value(v):
    if v is None:
        return {"type": "null"}
    if isinstance(v, int):
        return {"type": "integer", "value": str(v)}
    if isinstance(v, float):
        return {"type": "float", "value": v}
    if isinstance(v, str):
        return {"type": "text", "value": v}
    if isinstance(v, bytes):
        return {"type": "blob", "base64": base64.b64encode(v).decode().rstrip("=")}
    raise TypeError(type(v))


def execute(stream, stmt):
    if not isinstance(stmt, dict) or not isinstance(stmt.get("sql"), str):
        raise ApiError(400, "stmt.sql must be a string (sql_id is not supported by this fake)")
    if "args" in stmt and "named_args" in stmt and stmt["args"] and stmt["named_args"]:
        raise HranaError("cannot mix positional and named arguments", "ARGS_INVALID")
    params = [decode_value(a) for a in stmt.get("args") or []]
    named = stmt.get("named_args") or []
    if named:
        params = {a["name"].lstrip(":@$"): decode_value(a["value"]) for a in named}
    try:
        cur = stream.conn.execute(stmt["sql"], params)
        rows = cur.fetchall() if cur.description else []
    except sqlite3.ProgrammingError as e:
        if "one statement" in str(e):
            raise HranaError(str(e), "SQL_MANY_STATEMENTS")
        raise HranaError(str(e), "SQLITE_MISUSE")
    except sqlite3.Error as e:
        raise HranaError(str(e), getattr(e, "sqlite_errorname", "SQLITE_ERROR"))
    want_rows = stmt.get("want_rows", True)
    return {
        "cols": [{"name": d[0], "decltype": None} for d in cur.description or []],
        "rows": [[encode_value(v) for v in r] for r in rows] if want_rows else [],
        "affected_row_count": max(cur.rowcount, 0),
        "last_insert_rowid": str(cur.lastrowid) if cur.lastrowid else None,
        "rows_read": len(rows),
        "rows_written": max(cur.rowcount, 0),
        "query_duration_ms": 0.0,
    }


def condition(stream, cond, results, errors):
    if not isinstance(cond, dict):
        raise ApiError(400, "invalid batch condition")
    t = cond.get("type")
    if t in ("ok", "error"):
        i = cond.get("step")
        if not isinstance(i, int) or i < 0 or i >= len(results):
            raise ApiError(400, f"batch condition refers to step {i!r} that has not run before")
        return results[i] is not None if t == "ok" else errors[i] is not None
    if t == "not":
        return not condition(stream, cond.get("cond"), results, errors)
    if t == "and":
        return all(condition(stream, c, results, errors) for c in cond.get("conds", []))
    if t == "or":
        return any(condition(stream, c, results, errors) for c in cond.get("conds", []))
    if t == "is_autocommit":
        return not stream.conn.in_transaction
    raise ApiError(400, f"unknown condition type {t!r}")


def batch(stream, b):
    if not isinstance(b, dict) or not isinstance(b.get("steps"), list):
        raise ApiError(400, "batch.steps must be a list")
    results, errors = [], []
    for step in b["steps"]:
        cond = step.get("condition")
        if cond is not None and not condition(stream, cond, results, errors):
            results.append(None)
            errors.append(None)
            continue
        try:
            results.append(execute(stream, step.get("stmt")))
            errors.append(None)
        except HranaError as e:
            results.append(None)
            errors.append({"message": e.message, "code": e.code})
    return {"step_results": results, "step_errors": errors}


class DbHandler(JsonHandler):
    db = None  # bound per database

    def authorize(self):
        token = self.bearer()
        if token is None:
            raise ApiError(401, "Unauthorized: missing Authorization header with a Bearer token")
        claims, err = self.db.state.check_db_token(self.db, token)
        if claims is None:
            raise ApiError(401, f"Unauthorized: {err}")
        return claims

    def do_GET(self):
        try:
            self.body()
            path = urllib.parse.urlsplit(self.path).path
            if path in ("/health",):
                return self.send(200, b"", "text/plain")
            claims = self.authorize()
            if path in ("/v2", "/v3"):
                return self.send(200, b"", "text/plain")
            if path == "/dump":
                return self.dump()
            raise ApiError(404, f"no route for GET {path}")
        except ApiError as e:
            self.send(e.status, {"error": e.message})

    def do_POST(self):
        try:
            path = urllib.parse.urlsplit(self.path).path
            body = self.json_body()
            claims = self.authorize()
            if path in ("/v2/pipeline", "/v3/pipeline"):
                return self.pipeline(body, claims)
            raise ApiError(404, f"no route for POST {path}")
        except ApiError as e:
            self.send(e.status, {"error": e.message})

    def dump(self):
        conn = sqlite3.connect(self.db.path, isolation_level=None, timeout=5)
        try:
            conn.execute("BEGIN")  # one read transaction: a consistent dump
            lines = ["PRAGMA foreign_keys=OFF;"] + list(conn.iterdump())
            conn.execute("ROLLBACK")
        finally:
            conn.close()
        self.send(200, ("\n".join(lines) + "\n").encode(), "text/plain; charset=utf-8")

    def pipeline(self, body, claims):
        if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
            raise ApiError(400, "pipeline body must be {\"baton\": ..., \"requests\": [...]}")
        baton = body.get("baton")
        db = self.db
        with db.streams_lock:
            now = time.monotonic()
            for b, s in list(db.streams.items()):
                if now - s.used > STREAM_IDLE_SECONDS:
                    s.close()
                    del db.streams[b]
            if baton is None:
                stream = Stream(db.path, claims.get("a") == "ro")
            else:
                stream = db.streams.pop(baton, None)
                if stream is None:
                    raise ApiError(400, "Received an invalid baton (the stream expired or was closed)")
        results = []
        try:
            for req in body["requests"]:
                if not isinstance(req, dict):
                    raise ApiError(400, "each request must be an object")
                t = req.get("type")
                if stream.closed:
                    results.append({"type": "error", "error": {"message": "the stream is closed", "code": "STREAM_CLOSED"}})
                    continue
                try:
                    if t == "execute":
                        results.append({"type": "ok", "response": {"type": "execute", "result": execute(stream, req.get("stmt"))}})
                    elif t == "batch":
                        results.append({"type": "ok", "response": {"type": "batch", "result": batch(stream, req.get("batch"))}})
                    elif t == "close":
                        stream.close()
                        results.append({"type": "ok", "response": {"type": "close"}})
                    elif t == "get_autocommit":
                        results.append({"type": "ok", "response": {"type": "get_autocommit", "is_autocommit": not stream.conn.in_transaction}})
                    elif t in ("sequence", "describe", "store_sql", "close_sql"):
                        results.append({"type": "error", "error": {"message": f"request type {t} is not implemented by this fake", "code": "NOT_SUPPORTED"}})
                    else:
                        raise ApiError(400, f"unknown request type {t!r}")
                except HranaError as e:
                    results.append({"type": "error", "error": {"message": e.message, "code": e.code}})
        except ApiError:
            stream.close()
            raise
        new_baton = None
        if not stream.closed:
            stream.used = time.monotonic()
            new_baton = secrets.token_urlsafe(24)
            with db.streams_lock:
                db.streams[new_baton] = stream
        self.send(200, {"baton": new_baton, "base_url": None, "results": results})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--org", required=True)
    ap.add_argument("--api-token", required=True)
    ap.add_argument("--group", action="append", default=[])
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    os.makedirs(a.data, exist_ok=True)
    state = State(a.data, a.org, a.api_token, a.group or ["default"])
    ApiHandler.state = state
    server = ThreadingHTTPServer(("127.0.0.1", a.port), ApiHandler)
    server.daemon_threads = True
    print(f"READY {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
