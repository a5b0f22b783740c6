"""Test-wide set-up: every test run gets its own data directory (SQLite file, artifacts,
secret key), and the in-process Django of the tests is the embedded default. Tests of
the production stack start their own processes with DATABASE_URL and REDIS_URL."""
import os
import tempfile

os.environ.setdefault("FLPORTAL_DATA_DIR", tempfile.mkdtemp(prefix="flportal-test-"))
for name in ("DATABASE_URL", "REDIS_URL"):
    os.environ.pop(name, None)
