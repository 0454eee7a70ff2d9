"""The ``sdk`` command line.  Only here do exceptions become exit codes.

Exit codes: 0 success, 1 conversion failure, 2 bad input (file, flag, recipe,
data), 130 interrupted.  Errors print one line on stderr, never a traceback
(``--debug`` shows it).
"""

from __future__ import annotations

import json
import os
import sys

import click

from converters.errors import UserInputError
from converters.recipe import IO_TYPES, QUANTIZE_MODES, Recipe
from converters.techniques.prune import PRUNE_STRUCTURES
from sdk.api import TARGETS

from ._cli_base import EXIT_INTERRUPTED, chatty, run, stderr_progress, with_output_options
from .cli_distill import distill
from .cli_export import export
from .cli_integrity import encrypt, keygen, sign, verify

@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="edge-deploy-sdk", prog_name="sdk")
def main():
    """Take a trained model to a phone, a Raspberry Pi or a microcontroller: smaller, faster, verified."""


CONVERT_EXAMPLES = """
\b
Examples:
  sdk convert model.h5 -o model.tflite
  sdk convert model.keras -o small.tflite --prune 0.75 --cluster 16 \\
      --quantize int8 --finetune train.npz --eval test.npz
  sdk convert model.keras -o m.tflite --quantize int8 --calib images/ --io-type uint8
  sdk convert model.keras -o m.tflite --recipe recipe.yaml --finetune unlabelled.npy
  sdk convert model.onnx -o m.tflite --quantize int8 --calib images.npy
  sdk convert traced.pt -o m.tflite --input-shape 1,3,224,224
  sdk convert mypkg.models:build_net --weights net.pth --input-shape 1,3,32,32 \\
      -o small.tflite --prune 0.75 --cluster 16 --quantize int8 --finetune train.npz
  sdk convert encoder.onnx -o enc.tflite --quantize dynamic --eval tokens.npz
  sdk convert mypkg.text:build_encoder --input-shape 1,128 --input-shape 1,128 \\
      --input-dtype int64 -o enc.tflite --vocab vocab.txt
\b
Data: .npz with x (and y for labels), .npy of inputs, or an image folder
(one sub-folder per class), in the source model's layout (NCHW for PyTorch).
Models with several or integer inputs (token ids, attention masks) take a
.npz with one array per input name (input_ids=..., attention_mask=..., y=...);
names, dtypes, shapes and token ids (below the vocabulary size) are checked.
Without labels, fine-tuning distils from the original model. PyTorch/ONNX
image inputs become NHWC in the .tflite unless --keep-nchw.
Exit codes: 0 ok, 1 conversion failed, 2 bad input, 130 interrupted (Ctrl-C).
"""


def _parse_shapes(values: tuple[str, ...]) -> list[tuple[int, ...]] | None:
    shapes = []
    for value in values:
        try:
            shape = tuple(int(d) for d in value.split(","))
        except ValueError:
            raise UserInputError(f"--input-shape takes comma-separated integers like 1,3,224,224; "
                                 f"got {value!r}") from None
        if any(d < 1 for d in shape):
            raise UserInputError(f"--input-shape dimensions must be positive integers; got {value!r}")
        shapes.append(shape)
    return shapes or None


@main.command(epilog=CONVERT_EXAMPLES)
@click.argument("source", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="The .tflite to write.")
@click.option("--recipe", "recipe_path", type=click.Path(), help="Recipe file (.yaml/.json); flags override it.")
@click.option("--prune", type=float, help="Target weight sparsity in [0, 1), e.g. 0.75.")
@click.option("--prune-structure", type=click.Choice(PRUNE_STRUCTURES),
              help="unstructured (default), 2:4, or channel (whole output channels by L2 norm).")
@click.option("--cluster", type=int, help="Number of shared weight values per layer (k-means), >= 2.")
@click.option("--quantize", type=click.Choice(QUANTIZE_MODES), help="Post-training quantization mode.")
@click.option("--io-type", type=click.Choice(IO_TYPES), help="Input/output type for --quantize int8.")
@click.option("--calib", type=click.Path(), help="Calibration data for int8/int16x8 (.npz keyed by input name "
              "for multi-input models).")
@click.option("--samples", type=int, help="Calibration samples to use (default 200).")
@click.option("--allow-random-calibration", is_flag=True, default=None,
              help="Calibrate on random inputs when no data is given (inaccurate; explicit on purpose).")
