"""`sdk.convert(..., target=...)`: what the CLI chains by hand, checked before any work."""


import pytest

import sdk
from converters.errors import UserInputError


@pytest.mark.parametrize("kwargs, message", [
    ({"target": "coreml"}, "target must be one of tflite, mcu, android; got 'coreml'"),
    ({"board": "esp32-s3"}, "--board esp32-s3 applies to --target mcu"),
    ({"target": "mcu"}, "--target mcu needs a full-integer model"),
    ({"target": "mcu", "board": "esp32", "recipe": {"quantize": {"mode": "int8", "io_type": "int8"}}},
     "unknown board 'esp32' (did you mean 'esp32-s3'?)"),
    ({"target": "android"}, "--target android needs the Android demo project folder"),
    ({"target": "android", "android_project": "nowhere"}, "nowhere is not the Android demo project"),
    ({"android_project": "android_demo"}, "an Android project folder applies to --target android"),
    ({"labels": ["a", "b"], "metadata": "x"}, "give either metadata= or labels, not both"),
])
def test_target_refusals_come_before_any_work(kwargs, message, digits_model_path, tmp_path):
    out = tmp_path / "m.tflite"
    recipe = kwargs.pop("recipe", None)
    with pytest.raises(UserInputError) as raised:
        sdk.convert(digits_model_path, out, recipe, **kwargs)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_a_full_firmware_folder_is_refused_without_force(digits_model_path, tmp_path):
    firmware = tmp_path / "m_mcu"
    firmware.mkdir()
    (firmware / "model_data.cc").write_text("// someone's edits")
    with pytest.raises(UserInputError, match="m_mcu .*exists and is not empty; pass --force"):
        sdk.convert(digits_model_path, tmp_path / "m.tflite", {"quantize": {"mode": "int8", "io_type": "int8"}},
                    target="mcu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_mcu"]
    assert (firmware / "model_data.cc").read_text() == "// someone's edits"
