// Turso's official npm clients against the local fake (tests/fakes/turso_fake.py).
//
// Pinned in package.json / package-lock.json beside this file: @tursodatabase/api 2.0.5 (the
// Platform API client), @libsql/client 0.18.0 (the SDK applications use) and
// @libsql/hrana-client 0.10.0 (Hrana over HTTP). scripts/test.sh installs them under
// target/turso-clients/; tests/it/turso_clients.rs copies this file there and runs it with
//   FAKE_API=http://127.0.0.1:PORT FAKE_ORG=org FAKE_TOKEN=platform-token node check.mjs
// Every check prints `ok NAME` or `FAIL NAME: why`; the last line is `N passed, M failed`, and the
// exit code is 1 when anything failed. A failure means the fake drifted from what the official
// clients expect of the real service; fix the fake (with a source), not this file.
//
// What is not the fake's business but is asserted so the checks below cannot pass vacuously:
// @libsql/client refuses to send ±Infinity (RangeError, hrana-client value.js), and it cannot read
// the `{"type":"float","value":null}` sqld sends for them (hrana-client json_decode.js
// `d.number`), so for ±Inf the check is that the fake answers exactly that shape.

import { createClient as createApi } from "@tursodatabase/api";
import { createClient } from "@libsql/client/http";
import * as hrana from "@libsql/hrana-client";

const API = process.env.FAKE_API;
const ORG = process.env.FAKE_ORG;
const TOKEN = process.env.FAKE_TOKEN;
if (!API || !ORG || !TOKEN) {
    console.error("set FAKE_API, FAKE_ORG and FAKE_TOKEN");
    process.exit(2);
}

