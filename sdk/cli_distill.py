"""``sdk distill``: train a smaller student from a PyTorch or Keras teacher, then convert it like any source."""

from __future__ import annotations

import json

import click

from converters.recipe import QUANTIZE_MODES

from ._cli_base import chatty, run, stderr_progress

DISTILL_EXAMPLES = """
\b
Examples:
  sdk distill mypkg.nets:resnet --weights teacher.pth --input-shape 1,3,32,32 \\
      --data unlabelled.npy --width-ratio 0.5 -o student.tflite --quantize int8
  sdk distill encoder.pt --input-shape 1,128 --data sentences.npz --keep-layers 3 -o small.tflite
  sdk distill mypkg.nets:big --data train.npz --student mypkg.nets:small -o student.tflite
  sdk distill teacher.keras --data unlabelled.npy --width-ratio 0.5 -o student.tflite
  sdk distill teacher.h5 --data train.npz --recipe distill.yaml -o student.tflite
\b
Without labels in --data the student learns the teacher's soft targets (KL x T^2);
with labels, cross-entropy too. The best epoch on a held-out tenth is kept.
"""


@click.command(epilog=DISTILL_EXAMPLES)
@click.argument("teacher", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="The student's .tflite to write.")
@click.option("--data", "data_path", required=True, type=click.Path(),
              help="Training data (.npz/.npy/image folder); labels optional.")
@click.option("--eval", "eval_path", type=click.Path(), help="Held-out data for the teacher-vs-student table.")
@click.option("--student", help="The student: package.module:factory (default: derived from the teacher).")
@click.option("--student-weights", type=click.Path(), help="State dict for a --student factory.")
@click.option("--keep-layers", type=click.IntRange(min=1), help="Keep N blocks of the teacher's deepest stack.")
@click.option("--width-ratio", type=float, help="Keep this fraction of every layer's channels, in (0, 1).")
@click.option("--epochs", type=click.IntRange(min=1), help="At most this many (default 30).")
@click.option("--patience", type=click.IntRange(min=1),
              help="Stop after this many epochs without a better held-out loss (default 5).")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), help="Softening T (default 4).")
@click.option("--alpha", type=click.FloatRange(0, 1), help="Weight of the label loss when --data has labels "
              "(default 0.5).")
@click.option("--cosine-weight", type=click.FloatRange(min=0), help="Weight of (1 - cosine) for embeddings "
              "(default 1).")
@click.option("--hidden-weight", type=click.FloatRange(min=0), help="Weight of 1 - cosine between each student "
              "block's output and its teacher block's (PyTorch; default 0).")
@click.option("--lr-schedule", type=click.Choice(["constant", "linear"]),
              help="constant (default), or linear: 6%% warm-up, then decay to 0.")
@click.option("--trim-padding/--no-trim-padding", default=None, help="Batches of like-length samples cut to "
              "their longest (needs an input named attention_mask; exact for BERT-style encoders).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Default 64.")
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), help="Adam's (default 0.001).")
@click.option("--checkpoint", type=click.Path(), help="Save every epoch here; an existing file resumes training.")
@click.option("--outputs", type=click.Choice(["auto", "scores", "embedding"]),
              help="What the teacher outputs: auto (default) takes a rank-2 output as class scores; embedding for "
                   "encoders.")
@click.option("--recipe", "recipe_path", type=click.Path(),
              help="How to compress the student (.yaml/.json); its distill section sets these options, flags win.")
@click.option("--quantize", type=click.Choice(QUANTIZE_MODES),
              help="Post-training quantization of the student (overrides the recipe's).")
@click.option("--calib", type=click.Path(), help="Calibration data for int8 (default: --data).")
@click.option("--input-shape", "input_shapes", multiple=True, help="The teacher's input shape, e.g. 1,3,32,32.")
@click.option("--weights", type=click.Path(), help="State dict for a package.module:factory teacher.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def distill(teacher, output, data_path, eval_path, student, student_weights, keep_layers, width_ratio, epochs,
            patience, temperature, alpha, cosine_weight, hidden_weight, lr_schedule, trim_padding, batch_size,
            learning_rate, checkpoint, outputs, recipe_path, quantize, calib, input_shapes, weights, force, as_json, debug):
    """Distil TEACHER (PyTorch or Keras) into a smaller student and write it as a verified .tflite."""

    def action():
        from converters.distillation import render_comparison
        from converters.recipe import Recipe
        from sdk.api import distill as distill_api

        from .cli import _parse_shapes

        recipe = Recipe.load(recipe_path) if recipe_path else Recipe()
        if quantize:
            recipe = recipe.with_flags(quantize=quantize)
        result = distill_api(teacher, output, data_path, student=student, student_weights=student_weights,
                             keep_layers=keep_layers, width_ratio=width_ratio, recipe=recipe, epochs=epochs,
                             patience=patience, temperature=temperature, alpha=alpha, cosine_weight=cosine_weight,
                             hidden_weight=hidden_weight, lr_schedule=lr_schedule, trim_padding=trim_padding,
                             batch_size=batch_size, learning_rate=learning_rate, checkpoint=checkpoint,
                             outputs=outputs,
                             eval_data=eval_path, calib_data=calib, input_shapes=_parse_shapes(input_shapes),
                             weights=weights, force=force,
                             progress=stderr_progress if chatty(as_json) else None, verbose=chatty(as_json))
        if as_json:
            click.echo(json.dumps(result.report.to_dict(), indent=2))
        else:
            click.echo(result.report.render())
            click.echo(render_comparison(result.report.passes["distill"].summary))

    run(action, debug)
