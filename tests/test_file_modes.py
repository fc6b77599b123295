"""``execd run`` keeps its files to its owner (issue 14 finding 7, SPEC §11.2, §12): journal,
lock, token and audit files 0600 and directories 0700; a loose token file is reported; a short
token off loopback stops it at start."""

from __future__ import annotations

import asyncio
import stat
import sys
from pathlib import Path

from app.config import PROJECT_ROOT
from tests.daemon_process import DaemonProcess, audit_events, daemon_env, free_port

TOKEN = "file-modes-token-" + "t" * 24


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def modes(tmp_path: Path) -> dict[str, int]:
    """The permission bits of everything under `tmp_path`, by relative path."""
    return {str(p.relative_to(tmp_path)): mode(p) for p in sorted(tmp_path.rglob("*"))}


def loose_token(path: Path) -> None:
    path.parent.mkdir()
    path.write_text(TOKEN + "\n", encoding="utf-8")
    path.chmod(0o644)


async def run_once(env: dict[str, str]) -> None:
    daemon = await DaemonProcess(env).start()
    try:
        code, err = await daemon.stop()
    finally:
        await daemon.ensure_dead()
    assert code == 0, err


async def test_run_creates_files_for_its_owner_only(tmp_path: Path) -> None:
    """Whatever the caller's umask, every file execd run creates is 0600 and every directory
    0700 (journal and its WAL, the lock, the token, the audit files)."""
    await run_once(daemon_env(tmp_path, free_port()))
    found = modes(tmp_path)
    assert {"data", "audit", "data/journal.sqlite3", "data/journal.sqlite3.lock",
            "data/api-token"} <= set(found)
    assert any(name.startswith("audit/audit-") for name in found)
    assert {name: m for name, m in found.items() if m != (0o700 if (tmp_path / name).is_dir()
                                                          else 0o600)} == {}


async def test_run_reports_a_token_file_others_can_read(tmp_path: Path) -> None:
    """A token file of mode 0644 is used as it is, and reported once at start as a warning
    naming the file and its mode."""
    env = daemon_env(tmp_path, free_port())
    token_file = tmp_path / "data" / "api-token"
    loose_token(token_file)
    await run_once(env)
    exposed = [e for e in audit_events(tmp_path) if e["event"] == "secret_file_exposed"]
    assert [(e["level"], e["key"], e["path"], e["mode"]) for e in exposed] == [
        ("warning", "api.token", str(token_file), "0644")]
    assert token_file.read_text(encoding="utf-8") == TOKEN + "\n"


async def test_short_token_off_loopback_exits_2(tmp_path: Path) -> None:
    """execd run with the API on 0.0.0.0 and a 12-character token exits 2 naming api.token
    and EXECD_API_TOKEN, before creating anything."""
    env = daemon_env(tmp_path, free_port(), EXECD_API__HOST="0.0.0.0",
                     EXECD_API_TOKEN="short-token!")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "run", cwd=PROJECT_ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        _, raw = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:  # it started serving: the check is missing
            proc.kill()
            await proc.wait()
    code, err = proc.returncode, raw.decode()
    assert code == 2
    assert "config error: api.token: must be at least 32 characters" in err
    assert "EXECD_API_TOKEN" in err
    assert "short-token!" not in err
    assert not (tmp_path / "data").exists()
