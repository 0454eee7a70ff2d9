"""Distillation into a smaller student (#25): derived students start from the teacher's weights, train on
unlabelled data, and the report compares teacher and student; bad requests are refused before training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sdk
from converters.training.students import StudentError, keep_blocks
from device_runtime import Model


class Stack(torch.nn.Module):
    """embed -> 4 residual MLP blocks -> head: a stand-in for an encoder's stack of layers."""

    def __init__(self, blocks: int = 4):
        super().__init__()
        self.embed = torch.nn.Linear(16, 32)
        self.blocks = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.GELU())
                                          for _ in range(blocks))
        self.head = torch.nn.Linear(32, 8)

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


def test_keep_layers_keeps_every_other_block_with_the_teachers_weights():
    torch.manual_seed(0)
    teacher = Stack(4).eval()
    student, how = keep_blocks(teacher, 2)
    assert len(student.blocks) == 2 and how == "blocks: kept blocks [0, 2] of 4, initialised from the teacher's"
    for kept, original in zip(student.blocks, (teacher.blocks[0], teacher.blocks[2])):
        torch.testing.assert_close(kept[0].weight, original[0].weight)
    assert len(teacher.blocks) == 4  # the teacher is not changed
    with pytest.raises(StudentError, match=r"--keep-layers 4: the teacher's deepest stack of blocks, blocks, has 4; "
                                           r"keep 1 to 3"):
        keep_blocks(teacher, 4)


def test_digits_half_width_student_without_labels_within_1_5_points(tmp_path):
    from examples.digits_torch import accuracy, nchw_splits, train_digits_net

    splits = nchw_splits()
    teacher = train_digits_net(splits)
    result = sdk.distill(teacher, tmp_path / "student.tflite", splits.x_train, width_ratio=0.5,
                         eval_data=(splits.x_test, splits.y_test), example_input=torch.zeros(1, 1, 8, 8),
                         recipe={"quantize": {"mode": "int8"}}, epochs=40, patience=8)
    record = result.report.passes["distill"].summary
    teacher_side, student_side = record["teacher"], record["student_side"]
    # conv2's channels reach fc1 through a flatten, which keeps them: conv1 and fc1 lose half, conv2 its inputs
    assert student_side["params"] < 0.55 * teacher_side["params"] and student_side["macs"] < 0.55 * teacher_side["macs"]
    assert student_side["file_bytes"] < 0.6 * teacher_side["file_bytes"]
    written = Model(result.path).run(splits.x_test.transpose(0, 2, 3, 1))  # measured from the written file
    student_accuracy = float((next(iter(written.values())).argmax(1) == splits.y_test).mean() * 100)
    teacher_accuracy = accuracy(teacher, splits.x_test, splits.y_test)
    assert student_accuracy >= teacher_accuracy - 1.5, (student_accuracy, teacher_accuracy)
    assert record["against_teacher"]["accuracy_teacher"] == pytest.approx(teacher_accuracy, abs=1e-3)
    assert record["loss"] == "KL x T^2" and record["best_epoch"] >= 1  # no labels in the training data


def test_checkpoint_resumes_where_training_stopped(tmp_path):
    torch.manual_seed(0)
    teacher = Stack(4).eval()
    x = np.random.default_rng(0).standard_normal((200, 16)).astype(np.float32)
    common = dict(keep_layers=2, example_input=torch.zeros(1, 16), checkpoint=tmp_path / "student.ckpt",
                  patience=50, outputs="embedding")
    first = sdk.distill(teacher, tmp_path / "a.tflite", x, epochs=2, **common).report.passes["distill"].summary
    assert first["epochs_run"] == 2 and (tmp_path / "student.ckpt").is_file()
    second = sdk.distill(teacher, tmp_path / "b.tflite", x, epochs=5, **common).report.passes["distill"].summary
    assert second["epochs_run"] == 5 and second["held_out_loss"][:2] == first["held_out_loss"]
    assert second["loss"] == "MSE + 1.0 x (1 - cosine)" and second["against_teacher"]["cosine_mean"] > 0.9


def test_bad_requests_are_refused_before_training(tmp_path):
    torch.manual_seed(0)
    teacher, x = Stack(4).eval(), np.zeros((40, 16), np.float32)
    example = torch.zeros(1, 16)
    cases = [
        (dict(student=torch.nn.Linear(16, 5)), StudentError,
         r"the student's output has shape \(1, 5\) but the teacher's has \(1, 8\)"),
        (dict(keep_layers=8), StudentError, "--keep-layers 8: the teacher's deepest stack of blocks, blocks, has 4"),
        (dict(width_ratio=1.5), StudentError, r"--width-ratio must be in \(0, 1\)"),
        (dict(), sdk.UserInputError, "name the student"),
        (dict(keep_layers=2, student=torch.nn.Linear(16, 8)), sdk.UserInputError, "not both"),
    ]
    for options, error, message in cases:
        with pytest.raises(error, match=message):
            sdk.distill(teacher, tmp_path / "s.tflite", x, example_input=example, **options)
    with pytest.raises(sdk.DataError, match="samples have shape"):  # data the teacher cannot run
        sdk.distill(teacher, tmp_path / "s.tflite", np.zeros((40, 3)), keep_layers=2, example_input=example)
    assert list(tmp_path.iterdir()) == []