@click.option("--finetune", "finetune_path", type=click.Path(), help="Fine-tuning data (labels optional).")
@click.option("--epochs", type=int, help="Fine-tuning epochs per pass.")
@click.option("--eval", "eval_path", type=click.Path(), help="Held-out data for fidelity and accuracy.")
@click.option("--target", type=click.Choice(TARGETS), default="tflite", show_default=True,
              help="mcu also writes TFLite Micro C/C++ files to OUT_mcu/ (needs --quantize int8 --io-type int8); "
                   "android copies the model into --android-project's assets.")
@click.option("--board", help="With --target mcu: check the model fits this board (see `sdk export mcu --help`).")
@click.option("--android-project", type=click.Path(), help="With --target android: the android_demo folder.")
@click.option("--labels", type=click.Path(), help="Class names for the model's metadata, one per line.")
@click.option("--model-version", default="1", show_default=True, help="Version written into the metadata.")
@click.option("--vocab", type=click.Path(), help="Text models: the BERT tokenizer's vocab.txt or a Hugging Face model "
              "folder, embedded in the metadata for Model.embed_text/classify_text.")
@click.option("--mean", type=float, multiple=True,
              help="The input normalisation (pixel - mean) / std on 0..255 pixels, for the metadata: once, or once "
                   "per channel; with --std (default: known from image-folder data or the model's Rescaling/"
                   "Normalization layers, else none written).")
@click.option("--std", type=float, multiple=True, help="See --mean; e.g. --mean 0 --std 255 for [0, 1] inputs.")
@click.option("--input-shape", "input_shapes", multiple=True,
              help="PyTorch/ONNX: an input's shape, e.g. 1,3,224,224; once per input, in order.")
@click.option("--input-dtype", "input_dtypes", multiple=True, type=click.Choice(["float32", "int64", "int32", "bool"]),
              help="PyTorch: an input's dtype (int64 for token ids); once per --input-shape, or once for all.")
@click.option("--weights", type=click.Path(), help="PyTorch state dict for a package.module:factory source.")
@click.option("--keep-nchw", is_flag=True, help="PyTorch/ONNX: keep channels-first inputs and outputs.")
@click.option("--keep-intermediates", is_flag=True, help="PyTorch/ONNX: keep the temporary ONNX and logs.")
@click.option("--allow-flex", is_flag=True, help="PyTorch/ONNX: keep ops with no TFLite builtin as Select TF ops "
              "(the .tflite then needs the Flex delegate: full TensorFlow, not ai-edge-litert/tflite-runtime).")
@click.option("--max-drop", type=float, help="Accuracy-budget mode: choose per-layer settings within this many "
              "points of the source (needs --finetune and --eval; Keras).")
@click.option("--optimize", type=click.Choice(["size", "latency"]), default="size", show_default=True,
              help="What accuracy-budget mode minimises: gzip size (prune/cluster) or latency (channel removal).")
@click.option("--min-cosine", type=float, help="Automatic mixed precision (int8): keep the layers that lose most "
              "in float until the output cosine vs float reaches this, e.g. 0.995.")
@click.option("--min-agreement", type=float, help="Automatic mixed precision (int8): ... until top-1 agreement "
              "with float reaches this percentage, e.g. 95.")
