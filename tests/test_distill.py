"""Distillation into a smaller student (#25): derived students start from the teacher's weights, train on
unlabelled data, and the report compares teacher and student; bad requests are refused before training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sdk
from converters.training.students import StudentError, keep_blocks, spread
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
    student, how = keep_blocks(teacher, 2)  # first and last, as DistilBERT keeps BERT's 0, 2, 4, 7, 9, 11 of 12
    assert len(student.blocks) == 2 and how == "blocks: kept blocks [0, 3] of 4, initialised from the teacher's"
    assert spread(12, 6) == [0, 2, 4, 7, 9, 11] and spread(6, 3) == [0, 3, 5]
    for kept, original in zip(student.blocks, (teacher.blocks[0], teacher.blocks[3])):
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
    # every layer keeps half its channels, conv2's through the flatten into fc1: about a quarter of the weights
    assert student_side["params"] < 0.27 * teacher_side["params"] and student_side["macs"] < 0.27 * teacher_side["macs"]
    assert student_side["file_bytes"] < 0.35 * teacher_side["file_bytes"]
    assert "conv2 32/64" in record["student"] and "fc1 64/128" in record["student"]
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
    # finished: a rerun trains nothing and gives the best epoch's student again, not the last epoch's
    third = sdk.distill(teacher, tmp_path / "c.tflite", x, epochs=5, **common).report.passes["distill"].summary
    assert third["held_out_loss"] == second["held_out_loss"] and third["train_seconds"] == second["train_seconds"]
    assert third["against_teacher"] == second["against_teacher"] and third["loss"] == second["loss"]


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


def test_channel_removal_slices_a_linear_through_a_flatten():
    """conv -> BN -> pool -> flatten -> Linear: the Linear loses each removed channel's H*W columns, and the
    thin model computes exactly what the teacher computes with those channels (and fc1's units) zeroed."""
    import copy

    from converters.recipe import Recipe
    from converters.techniques.channels.torch import remove_channels
    from examples.digits_torch import DigitsNet

    torch.manual_seed(0)
    net = DigitsNet().eval()
    for bn in (net.bn1, net.bn2):  # distinct statistics, so the kept channels can be read back
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.1, 2), bn.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(4, 1, 8, 8)
    thin, record = remove_channels(net, Recipe.from_dict({"channels": {"fraction": 0.5}}), (x[:1],))
    assert {k: (v["kept"], v["channels"]) for k, v in record.layers.items()} == \
        {"conv1": (16, 32), "conv2": (32, 64), "fc1": (64, 128)}
    assert thin.fc1.in_features == 32 * 4 * 4 and record.summary["param_ratio"] > 3.9
    zeroed = copy.deepcopy(net)
    for big, small, scale, shift in ((net.bn1.running_mean, thin.bn1.running_mean, zeroed.bn1.weight, zeroed.bn1.bias),
                                     (net.bn2.running_mean, thin.bn2.running_mean, zeroed.bn2.weight, zeroed.bn2.bias),
                                     (net.fc1.bias, thin.fc1.bias, zeroed.fc1.weight, zeroed.fc1.bias)):
        kept = torch.zeros(len(big))
        kept[[int((big - value).abs().argmin()) for value in small.detach()]] = 1
        scale.data *= kept if scale.ndim == 1 else kept[:, None]
        shift.data *= kept
    with torch.no_grad():
        torch.testing.assert_close(thin(x), zeroed(x), atol=1e-5, rtol=0)


def seeded_stack():
    """The same 4-block Stack on every call: a teacher factory for CLI runs."""
    torch.manual_seed(0)
    return Stack(4).eval()


def keras3_student():
    """A Keras 3 student for the Keras 3 teacher below: 64 -> 16 -> 10 (the teacher is 64 -> 128 -> 10)."""
    import keras

    keras.utils.set_random_seed(1)
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")])


def test_keras_teacher_into_a_half_width_student_without_labels(digits, digits_model_path, tmp_path):
    """The tf_keras digits CNN (.h5) through the normal Keras route: half the channels of every layer, trained
    on unlabelled data, int8, within 1.5 points of the teacher's accuracy measured from the written file."""
    from examples.digits_cnn import accuracy
    from converters.sources.keras import load_keras_model

    result = sdk.distill(digits_model_path, tmp_path / "student.tflite", digits.x_train, width_ratio=0.5,
                         eval_data=(digits.x_test, digits.y_test), recipe={"quantize": {"mode": "int8"}},
                         epochs=30, patience=6)
    record = result.report.passes["distill"].summary
    teacher_side, student_side = record["teacher"], record["student_side"]
    assert student_side["params"] < 0.3 * teacher_side["params"] and student_side["macs"] < 0.3 * teacher_side["macs"]
    teacher_accuracy = accuracy(load_keras_model(digits_model_path).predict(digits.x_test, verbose=0), digits.y_test)
    written = next(iter(Model(result.path).run(digits.x_test).values()))
    assert accuracy(written, digits.y_test) >= teacher_accuracy - 1.5, (accuracy(written, digits.y_test),
                                                                        teacher_accuracy)
    assert record["loss"] == "KL x T^2" and "conv3 32/64" in record["student"]


