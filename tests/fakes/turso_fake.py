#!/usr/bin/env python3
"""A local fake of the parts of Turso that guard uses, for tests. Python 3 standard library only.

It follows Turso's published contract (shared/docs/reference.md sections 1 and 2, the Platform
API OpenAPI) and, where the contract is silent, sqld — libsql-server, the open-source Turso
server (github.com/tursodatabase/libsql at f8fb14f363; file names below are under
libsql-server/src/). tests/turso_clients/ runs Turso's official npm clients against it; any
failure there means this fake drifted from the real service.

Platform API, under /v1/organizations/{org}/databases (Bearer platform token):
* create (a `database` seed with `name` and an optional RFC 3339 `timestamp`), get (with
  `parent {id, name, branched_at}`), list, delete, mint a database token;
  `/v1/organizations` and `/v1/organizations/{org}/groups` for the official client's listing.
* errors are `{"error": "..."}`: 400 (bad body, `group not found`, a timestamp in the future
  of the fake's clock or outside the 24 h window), 401, 403 (missing scope), 404
  (`could not find database with name X`), 409 (name taken), 422 (name not available).

Each database is a real SQLite file in WAL mode served on its own 127.0.0.1 port (`Hostname`
is `127.0.0.1:PORT`) with Hrana over HTTP (`POST /v2/pipeline`, `/v3/pipeline`; `GET /v2`,
`/v3` answer without a token, as sqld's `handle_index`) and `GET /dump`, requiring a database
token minted for THAT database. As sqld does:
* batons are HMAC-signed (stream id, sequence); a reused baton, an unknown one, or one of a
  closed stream is a 400 text/plain protocol error (hrana/http/stream.rs); a stream idle for
  `stream_expiry` seconds (sqld: 10) expires, its transaction rolled back, and its baton then
  gets 400 `{"message": "The stream has expired due to inactivity", "code": "STREAM_EXPIRED"}`.
* a protocol error (malformed JSON, an integer not given as a string, a float that is not a
  number, a bad `sql_id`, a request after `close`, `get_autocommit` on v2) fails the whole
  pipeline with 400 text/plain and closes the stream (hrana/mod.rs `ProtocolError`,
  hrana/http/mod.rs `protocol_error_response`).
* statement errors are in-band `{"message", "code"}`: `SQLite error: …` with SQLite's primary
  code name (`SQLITE_CONSTRAINT`, not the extended one), `SQL_MANY_STATEMENTS`,
  `SQL_NO_STATEMENT`, `ARGS_BOTH_POSITIONAL_AND_NAMED` (hrana/stmt.rs).
* `store_sql` / `close_sql` / `sql_id` (at most 50 texts of at most 5 kB per stream),
  `sequence`, `batch` with conditions `ok`, `error`, `not`, `and`, `or`, `is_autocommit` (v3).
* floats that JSON cannot carry (±Infinity) are written as `"value": null` (serde_json);
  a request's float must be a JSON number.
* the write-transaction window (connection/connection_manager.rs, TXN_TIMEOUT = 5 s): a
  connection that holds the write lock for longer than `txn_timeout` seconds is rolled back as
  soon as another connection waits for the lock; the next request on its stream then fails
  with `TRANSACTION_TIMEOUT` ("Transaction timed out"), every step of it
  (connection/connection_core.rs `forced_rollback`), and later requests run in autocommit.
* the response size cap (config.rs `max_response_size`, 10 MB; hrana/result_builder.rs):
  a statement's (or a batch's) rows are counted as sqld estimates their JSON (blobs by their
  raw length); over the cap the request fails in-band with `RESPONSE_TOO_LARGE`.
* `GET /dump[?preserve_row_ids=true]` writes what sqld's connection/dump/exporter.rs writes
  (`PRAGMA foreign_keys=OFF; BEGIN TRANSACTION; CREATE TABLE IF NOT EXISTS …; INSERT …;`,
  `DELETE FROM sqlite_sequence;` and its rows, then indexes, triggers, views, `COMMIT;`; rowids
  of tables without an INTEGER PRIMARY KEY only with preserve_row_ids; floats as Rust prints
  them, ±Inf as `inf`, which does not load back).

Known differences from the real service (docs/targets/turso.md, "The test fake, and what was checked against Turso's official clients"):
* Point in time: a seed with a timestamp copies the source's current state (Turso restores
  from a backup and may miss up to 15 s of writes before the timestamp).
* Tokens are HS256 JWTs signed with a per-process secret (Turso's are EdDSA).
* No `describe`, no cursors (`/v3/cursor`), no protobuf encodings (`GET /v3-protobuf` is 404,
  so the official client speaks v2 JSON, as it does with any server without v3 protobuf);
  `decltype` of result columns is null; parse errors come back as `SQLite error: … syntax error`
  rather than sqld's own parser's `SQL_PARSE_ERROR`.

Configuration: command-line flags, and `POST /_fake/config {key: value, ...}` at run time:
* `txn_timeout` (seconds, default 5), `max_response_size` (bytes, default 10000000),
  `stream_expiry` (seconds, default 10), `clock_offset` (seconds added to the fake's clock, the
  one seed timestamps are judged by and its `Date` headers show; default 0);
* `seed_fields` (which seed keys name the source, default ["name", "value"]; ["value"] models a
  service that ignores `seed.name` and creates an empty database without a parent);
* `scopes` (what the platform token may do: "read", "db:create", "db:delete", "db:mint-token";
  default all; a missing one answers 403);
* `unavailable` (name prefixes the service refuses with 422 "database name … is not available");
* `token_not_before` (seconds: a database token is refused with 401 until this long after its
  database was created, as a brand-new branch may do);
* `fail_statements` (regular expressions: a Hrana statement matching one fails in-band with
  `SQLite error: injected failure`, to test what a client does when a step fails).

Other test-only helpers, not part of Turso: `POST /_fake/databases {"name", "group"}` creates an
empty database and returns its file path; `GET /_fake/databases` lists databases with paths and
`forced_rollbacks` (transactions the window rolled back) and `longest_write_txn` (seconds); `GET /_fake/requests` returns the
Platform API requests received (method, path, query, body); `POST /_fake/squat {"prefix"}`
makes another client take a name: a create whose name starts with the prefix finds a database
of that name already there (a genuine 409); `POST /_fake/contend {"name", "interval"}` starts
another writer on a database that takes and releases the write lock every `interval` seconds
through the same lock manager as Hrana streams (so a long write transaction is rolled back as
sqld would); `{"name", "stop": true}` stops it.

Usage: turso_fake.py --data DIR --org ORG --api-token TOKEN [--group NAME]... [--port N]
       [--txn-timeout S] [--max-response-size BYTES] [--stream-expiry S] [--clock-offset S]
Prints `READY <port>` on stdout once listening.
"""

