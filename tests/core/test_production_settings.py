"""Production posture: `check --deploy` is clean with production settings from the
environment and the one documented switch, FLPORTAL_HTTPS=1; the plain-HTTP embedded
default keeps working without it; DATABASE_URL keeps its query options; every page
carries the security headers, and a Content-Security-Policy its own inline scripts
satisfy (by nonce)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = {"FLPORTAL_SECRET_KEY": "x" * 20 + "-a-long-random-secret-for-this-test-only-" + "y" * 20,
              "FLPORTAL_ALLOWED_HOSTS": "fl.example.org", "FLPORTAL_HTTPS": "1"}


def manage(*argv: str, env: dict, tmp_path) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FLPORTAL_", "DATABASE_URL", "REDIS_URL"))}
    return subprocess.run([sys.executable, "manage.py", *argv], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, env={**base, "FLPORTAL_DATA_DIR": str(tmp_path), **env})


def settings_of(env: dict, tmp_path, *names: str) -> dict:
    code = ("import json; from django.conf import settings; "
            f"print(json.dumps({{n: getattr(settings, n, None) for n in {names!r}}}, default=str))")
    done = manage("shell", "-c", code, env=env, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_check_deploy_is_clean_with_the_production_switch(tmp_path):
    done = manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION, tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


def test_without_https_check_deploy_warns_and_the_demo_stays_plain_http(tmp_path):
    done = manage("check", "--deploy", "--fail-level", "WARNING",
                  env={k: v for k, v in PRODUCTION.items() if k != "FLPORTAL_HTTPS"}, tmp_path=tmp_path)
    assert done.returncode != 0 and "SECURE_SSL_REDIRECT" in done.stderr + done.stdout
    plain = settings_of({}, tmp_path, "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "SECURE_HSTS_SECONDS")
    assert plain == {"SECURE_SSL_REDIRECT": False, "SESSION_COOKIE_SECURE": False, "SECURE_HSTS_SECONDS": 0}
    https = settings_of(PRODUCTION, tmp_path, "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE",
                        "SECURE_PROXY_SSL_HEADER")
    assert https == {"SECURE_SSL_REDIRECT": True, "SESSION_COOKIE_SECURE": True, "CSRF_COOKIE_SECURE": True,
                     "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"]}


def test_database_url_keeps_its_query_options_and_decodes_the_password(tmp_path):
    url = "postgres://fl%40lab:p%40ss%2Fword@db.example.org:5433/flportal?sslmode=verify-full&connect_timeout=7"
    database = settings_of({"DATABASE_URL": url}, tmp_path, "DATABASES")["DATABASES"]["default"]
    assert (database["NAME"], database["USER"], database["PASSWORD"], database["HOST"], database["PORT"]) == (
        "flportal", "fl@lab", "p@ss/word", "db.example.org", 5433)
    assert database["OPTIONS"]["sslmode"] == "verify-full" and database["OPTIONS"]["connect_timeout"] == 7
    assert database["OPTIONS"]["pool"]["max_size"] == 16


def test_a_database_url_of_another_kind_is_refused(tmp_path):
    done = manage("check", env={"DATABASE_URL": "mysql://u@h/db"}, tmp_path=tmp_path)
    assert done.returncode != 0 and "DATABASE_URL must be postgres://" in done.stderr


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/login/", "/", "/nodes/", "/admin/login/"])
def test_every_page_carries_the_security_headers(client, user, url):
    client.force_login(user)
    response = client.get(url)
    assert response.status_code == 200
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Frame-Options"] == "DENY"
    policy = response["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy and "object-src 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy


@pytest.mark.django_db
def test_the_pages_inline_scripts_and_styles_carry_the_policys_nonce(client, started_job):
    client.force_login(started_job.owner)
    for url in ("/", f"/jobs/{started_job.pk}/"):
        response = client.get(url)
        nonce = re.search(r"script-src 'self' 'nonce-([^']+)'", response["Content-Security-Policy"]).group(1)
        html = response.content.decode()
        # scripts that run (not JSON data blocks, not files) and style blocks
        inline = re.findall(r"<(script|style)(?![^>]*\b(?:src=|type=\"application/json\"))([^>]*)>", html)
        assert inline, url
        assert all(f'nonce="{nonce}"' in attributes for _, attributes in inline), (url, inline)
        assert not re.search(r"<[a-z]+[^>]*\sstyle=", html), f"{url}: an inline style attribute CSP would block"
