"""``flportal-agent enroll`` against the fake portal, and ``run`` reading what it wrote."""

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent import __main__ as cli
from agent import config
from agent.config import ConfigError, NodeConfig, write_enrollment
from agent.credentials import MissingSecret
from tests.agent.conftest import AGENT_KEY, NODE_TOKEN, REPO_ROOT, subprocess_env

CODE = "code-abc"
MESSAGES = {400: "This enrollment code is not valid.", 409: "This enrollment code has already been used.",
            410: "This enrollment code has expired.", 403: "This node is disabled."}


@pytest.fixture(autouse=True)
def no_site_env(monkeypatch, tmp_path):
    """No secrets or config dir from the environment; a HOME of the test's own."""
    for name in ("FLPORTAL_NODE_TOKEN", "FLPORTAL_AGENT_KEY", config.CONFIG_DIR_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def run_cli(*argv: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", *argv], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60, env=subprocess_env(HOME=env.pop("HOME", "/nonexistent"), **env))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_enroll_writes_private_config_and_prints_no_secret(portal, tmp_path, site_data):
    portal.enrollment_codes[CODE] = 201
    config_dir = tmp_path / "conf" / "flportal-agent"
    done = run_cli("enroll", "--portal", portal.url + "/", "--code", CODE, "--data-dir", str(site_data),
                   FLPORTAL_AGENT_CONFIG_DIR=str(config_dir))  # the default config dir, from the environment
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in config_dir.iterdir()) == ["agent-key", "node.json", "token"]
    assert mode(config_dir) == 0o700
    assert all(mode(config_dir / name) == 0o600 for name in ("agent-key", "node.json", "token"))
    assert json.loads((config_dir / "node.json").read_text()) == {
        "portal": portal.url, "name": "site-1", "agent_url": "http://127.0.0.1:8123",
        "data_dir": str(site_data.resolve())}
    assert (config_dir / "token").read_text().strip() == NODE_TOKEN
    assert (config_dir / "agent-key").read_text().strip() == AGENT_KEY
    for secret in (NODE_TOKEN, AGENT_KEY, CODE):
        assert secret not in done.stdout and secret not in done.stderr
    for shown in ("site-1", portal.url, "http://127.0.0.1:8123", str(config_dir)):
        assert shown in done.stdout
    assert portal.enrollments == [({"code": CODE}, None)]  # no Authorization header: the code is the credential


def test_enroll_refused_by_subprocess_exits_2_and_writes_nothing(portal, tmp_path):
    portal.enrollment_codes[CODE] = 410
    config_dir = tmp_path / "conf"
    done = run_cli("enroll", "--portal", portal.url, "--code", CODE, "--config-dir", str(config_dir))
    assert done.returncode == 2
    assert MESSAGES[410] in done.stderr and "enrollment_expired" in done.stderr
    assert not config_dir.exists()


@pytest.mark.parametrize("status", [400, 409, 410, 403])
def test_enroll_refusals_exit_2_with_the_message_and_change_nothing(portal, tmp_path, capsys, status):
    portal.enrollment_codes[CODE] = status
    absent, empty = tmp_path / "absent", tmp_path / "empty"
    empty.mkdir()
    for config_dir in (absent, empty):
        assert cli.main(["enroll", "--portal", portal.url, "--code", CODE, "--config-dir", str(config_dir)]) == 2
        assert MESSAGES[status] in capsys.readouterr().err
    assert not absent.exists() and list(empty.iterdir()) == []


def test_enroll_unreachable_portal_exits_3(tmp_path):
    config_dir = tmp_path / "conf"
    done = run_cli("enroll", "--portal", f"http://127.0.0.1:{free_port()}", "--code", CODE,
                   "--config-dir", str(config_dir), "--timeout", "5")
    assert done.returncode == 3
    assert "cannot reach the portal" in done.stderr
    assert not config_dir.exists()


def test_second_enroll_refuses_without_force_and_keeps_the_code_unspent(portal, tmp_path, capsys):
    portal.enrollment_codes.update({CODE: 201, "second": 201})
    config_dir = tmp_path / "conf"
    argv = ["enroll", "--portal", portal.url, "--config-dir", str(config_dir)]
    assert cli.main([*argv, "--code", CODE]) == 0
    before = {p.name: p.read_bytes() for p in config_dir.iterdir()}
    capsys.readouterr()

    assert cli.main([*argv, "--code", "second"]) == 2
    assert "--force" in capsys.readouterr().err
    assert len(portal.enrollments) == 1  # refused before the portal was asked: "second" is still usable
    assert {p.name: p.read_bytes() for p in config_dir.iterdir()} == before

    portal.token, portal.agent_key = "new-token", "new-key"
    assert cli.main([*argv, "--code", "second", "--force"]) == 0
    assert (config_dir / "token").read_text().strip() == "new-token"
    assert (config_dir / "agent-key").read_text().strip() == "new-key"
    assert sorted(p.name for p in config_dir.iterdir()) == ["agent-key", "node.json", "token"]  # no temp files


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    config_dir = tmp_path / "conf"
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        return os.rename(src, dst)

    monkeypatch.setattr(config.os, "replace", failing_replace)
    with pytest.raises(ConfigError, match="disk full"):
        write_enrollment(config_dir, NodeConfig("http://portal", "site-1"), token="t", agent_key="k")
    assert not config_dir.exists()


def test_run_reads_portal_name_and_secrets_from_the_config_dir(portal, tmp_path, site_data):
    portal.enrollment_codes[CODE] = 201
    config_dir = tmp_path / "conf"
    assert cli.main(["enroll", "--portal", portal.url, "--code", CODE, "--config-dir", str(config_dir),
                     "--data-dir", str(site_data)]) == 0
    opts = cli.parse_args(["run", "--config-dir", str(config_dir)])
    assert opts.command == "run"
    assert cli.prepare_run(opts) == (NODE_TOKEN, AGENT_KEY)
    assert (opts.portal, opts.name, opts.data_dir, opts.port) == (portal.url, "site-1", site_data.resolve(), 8123)


def test_run_flags_and_environment_win_over_the_config_dir(tmp_path, monkeypatch):
    config_dir = tmp_path / "conf"
    write_enrollment(config_dir, NodeConfig("http://portal:8000", "site-1", "http://10.0.0.5:8101", "/data/fl"),
                     token="stored-token", agent_key="stored-key")
    key_file = tmp_path / "key"
    key_file.write_text("file-key\n")
    key_file.chmod(0o600)
    monkeypatch.setenv("FLPORTAL_NODE_TOKEN", "env-token")
    monkeypatch.setenv(config.CONFIG_DIR_ENV, str(config_dir))  # the default config dir
    opts = cli.parse_args(["run", "--portal", "http://other:9000", "--name", "site-9", "--data-dir", str(tmp_path),
                           "--port", "0", "--agent-key-file", str(key_file)])
    assert cli.prepare_run(opts) == ("env-token", "file-key")
    assert (opts.portal, opts.name, opts.data_dir, opts.port) == ("http://other:9000", "site-9", tmp_path, 0)
    assert opts.config_dir == config_dir


def test_run_without_an_enrollment_says_to_enroll(tmp_path):
    opts = cli.parse_args(["run", "--config-dir", str(tmp_path / "none"), "--data-dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="flportal-agent enroll"):
        cli.prepare_run(opts)
    opts = cli.parse_args(["run", "--config-dir", str(tmp_path / "none"), "--portal", "http://p", "--name", "n",
                           "--data-dir", str(tmp_path)])
    with pytest.raises(MissingSecret, match="node token"):
        cli.prepare_run(opts)


def test_no_subcommand_is_the_agent_as_before(tmp_path, monkeypatch):
    write_enrollment(tmp_path / "conf", NodeConfig("http://portal:8000", "site-1"), token="t", agent_key="k")
    monkeypatch.setenv(config.CONFIG_DIR_ENV, str(tmp_path / "conf"))
    opts = cli.parse_args(["--portal", "http://p:8000", "--name", "site-1", "--data-dir", str(tmp_path)])
    assert (opts.command, opts.config_dir, opts.port, opts.host) == ("legacy", None, 8101, "127.0.0.1")
    with pytest.raises(MissingSecret):  # secrets only from the environment or --*-file, as before
        cli.prepare_run(opts)
    monkeypatch.setenv("FLPORTAL_NODE_TOKEN", "tok")
    monkeypatch.setenv("FLPORTAL_AGENT_KEY", "key")
    assert cli.prepare_run(opts) == ("tok", "key")
    with pytest.raises(SystemExit):
        cli.parse_args(["--portal", "http://p:8000", "--data-dir", str(tmp_path)])  # --name still required


def test_each_subcommand_has_its_help():
    for argv, expected in ((["--help"], "enroll --portal"), (["enroll", "--help"], "--force"),
                           (["run", "--help"], "--config-dir")):
        done = run_cli(*argv, COLUMNS="200")
        assert done.returncode == 0 and expected in done.stdout, done
