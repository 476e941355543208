#!/usr/bin/env bash
# Benchmarks guard against the shell recipes it replaces, in one run, as ratios.
#
#   scripts/bench.sh                 # all cases, 3 rounds each
#   ROUNDS=5 scripts/bench.sh
#   ROWS=3000000 scripts/bench.sh    # size of the generated SQLite fixture (default 3M rows, ~210 MB)
#
# Cases (medians of ROUNDS rounds; every ratio is guard's time over the recipe's time measured
# in this same run):
#   sqlite-snapshot  guard snapshot (consistent copy + integrity check + parallel gzip + SHA-256
#                    + fsync + read-back verification) vs the seed-001 recipe
#                    `sqlite3 .backup` + `gzip -6` + `sha256sum`, and vs `pigz -p N -6` alone
#   verify           guard verify --quick vs sha256sum and openssl dgst -sha256 of the artifact
#   wrapper          `guard -- true` on a small SQLite policy vs `guard snapshot` of it
#   encryption       the sqlite-snapshot case with [encryption] (age) vs without, and deep verify
#   levels           guard snapshot at compression levels 1, 6, 9: time and size
#   postgres         guard snapshot vs pg_dump -Fc, guard restore vs createdb + pg_restore on a
#                    generated database (PG_ROWS, default 3.5M rows: ~450 MB); SKIP_PG=1 skips it
#   s3               guard's bucket clone vs `aws s3 sync` (awscli from PyPI) on a local moto
#                    server (S3_OBJECTS × S3_SIZE, default 2,000 × 200 KB), and a repeat
#                    snapshot of the unchanged bucket; SKIP_S3=1 skips it
#   prune            guard prune over a catalog of 10,000 snapshots
#   ttr              issue 17, per size of TTR_ROWS (default "200000 800000": ~14 MB and ~56 MB
#                    SQLite databases; "3300000 14000000" is the issue's 232 MB / ~1 GB):
#                    time to recovery (the failed command's exit → guard's "restored and
#                    verified" line) and added downtime (guard start → command start) of a
#                    failed guarded run, for SQLite (vs `cp backup.db app.db && sync app.db` and
#                    the seed recipe), a directory tree (vs `rm -rf` + `cp -a`) and PostgreSQL
#                    (PG_TTR_ROWS, default "100000 400000"; vs createdb + pg_restore and
#                    pg_dump -Fc); guard with its hot copy and guard forced onto the path
#                    without one (GUARD_TEST_HOT_FREE=0), side by side; peak memory per size.
#
#   CASES=ttr scripts/bench.sh       # only the ttr cases (CASES=all, the default: everything)
# Peak memory (max RSS) of guard is reported for the big snapshot.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
ROUNDS="${ROUNDS:-3}"
ROWS="${ROWS:-3000000}"
work="${BENCH_DIR:-$root/target/bench}"
mkdir -p "$work"
say() { printf '==> %s\n' "$*" >&2; }

need() {
    local missing=()
    for pair in "$@"; do
        local cmd="${pair%%:*}" pkg="${pair##*:}"
        command -v "$cmd" >/dev/null || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
        $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}
need sqlite3:sqlite3 pigz:pigz openssl:openssl sha256sum:coreutils gzip:gzip
[ -x /usr/bin/time ] || need /usr/bin/time:time

if [ -n "${GUARD_BIN:-}" ]; then
    guard="$GUARD_BIN"      # for checking the script itself; real figures need the release build
else
    say "building guard (release)"
    cargo build --release --quiet --manifest-path "$root/Cargo.toml"
    guard="$root/target/release/guard"
fi
cores=$(nproc)
CASES="${CASES:-all}"
command -v bc >/dev/null || need bc:bc

# --- ttr: time to recovery and added downtime of a failed guarded run (issue 17) ----------
# One failed run: the command records when it starts and when it exits; every line guard
# prints is timestamped as it arrives. Prints "downtime ttr total peak_kb".
cat > "$work/ttr.py" <<'PY'
import os, subprocess, sys, time
out, started, exited = sys.argv[1], sys.argv[2], sys.argv[3]
cmd = sys.argv[4:]
for f in (started, exited):
    if os.path.exists(f):
        os.remove(f)
mem = out + ".mem"
t0 = time.time()
p = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", mem] + cmd, stdout=subprocess.DEVNULL,
                     stderr=subprocess.PIPE, text=True)
lines = []
for line in p.stderr:
    lines.append((time.time(), line))
p.wait()
t_end = time.time()
with open(out, "w") as f:
    f.writelines(l for _, l in lines)
restored = [t for t, l in lines if "restored and verified" in l]
if p.returncode not in (3,) or not restored or not os.path.exists(exited):
    sys.stderr.write("".join(l for _, l in lines))
    sys.exit(f"bench: the failed run did not restore (exit {p.returncode})")
