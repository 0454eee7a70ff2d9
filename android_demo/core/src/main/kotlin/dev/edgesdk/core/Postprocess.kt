package dev.edgesdk.core

import kotlin.math.abs
import kotlin.math.max
import kotlin.math.min

data class Classification(val index: Int, val score: Float, val label: String)

/** A detected object; the box is x1, y1, x2, y2 in original-image pixels. */
data class Detection(val box: DoubleArray, val score: Float, val classId: Int, val label: String) {
    override fun equals(other: Any?) = other is Detection && box.contentEquals(other.box) &&
        score == other.score && classId == other.classId && label == other.label
    override fun hashCode() = box.contentHashCode() * 31 + classId
}

/**
 * Model outputs -> answers, ported from device_runtime.postprocess with the
 * same arithmetic (float32 scores, float64 boxes), so both give the same
 * detections for the same raw outputs.
 */
object Postprocess {
    private fun label(labels: List<String>?, index: Int) =
        if (labels != null && index in labels.indices) labels[index] else index.toString()

    /** The k highest scores; ties keep the lower index. */
    fun topK(scores: FloatArray, k: Int, labels: List<String>? = null): List<Classification> =
        scores.indices.sortedWith(compareByDescending<Int> { scores[it] }.thenBy { it }).take(k)
            .map { Classification(it, scores[it], label(labels, it)) }

    fun iou(a: DoubleArray, b: DoubleArray): Double {
        val inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
        val union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return if (union > 0) inter / union else 0.0
    }

    /**
     * Greedy non-maximum suppression; kept indices, best score first (ties: lower index first).
     * With [classes], boxes of different classes never suppress each other.
     */
    fun nms(boxes: List<DoubleArray>, scores: FloatArray, iouThreshold: Double, maxDetections: Int = 300,
            classes: IntArray? = null): List<Int> {
        var order = scores.indices.sortedWith(compareByDescending<Int> { scores[it] }.thenBy { it })
        val keep = ArrayList<Int>()
        while (order.isNotEmpty() && keep.size < maxDetections) {
            val best = order[0]
            keep.add(best)
            order = order.drop(1).filter {
                (classes != null && classes[it] != classes[best]) || iou(boxes[best], boxes[it]) <= iouThreshold
            }
        }
        return keep
    }

    /** Class-aware NMS on the boxes' own coordinates, as device_runtime.postprocess.batched_nms. */
    fun batchedNms(boxes: List<DoubleArray>, scores: FloatArray, classes: IntArray, iouThreshold: Double,
                   maxDetections: Int = 300): List<Int> = nms(boxes, scores, iouThreshold, maxDetections, classes)

