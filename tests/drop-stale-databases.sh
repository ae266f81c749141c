#!/usr/bin/env bash
# Drops the databases earlier test runs left on the test PostgreSQL (every test creates its own,
# named <prefix>_<12 hex>, and none drops it: a DROP DATABASE forces a checkpoint, which stalls a
# running suite). Run by `make test` before the tests, when nothing of ours is using them. Left
# to pile up, thousands of them make autovacuum visit each one in turn and slow PostgreSQL down.
# Only names the test harness makes are touched, and only databases nobody is connected to (a
# test binary running elsewhere keeps its own). Without psql or PostgreSQL this does nothing: the
# tests themselves then say what is missing. The templates the test kit clones migrated
# databases from (<prefix>_tpl_<12 hex>, one per test process and migration set) have the same
# shape and go too; a test process whose template was swept builds another.
set -uo pipefail

url="${WXMP_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
command -v psql >/dev/null 2>&1 || exit 0

stale=$(psql "$url" -XAtq -c "
  SELECT datname FROM pg_database d
  WHERE datname ~ '^wxmp_[a-z0-9_]+_[0-9a-f]{12}\$'
    AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)" 2>/dev/null) || exit 0
[ -n "$stale" ] || exit 0

count=$(wc -l <<<"$stale")
echo "dropping $count test databases left by earlier runs"
# One session for all of them; a database someone connected to meanwhile is skipped, not forced.
sed 's/.*/DROP DATABASE IF EXISTS "&";/' <<<"$stale" | psql "$url" -Xq -v ON_ERROR_STOP=0 >/dev/null 2>&1
exit 0
