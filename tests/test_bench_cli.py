"""Every bench answers --help and refuses a mistyped flag before it starts.

A bench runs for minutes and then rewrites its committed table in bench/results, so a flag it
ignored used to start a full run and overwrite the results (``bench.runtime --help`` did).
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHES = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if not p.stem.startswith("_"))  # _x: helpers


def _results_state() -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (ROOT / "bench" / "results").iterdir()}


def _bench(name: str, *args: str) -> subprocess.CompletedProcess:
    # A bench that ignored its arguments would run for minutes: the timeout fails the test instead.
    return subprocess.run([sys.executable, "-m", f"bench.{name}", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_every_bench_is_covered():
    assert len(BENCHES) == 18 and "runtime" in BENCHES and "arm64" in BENCHES and "onnx_coverage" in BENCHES


@pytest.mark.parametrize("name", BENCHES)
def test_bench_help_prints_its_purpose_and_writes_nothing(name):
    before = _results_state()
    done = _bench(name, "--help")
    assert done.returncode == 0, done.stderr
    first_line = ast.get_docstring(ast.parse((ROOT / "bench" / f"{name}.py").read_text())).splitlines()[0]
    assert first_line in done.stdout
    assert _results_state() == before


@pytest.mark.parametrize("name", BENCHES)
def test_bench_refuses_an_unknown_flag(name):
    done = _bench(name, "--rounds-typo")
    assert done.returncode == 2 and "unrecognized arguments: --rounds-typo" in done.stderr


@pytest.mark.parametrize("args, message", [(["0"], "count must be a positive number of mutations; got 0"),
                                           (["many"], "invalid int value: 'many'")])
def test_fuzz_bench_checks_its_count(args, message):
    done = _bench("runtime_fuzz", *args)
    assert done.returncode == 2 and message in done.stderr


def test_suite_names_its_models_when_one_is_mistyped():
    done = _bench("suite", "--only", "mobilenet")
    assert done.returncode == 2 and "invalid choice: 'mobilenet'" in done.stderr and "mobilenetv2" in done.stderr


def test_publish_prints_and_writes_both_files(tmp_path, monkeypatch, capsys):
    import json

    import bench

    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    bench.publish("demo", "| a |\n|---|", {"rows": [1, 2], "path": tmp_path})
    assert capsys.readouterr().out == "| a |\n|---|\n"
    assert (tmp_path / "results" / "demo.md").read_text() == "| a |\n|---|\n"
    assert json.loads((tmp_path / "results" / "demo.json").read_text()) == {"rows": [1, 2], "path": str(tmp_path)}
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["demo.json", "demo.md"]  # no temp files