@click.option("--plot", "plot_path", type=click.Path(), help="Also write per-layer sparsity/unique-value bars (PNG).")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def convert(source, output, recipe_path, prune, prune_structure, cluster, quantize, io_type, calib,
            samples, allow_random_calibration, finetune_path, epochs, eval_path, target, board, android_project, labels,
            vocab, model_version, mean, std, input_shapes, input_dtypes, weights, keep_nchw, keep_intermediates,
            allow_flex,
            max_drop, optimize, min_cosine, min_agreement, plot_path, force, as_json, debug):
    """Compress and convert SOURCE to a verified .tflite.

    SOURCE: .keras, .h5, SavedModel folder, .onnx, TorchScript .pt, or package.module:factory.
    """

    def action():
        from sdk.api import convert as convert_model

        if epochs is not None and not finetune_path:
            raise UserInputError(f"--epochs {epochs} sets fine-tuning epochs, but no --finetune DATA was given; "
                                 "add --finetune DATA (without it, compression is one-shot)")
        from converters.files import check_output_path

        if plot_path:  # every output is checked before the conversion, so none is written and then refused
            check_output_path(plot_path, [source], force)
            check_output_path(_errors_plot(plot_path), [source], force)
        recipe = Recipe.load(recipe_path) if recipe_path else Recipe()
        recipe = recipe.with_flags(prune=prune, prune_structure=prune_structure, cluster=cluster,
                                   quantize=quantize, io_type=io_type, samples=samples, epochs=epochs,
                                   allow_random_calibration=allow_random_calibration, min_cosine=min_cosine,
                                   min_agreement=min_agreement)
        result = convert_model(source, output, recipe, target=target, board=board, android_project=android_project,
                               max_drop=max_drop, optimize=optimize, finetune_data=finetune_path, calib_data=calib,
                               eval_data=eval_path, force=force, labels=labels, vocab=vocab, mean=mean, std=std,
                               model_version=model_version if model_version != "1" else None,
                               progress=stderr_progress if chatty(as_json) else None, verbose=chatty(as_json),
                               input_shapes=_parse_shapes(input_shapes), input_dtypes=list(input_dtypes) or None,
                               weights=weights, keep_nchw=keep_nchw, keep_intermediates=keep_intermediates,
                               allow_flex=allow_flex)
        if plot_path:
            from sdk.plots import layer_plot

            layer_plot(result.report.to_dict(), plot_path)
            if result.report.layer_errors:
                from sdk.plots import layer_error_plot

                layer_error_plot(result.report.layer_errors.to_dict(), _errors_plot(plot_path),
                                 f"{result.path.name}: per-layer error vs float")
        budget = result.budget
        if as_json:
            report = result.report.to_dict()
            report.update({name: written.to_dict() for name, written in result.exports.items()})
            report.setdefault("mcu", None)
            if budget:
                report["budget"] = {"recipe": str(budget.recipe_path), "attempts": budget.attempts}
            click.echo(json.dumps(report, indent=2))
        else:
            click.echo(result.report.render())
            if budget:
                click.echo(budget.render())
            click.echo(f"wrote {result.path} and {result.report_path}" + (f" and {plot_path}" if plot_path else ""))
            for written in result.exports.values():
                click.echo(written.render())

    run(action, debug)


