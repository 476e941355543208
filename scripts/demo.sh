#!/usr/bin/env bash
# A two-minute tour: build guard, create a demo SQLite app, run a good migration (kept) and a
# bad one (caught and restored), then list the snapshots.
#
#   scripts/demo.sh [DIR]      # DIR defaults to a fresh temporary directory
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "building guard"
cargo build --quiet --manifest-path "$root/Cargo.toml"
guard="$root/target/debug/guard"

demo="${1:-$(mktemp -d -t guard-demo-XXXXXX)}"
mkdir -p "$demo"
cd "$demo"
say "demo directory: $demo"

say "creating the lending app's SQLite database (users, loans, payments) and rent history"
mkdir -p instances/prod/database data/rent_history
rm -f instances/prod/database/lending_app_prod.db
python3 - <<'PY'
import sqlite3
con = sqlite3.connect("instances/prod/database/lending_app_prod.db")
con.executescript("""
PRAGMA journal_mode=WAL;
CREATE TABLE user (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT);
CREATE TABLE loan (id INTEGER PRIMARY KEY, user_id INTEGER, principal NUMERIC, rate REAL);
CREATE TABLE payment (id INTEGER PRIMARY KEY, loan_id INTEGER, amount NUMERIC, paid_at TEXT);
""")
for i in range(1, 501):
    con.execute("INSERT INTO user (name, email) VALUES (?, ?)", (f"user {i}", f"u{i}@example.com"))
    con.execute("INSERT INTO loan (user_id, principal, rate) VALUES (?, ?, 0.05)", (i, 1000 + i))
    for k in range(3):
        con.execute("INSERT INTO payment (loan_id, amount, paid_at) VALUES (?, ?, ?)", (i, 50 + k, f"2025-0{k+1}-01"))
con.commit()
PY
echo '{"month": "2025-01", "rent": 1200}' > data/rent_history/2025-01.json
echo '{"month": "2025-02", "rent": 1250}' > data/rent_history/2025-02.json
cp "$root/tests/fixtures/migrate_cashback_tables.py" .

cat > guard.toml <<'TOML'
name = "lending-demo"
store = "backups"

[[target]]
name = "app"
kind = "sqlite"
path = "instances/prod/database/lending_app_prod.db"

[[target]]
name = "rent-history"
kind = "dir"
path = "data/rent_history"

[[check]]
name = "existing data untouched"
target = "app"
untouched = ["user", "loan", "payment"]

[[check]]
name = "six cashback tables"
target = "app"
sql = "SELECT count(*) FROM sqlite_master WHERE type='table' AND name IN ('cashback_transaction','loan_cashback_config','tracker_entry','tracker_cashback_config','user_payment_method','cashback_redemption')"
expect = "== 6"
TOML
echo "policy (guard.toml):"; sed 's/^/    /' guard.toml

say "dry run: what guard would do"
"$guard" --dry-run -- python3 migrate_cashback_tables.py instances/prod/database/lending_app_prod.db

say "a good migration: snapshot, run, checks pass, changes kept"
"$guard" -- python3 migrate_cashback_tables.py instances/prod/database/lending_app_prod.db
echo "exit code: $?"

say "a bad migration: it also deletes payments; the untouched check catches it and guard restores"
set +e
"$guard" -- python3 migrate_cashback_tables.py instances/prod/database/lending_app_prod.db --bug
code=$?
set -e
echo "exit code: $code (79 = checks failed, restored)"
python3 -c 'import sqlite3; print("payments now:", sqlite3.connect("instances/prod/database/lending_app_prod.db").execute("select count(*) from payment").fetchone()[0])'

say "the snapshots"
"$guard" list

say "verify every snapshot (checksums, gunzip, PRAGMA integrity_check, fingerprints)"
"$guard" verify

say "status"
"$guard" status

say "restoring by hand needs only stock tools:"
latest=$("$guard" list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["snapshots"][0]["id"])')
echo "    gunzip -c $demo/backups/snapshots/$latest/app.sqlite.gz > restored.db"
echo "    tar -xzf $demo/backups/snapshots/$latest/rent-history.tar.gz -C restored-rent-history/"