import argparse
import base64
import binascii
import datetime as dt
import decimal
import email.utils
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import sqlite3
import struct
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME_RE = re.compile(r"^[a-z0-9-]{1,64}$")
EXPIRATION_RE = re.compile(r"^(never|(\d+[wdhms])+)$")
PITR_WINDOW = dt.timedelta(hours=24)
ALL_SCOPES = ["read", "db:create", "db:delete", "db:mint-token"]
# sqld hrana/http/request.rs
MAX_SQL_COUNT = 50
MAX_STORED_SQL_SIZE = 5000
# sqld hrana/http/stream.rs: an expired stream's baton says so for this long.
EXPIRED_KEPT = 300.0

SQLITE_PRIMARY = {
    1: "SQLITE_ERROR", 2: "SQLITE_INTERNAL", 3: "SQLITE_PERM", 4: "SQLITE_ABORT", 5: "SQLITE_BUSY",
    6: "SQLITE_LOCKED", 7: "SQLITE_NOMEM", 8: "SQLITE_READONLY", 9: "SQLITE_INTERRUPT",
    10: "SQLITE_IOERR", 11: "SQLITE_CORRUPT", 12: "SQLITE_NOTFOUND", 13: "SQLITE_FULL",
    14: "SQLITE_CANTOPEN", 15: "SQLITE_PROTOCOL", 17: "SQLITE_SCHEMA", 18: "SQLITE_TOOBIG",
    19: "SQLITE_CONSTRAINT", 20: "SQLITE_MISMATCH", 21: "SQLITE_MISUSE", 22: "SQLITE_NOLFS",
    23: "SQLITE_AUTH", 25: "SQLITE_RANGE", 26: "SQLITE_NOTADB",
}

# sqlite3 authorizer action codes that write to the database.
WRITE_ACTIONS = set(range(1, 19)) | {23, 26, 27, 28, 29, 30}
BEGIN_WRITE_RE = re.compile(r"^\s*BEGIN\s+(IMMEDIATE|EXCLUSIVE)\b", re.I)


class ApiError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class ProtocolError(Exception):
    """sqld's ProtocolError: HTTP 400, text/plain, the stream is closed."""


class StreamExpired(Exception):
    pass


class HranaError(Exception):
    """An in-band error: {"message", "code"}."""

    def __init__(self, message, code):
        super().__init__(message)
        self.message = message
        self.code = code


class TooLarge(Exception):
    pass


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def rust_float(x):
    """A float as Rust's `{}` prints it (sqld's exporter and size estimate)."""
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if math.isnan(x):
        return "NaN"
    return format(decimal.Decimal(repr(x)).normalize(), "f")


# ---------------------------------------------------------------------------------------------
# Databases and the write lock


class WriteLock:
    """sqld's connection manager, reduced to what a client can observe: who holds the write
    lock since when, and rolling back a holder older than the window when someone waits."""

    def __init__(self, state):
        self.state = state
        self.mutex = threading.Lock()
        self.holder = None
        self.since = 0.0
        self.forced = 0
        self.longest = 0.0

    def note(self, conn_owner, holds):
        with self.mutex:
            if holds and self.holder is not conn_owner:
                self.holder, self.since = conn_owner, time.monotonic()
            elif not holds and self.holder is conn_owner:
                self.longest = max(self.longest, time.monotonic() - self.since)
                self.holder = None

    def wait(self, waiter, deadline):
        """Called when `waiter` found the database locked. Returns when it should try again;
        raises SQLITE_BUSY when `deadline` passed (a writer outside the fake holds the lock)."""
        with self.mutex:
            holder, since = self.holder, self.since
        if holder is not None and holder is not waiter:
            window = float(self.state.config["txn_timeout"])
            if time.monotonic() - since >= window:
                if holder.force_rollback():
                    with self.mutex:
                        if self.holder is holder:
                            self.holder = None
                        self.forced += 1
                return
            time.sleep(min(0.005, max(0.0, since + window - time.monotonic())))
            return
        if time.monotonic() > deadline:
            raise HranaError("SQLite error: database is locked", "SQLITE_BUSY")
        time.sleep(0.005)