t_start = float(open(started).read())
t_exit = float(open(exited).read())
peak = open(mem).read().split()[-1]
print(f"{t_start - t0:.3f} {restored[-1] - t_exit:.3f} {t_end - t_exit:.3f} {peak}")
PY
# median of column $1 of ROUNDS lines on stdin
col_median() { awk -v c="$1" '{print $c}' | sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f\n", m}'; }
col_max() { awk -v c="$1" '{print $c}' | sort -g | tail -1; }
# median SECONDS of running "$@" ROUNDS times (after `prep`, untimed, if set)
prep=""
median() {
    local times=() t0 t1
    for _ in $(seq "$ROUNDS"); do
        [ -n "$prep" ] && eval "$prep"
        sync
        t0=$(date +%s.%N)
        "$@" >/dev/null 2>"$work/last.err" || { echo "bench: '$*' failed:" >&2; cat "$work/last.err" >&2; exit 1; }
        t1=$(date +%s.%N)
        times+=("$(echo "$t1 - $t0" | bc -l)")
    done
    printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f\n", m}'
}
rat() { echo "scale=3; $1 / $2" | bc -l | sed 's/^\./0./'; }
gen_sqlite() {   # gen_sqlite PATH ROWS: the sensor database
    rm -f "$1" "$1-wal" "$1-shm"
    python3 - "$1" "$2" <<'PY'
import random, sqlite3, sys
db, rows = sys.argv[1], int(sys.argv[2])
con = sqlite3.connect(db)
con.executescript("""
PRAGMA journal_mode=WAL;
CREATE TABLE sensor (id INTEGER PRIMARY KEY, name TEXT, location TEXT);
CREATE TABLE reading (id INTEGER PRIMARY KEY, sensor_id INTEGER REFERENCES sensor(id),
                      taken_at TEXT, value REAL, unit TEXT, quality INTEGER);
CREATE INDEX reading_sensor ON reading(sensor_id, taken_at);
""")
con.executemany("INSERT INTO sensor VALUES (?, ?, ?)", [(i, f"sensor-{i:04d}", f"site-{i % 37}") for i in range(1, 1001)])
rnd = random.Random(42)
units = ["kWh", "W", "V", "A", "C"]
def gen():
    for i in range(1, rows + 1):
        yield (i, rnd.randint(1, 1000), f"2025-{rnd.randint(1,12):02d}-{rnd.randint(1,28):02d}T{rnd.randint(0,23):02d}:{rnd.randint(0,59):02d}:00Z",
               round(rnd.uniform(0, 5000), 3), units[i % 5], rnd.randint(0, 3))
con.executemany("INSERT INTO reading VALUES (?, ?, ?, ?, ?, ?)", gen())
con.commit()
con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
con.close()
PY
}
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_cluster() {   # pg_cluster DIR PORT: a fresh throwaway cluster in DIR (unix socket only), stopped on exit
    local dir="$1" port="$2"
    if [ -f "$dir/data/postmaster.pid" ]; then as_pg "$pgbin/pg_ctl" stop -D "$dir/data" -m fast >/dev/null 2>&1 || true; fi
    rm -rf "$dir"; mkdir -p "$dir/sock"
    if [ "$(id -u)" = 0 ]; then chown -R postgres "$dir" && chmod 755 "$work" "$dir"; fi
    as_pg "$pgbin/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
    as_pg "$pgbin/pg_ctl" start -w -D "$dir/data" -l "$dir/server.log" \
        -o "-k $dir/sock -c listen_addresses='' -p $port -c autovacuum=off" >/dev/null
    # shellcheck disable=SC2064  # the directory is the one of this call
    trap "as_pg '$pgbin/pg_ctl' stop -D '$dir/data' -m fast >/dev/null 2>&1 || true" EXIT
}
gen_pg() {   # gen_pg DB ROWS [WRAPPER]: the sensor database in PostgreSQL (WRAPPER: how psql reaches the server)
    local db="$1" rows="$2"; shift 2
    "$@" "$pgbin/psql" -Xq "$db" <<SQL >/dev/null
CREATE TABLE sensor (id int PRIMARY KEY, name text, site text);
INSERT INTO sensor SELECT g, 'sensor-' || g, 'site-' || (g % 37) FROM generate_series(1, 1000) g;
CREATE TABLE reading (
  id bigint PRIMARY KEY, sensor_id int REFERENCES sensor(id), taken_at timestamptz,
  value double precision, unit text, note text, checksum text);
INSERT INTO reading
  SELECT g, 1 + g % 1000, timestamptz '2025-01-01' + g * interval '7 seconds', random() * 5000,
         (ARRAY['kWh','W','V','A','C'])[1 + g % 5], 'reading ' || (g % 977) || ' of batch ' || (g / 1000),
         md5(g::text || random()::text)
  FROM generate_series(1, $rows) g;
CREATE INDEX reading_sensor ON reading (sensor_id, taken_at);
ANALYZE;
SQL
}
# A failed guarded run of policy $1 whose command runs "$2" (sh) and exits 3, ROUNDS times,
# the store removed before each; prints "downtime ttr total peak_kb" medians (peak: max).
ttr_runs() {
    local pol="$1" change="$2" store="$3" lines=""
    for _ in $(seq "$ROUNDS"); do
        rm -rf "$store"; sync
        lines+="$(python3 "$work/ttr.py" "$work/ttr.out" "$work/ttr.started" "$work/ttr.exited" \
            "$guard" --policy "$pol" -- sh -c "date +%s.%N > '$work/ttr.started'; $change; date +%s.%N > '$work/ttr.exited'; exit 3")"$'\n'
    done
    lines="${lines%$'\n'}"
    echo "$(echo "$lines" | col_median 1) $(echo "$lines" | col_median 2) $(echo "$lines" | col_median 3) $(echo "$lines" | col_max 4)"
}
# A kept guarded run of policy $1 (the command `true`), ROUNDS times, the store $2 removed
# before each; prints "total peak_kb": the median wall time guard start → exit (the deferred
# store artifact written and verified included) and the peak memory (max).
kept_runs() {
    local pol="$1" store="$2" lines="" t0 t1
    for _ in $(seq "$ROUNDS"); do
        rm -rf "$store"; sync
        t0=$(date +%s.%N)
        /usr/bin/time -f %M -o "$work/kept.mem" "$guard" --policy "$pol" -- true >/dev/null 2>"$work/kept.err" \
            || { echo "bench: the kept run failed:" >&2; cat "$work/kept.err" >&2; exit 1; }
        t1=$(date +%s.%N)
        lines+="$(echo "$t1 - $t0" | bc -l) $(tail -1 "$work/kept.mem")"$'\n'
    done
    lines="${lines%$'\n'}"
    echo "$(echo "$lines" | col_median 1) $(echo "$lines" | col_max 2)"
}
ttr_table=""
ttr_row() {   # case size guard-hot guard-nohot recipe-name recipe-time
    ttr_table+="| $1 | $2 | $3 s | $4 s | $5 | $6 s | **$(rat "$3" "$6")×** | $(rat "$4" "$6")× |"$'\n'
}
if [ "$CASES" = all ] || [ "$CASES" = ttr ]; then
    TTR_ROWS="${TTR_ROWS:-200000 800000}"
    need sqlite3:sqlite3
    mem_lines=""
    for rows in $TTR_ROWS; do
        d="$work/ttr-$rows"
        mkdir -p "$d"
        if [ ! -f "$d/app.db" ] || [ "$(cat "$d/rows" 2>/dev/null)" != "$rows" ]; then
            say "ttr: generating a $rows-row SQLite database"
            gen_sqlite "$d/app.db" "$rows"
            echo "$rows" > "$d/rows"
            rm -rf "$d/tree"; mkdir -p "$d/tree"
            # A directory tree of about the same size: files of 64 KiB.
            python3 - "$d/tree" "$(stat -c %s "$d/app.db")" <<'PY'
import os, random, sys
root, total = sys.argv[1], int(sys.argv[2])
rnd = random.Random(7)
n = max(1, total // 65536)
for i in range(n):
    sub = os.path.join(root, f"d{i % 32:02d}")
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, f"f{i:06d}.bin"), "wb") as f:
        f.write(rnd.randbytes(16384) * 4)