def test_keras3_teacher_with_a_keras3_student_factory(digits, tmp_path):
    """A Keras 3 teacher (translated to tf_keras) and a Keras 3 student from a factory, no labels: the student's
    accuracy from its written file within 2 points of the teacher's; Keras refusals in one line."""
    import keras

    from examples.digits_cnn import accuracy

    x_train, x_test = (x.reshape(len(x), 64) for x in (digits.x_train, digits.x_test))
    keras.utils.set_random_seed(0)
    teacher = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, activation="relu"),
                                keras.layers.Dense(10, activation="softmax")])
    teacher.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    teacher.fit(x_train, digits.y_train, epochs=40, batch_size=32, verbose=0)
    result = sdk.distill(teacher, tmp_path / "s.tflite", x_train, student="tests.test_distill:keras3_student",
                         epochs=60, patience=10, learning_rate=3e-3, batch_size=32, eval_data=(x_test, digits.y_test))
    record = result.report.passes["distill"].summary
    assert record["student_side"]["params"] == 64 * 16 + 16 + 16 * 10 + 10 and record["loss"] == "KL x T^2"
    written = accuracy(next(iter(Model(result.path).run(x_test).values())), digits.y_test)
    teacher_accuracy = accuracy(teacher.predict(x_test, verbose=0), digits.y_test)
    assert written >= teacher_accuracy - 2.0, (written, teacher_accuracy, record["held_out_loss"])
    with pytest.raises(sdk.UserInputError, match=r"^student with fewer blocks \(distill.keep_layers\) is not "
                                                 r"available for Keras sources: blocks are found in PyTorch"):
        sdk.distill(teacher, tmp_path / "k.tflite", x_train, keep_layers=1)
    with pytest.raises(StudentError, match=r"the student's input is \(8,\) but the teacher's is \(64,\)"):
        sdk.distill(teacher, tmp_path / "k.tflite", x_train, student=keras.Sequential([keras.Input((8,)),
                                                                                       keras.layers.Dense(10)]))
    with pytest.raises(StudentError, match=r"^distill.hidden_weight and distill.lr_schedule are PyTorch-only; a "
                                           r"Keras teacher takes hidden_weight 0 and lr_schedule constant \(got "
                                           r"1.0, 'constant'\)$"):
        sdk.distill(teacher, tmp_path / "k.tflite", x_train, width_ratio=0.5, hidden_weight=1.0)
    assert not (tmp_path / "k.tflite").exists()


def test_recipe_distill_section_and_flags_drive_the_same_run(tmp_path):
    """The recipe's distill section and the flags name the same options; flags win; the runs are identical."""
    from click.testing import CliRunner

    from converters.training.students import distill_options
    from sdk.cli import main

    section = {"keep_layers": 2, "epochs": 2, "patience": 9, "temperature": 2.0, "alpha": 0.3, "cosine_weight": 0.5,
               "batch_size": 16, "learning_rate": 0.002, "outputs": "embedding"}
    assert distill_options(section) == distill_options(None, **section)
    assert distill_options(section, epochs=3)[1].finetune.epochs == 3  # a flag wins over the recipe
    with pytest.raises(StudentError, match=r"unknown key 'epoch' in distill \(did you mean 'epochs'\?\); allowed: "):
        distill_options({"epoch": 3})
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((120, 16)).astype(np.float32))
    (tmp_path / "r.yaml").write_text("distill:\n" + "".join(f"  {k}: {v}\n" for k, v in section.items()))
    common = ["tests.test_distill:seeded_stack", "--data", str(tmp_path / "x.npy"), "--input-shape", "1,16", "--json"]
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in section.items()]
    runs = [CliRunner().invoke(main, ["distill", *common, "-o", str(tmp_path / f"{name}.tflite"), *extra])
            for name, extra in (("recipe", ["--recipe", str(tmp_path / "r.yaml")]), ("flags", flags))]
    import json

    summaries = [json.loads(run.output)["passes"]["distill"]["summary"] for run in runs]
    assert [run.exit_code for run in runs] == [0, 0]
    assert summaries[0]["held_out_loss"] == summaries[1]["held_out_loss"] and summaries[0]["epochs_run"] == 2
    assert summaries[0]["loss"] == "MSE + 0.5 x (1 - cosine)"
    refused = CliRunner().invoke(main, ["convert", "tests.test_distill:seeded_stack", "--input-shape", "1,16", "-o",
                                        str(tmp_path / "c.tflite"), "--recipe", str(tmp_path / "r.yaml")])
    assert refused.exit_code == 2 and refused.output.startswith("error: the recipe's distill section trains")
    assert not (tmp_path / "c.tflite").exists()


