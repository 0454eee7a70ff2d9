"""ONNX coverage: the SDK and raw onnx2tf side by side on the ONNX backend node tests.

The corpus is the node test cases that ship inside the installed ``onnx`` wheel
(``onnx/backend/test/data/node/*``: ``model.onnx`` + ``test_data_set_0/*.pb``).
A case is taken when (the rule) its graph is ONE node whose op is in ``EDGE_OPS``
(ops common in edge models) and every graph input and output is float32.  Every
input but the first is folded into an initializer with the case's own values,
as weights are in a deployed model.

For each case, one ``sdk.convert`` (float32, default recipe) and one raw
``onnx2tf.convert`` (its defaults, offline exactly as the SDK runs it: its
calibration-image download replaced by local data, every socket refused), then
each .tflite runs on the case's input and every output is compared with the
case's expected output: pass = ``np.allclose(rtol=1e-3, atol=1e-3)``.  Each case
runs in a worker process with a time limit, so a hang or a crash is one row.

A second corpus, ``zoo`` (``bench/_onnx_zoo.py``): model-zoo-style graphs exported offline with
``torch.onnx.export`` (torchvision architectures with random weights, nn.TransformerEncoder, LSTM/GRU,
1-D conv audio, a ConvTranspose UNet), each with onnxruntime's output as the expected output; same
runs, same comparison rule.  Results: ``bench/results/onnx_coverage.{md,json}`` (node tests) and
``onnx_coverage_zoo.{md,json}``.

    nice -n 10 python -m bench.onnx_coverage [--corpus node zoo] [--only SUBSTRING ...] [--timeout S] [--no-publish]
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import arguments, publish

EDGE_OPS = ("Conv", "ConvTranspose", "AveragePool", "MaxPool", "GlobalAveragePool", "GlobalMaxPool",
            "BatchNormalization", "Resize", "LSTM", "GRU", "LayerNormalization", "Gelu", "Split", "Clip",
            "Relu", "PRelu", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "HardSwish", "Add", "Sub", "Mul",
            "Div", "Softmax", "Concat")
RTOL = ATOL = 1e-3
CASE_TIMEOUT_S = 240
ZOO_TIMEOUT_S = 900  # a whole network, converted twice (SDK and raw) on a shared machine


def node_test_root() -> Path:
    import onnx

    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"


def select_cases(only: list[str] | None = None) -> list[Path]:
    """The cases the rule takes (see the module docstring), sorted by name."""
    import onnx
    from onnx import TensorProto

    chosen = []
    for folder in sorted(node_test_root().iterdir()):
        model_path = folder / "model.onnx"
        if not model_path.is_file() or not (folder / "test_data_set_0").is_dir():
            continue
        if only and not any(o in folder.name for o in only):
            continue
        model = onnx.load(str(model_path))
        io = [*model.graph.input, *model.graph.output]
        if len(model.graph.node) == 1 and model.graph.node[0].op_type in EDGE_OPS and all(
                v.type.HasField("tensor_type") and v.type.tensor_type.elem_type == TensorProto.FLOAT for v in io):
            chosen.append(folder)
    return chosen


def load_case(folder: Path, work: Path) -> tuple[Path, str, np.ndarray, dict[str, np.ndarray]]:
    """(folded model path, input name, input, {output name: expected}) of one case."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(folder / "model.onnx"))
    data = folder / "test_data_set_0"

    def read(path: Path) -> np.ndarray:
        tensor = onnx.TensorProto()
        tensor.ParseFromString(path.read_bytes())
        return numpy_helper.to_array(tensor)

    inputs = [read(p) for p in sorted(data.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[1]))]
    outputs = [read(p) for p in sorted(data.glob("output_*.pb"), key=lambda p: int(p.stem.split("_")[1]))]
    graph_inputs = list(model.graph.input)
    for graph_input, values in zip(graph_inputs[1:], inputs[1:]):
        model.graph.initializer.append(numpy_helper.from_array(values, graph_input.name))
        model.graph.input.remove(graph_input)
    path = work / f"{folder.name}.onnx"
    onnx.save(model, str(path))
    expected = {o.name: y for o, y in zip(model.graph.output, outputs)}
    return path, graph_inputs[0].name, inputs[0], expected