PY
        fi
        size=$(numfmt --to=iec "$(stat -c %s "$d/app.db")")
        cat > "$d/sqlite.toml" <<TOML
name = "ttr-sqlite"
store = "store"
[[target]]
name = "app"
kind = "sqlite"
path = "app.db"
TOML
        # The directory rows: a hot copy on every filesystem (hot_copy = "always"), and the
        # default (auto: one only where files clone) for the kept run.
        for hc in always auto; do
            cat > "$d/dir-$hc.toml" <<TOML
name = "ttr-dir"
store = "dirstore"
[[target]]
name = "tree"
kind = "dir"
path = "tree"
hot_copy = "$hc"
TOML
        done
        cp "$d/dir-always.toml" "$d/dir.toml"
        say "ttr: SQLite $size, failed run with a hot copy"
        read -r sd_hot st_hot stot_hot smem_hot <<<"$(ttr_runs "$d/sqlite.toml" "sqlite3 '$d/app.db' \"UPDATE sensor SET name = 'x'\"" "$d/store")"
        say "ttr: SQLite $size, failed run without (GUARD_TEST_HOT_FREE=0)"
        read -r sd_cold st_cold stot_cold smem_cold <<<"$(GUARD_TEST_HOT_FREE=0 ttr_runs "$d/sqlite.toml" "sqlite3 '$d/app.db' \"UPDATE sensor SET name = 'x'\"" "$d/store")"
        say "ttr: SQLite $size, kept run with / without a hot copy"
        read -r sk_hot skm_hot <<<"$(kept_runs "$d/sqlite.toml" "$d/store")"
        read -r sk_cold skm_cold <<<"$(GUARD_TEST_HOT_FREE=0 kept_runs "$d/sqlite.toml" "$d/store")"
        sqlite3 "$d/app.db" ".backup '$d/backup.db'"
        cp_back() { cp "$d/backup.db" "$d/restored.db" && sync "$d/restored.db"; }
        seed_of() { rm -f "$d/recipe.db" "$d/recipe.db.gz"; sqlite3 "$d/app.db" ".backup '$d/recipe.db'"; gzip -6 -c "$d/recipe.db" > "$d/recipe.db.gz"; sha256sum "$d/recipe.db.gz" >/dev/null; }
        say "ttr: SQLite $size recipes"
        t_cp=$(median cp_back)
        t_seed=$(median seed_of)
        rm -f "$d/restored.db" "$d/recipe.db" "$d/recipe.db.gz"
        ttr_row "SQLite: time to recovery" "$size" "$st_hot" "$st_cold" "cp backup.db app.db && sync app.db" "$t_cp"
        ttr_row "SQLite: added downtime" "$size" "$sd_hot" "$sd_cold" "sqlite3 .backup + gzip -6 + sha256sum" "$t_seed"
        say "ttr: directory tree $size, failed run with a hot copy"
        read -r dd_hot dt_hot dtot_hot dmem_hot <<<"$(ttr_runs "$d/dir.toml" "touch '$d/tree/d00/new'" "$d/dirstore")"
        say "ttr: directory tree $size, failed run without (GUARD_TEST_HOT_FREE=0)"
        read -r dd_cold dt_cold dtot_cold dmem_cold <<<"$(GUARD_TEST_HOT_FREE=0 ttr_runs "$d/dir.toml" "touch '$d/tree/d00/new'" "$d/dirstore")"
        say "ttr: directory tree $size, kept run with / without a hot copy"
        read -r dk_hot dkm_hot <<<"$(kept_runs "$d/dir.toml" "$d/dirstore")"
        read -r dk_cold dkm_cold <<<"$(GUARD_TEST_HOT_FREE=0 kept_runs "$d/dir.toml" "$d/dirstore")"
        read -r dk_auto dkm_auto <<<"$(kept_runs "$d/dir-auto.toml" "$d/dirstore")"
        cp_tree() { rm -rf "$d/tree-copy" && cp -a "$d/tree" "$d/tree-copy" && sync; }
        t_cpa=$(median cp_tree)
        rm -rf "$d/tree-copy"
        ttr_row "directory: time to recovery" "$size" "$dt_hot" "$dt_cold" "rm -rf + cp -a" "$t_cpa"
        ttr_row "directory: added downtime" "$size" "$dd_hot" "$dd_cold" "cp -a" "$t_cpa"
        mem_lines+="SQLite $size: guard's peak memory $((smem_hot / 1024)) MiB with a hot copy, $((smem_cold / 1024)) MiB without; total wall time after the command's exit (restore, rescue compressed into the store, exit) ${stot_hot} s vs ${stot_cold} s; a kept run (\`-- true\`) start → exit ${sk_hot} s with the deferred store artifact vs ${sk_cold} s without a hot copy (the artifact before the command), peak $((skm_hot / 1024)) vs $((skm_cold / 1024)) MiB. Directory $size: peak $((dmem_hot / 1024)) MiB with a hot copy, $((dmem_cold / 1024)) MiB without; total after exit ${dtot_hot} s vs ${dtot_cold} s; a kept run ${dk_hot} s with a hot copy (\`hot_copy = "always"\`) vs ${dk_cold} s without, ${dk_auto} s by default (\`auto\`), peak $((dkm_hot / 1024)) vs $((dkm_cold / 1024)) MiB."$'\n'
        rm -rf "$d/store" "$d/dirstore"
    done
    if [ "${SKIP_PG:-}" != 1 ] && [ -n "$pgbin" ] && [ -x "$pgbin/initdb" ]; then
        PG_TTR_ROWS="${PG_TTR_ROWS:-100000 400000}"
        tpg="$work/ttr-pg"
        pg_cluster "$tpg" 55434
        pgx() { PGHOST="$tpg/sock" PGPORT=55434 PGUSER=postgres "$@"; }
        for prows in $PG_TTR_ROWS; do
            pgx "$pgbin/dropdb" --if-exists bench >/dev/null
            pgx "$pgbin/createdb" bench
            say "ttr: PostgreSQL, generating $prows rows"
            gen_pg bench "$prows" pgx
            pgx "$pgbin/psql" -Xqc CHECKPOINT bench >/dev/null
            psize=$(numfmt --to=iec "$(pgx "$pgbin/psql" -XAtc "select pg_database_size('bench')" bench)")
            for mode in dump clone; do
                cat > "$tpg/$mode.toml" <<TOML
