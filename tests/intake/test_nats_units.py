"""The NATS source's pure parts and its configuration (SPEC §4.2 item 5, §12)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import ConfigError, load_settings
from app.intake.nats import public_url, subject_covers
from app.intake.reports import report_subject
from tests.intake.test_nats import audit_events
from tests.nats_support import NatsServer, client, daemon_settings, running_daemon, until


@pytest.mark.parametrize(("pattern", "subject", "covered"), [
    ("execd.signals", "execd.signals", True),
    ("execd.signals", "execd.signals.>", False),
    ("execd.signals.>", "execd.signals.acct1", True),
    ("execd.signals.>", "execd.signals.acct1.>", True),
    ("execd.signals.>", "execd.signals", False),
    ("execd.*", "execd.signals", True),
    ("execd.*", "execd.signals.>", False),
    ("execd.*.>", "execd.signals.>", True),
    (">", "execd.signals", True),
    ("execd.other", "execd.signals", False),
])
def test_subject_covers(pattern: str, subject: str, covered: bool) -> None:
    """A stream subject covers ours when it matches every subject ours can name."""
    assert subject_covers(pattern, subject) is covered


def test_urls_are_shown_without_credentials() -> None:
    """User and password never reach the audit log or the status."""
    assert public_url("nats://u:secret@h:4222,nats://h2:4222") == "nats://h:4222,nats://h2:4222"


def test_a_report_without_a_usable_symbol_goes_to_the_underscore_subject() -> None:
    """Only a symbol of A-Z 0-9 becomes a subject token."""
    assert report_subject("execd.reports", "BTCUSDT") == "execd.reports.BTCUSDT"
    assert report_subject("execd.reports", "a.b>") == "execd.reports._"
    assert report_subject("execd.reports", None) == "execd.reports._"


def test_nats_keys_from_the_environment_and_their_errors() -> None:
    """EXECD_INTAKE__NATS__URL sets intake.nats.url; a wrong URL or a wildcard subject is a
    config error naming the key."""
    settings = load_settings(environ={"EXECD_INTAKE__NATS__URL": "nats://10.0.0.5:4222"})
    assert settings.intake.nats.url == "nats://10.0.0.5:4222"
    assert settings.intake.nats.stream == "EXECD"
    assert load_settings(environ={}).intake.nats.url is None
    with pytest.raises(ConfigError, match=r"intake\.nats\.url: must be a nats://"):
        load_settings(environ={"EXECD_INTAKE__NATS__URL": "http://h:4222"})
    with pytest.raises(ConfigError, match=r"intake\.nats\.subject"):
        load_settings(overrides={"intake.nats.subject": "execd.*"}, environ={})


@pytest.mark.timeout(60)
async def test_a_stream_that_does_not_capture_the_subject_is_reported_not_changed(
        tmp_path: Path) -> None:
    """An existing stream without our subject is left alone: source_disconnected names the
    stream and what to do, the status says ``down``, the daemon serves on."""
    async with NatsServer(tmp_path / "nats") as server, client(server.url) as nc:
        await nc.jetstream().add_stream(name="EXECD", subjects=["other.things"])
        async with running_daemon(daemon_settings(tmp_path, server.url)) as daemon:
            await until(lambda: daemon.nats is not None and daemon.nats.source.state == "down")
            assert daemon.nats is not None
            assert "does not capture execd.signals" in str(daemon.nats.source.status()["error"])
        info = await nc.jetstream().stream_info("EXECD")
        assert info.config.subjects == ["other.things"]
    event = audit_events(tmp_path, "source_disconnected")[0]
    assert "stream EXECD exists but does not capture execd.signals" in event["error"]