def channel_last(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, *range(2, x.ndim), 1) if 3 <= x.ndim <= 5 else x


def compare(got: dict[str, np.ndarray], expected: dict[str, np.ndarray], transposed: dict[str, bool]) -> str | None:
    """None when every output matches; else what differs, in one line."""
    for name, want in expected.items():
        if name not in got:
            return f"output {name} missing (got {sorted(got)})"
        want = channel_last(want) if transposed.get(name) else want
        have = got[name]
        if have.shape != want.shape:
            return f"output {name} shape {have.shape}, expected {want.shape}"
        if not np.allclose(have, want, rtol=RTOL, atol=ATOL):
            return f"output {name} max abs error {float(np.abs(have - want).max()):.3g}"
    return None


def run_sdk(model_path: Path, name: str, x: np.ndarray, expected: dict[str, np.ndarray], work: Path) -> dict:
    import sdk
    from converters.errors import SDKError
    from device_runtime import Model

    from converters.targets.tflite.flex import FlexOpsError

    started = time.perf_counter()
    flex = False
    try:
        try:
            result = sdk.convert(model_path, work / "sdk.tflite", force=True)
        except FlexOpsError:  # refused by default; the opt-in that raw onnx2tf's default corresponds to
            flex = True
            result = sdk.convert(model_path, work / "sdk.tflite", force=True, allow_flex=True)
    except SDKError as exc:
        return {"ok": False, "error": str(exc).splitlines()[0][:300], "s": round(time.perf_counter() - started, 1),
                "flex": flex}
    seconds = round(time.perf_counter() - started, 1)
    layout = result.report.io_layout
    transposed_in = any(r.get("input") == name and r["layout"].startswith("channels last") for r in layout)
    transposed = {r["output"]: r["layout"].startswith("channels last") for r in layout if "output" in r}
    model = Model(str(result.path), backend="tensorflow" if flex else "auto")
    got = model.run({name: channel_last(x) if transposed_in else x})
    failure = compare(got, expected, transposed)
    return {"ok": failure is None, "error": failure, "s": seconds, "flex": flex}


def run_onnx2tf(model_path: Path, x: np.ndarray, expected: dict[str, np.ndarray], work: Path) -> dict:
    """Raw onnx2tf with its defaults, offline as the SDK runs it; outputs matched by name, then order."""
    from converters import _tf
    from converters.lowering.onnx2tf import NetworkBlocked, _offline, _output_to
    from device_runtime import Model

    _tf.tensorflow()
    import onnx2tf
    import onnx2tf.onnx2tf as onnx2tf_module

    started = time.perf_counter()
    out = work / "onnx2tf"
    try:
        with _offline(onnx2tf_module, []), _output_to(work / "onnx2tf.log"):
            onnx2tf.convert(input_onnx_file_path=str(model_path), output_folder_path=str(out), non_verbose=True)
    except (Exception, SystemExit, NetworkBlocked) as exc:  # onnx2tf raises anything, or calls sys.exit(1)
        return {"ok": False, "error": f"onnx2tf: {type(exc).__name__}: {str(exc).strip()[:200]}",
                "s": round(time.perf_counter() - started, 1)}
    seconds = round(time.perf_counter() - started, 1)
    files = sorted(out.glob("*_float32.tflite"))
    if not files:
        return {"ok": False, "error": "onnx2tf wrote no float32 .tflite", "s": seconds}
    from device_runtime.tflite_format import read_model

    flex = any(op.op_name.startswith("CUSTOM:Flex") for op in read_model(files[0].read_bytes()).main.operators)
    try:
        model = Model(str(files[0]), backend="tensorflow" if flex else "auto")
        spec = model.inputs[0]
        feed = x if tuple(spec.shape) == x.shape else channel_last(x)
        values = list(model.run({spec.name: feed}).values())
    except Exception as exc:  # the runtime's own errors (e.g. Flex ops it cannot run)
        return {"ok": False, "error": f"run: {str(exc).splitlines()[0][:200]}", "s": seconds, "flex": flex}
    names = [s.name for s in model.outputs]
    got, transposed = {}, {}
    for index, (name, want) in enumerate(expected.items()):
        match = next((i for i, n in enumerate(names) if n.split(":")[0].removeprefix("serving_default_") == name),
                     index if index < len(values) else None)
        if match is None:
            continue
        got[name] = values[match]
        transposed[name] = got[name].shape != want.shape and got[name].shape == channel_last(want).shape
    failure = compare(got, expected, transposed)
    return {"ok": failure is None, "error": failure, "s": seconds, "flex": flex}