name = "ttr-pg-$mode"
store = "store-$mode"
[[target]]
name = "bench"
kind = "postgres"
url = "postgres://postgres@/bench?host=$tpg/sock&port=55434"
snapshot = "$mode"
TOML
            done
            change="PGHOST='$tpg/sock' PGPORT=55434 PGUSER=postgres '$pgbin/psql' -Xqc \"UPDATE sensor SET name = 'x'\" bench"
            say "ttr: PostgreSQL $psize, failed run with snapshot = clone"
            read -r pd_hot pt_hot ptot_hot pmem_hot <<<"$(ttr_runs "$tpg/clone.toml" "$change" "$tpg/store-clone")"
            say "ttr: PostgreSQL $psize, failed run with snapshot = dump"
            read -r pd_cold pt_cold ptot_cold pmem_cold <<<"$(ttr_runs "$tpg/dump.toml" "$change" "$tpg/store-dump")"
            say "ttr: PostgreSQL $psize, kept run with snapshot = clone / dump"
            read -r pk_hot pkm_hot <<<"$(kept_runs "$tpg/clone.toml" "$tpg/store-clone")"
            read -r pk_cold pkm_cold <<<"$(kept_runs "$tpg/dump.toml" "$tpg/store-dump")"
            pgx "$pgbin/pg_dump" -Fc -f "$tpg/bench.dump" bench
            pg_dump_fc() { pgx "$pgbin/pg_dump" -Fc -f "$tpg/bench.dump" bench; }
            pg_restore_new() { pgx "$pgbin/dropdb" --if-exists restored && pgx "$pgbin/createdb" -T template0 restored && pgx "$pgbin/pg_restore" -d restored "$tpg/bench.dump"; }
            say "ttr: PostgreSQL $psize recipes"
            t_pgd=$(median pg_dump_fc)
            t_pgr=$(median pg_restore_new)
            pgx "$pgbin/dropdb" --if-exists restored
            ttr_row "PostgreSQL: time to recovery (guard: clone / dump)" "$psize" "$pt_hot" "$pt_cold" "createdb + pg_restore" "$t_pgr"
            ttr_row "PostgreSQL: added downtime (guard: clone / dump)" "$psize" "$pd_hot" "$pd_cold" "pg_dump -Fc" "$t_pgd"
            mem_lines+="PostgreSQL $psize: guard's peak memory $((pmem_hot / 1024)) MiB (clone), $((pmem_cold / 1024)) MiB (dump); total wall time after the command's exit ${ptot_hot} s (clone) vs ${ptot_cold} s (dump); a kept run (\`-- true\`) start → exit ${pk_hot} s with the clone (its dump written while the command runs, waited for) vs ${pk_cold} s with the dump before the command, peak $((pkm_hot / 1024)) vs $((pkm_cold / 1024)) MiB."$'\n'
            rm -rf "$tpg/store-clone" "$tpg/store-dump" "$tpg/bench.dump"
        done
        as_pg "$pgbin/pg_ctl" stop -D "$tpg/data" -m fast >/dev/null 2>&1 || true
        trap - EXIT
    fi
    ttr_report="$work/results-ttr.md"
    {
        echo "## guard time to recovery — $(date -u +%Y-%m-%dT%H:%MZ), $cores cores, $ROUNDS rounds (medians)"
        echo
        echo "Time to recovery: the failed command's exit → guard's last \"restored and verified\" line. Added downtime: guard start → command start. \"guard\" keeps a hot copy (SQLite, directories) or a clone (PostgreSQL \`snapshot = \"clone\"\`); \"without\" is the path without one (SQLite and directories: \`GUARD_TEST_HOT_FREE=0\`; PostgreSQL: \`snapshot = \"dump\"\`)."
        echo
        echo "| case | size | guard | guard without hot copy | recipe | recipe time | ratio | ratio without |"
        echo "|---|---|---|---|---|---|---|---|"
        printf '%s' "$ttr_table"
        echo
        printf '%s' "$mem_lines"
    } | tee "$ttr_report"
    say "written to $ttr_report"
    [ "$CASES" = ttr ] && exit 0