@main.command(epilog="""
\b
Examples:
  sdk sweep digits.h5 --grid grid.yaml --data train.npz --eval test.npz -o sweep_out/
  sdk sweep net.onnx --grid grid.yaml --data calib.npy -o out/ --no-finetune --max-drop 0.5
  sdk sweep digits.h5 --grid grid.yaml --data train.npz -o out/ --address ray://head:10001
\b
grid.yaml:
  base: {finetune: {epochs: 4}}          # shared by every recipe
  grid: {prune: [0, 0.5, 0.75], cluster: [0, 16], quantize: [none, int8]}
  recipes:                                # and/or named recipes in --recipe form
    - {name: 2of4-int8, prune: {sparsity: 0.5, structure: "2:4"}, quantize: {mode: int8}}
\b
Writes OUT/sweep.md, sweep.json, pareto.png and one folder per recipe in
OUT/runs/. Re-running skips recipes already done; a failed recipe is a row
with its error. Exit codes: 0 ok (even with failed rows), 1 failure, 2 bad input.
""")
@click.argument("source", type=click.Path())
@click.option("--grid", "grid_path", required=True, type=click.Path(), help="Recipes to try (.yaml/.json).")
@click.option("--data", "data_path", type=click.Path(), help="Calibration and fine-tuning data.")
@click.option("--eval", "eval_path", type=click.Path(), help="Held-out data for accuracy (default: --data).")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(), help="Folder for results.")
@click.option("--max-drop", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Accuracy budget in points for the recommendation.")
@click.option("--address", help="An existing Ray cluster's address; default: start a local one.")
@click.option("--workers", type=click.IntRange(min=1), help="Local Ray CPUs (default: all cores).")
@click.option("--no-finetune", is_flag=True, help="Compress one-shot, without fine-tuning on --data.")
@click.option("--latency-runs", type=click.IntRange(min=0), default=50, show_default=True,
              help="Timed runs per model and thread count (0: skip latency).")
@click.option("--input-shape", "input_shapes", multiple=True, help="PyTorch/ONNX: an input's shape, e.g. 1,3,32,32.")
@click.option("--weights", type=click.Path(), help="PyTorch state dict for a package.module:factory source.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def sweep(source, grid_path, data_path, eval_path, out_dir, max_drop, address, workers, no_finetune, latency_runs,
          input_shapes, weights, as_json, debug):
    """Convert SOURCE with many recipes in parallel (Ray) and recommend one."""

    def action():
        from sdk.sweep import load_grid, render, run_sweep

        options = {k: v for k, v in (("input_shapes", _parse_shapes(input_shapes)), ("weights", weights)) if v}
        try:
            result = run_sweep(source, load_grid(grid_path), out_dir, data=data_path, eval_data=eval_path,
                               finetune=not no_finetune, address=address, workers=workers, max_drop=max_drop,
                               latency_threads=(1, 2) if latency_runs else (), latency_runs=max(latency_runs, 1),
                               options=options, progress=stderr_progress if chatty(as_json) else None)
        except KeyboardInterrupt:
            click.echo(f"interrupted; finished recipes are kept in {out_dir}/runs and a re-run continues from "
                       "them", err=True)
            sys.exit(EXIT_INTERRUPTED)
        click.echo(json.dumps(result.to_dict(), indent=2, default=str) if as_json else render(result))
        if not as_json:
            click.echo(f"wrote {', '.join(result.files)}")

    run(action, debug)

@main.command(epilog="""
\b
Examples:
  sdk inspect model.tflite
  sdk inspect q.tflite --compare float.tflite --data calib.npy    # per-layer SNR and cosine
""")
@click.argument("model", type=click.Path())
@click.option("--compare", "reference", type=click.Path(),
              help="A float .tflite of the same model: print each layer's SNR and cosine against it.")
@click.option("--data", "data_path", type=click.Path(), help="With --compare: inputs (.npy/.npz/image folder) in "
              "the .tflite's layout.")
@click.option("--samples", type=click.IntRange(min=1), default=32, show_default=True,
              help="With --compare: samples the per-layer table is measured on.")
@click.option("--plot", "plot_path", type=click.Path(), help="With --compare: also write the per-layer SNR bars (PNG).")
@click.option("--force", is_flag=True, help="Overwrite an existing --plot file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def inspect(model, reference, data_path, samples, plot_path, force, as_json, debug):
    """Print sizes, ops, per-layer sparsity and unique weights of a .tflite MODEL."""

    def action():
        if (reference is None) != (data_path is None):
            given, missing = ("--compare", "--data DATA") if reference else ("--data", "--compare FLOAT.tflite")
            raise UserInputError(f"{given} needs {missing}: the per-layer comparison runs both files on the data")
        if plot_path and reference is None:
            raise UserInputError("--plot draws the per-layer comparison; add --compare FLOAT.tflite --data DATA")
        if reference is not None:
            from sdk.api import compare_files

            if plot_path:
                from converters.files import check_output_path

                check_output_path(plot_path, [model, reference], force)
            result = compare_files(model, reference, data_path, samples)
            if plot_path:
                from sdk.plots import layer_error_plot

                layer_error_plot(result.layers.to_dict(), plot_path, f"{os.path.basename(model)} vs "
                                 f"{os.path.basename(reference)}: per-layer error")
        else:
            from sdk.api import inspect as inspect_model

            result = inspect_model(model)
        click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.render())

    run(action, debug)


@main.command()
@click.argument("model", type=click.Path())
@click.option("--threads", type=click.IntRange(min=1), multiple=True, default=(1,), show_default=True,
              help="Thread counts to measure; repeat for several (--threads 1 --threads 2).")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True)
@click.option("--runs", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--task", type=click.Choice(["run", "classify", "detect"]), default="run", show_default=True,
              help="Time model.run, or an app's whole classify/detect call on a frame, with the pre- and "
                   "post-processing around the invoke.")
@click.option("--image", type=click.Path(), help="The image for --task (default: a random frame of the size a "
                                                 "camera is asked for).")