def run_case(folder: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="onnx-coverage-") as tmp:
        work = Path(tmp)
        model_path, name, x, expected = load_case(folder, work)
        (work / "sdk").mkdir()
        (work / "raw").mkdir()
        return {"case": folder.name, "op": _op(model_path), "input_shape": list(x.shape),
                "sdk": run_sdk(model_path, name, x, expected, work / "sdk"),
                "onnx2tf": run_onnx2tf(model_path, x, expected, work / "raw")}


def _op(model_path: Path) -> str:
    import onnx

    nodes = onnx.load(str(model_path)).graph.node
    return nodes[0].op_type if len(nodes) == 1 else f"{len(nodes)} nodes"


def _worker(tasks, results, parent: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    while True:
        try:
            folder = tasks.get(timeout=5)
        except queue.Empty:
            if os.getppid() != parent:  # the bench was stopped: do not outlive it
                return
            continue
        if folder is None:
            return
        try:
            results.put(run_case(Path(folder)))
        except Exception as exc:  # a bench bug in one case must not stop the rest
            results.put({"case": Path(folder).name, "error": f"{type(exc).__name__}: {exc}"[:300]})


def run_all(cases: list[Path], timeout: float) -> list[dict]:
    """Each case in a worker process; a case over ``timeout`` seconds or a crashed worker is one row."""
    context = multiprocessing.get_context("spawn")
    rows, worker = [], None
    for number, folder in enumerate(cases, 1):
        if worker is None or not worker.is_alive():
            tasks, results = context.Queue(), context.Queue()
            worker = context.Process(target=_worker, args=(tasks, results, os.getpid()), daemon=True)
            worker.start()
        tasks.put(str(folder))
        started = time.perf_counter()
        try:
            row = results.get(timeout=timeout + 60)  # the first case also imports TensorFlow
        except queue.Empty:
            reason = "crashed" if not worker.is_alive() else f"timed out after {timeout:.0f} s"
            if worker.is_alive():
                worker.kill()
            worker.join()
            worker = None
            row = {"case": folder.name, "error": f"worker {reason}"}
        row["wall_s"] = round(time.perf_counter() - started, 1)
        print(f"[{number}/{len(cases)}] {folder.name}: sdk {_verdict(row, 'sdk')}, onnx2tf {_verdict(row, 'onnx2tf')}"
              f" ({row['wall_s']} s) {(row.get('sdk') or {}).get('error') or ''}"[:400], flush=True)
        rows.append(row)
    if worker is not None:
        tasks.put(None)
        worker.join(timeout=30)
    return rows


def _verdict(row: dict, key: str) -> str:
    if key not in row:
        return "ERROR " + row.get("error", "")
    return "pass" if row[key]["ok"] else "FAIL"


def render(rows: list[dict], corpus: str = "node") -> str:
    def passes(key: str, builtin_only: bool = False) -> int:
        return sum(1 for r in rows if key in r and r[key]["ok"] and not (builtin_only and r[key].get("flex")))

    both_raw_only = [r["case"] for r in rows if "sdk" in r and r["onnx2tf"]["ok"] and not r["sdk"]["ok"]]
    if corpus == "zoo":
        head = ["# Model-zoo-style ONNX graphs: the SDK and raw onnx2tf", "",
                f"{len(rows)} graphs exported offline with torch.onnx.export (bench/_onnx_zoo.py: random weights, "
                f"opset 17); pass = outputs allclose to onnxruntime's outputs at rtol = atol = {RTOL:g}.", ""]
    else:
        head = ["# ONNX backend node tests: the SDK and raw onnx2tf", "",
                f"{len(rows)} cases (single node of {', '.join(EDGE_OPS)}; float32 inputs and outputs; extra "
                f"inputs folded into initializers); pass = outputs allclose to the case's expected outputs at "
                f"rtol = atol = {RTOL:g}.", ""]
    lines = [*head,
             f"**SDK: {passes('sdk')} / {len(rows)} pass ({passes('sdk', True)} with builtin ops only, the rest "
             f"with `allow_flex=True` after the default refused them); raw onnx2tf: {passes('onnx2tf')} / "
             f"{len(rows)} ({passes('onnx2tf', True)} without Flex ops); raw onnx2tf passes and the SDK fails: "
             f"{len(both_raw_only)}**" + (f" ({', '.join(both_raw_only)})" if both_raw_only else ""), "",
             "Flex (Select TF ops) models run here on full TensorFlow's interpreter; ai-edge-litert and "
             "tflite-runtime cannot run them.", "",
             "| case | op | input | SDK | onnx2tf | SDK error | onnx2tf error |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "sdk" not in r:
            lines.append(f"| {r['case']} | | | error | error | {r.get('error', '')} | |")
            continue
        cell = lambda res: ("pass" if res["ok"] else "FAIL") + (" (Flex)" if res.get("flex") else "") \
            + f" {res['s']} s"  # noqa: E731
        clean = lambda text: " ".join((text or "").replace("|", "/").split())[:160]  # noqa: E731
        lines.append(f"| {r['case']} | {r['op']} | {tuple(r['input_shape'])} | {cell(r['sdk'])} | "
                     f"{cell(r['onnx2tf'])} | {clean(r['sdk']['error'])} | {clean(r['onnx2tf']['error'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--corpus", nargs="+", choices=("node", "zoo"), default=["node", "zoo"],
                        help="node: the ONNX backend node tests; zoo: bench/_onnx_zoo.py's exported models.")
    parser.add_argument("--only", nargs="*", help="Only cases whose name contains one of these.")
    parser.add_argument("--timeout", type=float, help=f"Seconds per case (node: {CASE_TIMEOUT_S}, zoo: "
                                                      f"{ZOO_TIMEOUT_S}).")
    parser.add_argument("--no-publish", action="store_true", help="Print; do not rewrite bench/results.")
    args = parser.parse_args()
    for corpus in args.corpus:
        if corpus == "zoo":
            from bench._onnx_zoo import build_cases

            cases = build_cases(Path(tempfile.gettempdir()) / "sdk-onnx-zoo", args.only)
        else:
            cases = select_cases(args.only)
        rows = run_all(cases, args.timeout or (ZOO_TIMEOUT_S if corpus == "zoo" else CASE_TIMEOUT_S))
        text = render(rows, corpus)
        if args.no_publish:
            print(text)
        elif corpus == "zoo":
            publish("onnx_coverage_zoo", text, {"rule": {"rtol": RTOL, "atol": ATOL, "expected": "onnxruntime"},
                                                "cases": rows})
        else:
            publish("onnx_coverage", text, {"rule": {"ops": EDGE_OPS, "rtol": RTOL, "atol": ATOL}, "cases": rows})


if __name__ == "__main__":
    main()