fi

db="$work/sensors.db"
if [ ! -f "$db" ] || [ "$(cat "$work/sensors.rows" 2>/dev/null)" != "$ROWS" ]; then
    say "generating $db ($ROWS sensor rows)"
    gen_sqlite "$db" "$ROWS"
    echo "$ROWS" > "$work/sensors.rows"
fi
db_bytes=$(stat -c %s "$db")
say "fixture: $(numfmt --to=iec "$db_bytes") SQLite database"


# --- sqlite-snapshot -------------------------------------------------------------------
policy="$work/bench.toml"
cat > "$policy" <<TOML
name = "bench"
store = "store"
[compression]
level = 6
[[target]]
name = "sensors"
kind = "sqlite"
path = "$db"
TOML

seed_recipe() {
    rm -f "$work/recipe.db" "$work/recipe.db.gz"
    sqlite3 "$db" ".backup '$work/recipe.db'"
    gzip -6 -c "$work/recipe.db" > "$work/recipe.db.gz"
    sha256sum "$work/recipe.db.gz" >/dev/null
}
pigz_only() { pigz -p "$cores" -6 -c "$db" > "$work/pigz.gz"; }
guard_snapshot() { "$guard" --policy "$policy" snapshot; }

prep="rm -rf '$work/store'"
say "sqlite-snapshot: seed recipe (sqlite3 .backup + gzip -6 + sha256sum)"
t_recipe=$(median seed_recipe)
say "sqlite-snapshot: pigz -p $cores -6"
t_pigz=$(median pigz_only)
say "sqlite-snapshot: guard snapshot"
t_guard=$(median guard_snapshot)
prep=""
size_gzip=$(stat -c %s "$work/recipe.db.gz")
artifact=$(ls "$work"/store/snapshots/*/sensors.sqlite.gz | tail -1)
size_guard=$(stat -c %s "$artifact")
rm -rf "$work/store"
peak_kb=$(/usr/bin/time -f %M "$guard" --policy "$policy" snapshot 2>&1 >/dev/null | tail -1)
artifact=$(ls "$work"/store/snapshots/*/sensors.sqlite.gz | tail -1)

# --- verify ----------------------------------------------------------------------------
say "verify: guard verify --quick vs sha256sum vs openssl"
t_verify=$(median "$guard" --policy "$policy" verify --quick latest)
t_sha256sum=$(median sha256sum "$artifact")
t_openssl=$(median openssl dgst -sha256 "$artifact")
t_verify_deep=$(median "$guard" --policy "$policy" verify latest)

# --- wrapper overhead --------------------------------------------------------------------
small="$work/small"
rm -rf "$small"; mkdir -p "$small"
python3 -c "
import sqlite3; c = sqlite3.connect('$small/app.db')
c.execute('create table t (id integer primary key, v text)')
c.executemany('insert into t (v) values (?)', [('x' * 40,)] * 2000); c.commit()"
cat > "$small/guard.toml" <<'TOML'
name = "small"
store = "store"
[[target]]
name = "app"
kind = "sqlite"
path = "app.db"
TOML
small_snapshot() { "$guard" --policy "$small/guard.toml" snapshot; }
small_run() { "$guard" --policy "$small/guard.toml" -- true; }
say "wrapper: guard -- true vs guard snapshot (small policy)"
t_small_snap=$(median small_snapshot)
t_small_run=$(median small_run)

