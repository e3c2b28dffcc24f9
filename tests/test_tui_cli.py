"""`labctl tui` refuses bad option combinations with exit 2 before any screen or bench is
started (the running TUI itself is covered by the pilot tests)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from labctl.cli.app import app

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["tui", *args])
    return result.exit_code, result.stderr


def test_bench_id_without_broker_is_refused(tmp_path: Path) -> None:
    code, err = run("--bench-id", "b1", "--data-dir", str(tmp_path))
    assert code == 2 and "--bench-id needs --broker" in err


def test_bad_broker_url_is_refused(tmp_path: Path) -> None:
    code, err = run("--broker", "ftp://host", "--bench-id", "b1", "--data-dir", str(tmp_path))
    assert code == 2 and "scheme must be mqtt://" in err


def test_bench_id_that_is_no_topic_level_is_refused(tmp_path: Path) -> None:
    code, err = run("--broker", "mqtt://127.0.0.1:1", "--bench-id", "a/b",
                    "--data-dir", str(tmp_path))
    assert code == 2 and "letters, digits" in err


def test_unreadable_config_is_refused(tmp_path: Path) -> None:
    code, _ = run("--config", str(tmp_path / "missing.toml"), "--data-dir", str(tmp_path))
    assert code == 2
