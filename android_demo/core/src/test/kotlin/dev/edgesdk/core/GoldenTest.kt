package dev.edgesdk.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assume.assumeTrue
import org.junit.Test
import java.io.File

/**
 * Cross-language golden tests: the Python device runtime wrote the fixtures
 * (tests/test_android_core.py, in the same test run) and the Kotlin core must
 * reproduce them: int8/uint8 tensors exactly, float tensors within 1e-5, the
 * same detections with boxes within 0.5 px (in practice they agree to 1e-6).
 */
class GoldenTest {
    private val fixtures: Map<String, Any?> by lazy {
        val path = System.getProperty("golden.fixtures")
        assumeTrue("no -Dgolden.fixtures=FILE given", !path.isNullOrEmpty())
        Json.parse(File(path!!).readText()).asObject("fixtures")
    }

    private fun cases(kind: String): List<Map<String, Any?>> =
        fixtures.list(kind).map { it.asObject(kind) }.also { assertTrue("no $kind fixtures", it.isNotEmpty()) }

    private fun bytes(values: List<Any?>) = ByteArray(values.size) { (values[it] as Double).toInt().toByte() }

    private fun floats(values: List<Any?>) = FloatArray(values.size) { (values[it] as Double).toFloat() }

    private fun letterbox(json: Map<String, Any?>) = Letterbox(
        json.num("scale_x"), json.num("scale_y"), json.num("pad_x"), json.num("pad_y"),
        json.num("source_width").toInt(), json.num("source_height").toInt(),
    )

    private fun tensor(json: Map<String, Any?>): Tensor {
        val dtype = DType.parse(json.str("dtype"))
        val values = json.list("values")
        return if (dtype == DType.FLOAT32) Tensor(json.ints("shape"), dtype, floats = floats(values))
        else Tensor(json.ints("shape"), dtype, ints = values.map { (it as Double).toInt() }.toIntArray())
    }

    private fun assertTensor(name: String, expected: Map<String, Any?>, actual: Tensor) {
        assertArrayEquals("$name shape", expected.ints("shape"), actual.shape)
        assertEquals("$name dtype", DType.parse(expected.str("dtype")), actual.dtype)
        val values = expected.list("values")
        if (actual.floats != null) {
            assertArrayEquals("$name values", floats(values), actual.floats, 1e-5f)
        } else {
            assertArrayEquals("$name values", values.map { (it as Double).toInt() }.toIntArray(), actual.ints)
        }
    }

    private fun assertDetections(name: String, expected: List<Any?>, actual: List<Detection>) {
        assertEquals("$name detection count", expected.size, actual.size)
        for ((e, a) in expected.map { it.asObject("detection") }.zip(actual)) {
            assertArrayEquals("$name box", e.doubles("box"), a.box, 0.5)
            assertEquals("$name score", e.num("score").toFloat(), a.score, 1e-6f)
            assertEquals("$name class", e.num("class_id").toInt(), a.classId)
            assertEquals("$name label", e.str("label"), a.label)
        }
    }

    private fun assertTopK(name: String, expected: List<Any?>, actual: List<Classification>) {
        assertEquals("$name top-k count", expected.size, actual.size)
        for ((e, a) in expected.map { it.asObject("class") }.zip(actual)) {
            assertEquals("$name index", e.num("index").toInt(), a.index)
            assertEquals("$name score", e.num("score").toFloat(), a.score, 1e-6f)
            assertEquals("$name label", e.str("label"), a.label)
        }
    }

    private fun spec(json: Map<String, Any?>) = ImageSpec(
        json.num("height").toInt(), json.num("width").toInt(), json.num("channels").toInt(),
        Layout.valueOf(json.str("layout")), json.doubles("mean").toList(), json.doubles("std").toList(),
        Resize.valueOf(json.str("resize").uppercase()),
    )

    @Test
    fun preprocessingMatchesThePythonRuntime() {
        for (case in cases("preprocess")) {
            val name = case.str("name")
            val q = case.obj("quantization")
            val pre = ImagePreprocessor(spec(case.obj("spec")), q.num("scale"), q.num("zero_point").toInt(),
                DType.parse(case.obj("expected").str("dtype")))
            val (tensor, box) = pre.process(bytes(case.list("rgb")), case.num("width").toInt(), case.num("height").toInt())
            assertTensor(name, case.obj("expected"), tensor)
            assertEquals("$name letterbox", letterbox(case.obj("letterbox")), box)
        }
    }