# --- encryption -------------------------------------------------------------------------
# The same snapshot with `[encryption]` (age, one X25519 recipient) against it without, in this
# run; the identity is generated here with the `age` crate's format (age-keygen, Debian `age`).
command -v age-keygen >/dev/null || need age-keygen:age
age-keygen -o "$work/age.key" 2>/dev/null || true
chmod 600 "$work/age.key"
recipient=$(age-keygen -y "$work/age.key")
sed "s|^store = .*|store = \"store-enc\"\n[encryption]\nrecipients = [\"$recipient\"]\nidentity_file = \"$work/age.key\"|" "$policy" > "$work/enc.toml"
enc_snapshot() { "$guard" --policy "$work/enc.toml" snapshot; }
prep="rm -rf '$work/store-enc'"
say "encryption: guard snapshot with [encryption] (age) vs without"
t_enc=$(median enc_snapshot)
prep=""
enc_peak_kb=$(/usr/bin/time -f %M "$guard" --policy "$work/enc.toml" snapshot 2>&1 >/dev/null | tail -1)
t_enc_verify=$(median "$guard" --policy "$work/enc.toml" verify latest)
rm -rf "$work/store-enc"

# --- compression levels -----------------------------------------------------------------
levels=""
for level in 1 6 9; do
    sed "s/^level = .*/level = $level/" "$policy" > "$work/level.toml"
    sed -i "s|^store = .*|store = \"store-level\"|" "$work/level.toml"
    prep="rm -rf '$work/store-level'"
    t=$(median "$guard" --policy "$work/level.toml" snapshot)
    prep=""
    s=$(stat -c %s "$(ls "$work"/store-level/snapshots/*/sensors.sqlite.gz | tail -1)")
    levels+="| $level | ${t} s | $(numfmt --to=iec "$s") ($(echo "scale=1; 100 * $s / $db_bytes" | bc -l)% of the database) |"$'\n'
done
rm -rf "$work/store-level"

# --- prune of a 10,000-snapshot catalog ------------------------------------------------
say "prune: 10,000 snapshots (fixture manifests cloned from a real one)"
prune_dir="$work/prune"
rm -rf "$prune_dir"; mkdir -p "$prune_dir"
cp "$small/app.db" "$prune_dir/app.db"
sed 's|^store = .*|store = "store"|' "$small/guard.toml" > "$prune_dir/guard.toml"
"$guard" --policy "$prune_dir/guard.toml" snapshot >/dev/null
python3 - "$prune_dir/store" <<'PY'
import datetime, json, os, shutil, sys
store = sys.argv[1]
snaps = os.path.join(store, "snapshots")
(template_id,) = os.listdir(snaps)
m = json.load(open(os.path.join(snaps, template_id, "manifest.json")))
artifact = m["targets"][0]["artifacts"][0]["key"].split("/")[-1]
src_art = os.path.join(snaps, template_id, artifact)
start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
for i in range(10000):
    t = start + datetime.timedelta(minutes=15 * i)
    sid = t.strftime("%Y%m%dT%H%M%S.000Z") + "-%04x" % i
    d = os.path.join(snaps, sid)
    os.makedirs(d, mode=0o700)
    shutil.copyfile(src_art, os.path.join(d, artifact))
    m["id"] = sid
    m["created_at"] = m["completed_at"] = t.strftime("%Y-%m-%dT%H:%M:%SZ")
    m["targets"][0]["artifacts"][0]["key"] = f"snapshots/{sid}/{artifact}"
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump(m, f, indent=2)
shutil.rmtree(os.path.join(snaps, template_id))
os.remove(os.path.join(store, "catalog.db"))
PY
"$guard" --policy "$prune_dir/guard.toml" reindex >/dev/null
t0=$(date +%s.%N)
GUARD_TEST_NOW=2026-04-15T00:00:00Z "$guard" --policy "$prune_dir/guard.toml" prune --dry-run --json > "$work/prune-dry.json"
t1=$(date +%s.%N)
GUARD_TEST_NOW=2026-04-15T00:00:00Z "$guard" --policy "$prune_dir/guard.toml" prune --json > "$work/prune.json"
t2=$(date +%s.%N)
t_prune_plan=$(echo "$t1 - $t0" | bc -l | xargs printf '%.3f')
t_prune=$(echo "$t2 - $t1" | bc -l | xargs printf '%.3f')
pruned=$(python3 -c "import json; print(len(json.load(open('$work/prune.json'))['deleted']))")

# --- PostgreSQL: guard snapshot vs pg_dump -Fc, guard restore vs createdb + pg_restore ------
pg_line=""
if [ "${SKIP_PG:-}" != 1 ] && [ -n "$pgbin" ] && [ -x "$pgbin/initdb" ]; then
    PG_ROWS="${PG_ROWS:-3500000}"   # ~450 MB of readings with incompressible-ish text
    pgroot="$work/pg"
    pg_cluster "$pgroot" 55432
    export PGHOST="$pgroot/sock" PGPORT=55432 PGUSER=postgres
    "$pgbin/createdb" bench
    say "postgres: generating $PG_ROWS rows"
    gen_pg bench "$PG_ROWS"
    pg_bytes=$("$pgbin/psql" -XAtc "select pg_database_size('bench')" bench)
    cat > "$work/pg.toml" <<TOML
