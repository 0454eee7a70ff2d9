"""``sdk export mcu`` and ``sdk export android``: a written .tflite into a device project."""

from __future__ import annotations

import json

import click

from converters.targets.mcu.boards import BOARDS

from ._cli_base import run


@click.group()
def export():
    """Export a .tflite for a device target (mcu, android)."""


BOARD_HELP = "Check the model fits this board: " + ", ".join(BOARDS) + "."


@export.command("mcu", epilog="""
\b
Examples:
  sdk export mcu digits_int8.tflite -o firmware/model/ --board cortex-m4-256k
  sdk export mcu kws.tflite -o out/ --labels labels.txt
\b
Writes model_data.cc/.h, model_ops.h, model_io.h/.c, model_settings.h and
example_main.cc for a TFLite Micro project. Exit codes: 0 ok, 1 failure,
2 bad input (float model, ops TFLite Micro lacks, unknown board).
""")
@click.argument("model", type=click.Path())
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(), help="Folder for the files.")
@click.option("--board", help=BOARD_HELP)
@click.option("--labels", type=click.Path(), help="Class names, one per line, for the label table.")
@click.option("--allow-float", is_flag=True, help="Export even if some ops or I/O are float.")
@click.option("--force", is_flag=True, help="Overwrite files in a non-empty folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def export_mcu_command(model, out_dir, board, labels, allow_float, force, as_json, debug):
    """Write TFLite Micro C/C++ files for MODEL with a measured tensor arena."""

    def action():
        from converters.targets.mcu import export_mcu

        result = export_mcu(model, out_dir, board=board, allow_float=allow_float, labels=labels, force=force)
        click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.render())

    run(action, debug)


@export.command("android", epilog="""
\b
Examples:
  sdk export android digits_int8.tflite -o android_demo/
  sdk export android ssd_meta.tflite -o android_demo/ --force
  sdk export android yolo.tflite -o android_demo/ --task object_detector --labels coco.txt
\b
Copies the model into android_demo/app/src/main/assets/ with labels.txt and
model_card.json, which the app reads: no code change for another classifier
or detector. Exit codes: 0 ok, 1 failure, 2 bad input (no labels, a task
or outputs the app cannot run, existing files without --force).
""")
@click.argument("model", type=click.Path())
@click.option("-o", "--output", "project_dir", required=True, type=click.Path(), help="The android_demo folder.")
@click.option("--task", type=click.Choice(["image_classifier", "object_detector"]),
              help="Override the task in the model's metadata (needed for YOLO-style detectors).")
@click.option("--labels", type=click.Path(), help="Class names, one per line, if the model has none embedded.")
@click.option("--mean", type=float, multiple=True, help="Input normalisation mean on 0..255 pixels (over metadata).")
@click.option("--std", type=float, multiple=True, help="Input normalisation std on 0..255 pixels (over metadata).")
@click.option("--objectness", is_flag=True, help="YOLO rows carry an objectness score after the box.")
@click.option("--score-threshold", type=click.FloatRange(0, 1), default=0.25, show_default=True)
@click.option("--iou-threshold", type=click.FloatRange(0, 1), default=0.45, show_default=True)
@click.option("--force", is_flag=True, help="Replace the model already in the app's assets.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary and model card as JSON.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def export_android_command(model, project_dir, task, labels, mean, std, objectness, score_threshold,
                           iou_threshold, force, as_json, debug):
    """Put MODEL into the Android demo app with the model card the app reads."""

    def action():
        from converters.targets.android import export_android

        result = export_android(model, project_dir, task=task, labels=labels, mean=mean or None, std=std or None,
                                has_objectness=objectness, score_threshold=score_threshold,
                                iou_threshold=iou_threshold, force=force)
        click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.render())

    run(action, debug)
