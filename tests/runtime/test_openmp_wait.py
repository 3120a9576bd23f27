"""How llama.cpp's OpenMP workers wait (edge/runtime/openmp.py): `import edge` loads libgomp with a
short spin unless the user chose, puts the environment back, and libgomp itself reports reading it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from edge.runtime.openmp import SPIN_COUNT, _libgomp, apply_wait_setting, wait_setting


def test_a_short_spin_unless_the_user_chose():
    assert wait_setting({}) == {"GOMP_SPINCOUNT": str(SPIN_COUNT)}
    assert wait_setting({"PATH": "/bin"}) == {"GOMP_SPINCOUNT": str(SPIN_COUNT)}
    assert wait_setting({"GOMP_SPINCOUNT": "300000"}) == {}
    assert wait_setting({"OMP_WAIT_POLICY": "ACTIVE"}) == {}
    assert 100 <= SPIN_COUNT <= 10_000  # measured: 300 and 1000 kept idle speed, 30000 lost it under load


def test_llama_cpp_loads_with_the_setting_and_the_environment_is_put_back():
    env, seen = {"PATH": "/bin"}, []
    said = apply_wait_setting(env, loaded=lambda: False, load=lambda: seen.append(dict(env)))
    assert seen == [{"PATH": "/bin", "GOMP_SPINCOUNT": str(SPIN_COUNT)}]
    assert env == {"PATH": "/bin"} and said == f"spin {SPIN_COUNT} rounds, then sleep"


def test_a_failed_load_still_puts_the_environment_back():
    env = {}

    def fail():
        raise OSError("no libllama")
    with pytest.raises(OSError):
        apply_wait_setting(env, loaded=lambda: False, load=fail)
    assert env == {}


def test_nothing_is_set_where_libgomp_is_loaded_already_or_the_user_chose():
    calls = []
    env = {}
    said = apply_wait_setting(env, loaded=lambda: True, load=lambda: calls.append(1))
    assert calls == [] and env == {} and "llama_cpp was imported before qwen3-edge" in said
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    said = apply_wait_setting(env, loaded=lambda: False, load=lambda: calls.append(1))
    assert calls == [] and env == {"OMP_WAIT_POLICY": "ACTIVE"} and said == "as OMP_WAIT_POLICY=ACTIVE says"


def _libgomp_reads(code: str, **env: str) -> tuple[str, str]:
    """(libgomp's own report of GOMP_SPINCOUNT, the child's stdout) for `code` in a fresh process."""
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, "OMP_DISPLAY_ENV": "VERBOSE", **env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    spin = [line.split("=")[1].strip().strip("'") for line in out.stderr.splitlines() if "GOMP_SPINCOUNT =" in line]
    return (spin[0] if spin else ""), out.stdout.strip()


@pytest.mark.skipif(_libgomp() is None, reason="these bindings run llama.cpp without OpenMP")
def test_libgomp_reads_the_short_spin_and_children_get_the_users_environment():
    code = "import os, edge; print(edge.WORKERS_WAIT, 'GOMP_SPINCOUNT' in os.environ)"
    spin, said = _libgomp_reads(code)
    assert spin == str(SPIN_COUNT) and said == f"spin {SPIN_COUNT} rounds, then sleep False"
    spin, said = _libgomp_reads(code, GOMP_SPINCOUNT="12345")
    assert spin == "12345" and said == "as GOMP_SPINCOUNT=12345 says True"
    spin, said = _libgomp_reads("import llama_cpp, edge; print(edge.WORKERS_WAIT)")
    assert spin == "300000" and "imported before qwen3-edge" in said