class Conn:
    """A SQLite connection as sqld keeps one per stream."""

    def __init__(self, db, read_only):
        self.db = db
        self.conn = sqlite3.connect(db.path, isolation_level=None, check_same_thread=False,
                                    timeout=0, cached_statements=0)
        self.conn.execute("PRAGMA busy_timeout=0")
        if read_only:
            self.conn.execute("PRAGMA query_only=ON")
        self.wrote = False
        self.conn.set_authorizer(self._authorize)
        self.busy = threading.Lock()  # held while a request runs on this connection
        self.forced_rollback = False
        self.closed = False

    def _authorize(self, action, a1, a2, dbname, trigger):
        if action in WRITE_ACTIONS and dbname != "temp":
            self.wrote = True
        return sqlite3.SQLITE_OK

    def force_rollback(self):
        """The window passed and someone waits: roll this connection's transaction back."""
        if not self.busy.acquire(timeout=0.05):
            self.conn.interrupt()
            if not self.busy.acquire(timeout=5):
                return False
        try:
            if self.closed:
                return True
            if self.conn.in_transaction:
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            self.forced_rollback = True
            return True
        finally:
            self.busy.release()

    def run(self, sql, params):
        """Execute one statement, waiting for the write lock like sqld does."""
        deadline = time.monotonic() + 5.0
        while True:
            self.wrote = bool(BEGIN_WRITE_RE.match(sql))
            try:
                cur = self.conn.execute(sql, params)
                rows = cur.fetchall() if cur.description else []
                self.db.lock.note(self, self.conn.in_transaction and (self.wrote or self.db.lock.holder is self))
                return cur, rows
            except sqlite3.OperationalError as e:
                code = getattr(e, "sqlite_errorcode", 0)
                if code & 0xFF == 5 and code != 517:
                    # SQLITE_BUSY: another connection has the write lock.
                    self.busy.release()
                    try:
                        self.db.lock.wait(self, deadline)
                    finally:
                        self.busy.acquire()
                    if self.forced_rollback:
                        raise HranaError("Transaction timed out", "TRANSACTION_TIMEOUT")
                    continue
                self.db.lock.note(self, self.conn.in_transaction and self.db.lock.holder is self)
                raise

    def close(self, locked=False):
        """Close (rolling back); `locked` when the caller already holds `busy`."""
        if not locked:
            with self.busy:
                return self.close(locked=True)
        if self.closed:
            return
        self.closed = True
        self.db.lock.note(self, False)
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        self.conn.close()


class Database:
    def __init__(self, state, name, group, path, parent=None):
        self.state = state
        self.name = name
        self.group = group
        self.path = path
        self.db_id = str(uuid.uuid4())
        self.parent = parent
        self.created = time.time()
        self.lock = WriteLock(state)
        self.streams = {}  # stream id -> Stream
        self.streams_lock = threading.Lock()
        self.contender = None
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
            "delete_protection": False,
            "parent": self.parent,
        }

    def expire_streams(self):
        expiry = float(self.state.config["stream_expiry"])
        now = time.monotonic()
        with self.streams_lock:
            for sid, s in list(self.streams.items()):
                if s.state == "available" and now - s.used > expiry:
                    s.state = "expired"
                    s.expired_at = now
                    threading.Thread(target=s.conn.close, daemon=True).start()
                elif s.state == "expired" and now - s.expired_at > EXPIRED_KEPT:
                    del self.streams[sid]

    def stop(self):
        if self.contender is not None:
            self.contender.set()
        self.server.shutdown()
        self.server.server_close()
        with self.streams_lock:
            for s in self.streams.values():
                if s.state != "expired":
                    s.conn.close()
            self.streams.clear()

    def contend(self, interval):
        """Another writer: take the write lock and release it, every `interval` seconds."""
        stop = threading.Event()
        self.contender = stop

        def loop():
            c = Conn(self, False)
            try:
                while not stop.is_set():
                    with c.busy:
                        try:
                            c.run("BEGIN IMMEDIATE", [])
                            c.run("ROLLBACK", [])
                        except (HranaError, sqlite3.Error):
                            pass
                        c.forced_rollback = False
                    stop.wait(interval)
            finally:
                c.close()

        threading.Thread(target=loop, daemon=True).start()