name = "pgbench"
store = "pgstore"
[[target]]
name = "bench"
kind = "postgres"
url = "postgres://postgres@/bench?host=$pgroot/sock&port=55432"
TOML
    # Quiet server between timed runs, the same for guard and the recipes: autovacuum is off
    # (it would analyze each restored copy during the next measurement) and every run starts
    # after a CHECKPOINT (so none pays for the previous one's dirty pages).
    pg_quiet() { "$pgbin/psql" -XAtqc CHECKPOINT bench >/dev/null; }
    pg_dump_fc() { "$pgbin/pg_dump" -Fc -f "$work/pg.dump" bench; }
    guard_pg_snapshot() { "$guard" --policy "$work/pg.toml" snapshot; }
    say "postgres: pg_dump -Fc"
    prep="pg_quiet"
    t_pgdump=$(median pg_dump_fc)
    prep="rm -rf '$work/pgstore'; pg_quiet"
    say "postgres: guard snapshot"
    t_guard_pg=$(median guard_pg_snapshot)
    prep=""
    rm -rf "$work/pgstore"
    peak_pg_kb=$(/usr/bin/time -f %M "$guard" --policy "$work/pg.toml" snapshot 2>&1 >/dev/null | tail -1)
    size_pgdump=$(stat -c %s "$work/pg.dump")
    size_guard_pg=$(stat -c %s "$(ls "$work"/pgstore/snapshots/*/bench.dump.gz | tail -1)")
    pg_restore_new() { "$pgbin/dropdb" --if-exists restored && "$pgbin/createdb" -T template0 restored && "$pgbin/pg_restore" -d restored "$work/pg.dump"; }
    guard_pg_restore() { "$guard" --policy "$work/pg.toml" restore latest --yes --no-rescue; }
    say "postgres: createdb + pg_restore"
    prep="pg_quiet"
    t_pgrestore=$(median pg_restore_new)
    say "postgres: guard restore"
    t_guard_pgrestore=$(median guard_pg_restore)
    prep=""
    pg_line="| PostgreSQL snapshot ($(numfmt --to=iec "$pg_bytes") database) | ${t_guard_pg} s | pg_dump -Fc | ${t_pgdump} s | **$(echo "scale=2; $t_guard_pg / $t_pgdump" | bc -l | sed 's/^\./0./')×** |
| PostgreSQL restore (in place, one transaction, verified) | ${t_guard_pgrestore} s | createdb + pg_restore (new database) | ${t_pgrestore} s | **$(echo "scale=2; $t_guard_pgrestore / $t_pgrestore" | bc -l | sed 's/^\./0./')×** |"
    pg_sizes="PostgreSQL artifact: guard $(numfmt --to=iec "$size_guard_pg") vs pg_dump -Fc $(numfmt --to=iec "$size_pgdump") ($(echo "scale=1; 100 * ($size_guard_pg - $size_pgdump) / $size_pgdump" | bc -l)%); guard's peak memory $((peak_pg_kb / 1024)) MiB."
fi

# --- S3: guard's bucket clone vs `aws s3 sync`, against a local moto server ------------------
s3_line=""
if [ "${SKIP_S3:-}" != 1 ]; then
    S3_OBJECTS="${S3_OBJECTS:-2000}"
    S3_SIZE="${S3_SIZE:-200000}"
    python3 -c 'import moto.server' 2>/dev/null || python3 -m pip install -q 'moto[server]>=5,<6'
    # awscli in its own virtualenv: its pinned botocore must not disturb moto's.
    if [ ! -x "$work/awscli/bin/aws" ]; then
        say "installing awscli (PyPI) into $work/awscli"
        python3 -m venv "$work/awscli" && "$work/awscli/bin/pip" install -q awscli
    fi
    aws="$work/awscli/bin/aws"
    s3port=55433
    python3 -m moto.server -H 127.0.0.1 -p "$s3port" >"$work/moto.log" 2>&1 &
    moto_pid=$!
    trap 'kill $moto_pid 2>/dev/null; if [ -n "${pgroot:-}" ]; then as_pg "$pgbin/pg_ctl" stop -D "$pgroot/data" -m fast >/dev/null 2>&1 || true; fi' EXIT
    export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
    endpoint="http://127.0.0.1:$s3port"
    for _ in $(seq 100); do
        python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "$endpoint" 2>/dev/null && break
        sleep 0.1
    done
    say "s3: uploading $S3_OBJECTS objects of $S3_SIZE bytes to moto"
    python3 - "$endpoint" "$S3_OBJECTS" "$S3_SIZE" <<'PY'
import concurrent.futures, os, sys, boto3
endpoint, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
for b in ("src", "dst", "clones"):
    s3.create_bucket(Bucket=b)
