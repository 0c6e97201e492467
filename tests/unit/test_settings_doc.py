"""docs/operations.md's settings table is the settings model, rendered (scripts/settings_doc.py).

- the table in the page equals what the generator renders from ``stream_monitor.config.Settings`` now, so a
  field added, renamed or re-described without running the generator fails here;
- ``--check`` exits 1 on a stale page and the generator rewrites it; a field without a description stops it;
- what the table claims is what pydantic-settings does: each variable and each TOML key it names sets that
  field, and the fields it marks secret are masked;
- the variables ``config.py`` reads itself (``STREAM_MONITOR_CONFIG``, ``STREAM_MONITOR_SECRETS_DIR``) are
  described beside the table, and a secret file named like its variable is read.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import typing
from pathlib import Path
from types import ModuleType, UnionType
from typing import Any, Literal

import pytest
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream_monitor import config
from stream_monitor.config import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations.md"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("settings_doc", ROOT / "scripts" / "settings_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("settings_doc", module)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()
ROWS = gen.rows()


def test_the_page_holds_the_table_rendered_from_the_model() -> None:
    page = DOC.read_text(encoding="utf-8")
    fresh = gen.replace_table(page, gen.render_table(ROWS))
    assert fresh == page, "docs/operations.md is stale: run .venv/bin/python scripts/settings_doc.py"


def test_every_field_has_one_row() -> None:
    leaves = [n for n, f in Settings.model_fields.items() if n != "topics"]
    leaves += [f"topics.{n}" for n in Settings.model_fields["topics"].annotation.model_fields]  # type: ignore[union-attr]
    assert sorted(r.toml_key for r in ROWS) == sorted(leaves)
    assert len({r.env for r in ROWS}) == len(ROWS)


def test_check_fails_on_a_stale_page_and_the_generator_repairs_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = gen.replace_table(DOC.read_text(encoding="utf-8"), gen.render_table(ROWS))
    stale = tmp_path / "operations.md"
    stale.write_text(page.replace("| `STREAM_MONITOR_METRICS_PORT` |", "| `STREAM_MONITOR_PORT` |"), "utf-8")
    assert gen.main(["--check", "--doc", str(stale)]) == 1
    err = capsys.readouterr().err
    assert "+| `STREAM_MONITOR_METRICS_PORT` |" in err and "is stale" in err
    assert gen.main(["--doc", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == page
    assert gen.main(["--check", "--doc", str(stale)]) == 0


def test_a_page_without_markers_is_refused(tmp_path: Path) -> None:
    bare = tmp_path / "bare.md"
    bare.write_text("# no table here\n", encoding="utf-8")
    assert gen.main(["--check", "--doc", str(bare)]) == 2
    with pytest.raises(gen.SettingsDocError, match="exactly once"):
        gen.replace_table("# no table here\n", "| x |\n")


def test_a_field_without_description_is_refused() -> None:
    class Undescribed(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="X_")

        described: int = Field(default=1, description="Has one.")
        bare: int = 2

    with pytest.raises(gen.SettingsDocError, match=r"^bare has no description"):
        gen.rows(Undescribed)


def _sample(annotation: Any, name: str) -> tuple[str, Any]:
    """(text for the variable / TOML, the value the field must then hold) of a field's type."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        default = Settings.model_fields[name].default
        choice = next(a for a in args if a != default)
        return choice, choice
    if origin in (typing.Union, UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return _sample(inner, name)
    if annotation is int:
        return "4321", 4321
    if annotation is float:
        return "12.5", 12.5
    if annotation is Path:
        return f"/etc/sm/{name}.pem", Path(f"/etc/sm/{name}.pem")
    assert annotation in (str, SecretStr), f"{name}: add a sample for {annotation}"
    return f"value-of-{name}", f"value-of-{name}"


def _field_annotation(toml_key: str) -> Any:
    model: Any = Settings
    *parents, leaf = toml_key.split(".")
    for part in parents:
        model = model.model_fields[part].annotation
    return model.model_fields[leaf].annotation


def _held(settings: Settings, toml_key: str) -> Any:
    value: Any = settings
    for part in toml_key.split("."):
        value = getattr(value, part)
    return value.get_secret_value() if isinstance(value, SecretStr) else value


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.env)
def test_the_variable_sets_the_field_and_secrets_are_masked(
    row: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STREAM_MONITOR_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.delenv("STREAM_MONITOR_SECRETS_DIR", raising=False)
    text, expected = _sample(_field_annotation(row.toml_key), row.toml_key.split(".")[-1])
    monkeypatch.setenv(row.env, text)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert _held(settings, row.toml_key) == expected
    shown = repr(settings) + json.dumps(settings.redacted())
    assert (text not in shown) is row.secret, f"{row.env}: secret column says {row.secret}"


def test_every_toml_key_sets_its_field(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    lines, expected = [], {}
    for row in ROWS:
        text, value = _sample(_field_annotation(row.toml_key), row.toml_key.split(".")[-1])
        literal = text if re.fullmatch(r"[0-9.]+", text) else json.dumps(text)
        lines.append(f"{row.toml_key} = {literal}")
        expected[row.toml_key] = value
    config = tmp_path / "settings.toml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for name in [*(r.env for r in ROWS), "STREAM_MONITOR_SECRETS_DIR"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STREAM_MONITOR_CONFIG", str(config))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert {key: _held(settings, key) for key in expected} == expected


def test_a_secret_file_named_like_its_variable_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "STREAM_MONITOR_KAFKA_SASL_PASSWORD").write_text("from-a-file", encoding="utf-8")
    monkeypatch.delenv("STREAM_MONITOR_KAFKA_SASL_PASSWORD", raising=False)
    monkeypatch.setenv("STREAM_MONITOR_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("STREAM_MONITOR_SECRETS_DIR", str(tmp_path))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.kafka_sasl_password is not None
    assert settings.kafka_sasl_password.get_secret_value() == "from-a-file"


def test_the_variables_config_reads_itself_are_described_beside_the_table() -> None:
    source = Path(config.__file__).read_text(encoding="utf-8")
    read = set(re.findall(r'os\.environ\.get\(\s*"(STREAM_MONITOR_[A-Z_]+)"', source))
    assert read >= {"STREAM_MONITOR_CONFIG", "STREAM_MONITOR_SECRETS_DIR"}
    outside = DOC.read_text(encoding="utf-8").split(gen.BEGIN)[0]
    for name in sorted(read):
        assert f"`{name}`:" in outside, f"docs/operations.md: describe {name} above the settings table"