    /**
     * Raw YOLO-style output, (1, 4[+1]+C, N) or (1, N, 4[+1]+C) with cx, cy, w, h
     * boxes in model pixels or normalised to [0, 1] (then scaled by [inputSize]).
     * [raw] holds stored values when [quantization] is set: anchors are
     * thresholded on them and only survivors are dequantized.
     */
    fun decodeYolo(
        raw: Tensor, letterbox: Letterbox, inputHeight: Int, inputWidth: Int,
        scoreThreshold: Double = 0.25, iouThreshold: Double = 0.45, maxDetections: Int = 100,
        hasObjectness: Boolean = false, normalized: Boolean? = null, labels: List<String>? = null,
        quantization: Quantization = Quantization(),
    ): List<Detection> {
        val dims = raw.shape.filterIndexed { i, _ -> !(raw.shape.size == 3 && i == 0) }
        require(dims.size == 2) { "YOLO output must be (1, 4+C, N) or (1, N, 4+C); got ${raw.shape.contentToString()}" }
        val channelsFirst = dims[0] < dims[1]
        val features = if (channelsFirst) dims[0] else dims[1]
        val anchors = if (channelsFirst) dims[1] else dims[0]
        val firstClass = if (hasObjectness) 5 else 4
        require(features > firstClass) { "YOLO rows need $firstClass box values and at least one class score; got $features" }
        fun stored(anchor: Int, feature: Int): Double {
            val i = if (channelsFirst) feature * anchors + anchor else anchor * features + feature
            return raw.floats?.get(i)?.toDouble() ?: raw.ints!![i].toDouble()
        }
        val quantized = quantization.isQuantized && raw.ints != null
        val threshold32 = scoreThreshold.toFloat()
        fun value(anchor: Int, feature: Int): Float =
            if (quantized) quantization.dequantize(stored(anchor, feature).toInt()) else stored(anchor, feature).toFloat()
        val rawThreshold = if (quantized) scoreThreshold / quantization.scale + quantization.zeroPoint else 0.0
        val boxes = ArrayList<DoubleArray>()
        val scores = ArrayList<Float>()
        val classIds = ArrayList<Int>()
        for (a in 0 until anchors) {
            val gate = if (hasObjectness) stored(a, 4) else (firstClass until features).maxOf { stored(a, it) }
            val passes = if (quantized) gate >= rawThreshold else gate.toFloat() >= threshold32
            if (!passes) continue
            val objectness = if (hasObjectness) value(a, 4) else 1f
            var bestClass = 0
            var bestScore = Float.NEGATIVE_INFINITY
            for (f in firstClass until features) {
                val s = value(a, f) * objectness
                if (s > bestScore) { bestScore = s; bestClass = f - firstClass }
            }
            if (bestScore < threshold32) continue
            val cx = value(a, 0); val cy = value(a, 1); val w = value(a, 2); val h = value(a, 3)
            boxes.add(doubleArrayOf((cx - w / 2).toDouble(), (cy - h / 2).toDouble(), (cx + w / 2).toDouble(), (cy + h / 2).toDouble()))
            scores.add(bestScore)
            classIds.add(bestClass)
        }
        val isNormalized = normalized ?: (boxes.isNotEmpty() && boxes.maxOf { b -> b.maxOf { abs(it) } } <= 1.5)
        if (isNormalized) for (b in boxes) {
            b[0] *= inputWidth; b[2] *= inputWidth; b[1] *= inputHeight; b[3] *= inputHeight
        }
        val scoreArray = scores.toFloatArray()
        val classArray = classIds.toIntArray()
        return batchedNms(boxes, scoreArray, classArray, iouThreshold, maxDetections).map {
            Detection(letterbox.toOriginal(boxes[it]), scoreArray[it], classArray[it], label(labels, classArray[it]))
        }
    }

    /**
     * TFLite_Detection_PostProcess (SSD) outputs: normalised boxes, classes, scores, count.
     * [boxIndex] gives the positions of left, top, right, bottom within a box.
     */
    fun decodeSsd(
        boxes: FloatArray, classes: FloatArray, scores: FloatArray, count: Int, letterbox: Letterbox,
        inputHeight: Int, inputWidth: Int, scoreThreshold: Double = 0.25, labels: List<String>? = null,
        boxIndex: IntArray = intArrayOf(1, 0, 3, 2),
    ): List<Detection> {
        val n = min(count, scores.size)
        val scale = doubleArrayOf(inputWidth.toDouble(), inputHeight.toDouble(), inputWidth.toDouble(), inputHeight.toDouble())
        return (0 until n).filter { scores[it].toDouble() >= scoreThreshold }.map { i ->
            val box = DoubleArray(4) { boxes[4 * i + boxIndex[it]].toDouble() * scale[it] }
            val id = classes[i].toLong().toInt()
            Detection(letterbox.toOriginal(box), scores[i], id, label(labels, id))
        }
    }

    /**
     * Maps a box in original-image pixels to a view showing that image scaled
     * to fill it and centre-cropped (PreviewView's FILL_CENTER) or scaled to
     * fit inside it (FIT_CENTER).
     */
    fun toView(box: DoubleArray, imageWidth: Int, imageHeight: Int, viewWidth: Int, viewHeight: Int,
               fill: Boolean = true): DoubleArray {
        val sx = viewWidth.toDouble() / imageWidth
        val sy = viewHeight.toDouble() / imageHeight
        val s = if (fill) max(sx, sy) else min(sx, sy)
        val dx = (viewWidth - imageWidth * s) / 2
        val dy = (viewHeight - imageHeight * s) / 2
        return doubleArrayOf(box[0] * s + dx, box[1] * s + dy, box[2] * s + dx, box[3] * s + dy)
    }

}