def put(i):
    body = os.urandom(size // 4) * 4
    s3.put_object(Bucket="src", Key=f"images/{i % 50:02d}/{i:05d}.jpg", Body=body, ContentType="image/jpeg")
with concurrent.futures.ThreadPoolExecutor(16) as ex:
    list(ex.map(put, range(n)))
PY
    cat > "$work/s3.toml" <<TOML
name = "s3bench"
store = "s3store"
[[target]]
name = "images"
kind = "s3"
bucket = "src"
clone_bucket = "clones"
endpoint = "$endpoint"
TOML
    sed -e 's/^name = "s3bench"/name = "s3bench-wc"/' -e 's/^endpoint = .*/&\ntags = "with-content"/' "$work/s3.toml" > "$work/s3wc.toml"
    aws_sync() { "$aws" --endpoint-url "$endpoint" s3 sync s3://src s3://dst --only-show-errors; }
    clear_dst() { "$aws" --endpoint-url "$endpoint" s3 rm s3://dst --recursive --only-show-errors; }
    clear_clones() { "$aws" --endpoint-url "$endpoint" s3 rm s3://clones --recursive --only-show-errors; rm -rf "$work/s3store" "$HOME/.cache/guard"; }
    guard_clone() { "$guard" --policy "$work/s3.toml" snapshot; }
    guard_clone_wc() { "$guard" --policy "$work/s3wc.toml" snapshot; }
    say "s3: aws s3 sync"
    prep="clear_dst"
    t_sync=$(median aws_sync)
    say "s3: guard snapshot (first: copies every object)"
    prep="clear_clones"
    t_clone=$(median guard_clone)
    prep=""
    say "s3: guard snapshot (repeat of an unchanged bucket)"
    t_repeat=$(median guard_clone)
    say "s3: guard snapshot, tags = \"with-content\" (first, then a repeat)"
    prep="clear_clones"
    t_clone_wc=$(median guard_clone_wc)
    prep=""
    t_repeat_wc=$(median guard_clone_wc)
    kill $moto_pid 2>/dev/null || true
    r() { echo "scale=2; $1 / $2" | bc -l | sed 's/^\./0./'; }
    s3_line="| S3 bucket clone ($S3_OBJECTS objects × $(numfmt --to=iec "$S3_SIZE"), moto on 127.0.0.1), tags exact (default) | ${t_clone} s | aws s3 sync s3://src s3://dst | ${t_sync} s | **$(r "$t_clone" "$t_sync")×** |
| S3 bucket clone, \`tags = \"with-content\"\` | ${t_clone_wc} s | aws s3 sync s3://src s3://dst | ${t_sync} s | **$(r "$t_clone_wc" "$t_sync")×** |
| S3 repeat snapshot, bucket unchanged, tags exact (default) | ${t_repeat} s | guard's first snapshot | ${t_clone} s | **$(r "$t_repeat" "$t_clone")×** |
| S3 repeat snapshot, bucket unchanged, \`tags = \"with-content\"\` | ${t_repeat_wc} s | guard's first snapshot (same mode) | ${t_clone_wc} s | **$(r "$t_repeat_wc" "$t_clone_wc")×** |"
fi

ratio() { echo "scale=2; $1 / $2" | bc -l | sed 's/^\./0./'; }
report="$work/results.md"
{
    echo "## guard benchmarks — $(date -u +%Y-%m-%dT%H:%MZ), $cores cores, $ROUNDS rounds (medians)"
    echo
    echo "Fixture: SQLite database of $ROWS sensor readings, $(numfmt --to=iec "$db_bytes")."
    echo
    echo "| case | guard | recipe | time | ratio (guard / recipe) |"
    echo "|---|---|---|---|---|"
    echo "| SQLite snapshot | ${t_guard} s | seed recipe: sqlite3 .backup + gzip -6 + sha256sum | ${t_recipe} s | **$(ratio "$t_guard" "$t_recipe")×** |"
    echo "| SQLite snapshot | ${t_guard} s | pigz -p $cores -6 (compression only) | ${t_pigz} s | **$(ratio "$t_guard" "$t_pigz")×** |"
    echo "| verify (checksums) | ${t_verify} s | sha256sum | ${t_sha256sum} s | $(ratio "$t_verify" "$t_sha256sum")× |"
    echo "| verify (checksums) | ${t_verify} s | openssl dgst -sha256 | ${t_openssl} s | $(ratio "$t_verify" "$t_openssl")× |"
    echo "| verify (deep: gunzip + integrity_check + fingerprints) | ${t_verify_deep} s | — | — | — |"
    echo "| SQLite snapshot, encrypted (age) | ${t_enc} s | the same snapshot unencrypted | ${t_guard} s | **$(ratio "$t_enc" "$t_guard")×** |"
    echo "| verify (deep), encrypted | ${t_enc_verify} s | the same unencrypted | ${t_verify_deep} s | $(ratio "$t_enc_verify" "$t_verify_deep")× |"
    [ -n "$pg_line" ] && echo "$pg_line"
    [ -n "$s3_line" ] && echo "$s3_line"
    echo "| \`guard -- true\`, small policy | ${t_small_run} s | guard snapshot of the same | ${t_small_snap} s | +$(echo "($t_small_run - $t_small_snap) * 1000" | bc -l | xargs printf '%.0f') ms |"
    echo
    echo "Artifact size: guard $(numfmt --to=iec "$size_guard") vs gzip -6 $(numfmt --to=iec "$size_gzip") ($(echo "scale=2; 100 * ($size_guard - $size_gzip) / $size_gzip" | bc -l)% difference)."
    echo "Peak memory (max RSS) of guard snapshot: $((peak_kb / 1024)) MiB; encrypted: $((enc_peak_kb / 1024)) MiB."
    [ -n "${pg_sizes:-}" ] && echo "$pg_sizes"
    echo
    echo "Retention: \`guard prune --dry-run\` over a catalog of 10,000 snapshots: ${t_prune_plan} s; the real prune deleting $pruned of them (artifacts, manifests, catalog rows): ${t_prune} s."
    echo
    echo "Compression level (\`[compression] level\`):"
    echo
    echo "| level | guard snapshot | artifact |"
    echo "|---|---|---|"
    printf '%s' "$levels"
} | tee "$report"
say "written to $report"