@click.option("--color-order", type=click.Choice(["RGB", "BGR"]), default="RGB", show_default=True)
@click.option("--decryption-key", "key_path", type=click.Path(),
              help="The AES key file (`sdk keygen --aes`) of a model written by `sdk encrypt`.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def bench(model, threads, warmup, runs, task, image, color_order, key_path, as_json, debug):
    """Measure latency (p50/p90/p99), throughput and peak memory of a .tflite MODEL, and the share of
    each call spent around the invoke."""

    def action():
        from device_runtime.bench import benchmark, render
        from sdk.integrity import decryption_key

        key = decryption_key(model, key_path)
        report = benchmark(model, threads, warmup, runs, task=task, image=image, color_order=color_order,
                           decryption_key=key)
        click.echo(json.dumps(report, indent=2) if as_json else render(report))

    run(action, debug)


@main.group()
def metadata():
    """Embed standard TFLite metadata (labels, normalisation, name, version) in a .tflite."""


@metadata.command("add", epilog="""
\b
Examples:
  sdk metadata add model.tflite -o model_meta.tflite --labels labels.txt --mean 127.5 --std 127.5
  sdk metadata add digits.tflite -o d.tflite --labels digits.txt --color-space GRAYSCALE --version 2
  sdk metadata add ssd.tflite -o ssd_meta.tflite --task object_detector --labels coco.txt
  sdk metadata add kws.tflite -o kws_meta.tflite --task audio_classifier --sample-rate 16000 --labels words.txt
  sdk metadata add encoder.tflite -o enc.tflite --vocab vocab.txt
  sdk metadata add sentiment.tflite -o s.tflite --vocab hf_model_folder/ --labels labels.txt
\b
The output is read by Android Studio's ML Model Binding, the TFLite Task
Library, MediaPipe Tasks and device_runtime.Model; the input is not changed.
""")
@click.argument("model", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="The .tflite to write.")
@click.option("--task", type=click.Choice(["image_classifier", "object_detector", "audio_classifier"]),
              help="What the model does (default image_classifier; a text model is described by --vocab).")
@click.option("--labels", type=click.Path(), help="Class names, one per line (class id order).")
@click.option("--vocab", type=click.Path(), help="Text models: the BERT tokenizer's vocab.txt, or a Hugging Face model "
              "folder (vocab.txt or tokenizer.json, with tokenizer_config.json); embedded for Model.embed_text.")
@click.option("--sample-rate", type=int, default=16000, show_default=True, help="Audio input sample rate.")
@click.option("--channels", type=int, default=1, show_default=True, help="Audio input channels.")
@click.option("--mean", type=float, multiple=True,
              help="Normalisation mean on 0..255 pixels; once, or once per channel (default: the model's own, else "
                   "none is written).")
@click.option("--std", type=float, multiple=True,
              help="Normalisation std on 0..255 pixels; once, or once per channel (e.g. 255 for [0, 1] inputs).")
@click.option("--color-space", type=click.Choice(["RGB", "GRAYSCALE"]),
              help="The image input's colour space; default: from its channels (1 GRAYSCALE, 3 RGB).")
@click.option("--name", default="", help="Model name.")
@click.option("--description", default="", help="What the model does.")
@click.option("--version", "model_version", default="1", show_default=True, help="Model version.")
@click.option("--author", default="", help="Author.")
@click.option("--license", "license_", default="", help="License.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def metadata_add(model, output, task, labels, vocab, sample_rate, channels, mean, std, color_space, name, description,
                 model_version, author, license_, force, debug):
    """Write a copy of MODEL with standard TFLite metadata."""

    def action():
        from converters.labels import read_labels
        from converters.targets.tflite.metadata import MetadataSpec, add_metadata

        text = None
        if vocab:
            from converters.targets.tflite.text_metadata import read_vocab

            image_options = [flag for flag, value in (("--task", task), ("--mean", mean), ("--std", std),
                                                      ("--color-space", color_space)) if value]
            if image_options:
                raise UserInputError(f"{', '.join(image_options)} describe image/audio models, but --vocab makes "
                                     "this a text model's metadata; drop one of them")
            text = read_vocab(vocab)
        kind = task or "image_classifier"
        spec = MetadataSpec(task=kind, vocab=text, name=name, description=description, version=model_version,
                            author=author, license=license_, mean=mean or None, std=std or None,
                            color_space=color_space,
                            labels=read_labels(labels), sample_rate=sample_rate, channels=channels)
        written = add_metadata(model, output, spec, force)
        click.echo(f"wrote {output} with metadata" + (f" and {len(spec.labels)} labels" if spec.labels else ""))
        from device_runtime.metadata import read_info
        from device_runtime.tflite_format import read_model

        info = read_info(read_model(written))
        if info.vocab_file:
            click.echo(f"tokenizer: BERT WordPiece, {info.vocab_file} embedded" + (f" ({text.describe()})" if text
                                                                                    else " (kept from the model)"))
        elif kind != "audio_classifier":
            click.echo(f"input normalisation: (pixel - {list(info.mean)}) / {list(info.std)}" if info.mean is not None
                       else "input normalisation: none (unknown; pass --mean/--std, or Model.classify refuses it)")

    run(action, debug)


for command in (distill, keygen, sign, verify, encrypt, export):
    main.add_command(command)
with_output_options(main)

if __name__ == "__main__":
    main()


def _errors_plot(plot_path: str) -> str:
    """Where `convert --plot P` draws the per-layer error bars of a quantized model: beside P."""
    root, ext = os.path.splitext(plot_path)
    return f"{root}.layers{ext or '.png'}"
