"""A bad setting is blamed on its real source: the variable, or the settings file and its field."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from auditor.cli import main
from auditor.errors import InputError
from auditor.settings import load_settings


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "auditor.yaml"
    path.write_text(text)
    return path


def test_a_bad_field_in_the_settings_file_names_the_file_and_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _file(tmp_path, "daemon:\n  rules: [rules.yaml, {not: a path}]\n")
    monkeypatch.setenv("AUDITOR_CONFIG_FILE", str(path))
    with pytest.raises(InputError) as caught:
        load_settings()
    assert caught.value.source == str(path)
    assert caught.value.field == "daemon.rules[1]"
    assert "environment" not in caught.value.render()


def test_the_cli_reports_the_file_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _file(tmp_path, "logging:\n  level: loud\n")
    monkeypatch.setenv("AUDITOR_CONFIG_FILE", str(path))
    assert main(["checks"], stdout=io.StringIO()) == 2
    assert capsys.readouterr().err.startswith(f"auditor: error: {path}: logging.level: Input should be")


def test_a_bad_variable_is_still_blamed_on_the_environment_beside_a_good_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDITOR_CONFIG_FILE", str(_file(tmp_path, "logging:\n  level: info\n")))
    monkeypatch.setenv("auditor_logging__level", "loud")  # pydantic-settings ignores the case
    with pytest.raises(InputError) as caught:
        load_settings()
    assert (caught.value.source, caught.value.field) == ("environment", "AUDITOR_LOGGING__LEVEL")


def test_a_group_set_as_json_in_the_environment_is_blamed_on_that_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDITOR_CONFIG_FILE", str(_file(tmp_path, "daemon:\n  rules: [ok.yaml]\n")))
    monkeypatch.setenv("AUDITOR_LOGGING", '{"level": "loud"}')
    with pytest.raises(InputError) as caught:
        load_settings()
    assert (caught.value.source, caught.value.field) == ("environment", "AUDITOR_LOGGING")


def test_every_bad_field_is_listed_with_its_own_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _file(tmp_path, "daemon:\n  rules: [7]\n")
    monkeypatch.setenv("AUDITOR_CONFIG_FILE", str(path))
    monkeypatch.setenv("AUDITOR_LOGGING__FORMAT", "xml")
    with pytest.raises(InputError) as caught:
        load_settings()
    text = caught.value.render()
    assert text.startswith("environment: AUDITOR_LOGGING__FORMAT: ")
    assert f"daemon.rules[0] ({path}): Input should be a valid string" in text


def test_a_misspelt_key_in_the_settings_file_is_named_not_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _file(tmp_path, "daemon:\n  rulez: [rules.yaml]\n")
    monkeypatch.setenv("AUDITOR_CONFIG_FILE", str(path))
    with pytest.raises(InputError) as caught:
        load_settings()
    assert (caught.value.source, caught.value.field) == (str(path), "daemon.rulez")
    assert "Extra inputs are not permitted" in caught.value.problem