class BasicBlock(torch.nn.Module):
    """torchvision's ResNet BasicBlock: two 3x3 convs and a shortcut, downsampled when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.downsample = None if stride == 1 and cin == cout else torch.nn.Sequential(
            torch.nn.Conv2d(cin, cout, 1, stride, bias=False), torch.nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class TinyResNet(torch.nn.Module):
    """torchvision's resnet layout (stem, layer1..layer3 of BasicBlocks, pool, fc), small; built, not downloaded."""

    def __init__(self, blocks=(3, 3, 2), widths=(8, 16, 16)):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, widths[0], 3, 1, 1), torch.nn.ReLU())
        cin = widths[0]
        for stage, (count, cout) in enumerate(zip(blocks, widths), start=1):
            stride = 1 if stage == 1 else 2
            setattr(self, f"layer{stage}", torch.nn.Sequential(
                *[BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(count)]))
            cin = cout
        self.fc = torch.nn.Linear(cin, 10)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def test_keep_layers_on_a_resnet_keeps_blocks_per_stage_and_every_block_that_changes_the_shape():
    """Before: only the deepest stage lost blocks, and a stage whose first block downsamples would lose it and
    fail inside the student's forward. Now every stage keeps N blocks; shape-changing ones are never dropped."""
    torch.manual_seed(0)
    teacher, x = TinyResNet().eval(), torch.randn(2, 3, 16, 16)
    student, how = keep_blocks(teacher, 1, (x,))
    assert how == ("layer1: kept blocks [2] of 3; layer2: kept blocks [0] of 3; layer3: kept blocks [0] of 2, "
                   "initialised from the teacher's")
    assert [len(getattr(student, f"layer{i}")) for i in (1, 2, 3)] == [1, 1, 1]
    assert tuple(student.eval()(x).shape) == (2, 10)
    torch.testing.assert_close(student.layer2[0].conv1.weight, teacher.layer2[0].conv1.weight)
    student, how = keep_blocks(teacher, 2, (x,))  # the stage's first (downsampling) and its last
    assert "layer2: kept blocks [0, 2] of 3" in how and "layer3" not in how and tuple(student(x).shape) == (2, 10)
    every = TinyResNet(blocks=(3, 3, 2)).eval()
    every.layer1 = torch.nn.Sequential(BasicBlock(8, 8, 2), BasicBlock(8, 8, 2), BasicBlock(8, 8))
    with pytest.raises(StudentError, match=r"^--keep-layers 1: blocks \[0, 1\] of layer1 change the shape of their "
                                           r"input, so none of them can be dropped; give --keep-layers 2 or more, or "
                                           r"--student package.module:factory$"):
        keep_blocks(every, 1, (x,))


def test_distill_messages_name_the_distill_keys(tmp_path):
    """The training values checked by the fine-tuning settings were reported as finetune.KEY; the user wrote
    distill.KEY (or --KEY), so the message names that."""
    from click.testing import CliRunner

    from converters.training.students import distill_options
    from sdk.cli import main

    for key, value, message in (("learning_rate", 0, "distill.learning_rate must be > 0; got 0.0"),
                                ("temperature", -1.0, "distill.temperature must be > 0; got -1.0"),
                                ("alpha", 2.0, r"distill.alpha must be in \[0, 1\]; got 2.0"),
                                ("outputs", "logits", "distill.outputs must be one of auto, scores, embedding; "
                                                      "got 'logits'"),
                                ("lr_schedule", "cosine", "distill.lr_schedule must be one of constant, linear; "
                                                          "got 'cosine'"),
                                ("trim_padding", "yes", "distill.trim_padding must be bool; got 'yes'")):
        with pytest.raises(StudentError, match=f"^{message}$"):
            distill_options({key: value, "keep_layers": 2})
    np.save(tmp_path / "x.npy", np.zeros((40, 16), np.float32))
    (tmp_path / "r.yaml").write_text("distill: {keep_layers: 2, learning_rate: 0}\n")
    run = CliRunner().invoke(main, ["distill", "tests.test_distill:seeded_stack", "--data", str(tmp_path / "x.npy"),
                                    "--input-shape", "1,16", "-o", str(tmp_path / "s.tflite"), "--recipe",
                                    str(tmp_path / "r.yaml")])
    assert run.exit_code == 2 and run.output == "error: distill.learning_rate must be > 0; got 0.0\n"
    for options, message in ((dict(hidden_weight=1.0, width_ratio=0.5), "student block 0 gives"),
                             (dict(trim_padding=True, keep_layers=2), "distill.trim_padding needs an input named "
                                                                      "'attention_mask'")):
        with pytest.raises(sdk.UserInputError, match=message):
            sdk.distill(Stack(4).eval(), tmp_path / "t.tflite", np.zeros((40, 16), np.float32),
                        example_input=torch.zeros(1, 16), outputs="embedding", **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml", "x.npy"]