    @Test
    fun yuvConversionMatchesThePythonRuntime() {
        for (case in cases("yuv")) {
            val width = case.num("width").toInt()
            val height = case.num("height").toInt()
            val u = bytes(case.list("u"))
            val v = bytes(case.list("v"))
            val chromaW = (width + 1) / 2
            // lay U and V out interleaved (pixel stride 2, padded rows), as many phones deliver them
            val stride = chromaW * 2 + 6
            val uv = ByteArray(stride * ((height + 1) / 2) + 1)
            for (i in u.indices) {
                val at = (i / chromaW) * stride + (i % chromaW) * 2
                uv[at] = u[i]; uv[at + 1] = v[i]
            }
            val vView = uv.copyOfRange(1, uv.size)
            val rgb = Pixels.yuv420ToRgb(width, height, bytes(case.list("y")), width, uv, vView, stride, 2)
            assertArrayEquals(case.str("name"), bytes(case.list("expected")), rgb)
        }
    }

    @Test
    fun topKMatchesThePythonRuntime() {
        for (case in cases("top_k")) {
            val labels = case.list("labels").map { it as String }
            assertTopK(case.str("name"), case.list("expected"),
                Postprocess.topK(floats(case.list("scores")), case.num("k").toInt(), labels))
        }
    }

    @Test
    fun ssdDecodingMatchesThePythonRuntime() {
        for (case in cases("ssd")) {
            val size = case.ints("input_size")
            val found = Postprocess.decodeSsd(
                floats(case.list("boxes")), floats(case.list("classes")), floats(case.list("scores")),
                case.num("count").toInt(), letterbox(case.obj("letterbox")), size[0], size[1],
                case.num("score_threshold"), case.list("labels").map { it as String }, case.ints("box_index"),
            )
            assertDetections(case.str("name"), case.list("expected"), found)
        }
    }

    @Test
    fun yoloDecodingAndNmsMatchThePythonRuntime() {
        for (case in cases("yolo")) {
            val size = case.ints("input_size")
            val q = case["quantization"]?.asObject("quantization")
            val found = Postprocess.decodeYolo(
                tensor(case.obj("output")), letterbox(case.obj("letterbox")), size[0], size[1],
                case.num("score_threshold"), case.num("iou_threshold"), 100, case["has_objectness"] as Boolean,
                null, case.list("labels").map { it as String },
                if (q == null) Quantization() else Quantization(q.num("scale"), q.num("zero_point").toInt()),
            )
            assertDetections(case.str("name"), case.list("expected"), found)
        }
    }

    @Test
    fun exportedModelsRunEndToEndFromTheirCards() {
        for (case in cases("models")) {
            val name = case.str("name")
            val card = ModelCard.parse(File(case.str("card")).readText())
            val expectCard = case.obj("expected_card")
            assertEquals("$name task", expectCard.str("task"), card.task)
            assertEquals("$name labels", expectCard.list("labels"), card.labels)
            assertEquals("$name input dtype", DType.parse(expectCard.str("input_dtype")), card.input.dtype)
            assertEquals("$name outputs", expectCard.list("output_roles"), card.outputs.map { it.role })
            assertTrue("$name model file", File(File(case.str("card")).parentFile, card.modelFile).isFile)
            val pipeline = ModelPipeline(card)
            val (input, box) = pipeline.prepare(bytes(case.list("rgb")), case.num("width").toInt(), case.num("height").toInt())
            assertTensor("$name input", case.obj("expected_input"), input)
            val outputs = case.list("outputs").map { tensor(it.asObject("output")) }
            if (card.task == "image_classifier") {
                assertTopK(name, case.list("expected"), pipeline.classify(outputs, case.num("k").toInt()))
            } else {
                assertDetections(name, case.list("expected"), pipeline.detect(outputs, box, case.num("score_threshold")))
            }
        }
    }
}
