package dev.edgesdk.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertThrows
import org.junit.Assert.assertTrue
import org.junit.Test

/** Hand-computed cases: each expected number is worked out in the comment beside it. */
class CoreTest {
    @Test
    fun nmsKeepsTheBestOfOverlappingBoxesAndSeparatesClasses() {
        val boxes = listOf(
            doubleArrayOf(0.0, 0.0, 10.0, 10.0), // score 0.9
            doubleArrayOf(1.0, 1.0, 11.0, 11.0), // IoU with box 0 = 81 / (100 + 100 - 81) = 0.68 -> suppressed
            doubleArrayOf(20.0, 20.0, 30.0, 30.0), // no overlap -> kept
            doubleArrayOf(0.0, 5.0, 10.0, 15.0), // IoU with box 0 = 50 / 150 = 0.333 <= 0.45 -> kept
        )
        val scores = floatArrayOf(0.9f, 0.8f, 0.7f, 0.6f)
        assertEquals(0.68067, Postprocess.iou(boxes[0], boxes[1]), 1e-5)
        assertEquals(listOf(0, 2, 3), Postprocess.nms(boxes, scores, 0.45))
        // the suppressed box survives when it belongs to another class
        assertEquals(listOf(0, 1, 2, 3), Postprocess.batchedNms(boxes, scores, intArrayOf(0, 1, 0, 0), 0.45))
    }

    @Test
    fun letterboxRoundTripsCoordinatesExactly() {
        // a 640x480 frame letterboxed into 320x320: scale 0.5, 240 rows tall, 40 rows of padding on top
        val spec = ImageSpec(320, 320, resize = Resize.LETTERBOX)
        val (_, box) = ImagePreprocessor(spec).process(ByteArray(640 * 480 * 3), 640, 480)
        assertEquals(Letterbox(0.5, 0.5, 0.0, 40.0, 640, 480), box)
        val original = doubleArrayOf(100.0, 50.0, 300.0, 250.0)
        assertArrayEquals(doubleArrayOf(50.0, 65.0, 150.0, 165.0), box.toModel(original), 0.0)
        assertArrayEquals(original, box.toOriginal(box.toModel(original)), 0.0)
    }

    @Test
    fun boxesMapToAFillCentrePreview() {
        // a 640x480 image filling a 1080x1920 portrait view: scale max(1.6875, 4) = 4, width 2560 cropped by 740 each side
        val mapped = Postprocess.toView(doubleArrayOf(320.0, 240.0, 330.0, 250.0), 640, 480, 1080, 1920)
        assertArrayEquals(doubleArrayOf(540.0, 960.0, 580.0, 1000.0), mapped, 1e-9)
        // fit instead: scale 1.6875, image 1080x810 centred with 555 px above
        val fitted = Postprocess.toView(doubleArrayOf(0.0, 0.0, 640.0, 480.0), 640, 480, 1080, 1920, fill = false)
        assertArrayEquals(doubleArrayOf(0.0, 555.0, 1080.0, 1365.0), fitted, 1e-9)
    }

    @Test
    fun framesRotateClockwise() {
        // a 3x2 frame whose pixels are numbered 0..5 row by row (all three channels hold the number)
        val frame = ByteArray(18) { (it / 3).toByte() }
        fun pixels(t: Triple<ByteArray, Int, Int>) = (0 until t.second * t.third).map { t.first[it * 3].toInt() }
        // 0 1 2      rotated 90 clockwise:  3 0
        // 3 4 5                             4 1
        //                                   5 2
        val r90 = Pixels.rotate(frame, 3, 2, 90)
        assertEquals(listOf(3, 0, 4, 1, 5, 2), pixels(r90))
        assertEquals(2 to 3, r90.second to r90.third)
        assertEquals(listOf(5, 4, 3, 2, 1, 0), pixels(Pixels.rotate(frame, 3, 2, 180)))
        assertEquals(listOf(2, 5, 1, 4, 0, 3), pixels(Pixels.rotate(frame, 3, 2, 270)))
    }

    @Test
    fun quantizationFollowsTheAffineRule() {
        val q = Quantization(0.5, -3)
        assertEquals(-3 + 2, q.quantize(1.0f, DType.INT8)) // round(1.0 / 0.5) + (-3)
        assertEquals(-3 + 2, q.quantize(1.25f, DType.INT8)) // 2.5 rounds to even: 2
        assertEquals(127, q.quantize(1000f, DType.INT8)) // clipped
        assertEquals(2.5f, q.dequantize(2), 0f) // (2 - -3) * 0.5
    }

    @Test
    fun tensorsSurviveTheByteBufferTheInterpreterUses() {
        val t = Tensor(intArrayOf(1, 3), DType.INT8, ints = intArrayOf(-128, 0, 127))
        assertArrayEquals(intArrayOf(-128, 0, 127), Tensor.fromByteBuffer(t.shape, DType.INT8, t.toByteBuffer()).ints)
        val u = Tensor(intArrayOf(2), DType.UINT8, ints = intArrayOf(0, 255))
        assertArrayEquals(intArrayOf(0, 255), Tensor.fromByteBuffer(u.shape, DType.UINT8, u.toByteBuffer()).ints)
    }

    @Test
    fun badModelCardsSayWhatIsWrong() {
        val wrongFormat = assertThrows(ModelCardException::class.java) { ModelCard.parse("{\"format\": \"other\"}") }
        assertTrue(wrongFormat.message!!.contains("'format' must be 'edge-sdk-model-card'"))
        val truncated = assertThrows(ModelCardException::class.java) { ModelCard.parse("{\"format\": ") }
        assertTrue(truncated.message!!.startsWith("invalid JSON"))
        val badTask = assertThrows(ModelCardException::class.java) {
            ModelCard.parse("{\"format\": \"edge-sdk-model-card\", \"format_version\": 1, \"task\": \"segmenter\"}")
        }
        assertTrue(badTask.message!!.contains("got 'segmenter'"))
    }

    @Test
    fun jsonReaderHandlesEscapesAndNesting() {
        val parsed = Json.parse("{\"a\": [1, -2.5e1, true, null], \"b\": \"x\\\"y\\u00e9\"}").asObject("root")
        assertEquals(listOf(1.0, -25.0, true, null), parsed["a"])
        assertEquals("x\"y\u00e9", parsed["b"])
    }
}