class State:
    def __init__(self, data, org, api_token, groups, config):
        self.data = data
        self.org = org
        self.api_token = api_token
        self.groups = set(groups)
        self.secret = os.urandom(32)
        self.baton_key = os.urandom(32)
        self.lock = threading.RLock()
        self.dbs = {}
        self.requests = []
        self.squat = []
        self.config = config
        threading.Thread(target=self._expire_loop, daemon=True).start()

    def _expire_loop(self):
        while True:
            time.sleep(0.1)
            with self.lock:
                dbs = list(self.dbs.values())
            for db in dbs:
                db.expire_streams()

    def now(self):
        return time.time() + float(self.config["clock_offset"])

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
                "branched_at": dt.datetime.fromtimestamp(self.now(), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        dst.execute("PRAGMA journal_mode=WAL")
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
        if time.time() < db.created + float(self.config["token_not_before"]):
            return None, "token is not valid yet"
        return claims, None

    # Batons: base64(stream id, sequence, HMAC), as sqld's encode_baton.
    def encode_baton(self, sid, seq):
        payload = struct.pack(">QQ", sid, seq)
        mac = hmac.new(self.baton_key, payload, hashlib.sha256).digest()
        return base64.b64encode(payload + mac).decode().rstrip("=")

    def decode_baton(self, baton):
        try:
            raw = base64.b64decode(baton + "=" * (-len(baton) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("Received an invalid baton")
        if len(raw) != 48 or not hmac.compare_digest(
                hmac.new(self.baton_key, raw[:16], hashlib.sha256).digest(), raw[16:]):
            raise ProtocolError("Received an invalid baton")
        return struct.unpack(">QQ", raw[:16])


# ---------------------------------------------------------------------------------------------
# HTTP plumbing


class JsonHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The headers and the body leave in two writes: with Nagle's algorithm on, the body waits for
    # the client's delayed ACK of the headers (40 ms on Linux) on every kept-alive request. Turso's
    # servers answer without that wait.
    disable_nagle_algorithm = True
    state = None

    def log_message(self, fmt, *args):  # keep test output quiet
        pass

    def date_time_string(self, timestamp=None):
        return email.utils.formatdate(self.state.now() if timestamp is None else timestamp, usegmt=True)

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
        data = payload if isinstance(payload, bytes) else json.dumps(payload, allow_nan=False).encode()
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
    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_DELETE(self):
        self.route("DELETE")

    def do_PATCH(self):
        self.route("PATCH")

    def need(self, scope):
        if scope not in self.state.config["scopes"]:
            raise ApiError(403, f"the token does not have the {scope} scope")

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
            if parts == ["v1", "organizations"] and method == "GET":
                self.need("read")
                return self.send(200, {"organizations": [{"name": self.state.org, "slug": self.state.org, "type": "team",
                                                          "overages": False, "blocked_reads": False, "blocked_writes": False}]})
            if len(parts) == 4 and parts[:2] == ["v1", "organizations"] and parts[3] == "groups" and method == "GET":
                if parts[2] != self.state.org:
                    raise ApiError(404, f"organization {parts[2]} not found")
                self.need("read")
                return self.send(200, {"groups": [{"name": g, "locations": ["fake"], "primary": "fake", "archived": False}
                                                  for g in sorted(self.state.groups)]})
            if len(parts) < 4 or parts[0] != "v1" or parts[1] != "organizations" or parts[3] != "databases":
                raise ApiError(404, f"no route for {method} {url.path}")
            if parts[2] != self.state.org:
                raise ApiError(404, f"organization {parts[2]} not found")
            rest = parts[4:]
            with self.state.lock:
                if method == "GET" and not rest:
                    self.need("read")
                    return self.send(200, {"databases": [d.describe() for d in self.state.dbs.values()]})
                if method == "POST" and not rest:
                    self.need("db:create")
                    return self.create(body)
                if rest:
                    db = self.state.dbs.get(rest[0])
                    if method == "GET" and len(rest) == 1:
                        self.need("read")
                    elif method == "DELETE" and len(rest) == 1:
                        self.need("db:delete")
                    elif method == "POST" and rest[1:] == ["auth", "tokens"]:
                        self.need("db:mint-token")
                    if db is None:
                        raise ApiError(404, f"could not find database with name {rest[0]}: record not found")
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
        for prefix in self.state.config["unavailable"]:
            if name.startswith(prefix):
                raise ApiError(422, f"database name {name} is not available")
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
            src_name = None
            for field in self.state.config["seed_fields"]:
                if isinstance(seed.get(field), str) and seed.get(field):
                    src_name = seed[field]
                    break
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
                now = dt.datetime.fromtimestamp(self.state.now(), dt.timezone.utc)
                if when > now:
                    raise ApiError(400, f"seed.timestamp {ts} is in the future")
                if when < now - PITR_WINDOW:
                    raise ApiError(400, f"seed.timestamp {ts} is outside the point-in-time recovery window")
            if src_name is not None:
                source = self.state.dbs.get(src_name)
                if source is None:
                    raise ApiError(404, f"could not find database with name {src_name}: record not found")
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
                return self.send(200, {"databases": [dict(d.describe(), path=d.path, forced_rollbacks=d.lock.forced,
                                                          longest_write_txn=d.lock.longest)
                                                     for d in self.state.dbs.values()]})
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
            if rest == ["config"] and method == "POST":
                body = self.json_body()
                for k, v in body.items():
                    if k not in self.state.config:
                        raise ApiError(400, f"unknown config key {k!r}")
                    self.state.config[k] = v
                return self.send(200, self.state.config)
            if rest == ["contend"] and method == "POST":
                body = self.json_body()
                db = self.state.dbs.get(body.get("name"))
                if db is None:
                    raise ApiError(404, "no such database")
                if body.get("stop"):
                    if db.contender is not None:
                        db.contender.set()
                        db.contender = None
                else:
                    db.contend(float(body.get("interval", 0.05)))
                return self.send(200, {"forced_rollbacks": db.lock.forced})
            if rest == ["requests"] and method == "GET":
                return self.send(200, {"requests": self.state.requests})
        raise ApiError(404, "unknown fake admin route")


# ---------------------------------------------------------------------------------------------
# Hrana over HTTP, one server per database


class Stream:
    def __init__(self, sid, seq, conn):
        self.sid = sid
        self.seq = seq
        self.conn = conn
        self.sqls = {}
        self.state = "acquired"
        self.used = time.monotonic()
        self.expired_at = 0.0


def reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def decode_value(v):
    """A Hrana value as sqld's serde decoder takes it; anything else is a protocol error."""
    if not isinstance(v, dict):
        raise ProtocolError(f"Cannot deserialize client message from JSON: invalid value {json.dumps(v)}")
    t = v.get("type")
    if t == "null":
        return None
    if t == "integer":
        s = v.get("value")
        if not isinstance(s, str):
            raise ProtocolError("Cannot deserialize client message from JSON: invalid type: expected an integer as a string")
        try:
            i = int(s, 10)
        except ValueError:
            raise ProtocolError(f"Cannot deserialize client message from JSON: invalid digit in {s!r}")
        if not -(2 ** 63) <= i < 2 ** 63 or not re.match(r"^[+-]?\d+$", s):
            raise ProtocolError(f"Cannot deserialize client message from JSON: {s!r} is not an i64")
        return i
    if t == "float":
        x = v.get("value")
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise ProtocolError(f"Cannot deserialize client message from JSON: invalid type: {json.dumps(x)}, expected f64")
        return float(x)
    if t == "text":
        if not isinstance(v.get("value"), str):
            raise ProtocolError("Cannot deserialize client message from JSON: text value must be a string")
        return v["value"]
    if t == "blob":
        b = v.get("base64")
        if not isinstance(b, str):
            raise ProtocolError("Cannot deserialize client message from JSON: blob needs base64")
        try:
            return base64.b64decode(b.rstrip("=") + "=" * (-len(b.rstrip("=")) % 4), validate=True)
        except (binascii.Error, ValueError) as e:
            raise ProtocolError(f"Cannot deserialize client message from JSON: {e}")
    raise ProtocolError(f"Cannot deserialize client message from JSON: unknown variant {t!r}")


def encode_value(v):
    if v is None:
        return {"type": "null"}
    if isinstance(v, int):
        return {"type": "integer", "value": str(v)}
    if isinstance(v, float):
        # serde_json writes non-finite floats as null.
        return {"type": "float", "value": v if math.isfinite(v) else None}
    if isinstance(v, str):
        return {"type": "text", "value": v}
    if isinstance(v, bytes):
        return {"type": "blob", "base64": base64.b64encode(v).decode().rstrip("=")}
    raise TypeError(type(v))


def value_size(v):
    """sqld's value_json_size (hrana/result_builder.rs)."""
    if v is None:
        return len('{"type":"null"}')
    if isinstance(v, int):
        return len('{"type":"integer","value":""}') + len(str(v))
    if isinstance(v, float):
        return len('{"type":"float","value":"}') + len(rust_float(v))
    if isinstance(v, str):
        return len('{"type":"text","value":""}') + len(v.encode())
    return len(v)


class Budget:
    def __init__(self, limit):
        self.limit = limit
        self.used = 0

    def add(self, n):
        self.used += n
        if self.used > self.limit:
            raise TooLarge()


def split_sql(sql):
    """Statements of a SQL text, as complete statements (for `sequence`)."""
    out, buf = [], ""
    for ch in sql:
        buf += ch
        if ch == ";" and sqlite3.complete_statement(buf):
            if buf.strip(" \t\r\n;"):
                out.append(buf)
            buf = ""
    if buf.strip(" \t\r\n;"):
        out.append(buf)
    return out


def count_statements(sql):
    n = len(split_sql(sql))
    return n


def stmt_sql(stream, stmt):
    if not isinstance(stmt, dict):
        raise ProtocolError("Cannot deserialize client message from JSON: stmt must be an object")
    has_sql, has_id = stmt.get("sql") is not None, stmt.get("sql_id") is not None
    if has_sql and has_id:
        raise ProtocolError("Either `sql` or `sql_id` are required, but not both")
    if has_id:
        sql = stream.sqls.get(stmt["sql_id"])
        if sql is None:
            raise ProtocolError(f"SQL text {stmt['sql_id']} not found")
        return sql
    if not has_sql:
        raise ProtocolError("Either `sql` or `sql_id` are required")
    if not isinstance(stmt["sql"], str):
        raise ProtocolError("Cannot deserialize client message from JSON: sql must be a string")
    return stmt["sql"]


def check_one(sql):
    n = count_statements(sql)
    if n == 0:
        raise HranaError("SQL string does not contain any statement", "SQL_NO_STATEMENT")
    if n > 1:
        raise HranaError("SQL string contains more than one statement", "SQL_MANY_STATEMENTS")


def sqlite_error(e):
    code = SQLITE_PRIMARY.get(getattr(e, "sqlite_errorcode", 1) & 0xFF, "SQLITE_UNKNOWN")
    return HranaError(f"SQLite error: {e}", code)


def run_stmt(stream, stmt, budget):
    """Execute one Hrana Stmt; its result, or HranaError."""
    sql = stmt_sql(stream, stmt)
    args = [decode_value(a) for a in stmt.get("args") or []]
    named = stmt.get("named_args") or []
    if args and named:
        raise HranaError("Specifying both positional and named arguments is not supported", "ARGS_BOTH_POSITIONAL_AND_NAMED")
    params = args
    if named:
        params = {a["name"].lstrip(":@$"): decode_value(a["value"]) for a in named}
    check_one(sql)
    for pattern in stream.conn.db.state.config["fail_statements"]:
        if re.search(pattern, sql, re.I | re.S):
            raise HranaError("SQLite error: injected failure (fail_statements)", "SQLITE_ERROR")
    try:
        cur, rows = stream.conn.run(sql, params)
    except sqlite3.Error as e:
        raise sqlite_error(e)
    want_rows = stmt.get("want_rows", True)
    cols = [{"name": d[0], "decltype": None} for d in cur.description or []]
    budget.add(sum(len(c["name"]) + 16 for c in cols))
    out = []
    if want_rows:
        for r in rows:
            budget.add(sum(value_size(v) for v in r))
            out.append([encode_value(v) for v in r])
    return {
        "cols": cols,
        "rows": out,
        "affected_row_count": max(cur.rowcount, 0),
        "last_insert_rowid": str(cur.lastrowid) if cur.lastrowid else None,
        "replication_index": None,
        "rows_read": len(rows),
        "rows_written": max(cur.rowcount, 0),
        "query_duration_ms": 0.0,
    }


def cond_holds(stream, cond, results, errors, version, step_i):
    if not isinstance(cond, dict):
        raise ProtocolError("BatchCond type not recognized")
    t = cond.get("type")
    if t in ("ok", "error"):
        i = cond.get("step")
        if not isinstance(i, int) or i < 0 or i >= step_i:
            raise ProtocolError("Invalid reference to step in a batch condition")
        return results[i] is not None if t == "ok" else errors[i] is not None
    if t == "not":
        return not cond_holds(stream, cond.get("cond"), results, errors, version, step_i)
    if t == "and":
        return all([cond_holds(stream, c, results, errors, version, step_i) for c in cond.get("conds", [])])
    if t == "or":
        return any([cond_holds(stream, c, results, errors, version, step_i) for c in cond.get("conds", [])])
    if t == "is_autocommit":
        if version < 3:
            raise ProtocolError("BatchCond of type `is_autocommit` is only supported in protocol version hrana3 and higher")
        return not stream.conn.conn.in_transaction
    raise ProtocolError("BatchCond type not recognized")


def check_conds(cond, version, step_i):
    """Validate a condition before anything runs (sqld builds the program first)."""
    if not isinstance(cond, dict):
        raise ProtocolError("BatchCond type not recognized")
    t = cond.get("type")
    if t in ("ok", "error"):
        i = cond.get("step")
        if not isinstance(i, int) or i < 0 or i >= step_i:
            raise ProtocolError("Invalid reference to step in a batch condition")
    elif t == "not":
        check_conds(cond.get("cond"), version, step_i)
    elif t in ("and", "or"):
        for c in cond.get("conds", []):
            check_conds(c, version, step_i)
    elif t == "is_autocommit":
        if version < 3:
            raise ProtocolError("BatchCond of type `is_autocommit` is only supported in protocol version hrana3 and higher")
    else:
        raise ProtocolError("BatchCond type not recognized")


def run_batch(stream, b, version, budget):
    if not isinstance(b, dict) or not isinstance(b.get("steps"), list):
        raise ProtocolError("Cannot deserialize client message from JSON: batch.steps must be a list")
    steps = b["steps"]
    # sqld turns the whole batch into a program first: protocol errors and statements that are
    # not exactly one statement fail the batch before any step runs.
    for i, step in enumerate(steps):
        sql = stmt_sql(stream, step.get("stmt"))
        for a in step["stmt"].get("args") or []:
            decode_value(a)
        for a in step["stmt"].get("named_args") or []:
            decode_value(a.get("value"))
        check_one(sql)
        if step.get("condition") is not None:
            check_conds(step["condition"], version, i)
    timed_out = stream.conn.forced_rollback
    stream.conn.forced_rollback = False
    results, errors = [], []
    for i, step in enumerate(steps):
        if timed_out:
            results.append(None)
            errors.append({"message": "Transaction timed out", "code": "TRANSACTION_TIMEOUT"})
            continue
        cond = step.get("condition")
        if cond is not None and not cond_holds(stream, cond, results, errors, version, i):
            results.append(None)
            errors.append(None)
            continue
        try:
            results.append(run_stmt(stream, step["stmt"], budget))
            errors.append(None)
        except HranaError as e:
            if e.code == "TRANSACTION_TIMEOUT":
                timed_out = True
            results.append(None)
            errors.append({"message": e.message, "code": e.code})
    return {"step_results": results, "step_errors": errors, "replication_index": None}


def handle_request(stream, req, version):
    """One pipeline request: an `ok` or in-band `error` result; ProtocolError propagates."""
    if not isinstance(req, dict):
        raise ProtocolError("Cannot deserialize client message from JSON: a request must be an object")
    t = req.get("type")
    conn = stream.conn
    if t == "close":
        conn.close(locked=True)
        return {"type": "ok", "response": {"type": "close"}}
    if t == "store_sql":
        sql_id, sql = req.get("sql_id"), req.get("sql")
        if not isinstance(sql_id, int) or not isinstance(sql, str):
            raise ProtocolError("Cannot deserialize client message from JSON: store_sql needs sql_id and sql")
        if sql_id in stream.sqls:
            raise ProtocolError(f"SQL text {sql_id} already exists")
        if len(stream.sqls) >= MAX_SQL_COUNT:
            return {"type": "error", "error": {"message": f"The server already stores {len(stream.sqls)} SQL texts, it cannot store more", "code": "SQL_STORE_TOO_MANY"}}
        if len(sql.encode()) > MAX_STORED_SQL_SIZE:
            return {"type": "error", "error": {"message": f"The statement is too large to be stored: {len(sql.encode())} B/5.0 KB", "code": "SQL_STORE_TOO_LARGE"}}
        stream.sqls[sql_id] = sql
        return {"type": "ok", "response": {"type": "store_sql"}}
    if t == "close_sql":
        stream.sqls.pop(req.get("sql_id"), None)
        return {"type": "ok", "response": {"type": "close_sql"}}
    if t not in ("execute", "batch", "sequence", "get_autocommit", "describe"):
        raise ProtocolError("StreamRequest type not recognized")
    if conn.closed:
        raise ProtocolError("Stream for this baton was closed")
    if t == "get_autocommit":
        if version < 3:
            raise ProtocolError("The `get_autocommit` request is only supported in protocol version hrana3 and higher")
        return {"type": "ok", "response": {"type": "get_autocommit", "is_autocommit": not conn.conn.in_transaction}}
    if t == "describe":
        return {"type": "error", "error": {"message": "describe is not implemented by this fake", "code": "NOT_SUPPORTED"}}
    budget = Budget(int(stream_state_config(stream)["max_response_size"]))
    if t == "execute":
        try:
            if conn.forced_rollback:
                conn.forced_rollback = False
                raise HranaError("Transaction timed out", "TRANSACTION_TIMEOUT")
            return {"type": "ok", "response": {"type": "execute", "result": run_stmt(stream, req.get("stmt"), budget)}}
        except TooLarge:
            return {"type": "error", "error": {"message": "Response is too large", "code": "RESPONSE_TOO_LARGE"}}
        except HranaError as e:
            return {"type": "error", "error": {"message": e.message, "code": e.code}}
    if t == "batch":
        try:
            return {"type": "ok", "response": {"type": "batch", "result": run_batch(stream, req.get("batch"), version, budget)}}
        except TooLarge:
            return {"type": "error", "error": {"message": "Response is too large", "code": "RESPONSE_TOO_LARGE"}}
        except HranaError as e:
            return {"type": "error", "error": {"message": e.message, "code": e.code}}
    # sequence
    sql = req.get("sql")
    if req.get("sql") is not None and req.get("sql_id") is not None:
        raise ProtocolError("Either `sql` or `sql_id` are required, but not both")
    if req.get("sql_id") is not None:
        sql = stream.sqls.get(req["sql_id"])
        if sql is None:
            raise ProtocolError(f"SQL text {req['sql_id']} not found")
    if not isinstance(sql, str):
        raise ProtocolError("Either `sql` or `sql_id` are required")
    try:
        if conn.forced_rollback:
            conn.forced_rollback = False
            raise HranaError("Transaction timed out", "TRANSACTION_TIMEOUT")
        for s in split_sql(sql):
            try:
                conn.run(s, [])
            except sqlite3.Error as e:
                raise sqlite_error(e)
    except HranaError as e:
        return {"type": "error", "error": {"message": e.message, "code": e.code}}
    return {"type": "ok", "response": {"type": "sequence"}}


def stream_state_config(stream):
    return stream.conn.db.state.config


class DbHandler(JsonHandler):
    db = None  # bound per database

    @property
    def state(self):
        return self.db.state

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
            url = urllib.parse.urlsplit(self.path)
            path = url.path
            if path == "/health":
                return self.send(200, b"", "text/plain")
            if path in ("/v2", "/v3"):
                # sqld's handle_index takes no token.
                return self.send(200, b"Hello, this is HTTP API v2 (Hrana over HTTP)", "text/plain")
            claims = self.authorize()
            if path == "/dump":
                query = dict(urllib.parse.parse_qsl(url.query))
                return self.dump(query.get("preserve_row_ids") == "true")
            raise ApiError(404, f"no route for GET {path}")
        except ApiError as e:
            self.send(e.status, {"error": e.message})

    def do_POST(self):
        try:
            path = urllib.parse.urlsplit(self.path).path
            raw = self.body()
            claims = self.authorize()
            if path not in ("/v2/pipeline", "/v3/pipeline"):
                raise ApiError(404, f"no route for POST {path}")
            try:
                body = json.loads(raw or b"null", parse_constant=reject_constant)
            except ValueError as e:
                return self.send(400, f"Cannot deserialize client message from JSON: {e}".encode(), "text/plain")
            return self.pipeline(body, claims, 3 if path.startswith("/v3") else 2)
        except ApiError as e:
            self.send(e.status, {"error": e.message})

    def dump(self, preserve_rowids):
        conn = sqlite3.connect(self.db.path, isolation_level=None, timeout=5)
        try:
            conn.execute("BEGIN")  # one read transaction: a consistent dump
            text = export_dump(conn, preserve_rowids)
            conn.execute("ROLLBACK")
        finally:
            conn.close()
        self.send(200, text.encode(), "text/plain; charset=utf-8")

    def acquire(self, baton, claims):
        db = self.db
        with db.streams_lock:
            if baton is None:
                sid = secrets.randbits(64)
                s = Stream(sid, secrets.randbits(64), Conn(db, claims.get("a") == "ro"))
                db.streams[sid] = s
                return s
            sid, seq = db.state.decode_baton(baton)
            s = db.streams.get(sid)
            if s is None:
                raise ProtocolError("Received an invalid baton")
            if s.state == "acquired":
                raise ProtocolError("Received a baton that has already been used")
            if s.state == "expired":
                raise StreamExpired()
            if s.seq != seq:
                raise ProtocolError("Received a baton that has already been used")
            s.state = "acquired"
            s.seq = (s.seq + 1) % 2 ** 64
            return s

    def pipeline(self, body, claims, version):
        if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
            return self.send(400, b"Cannot deserialize client message from JSON: missing field `requests`", "text/plain")
        baton = body.get("baton")
        db = self.db
        try:
            stream = self.acquire(baton, claims)
        except ProtocolError as e:
            return self.send(400, str(e).encode(), "text/plain")
        except StreamExpired:
            return self.send(400, {"message": "The stream has expired due to inactivity", "code": "STREAM_EXPIRED"})
        results = []
        try:
            with stream.conn.busy:
                for req in body["requests"]:
                    results.append(handle_request(stream, req, version))
        except ProtocolError as e:
            # The guard is dropped without release: the stream (and its transaction) is gone.
            with db.streams_lock:
                db.streams.pop(stream.sid, None)
            stream.conn.close()
            return self.send(400, str(e).encode(), "text/plain")
        new_baton = None
        with db.streams_lock:
            if stream.conn.closed:
                db.streams.pop(stream.sid, None)
            else:
                stream.state = "available"
                stream.used = time.monotonic()
                new_baton = db.state.encode_baton(stream.sid, stream.seq)
        self.send(200, {"baton": new_baton, "base_url": None, "results": results})


# ---------------------------------------------------------------------------------------------
# /dump, as sqld's connection/dump/exporter.rs writes it


SQLITE_KEYWORDS = None


def is_keyword(s):
    global SQLITE_KEYWORDS
    if SQLITE_KEYWORDS is None:
        SQLITE_KEYWORDS = set()
        c = sqlite3.connect(":memory:")
        for w in ("ABORT ACTION ADD AFTER ALL ALTER ALWAYS ANALYZE AND AS ASC ATTACH AUTOINCREMENT BEFORE BEGIN "
                  "BETWEEN BY CASCADE CASE CAST CHECK COLLATE COLUMN COMMIT CONFLICT CONSTRAINT CREATE CROSS "
                  "CURRENT CURRENT_DATE CURRENT_TIME CURRENT_TIMESTAMP DATABASE DEFAULT DEFERRABLE DEFERRED "
                  "DELETE DESC DETACH DISTINCT DO DROP EACH ELSE END ESCAPE EXCEPT EXCLUDE EXCLUSIVE EXISTS "
                  "EXPLAIN FAIL FILTER FIRST FOLLOWING FOR FOREIGN FROM FULL GENERATED GLOB GROUP GROUPS HAVING "
                  "IF IGNORE IMMEDIATE IN INDEX INDEXED INITIALLY INNER INSERT INSTEAD INTERSECT INTO IS ISNULL "
                  "JOIN KEY LAST LEFT LIKE LIMIT MATCH MATERIALIZED NATURAL NO NOT NOTHING NOTNULL NULL NULLS OF "
                  "OFFSET ON OR ORDER OTHERS OUTER OVER PARTITION PLAN PRAGMA PRECEDING PRIMARY QUERY RAISE RANGE "
                  "RECURSIVE REFERENCES REGEXP REINDEX RELEASE RENAME REPLACE RESTRICT RETURNING RIGHT ROLLBACK "
                  "ROW ROWS SAVEPOINT SELECT SET TABLE TEMP TEMPORARY THEN TIES TO TRANSACTION TRIGGER UNBOUNDED "
                  "UNION UNIQUE UPDATE USING VACUUM VALUES VIEW VIRTUAL WHEN WHERE WINDOW WITH WITHOUT").split():
            SQLITE_KEYWORDS.add(w)
        c.close()
    return s.upper() in SQLITE_KEYWORDS


def quoted(s):
    if not s:
        return s
    if not (s[0].isalpha() or s[0] == "_") or any(not (ch.isalnum() or ch == "_") for ch in s) or is_keyword(s):
        return f'"{s}"'
    return s


def find_unused(hay, n1, n2):
    if n1 not in hay:
        return n1
    if n2 not in hay:
        return n2
    i = 0
    while f"({n1}{i})" in hay:
        i += 1
    return f"({n1}{i})"


def escaped(s):
    if not any(ch in s for ch in "'\n\r"):
        return f"'{s}'"
    out = ""
    nl = find_unused(s, "\\n", "\\012") if "\n" in s else None
    cr = find_unused(s, "\\r", "\\015") if "\r" in s else None
    if nl:
        out += "replace("
    if cr:
        out += "replace("
    body = s.replace("'", "''")
    if nl:
        body = body.replace("\n", nl)
    if cr:
        body = body.replace("\r", cr)
    out += f"'{body}'"
    if cr:
        out += f",'{cr}',char(13))"
    if nl:
        out += f",'{nl}',char(10))"
    return out


def dump_value(v):
    if v is None:
        return "NULL"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        # exporter.rs compares `x as u64` with the bit patterns of ±Inf, which never matches
        # (the cast saturates), so ±Inf go out as Rust prints them: `inf`, `-inf`.
        return rust_float(v)
    if isinstance(v, str):
        return escaped(v)
    return "X'" + v.hex() + "'"


def export_dump(conn, preserve_rowids):
    out = ["PRAGMA foreign_keys=OFF;", "BEGIN TRANSACTION;"]
    writable = False
    rows = conn.execute("SELECT name, type, sql FROM sqlite_schema AS o WHERE type=='table' AND sql NOT NULL "
                        "ORDER BY tbl_name='sqlite_sequence', rowid").fetchall()
    for table, ty, sql in rows:
        if table == "sqlite_sequence":
            out.append("DELETE FROM sqlite_sequence;")
        elif table.startswith("sqlite_stat"):
            out.append("ANALYZE sqlite_schema;")
        elif table.startswith("sqlite_"):
            continue
        elif sql.startswith("CREATE VIRTUAL TABLE"):
            if not writable:
                out.append("PRAGMA writable_schema=ON;")
                writable = True
            out.append(f"INSERT INTO sqlite_schema(type,name,tbl_name,rootpage,sql)VALUES('table','{table}','{table}',0,{escaped(sql)});")
            continue
        elif sql.startswith("CREATE TABLE"):
            out.append("CREATE TABLE IF NOT EXISTS " + sql[13:] + ";")
        else:
            out.append(sql + ";")
        if ty != "table":
            continue
        info = conn.execute(f"PRAGMA table_info({quoted(table) if table != 'sqlite_sequence' else table})").fetchall()
        cols = [r[1] for r in info]
        pks = [r for r in info if r[5]]
        keep = preserve_rowids
        if len(pks) == 1 and pks[0][2] == "INTEGER":
            if conn.execute("SELECT 1 FROM pragma_index_list(?) WHERE origin='pk'", [table]).fetchone():
                keep = True
        rowid_col = None
        if keep:
            for name in ("rowid", "_row_id_", "oid"):
                if name in cols:
                    continue
                try:
                    conn.execute(f"SELECT {name} FROM {quoted(table)} LIMIT 0")
                    rowid_col = name
                    break
                except sqlite3.Error:
                    pass
        insert = f"INSERT INTO {quoted(table)}"
        if rowid_col:
            insert += "(" + rowid_col + "".join("," + quoted(c) for c in cols) + ")"
        insert += " VALUES("
        select = "SELECT " + (rowid_col + "," if rowid_col else "") + ",".join(quoted(c) for c in cols) + f" FROM {quoted(table)}"
        for r in conn.execute(select):
            out.append(insert + ",".join(dump_value(v) for v in r) + ");")
    for (sql,) in conn.execute("SELECT sql FROM sqlite_schema AS o WHERE sql NOT NULL AND type IN ('index','trigger','view')"):
        out.append(sql + ";")
    if writable:
        out.append("PRAGMA writable_schema=OFF;")
    out.append("COMMIT;")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--org", required=True)
    ap.add_argument("--api-token", required=True)
    ap.add_argument("--group", action="append", default=[])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--txn-timeout", type=float, default=5.0)
    ap.add_argument("--max-response-size", type=int, default=10_000_000)
    ap.add_argument("--stream-expiry", type=float, default=10.0)
    ap.add_argument("--clock-offset", type=float, default=0.0)
    a = ap.parse_args()
    os.makedirs(a.data, exist_ok=True)
    config = {
        "txn_timeout": a.txn_timeout,
        "max_response_size": a.max_response_size,
        "stream_expiry": a.stream_expiry,
        "clock_offset": a.clock_offset,
        "seed_fields": ["name", "value"],
        "scopes": list(ALL_SCOPES),
        "unavailable": [],
        "token_not_before": 0.0,
        "fail_statements": [],
    }
    state = State(a.data, a.org, a.api_token, a.group or ["default"], config)
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
