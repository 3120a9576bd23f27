"""--source reaches the hub for chat, run and serve: a store name pulled on first use from the
fake ModelScope on 127.0.0.1 when --source modelscope is given, and refused as unknown otherwise."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner(env={"COLUMNS": "200"})


@pytest.mark.parametrize("command", [["run", "qwen3-0.6b", "Hi"], ["chat", "qwen3-0.6b"], ["serve", "qwen3-0.6b"]])
def test_source_option_reaches_resolve(command, monkeypatch, tmp_path):
    seen = {}

    def fake_resolve(spec, store, *, progress=None, source=None, **kw):
        seen["source"] = source
        raise SystemExit(3)

    monkeypatch.setattr("cli.session.resolve_model", fake_resolve)
    monkeypatch.setenv("QWEN3_EDGE_HOME", str(tmp_path))
    r = runner.invoke(app, [*command, "--source", "modelscope"], input="")
    assert seen == {"source": "modelscope"} and r.exit_code == 3
