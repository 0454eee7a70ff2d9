"""Lines the layout promises: device_runtime stays light and never reaches upstream."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_ALLOWED = {"numpy", "ai_edge_litert", "tflite_runtime", "PIL",
                   "cryptography"}  # + stdlib; cryptography only when a key is given; TF only as fallback
OPTIONAL_ACCELERATORS = {"cv2": "preprocess/engines.py"}  # used when installed, imported on first use only
FORBIDDEN_EVERYWHERE_IN_RUNTIME = {"sdk", "converters", "tf_keras", "torch", "onnx2tf",
                                   "tensorflow_model_optimization"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_device_runtime_imports_only_light_modules():
    stdlib = set(sys.stdlib_module_names)
    for path in sorted((ROOT / "device_runtime").rglob("*.py")):
        names = imported_modules(path)
        assert not names & FORBIDDEN_EVERYWHERE_IN_RUNTIME, (path.name, names & FORBIDDEN_EVERYWHERE_IN_RUNTIME)
        heavy = names - stdlib - RUNTIME_ALLOWED - {"tensorflow"} - set(OPTIONAL_ACCELERATORS)
        assert not heavy, (path.name, heavy)
        where = path.relative_to(ROOT / "device_runtime").as_posix()
        for module, home in OPTIONAL_ACCELERATORS.items():
            assert module not in names or where == home, f"{where} imports {module}; only {home} may"
        if "tensorflow" in names:
            assert path.name == "backend.py", f"{path.name} imports tensorflow; only backend.py may, as fallback"


def test_importing_and_running_the_runtime_loads_no_tensorflow(tmp_path):
    code = (
        "import sys, numpy as np, device_runtime as dr\n"
        "m = dr.Model(sys.argv[1])\n"
        "out = m(np.zeros((1, 4), np.float32))\n"
        "assert 'tensorflow' not in sys.modules and 'converters' not in sys.modules, sorted(sys.modules)\n"
        "assert 'cv2' not in sys.modules, 'OpenCV is for images only; plain runs must not pay its import'\n"
        "print(m.backend.name, out.shape)\n")
    model = _tiny_model_bytes()
    (tmp_path / "m.tflite").write_bytes(model)
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.tflite")], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "ai-edge-litert"


def _tiny_model_bytes() -> bytes:
    from converters import _tf
    from converters.recipe import QuantizeSettings
    from converters.targets.tflite.convert import to_tflite

    keras = _tf.keras()
    model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(2)])
    return to_tflite(model, QuantizeSettings())


def test_reading_a_recipe_imports_no_framework():
    code = ("import sys\n"
            "from converters.recipe import Recipe\n"
            "from converters.capabilities import markdown_table\n"
            "r = Recipe.from_dict({'channels': {'fraction': 0.5}, 'low_rank': {'energy': 0.9}, 'prune': {'sparsity': 0.5},"
            " 'cluster': {'clusters': 16}, 'layers': {'fc': {'prune': None}}})\n"
            "markdown_table()\n"
            "heavy = {'tensorflow', 'tf_keras', 'torch', 'onnx', 'onnx2tf', 'tensorflow_model_optimization'}\n"
            "print(sorted(heavy & set(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_every_registered_technique_has_a_backend_or_a_refusal_per_framework():
    from converters.capabilities import FRAMEWORKS
    from converters.recipe import Recipe
    from converters.techniques.base import GRAPH, WEIGHTS
    from converters.techniques.registry import TECHNIQUES

    assert len({t.key for t in TECHNIQUES}) == len(TECHNIQUES)
    for technique in TECHNIQUES:
        assert technique.stage in (GRAPH, WEIGHTS)
        for framework in FRAMEWORKS:
            assert (framework in technique.backends) != (framework in technique.refusals), (technique.key, framework)
        for framework in technique.backends:
            assert callable(technique.backend(framework)), (technique.key, framework)
        if technique.stage == WEIGHTS and "pytorch" in technique.backends:  # PyTorch fine-tuning needs its phase
            assert callable(technique.trainer("pytorch")), technique.key
        assert technique.key in Recipe().to_dict()  # the registry line alone gives the recipe its key