let passed = 0;
let failed = 0;
async function check(name, f) {
    try {
        await f();
        passed++;
        console.log(`ok ${name}`);
    } catch (e) {
        failed++;
        console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
    }
}
function assert(cond, what) {
    if (!cond) throw new Error(`assertion failed: ${what}`);
}
const show = (x) => JSON.stringify(x, (_, v) => (typeof v === "bigint" ? `${v}n` : v));
function eq(got, want, what) {
    const g = show(got);
    const w = show(want);
    if (g !== w) throw new Error(`${what}: got ${g}, want ${w}`);
}
async function rejects(p, test, what) {
    let err;
    try {
        await p;
    } catch (e) {
        err = e;
    }
    if (err === undefined) throw new Error(`${what}: did not fail`);
    if (!test(err)) throw new Error(`${what}: unexpected error ${err && err.name} ${err && err.code} ${err && err.status}: ${err && err.message}`);
    return err;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function fake(path, body) {
    const r = await fetch(`${API}/_fake/${path}`, body === undefined ? {} : { method: "POST", body: JSON.stringify(body) });
    if (!r.ok) throw new Error(`fake ${path}: ${r.status} ${await r.text()}`);
    return r.json();
}
const DEFAULTS = { txn_timeout: 5, max_response_size: 10000000, stream_expiry: 10, scopes: ["read", "db:create", "db:delete", "db:mint-token"], unavailable: [] };

const api = createApi({ org: ORG, token: TOKEN, baseUrl: `${API}/v1/` });
const SRC = "clients-src";
await fake("databases", { name: SRC });

async function dbClient(name) {
    const info = await api.databases.get(name);
    const { jwt } = await api.databases.createToken(name, { expiration: "2h", authorization: "full-access" });
    return { client: createClient({ url: `http://${info.hostname}`, authToken: jwt, intMode: "bigint" }), url: `http://${info.hostname}`, jwt };
}
const src = await dbClient(SRC);
const db = src.client;

const BIG = 2n ** 53n + 1n;
const I64_MAX = 9223372036854775807n;
const I64_MIN = -9223372036854775808n;
const TEXT = "it's \"quoted\"\nline two\r\n é 日本 \u{1F600}";
const BLOB = new Uint8Array([0, 1, 2, 253, 254, 255]);

// ---------------------------------------------------------------------------------------------
// @libsql/client: execute, batch, transaction, values

await check("execute: create and insert every value type", async () => {
    await db.execute("CREATE TABLE vals (id INTEGER PRIMARY KEY, i INTEGER, f REAL, t TEXT, b BLOB, n, any_)");
    const r = await db.execute({
        sql: "INSERT INTO vals (i, f, t, b, n, any_) VALUES (?, ?, ?, ?, ?, ?)",
        args: [BIG, 0.1 + 0.2, TEXT, BLOB, null, 1.0],
    });
    eq(r.rowsAffected, 1, "rowsAffected");
    eq(r.lastInsertRowid, 1n, "lastInsertRowid");
    await db.execute({ sql: "INSERT INTO vals (i, f, t, b) VALUES (:i, @f, $t, :b)", args: { i: I64_MAX, f: -2.5e-300, t: "", b: new Uint8Array() } });
    await db.execute({ sql: "INSERT INTO vals (i, f) VALUES (?, ?)", args: [I64_MIN, 1e300] });
});

await check("execute: values read back exactly (integers beyond 2^53, floats, text, blobs, NULL)", async () => {
    const r = await db.execute("SELECT i, f, t, b, n, any_, typeof(any_) FROM vals ORDER BY id");
    eq(r.columns, ["i", "f", "t", "b", "n", "any_", "typeof(any_)"], "columns");
    eq(r.rows.length, 3, "rows");
    const [a, b, c] = r.rows;
    eq(a.i, BIG, "2^53+1");
    eq(a.f, 0.1 + 0.2, "0.1+0.2");
    eq(a.t, TEXT, "text");
    eq(Array.from(new Uint8Array(a.b)), Array.from(BLOB), "blob");
    eq(a.n, null, "null");
    eq(a["typeof(any_)"], "real", "a JS number is sent as a float");
    eq(b.i, I64_MAX, "i64::MAX");
    eq(b.f, -2.5e-300, "tiny float");
    eq(b.t, "", "empty text");
    eq(new Uint8Array(b.b).length, 0, "empty blob");
    eq(c.i, I64_MIN, "i64::MIN");
    eq(c.f, 1e300, "huge float");
});

await check("execute: SQL errors come back in-band with sqld's codes", async () => {
    await rejects(db.execute("SELECT * FROM no_such_table"), (e) => e.code === "SQLITE_ERROR" && /no such table/.test(e.message), "no such table");
    await rejects(db.execute("INSERT INTO vals (id) VALUES (1)"), (e) => e.code === "SQLITE_CONSTRAINT", "primary key (sqld sends the primary code)");
    await rejects(db.execute("SELECT 1; SELECT 2"), (e) => e.code === "SQL_MANY_STATEMENTS", "two statements");
});

await check("batch (write): store_sql / sql_id, all steps or none", async () => {
    const rs = await db.batch([
        { sql: "CREATE TABLE bt (k INTEGER PRIMARY KEY, v)", args: [] },
        { sql: "INSERT INTO bt VALUES (?, ?)", args: [1n, "one"] },
        { sql: "INSERT INTO bt VALUES (?, ?)", args: [2n, BIG] },
        "SELECT count(*) AS n FROM bt",
    ], "write");
    eq(rs.length, 4, "results");
    eq(rs[3].rows[0].n, 2n, "count");
    await rejects(db.batch([
        { sql: "INSERT INTO bt VALUES (?, ?)", args: [3n, "three"] },
        { sql: "INSERT INTO bt VALUES (?, ?)", args: [1n, "dup"] },
    ], "write"), (e) => e.code === "SQLITE_CONSTRAINT", "failing batch");
    const n = await db.execute("SELECT count(*) AS n FROM bt");
    eq(n.rows[0].n, 2n, "a failed batch is rolled back");
});

await check("transaction (write): commit and rollback", async () => {
    const tx = await db.transaction("write");
    await tx.execute({ sql: "INSERT INTO bt VALUES (?, ?)", args: [10n, 0.5] });
    const inside = await tx.execute("SELECT count(*) AS n FROM bt");
    eq(inside.rows[0].n, 3n, "visible inside");
    await tx.rollback();
    eq((await db.execute("SELECT count(*) AS n FROM bt")).rows[0].n, 2n, "rolled back");
    const tx2 = await db.transaction("write");
    await tx2.batch([{ sql: "INSERT INTO bt VALUES (?, ?)", args: [11n, I64_MIN] }, { sql: "UPDATE bt SET v = ? WHERE k = 1", args: [BLOB] }]);
    await tx2.commit();
    const r = await db.execute("SELECT k, v FROM bt ORDER BY k");
    eq(r.rows.map((x) => x.k), [1n, 2n, 11n], "committed");
    eq(r.rows[2].v, I64_MIN, "i64::MIN in a transaction");
    eq(Array.from(new Uint8Array(r.rows[0].v)), Array.from(BLOB), "blob in a transaction");
});

await check("executeMultiple: Hrana `sequence`", async () => {
    await db.executeMultiple("CREATE TABLE seq (x); INSERT INTO seq VALUES (1); INSERT INTO seq VALUES (2);");
    eq((await db.execute("SELECT sum(x) AS s FROM seq")).rows[0].s, 3n, "sum");
});

await check("±Infinity: the client refuses to send them, and the fake answers what sqld answers", async () => {
    await rejects(db.execute({ sql: "SELECT ?", args: [Infinity] }), (e) => e instanceof RangeError, "client-side refusal");
    // sqld (serde_json) writes a non-finite float as null; hrana-client's decoder then rejects it.
    await rejects(db.execute("SELECT 1e999"), (e) => /Expected number, received null/.test(e.message), "decoding sqld's null");
    const r = await fetch(`${src.url}/v2/pipeline`, {
        method: "POST",
        headers: { authorization: `Bearer ${src.jwt}` },
        body: JSON.stringify({ baton: null, requests: [{ type: "execute", stmt: { sql: "SELECT 1e999, -1e999, 1.5" } }, { type: "close" }] }),
    });
    const body = await r.json();
    eq(body.results[0].response.result.rows[0], [{ type: "float", value: null }, { type: "float", value: null }, { type: "float", value: 1.5 }], "raw row");
    const bad = await fetch(`${src.url}/v2/pipeline`, {
        method: "POST",
        headers: { authorization: `Bearer ${src.jwt}` },
        body: JSON.stringify({ baton: null, requests: [{ type: "execute", stmt: { sql: "SELECT ?", args: [{ type: "float", value: null }] } }] }),
    });
    eq(bad.status, 400, "a null float in a request is a protocol error");
    eq(bad.headers.get("content-type"), "text/plain", "protocol errors are text/plain");
});

// ---------------------------------------------------------------------------------------------
// @libsql/hrana-client: streams, batons, errors

await check("hrana-client: one stream keeps its transaction across requests", async () => {
    const c = hrana.openHttp(src.url, src.jwt);
    const s = c.openStream();
    s.intMode = "bigint";
    await s.run("BEGIN");
    await s.run(["INSERT INTO bt VALUES (?, ?)", [20n, "in stream"]]);
    eq((await s.queryValue("SELECT count(*) FROM bt WHERE k = 20")).value, 1n, "inside");
    const other = await db.execute("SELECT count(*) AS n FROM bt WHERE k = 20");
    eq(other.rows[0].n, 0n, "not visible outside before COMMIT");
    await s.run("COMMIT");
    s.close();
    c.close();
    eq((await db.execute("SELECT count(*) AS n FROM bt WHERE k = 20")).rows[0].n, 1n, "committed");
});

await check("hrana-client: an idle stream expires with STREAM_EXPIRED", async () => {
    await fake("config", { stream_expiry: 1 });
    try {
        const c = hrana.openHttp(src.url, src.jwt);
        const s = c.openStream();
        await s.run("SELECT 1");
        await sleep(2500);
        await rejects(s.run("SELECT 1"), (e) => e instanceof hrana.ResponseError && e.code === "STREAM_EXPIRED" && /expired due to inactivity/.test(e.message), "expired");
        c.close();
    } finally {
        await fake("config", { stream_expiry: DEFAULTS.stream_expiry });
    }
});

await check("transaction window: a write transaction past it is rolled back when another writer waits (TRANSACTION_TIMEOUT)", async () => {
    await fake("config", { txn_timeout: 0.3 });
    try {
        const tx = await db.transaction("write");
        await tx.execute({ sql: "INSERT INTO bt VALUES (?, ?)", args: [30n, "late"] });
        await sleep(500);
        const other = await dbClient(SRC);
        await other.client.execute({ sql: "INSERT INTO bt VALUES (?, ?)", args: [31n, "waiter"] });
        await rejects(tx.execute("SELECT 1"), (e) => e.code === "TRANSACTION_TIMEOUT", "the old transaction's next request");
        tx.close();
        const r = await db.execute("SELECT k FROM bt WHERE k >= 30 ORDER BY k");
        eq(r.rows.map((x) => x.k), [31n], "the timed-out transaction's write is gone");
        other.client.close();
    } finally {
        await fake("config", { txn_timeout: DEFAULTS.txn_timeout });
    }
});

await check("response size cap: RESPONSE_TOO_LARGE", async () => {
    await db.execute("CREATE TABLE big (b BLOB)");
    await db.execute("INSERT INTO big SELECT randomblob(4000) FROM (SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3)");
    await fake("config", { max_response_size: 10000 });
    try {
        await rejects(db.execute("SELECT b FROM big"), (e) => e.code === "RESPONSE_TOO_LARGE", "over the cap");
        eq((await db.execute("SELECT b FROM big LIMIT 2")).rows.length, 2, "under the cap");
    } finally {
        await fake("config", { max_response_size: DEFAULTS.max_response_size });
    }
});

// ---------------------------------------------------------------------------------------------
// @tursodatabase/api: the Platform API

await check("api: list and get", async () => {
    const all = await api.databases.list();
    assert(all.some((d) => d.name === SRC && d.id && d.hostname), "source listed");
    const g = await api.databases.get(SRC);
    eq(g.name, SRC, "name");
    assert(g.id && g.hostname && g.group === "default", "id, hostname, group");
    assert((await api.groups.list()).some((x) => x.name === "default"), "groups.list");
    assert((await api.organizations.list()).some((o) => o.slug === ORG), "organizations.list");
});

await check("api: create a branch with a seed and a timestamp, read it, mint a token, delete it", async () => {
    const when = new Date(Date.now() - 2000);
    const created = await api.databases.create("clients-branch", { group: "default", seed: { type: "database", name: SRC, timestamp: when } });
    eq(created.name, "clients-branch", "name");
    assert(created.id && created.hostname, "id and hostname");
    const raw = await (await fetch(`${API}/v1/organizations/${ORG}/databases/clients-branch`, { headers: { authorization: `Bearer ${TOKEN}` } })).json();
    eq(raw.database.parent && raw.database.parent.name, SRC, "parent.name");
    assert(raw.database.parent.id && raw.database.parent.branched_at, "parent id and branched_at");
    const tok = await api.databases.createToken("clients-branch", { expiration: "2h", authorization: "full-access" });
    assert(typeof tok.jwt === "string" && tok.jwt.split(".").length === 3, "a JWT");
    const b = createClient({ url: `http://${created.hostname}`, authToken: tok.jwt, intMode: "bigint" });
    eq((await b.execute("SELECT i FROM vals ORDER BY id LIMIT 1")).rows[0].i, BIG, "the branch holds the source's rows");
    b.close();
    const ro = await api.databases.createToken("clients-branch", { authorization: "read-only" });
    const rb = createClient({ url: `http://${created.hostname}`, authToken: ro.jwt });
    await rejects(rb.execute("DELETE FROM vals"), (e) => /readonly|read-only|query_only/i.test(e.message), "read-only token");
    rb.close();
    const del = await api.databases.delete("clients-branch");
    eq(del.database, "clients-branch", "delete answer");
    await rejects(api.databases.get("clients-branch"), (e) => e.status === 404 && /could not find database with name clients-branch/.test(e.message), "get after delete");
    await rejects(api.databases.delete("clients-branch"), (e) => e.status === 404, "delete after delete");
});

await check("api: 409 for a taken name, 404 for a missing database, 400 for a timestamp in the future", async () => {
    await rejects(api.databases.create(SRC, { group: "default" }), (e) => e.status === 409 && /already exists/.test(e.message), "409");
    await rejects(api.databases.get("nope"), (e) => e.status === 404 && /could not find database with name nope/.test(e.message), "404");
    await rejects(api.databases.create("clients-future", { group: "default", seed: { type: "database", name: SRC, timestamp: new Date(Date.now() + 60000) } }), (e) => e.status === 400 && /future/.test(e.message), "future timestamp");
    await rejects(api.databases.create("clients-nogroup", { group: "tokyo" }), (e) => e.status === 400 && /group not found/.test(e.message), "unknown group");
});

await check("api: 401, 403 and 422 as the official client reports them", async () => {
    const wrong = createApi({ org: ORG, token: "not-the-token", baseUrl: `${API}/v1/` });
    await rejects(wrong.databases.list(), (e) => e.status === 401, "401");
    await fake("config", { scopes: ["read", "db:delete", "db:mint-token"] });
    try {
        await rejects(api.databases.create("clients-noscope", { group: "default" }), (e) => e.status === 403 && /db:create/.test(e.message), "403");
    } finally {
        await fake("config", { scopes: DEFAULTS.scopes });
    }
    await fake("config", { unavailable: ["clients-taken"] });
    try {
        await rejects(api.databases.create("clients-taken-1", { group: "default" }), (e) => e.status === 422 && /not available/.test(e.message), "422");
    } finally {
        await fake("config", { unavailable: DEFAULTS.unavailable });
    }
});

await check("/dump: sqld's framing, rowids kept only when asked", async () => {
    await db.execute("CREATE TABLE norowid (x TEXT)");
    await db.batch(["INSERT INTO norowid VALUES ('a')", "INSERT INTO norowid VALUES ('b')", "DELETE FROM norowid WHERE x = 'a'"], "write");
    const plain = await (await fetch(`${src.url}/dump`, { headers: { authorization: `Bearer ${src.jwt}` } })).text();
    assert(plain.startsWith("PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n"), "head");
    assert(plain.trimEnd().endsWith("COMMIT;"), "tail");
    assert(plain.includes("CREATE TABLE IF NOT EXISTS vals"), "CREATE TABLE IF NOT EXISTS");
    assert(plain.includes("INSERT INTO norowid VALUES('b');"), `rowids renumbered without preserve_row_ids:\n${plain}`);
    const kept = await (await fetch(`${src.url}/dump?preserve_row_ids=true`, { headers: { authorization: `Bearer ${src.jwt}` } })).text();
    assert(kept.includes("INSERT INTO norowid(rowid,x) VALUES(2,'b');"), `rowid kept with preserve_row_ids:\n${kept}`);
});

db.close();
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
