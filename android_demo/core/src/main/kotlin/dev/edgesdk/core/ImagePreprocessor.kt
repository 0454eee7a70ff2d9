package dev.edgesdk.core

import kotlin.math.floor
import kotlin.math.max
import kotlin.math.min

enum class Resize { STRETCH, LETTERBOX, CROP }
enum class Layout { NHWC, NCHW }

/** How a model wants its image input; mean/std apply to 0..255 pixels, as in TFLite metadata. */
data class ImageSpec(
    val height: Int,
    val width: Int,
    val channels: Int = 3,
    val layout: Layout = Layout.NHWC,
    val mean: List<Double> = listOf(0.0),
    val std: List<Double> = listOf(255.0),
    val resize: Resize = Resize.STRETCH,
    val padValue: Double = 114.0,
) {
    init {
        require(channels == 1 || channels == 3) { "channels must be 1 or 3; got $channels" }
        require(mean.size == 1 || mean.size == channels) { "mean needs 1 or $channels values; got ${mean.size}" }
        require(std.size == 1 || std.size == channels) { "std needs 1 or $channels values; got ${std.size}" }
        require(std.none { it == 0.0 }) { "std values must be non-zero" }
    }
}

/** The mapping between original-image pixels and model-input pixels. */
data class Letterbox(
    val scaleX: Double, val scaleY: Double, val padX: Double, val padY: Double,
    val sourceWidth: Int, val sourceHeight: Int,
) {
    /** x1, y1, x2, y2 in model pixels -> original pixels, clipped to the image. */
    fun toOriginal(box: DoubleArray): DoubleArray = doubleArrayOf(
        ((box[0] - padX) / scaleX).coerceIn(0.0, sourceWidth.toDouble()),
        ((box[1] - padY) / scaleY).coerceIn(0.0, sourceHeight.toDouble()),
        ((box[2] - padX) / scaleX).coerceIn(0.0, sourceWidth.toDouble()),
        ((box[3] - padY) / scaleY).coerceIn(0.0, sourceHeight.toDouble()),
    )

    fun toModel(box: DoubleArray): DoubleArray = doubleArrayOf(
        box[0] * scaleX + padX, box[1] * scaleY + padY, box[2] * scaleX + padX, box[3] * scaleY + padY,
    )
}

/**
 * Frames of any size -> the model's input tensor, a port of device_runtime's
 * ImagePreprocessor that reproduces it bit for bit: bilinear resampling with
 * half-pixel centres, normalisation and quantization folded into float32
 * weights, summed in a fixed order without fused multiply-add.
 */
class ImagePreprocessor(val spec: ImageSpec, scale: Double = 0.0, zeroPoint: Int = 0, val dtype: DType = DType.FLOAT32) {
    private val quantized = scale != 0.0 && dtype != DType.FLOAT32
    private val gain = DoubleArray(3)
    private val offset = DoubleArray(3)
    private val plans = HashMap<Long, Plan>()

    init {
        val qScale = if (quantized) scale else 1.0
        val qZero = if (quantized) zeroPoint.toDouble() else 0.0
        for (c in 0 until 3) {
            val m = spec.mean[if (spec.mean.size == 1) 0 else c]
            val s = spec.std[if (spec.std.size == 1) 0 else c]
            gain[c] = 1.0 / (s * qScale)
            offset[c] = qZero - m / (s * qScale)
        }
    }

    private class Axis(val low: IntArray, val high: IntArray, val weight: FloatArray) {
        fun slice(from: Int, count: Int) = Axis(low.copyOfRange(from, from + count),
            high.copyOfRange(from, from + count), weight.copyOfRange(from, from + count))
    }

    private class Plan(
        val outH: Int, val outW: Int, val index: Array<IntArray>, val weights: Array<FloatArray>,
        val offset: FloatArray, val box: Letterbox, val top: Int, val left: Int, val canvas: Tensor,
    )

    private fun axisWeights(src: Int, dst: Int): Axis {
        val low = IntArray(dst)
        val high = IntArray(dst)
        val weight = FloatArray(dst)
        for (i in 0 until dst) {
            val pos = ((i + 0.5) * (src.toDouble() / dst) - 0.5).coerceIn(0.0, (src - 1).toDouble())
            low[i] = floor(pos).toInt()
            high[i] = min(low[i] + 1, src - 1)
            weight[i] = (pos - low[i]).toFloat()
        }
        return Axis(low, high, weight)
    }

    private fun plan(srcH: Int, srcW: Int): Plan {
        val gray = spec.channels == 1
        val luma = doubleArrayOf(0.299, 0.587, 0.114) // BT.601, as PIL's "L"
        val sampleGain = DoubleArray(3) { if (gray) gain[it] * luma[it] else gain[it] }
        val sampleOffset = DoubleArray(3) { if (gray) offset[0] / 3.0 else offset[it] }
        val rows: Axis
        val cols: Axis
        val box: Letterbox
        var top = 0
        var left = 0
        when (spec.resize) {
            Resize.STRETCH -> {
                rows = axisWeights(srcH, spec.height); cols = axisWeights(srcW, spec.width)
                box = Letterbox(spec.width.toDouble() / srcW, spec.height.toDouble() / srcH, 0.0, 0.0, srcW, srcH)
            }
            Resize.LETTERBOX -> {
                val s = min(spec.width.toDouble() / srcW, spec.height.toDouble() / srcH)
                val newW = max(1, Math.rint(srcW * s).toInt())
                val newH = max(1, Math.rint(srcH * s).toInt())
                top = (spec.height - newH) / 2; left = (spec.width - newW) / 2
                rows = axisWeights(srcH, newH); cols = axisWeights(srcW, newW)
                box = Letterbox(newW.toDouble() / srcW, newH.toDouble() / srcH, left.toDouble(), top.toDouble(), srcW, srcH)
            }
            Resize.CROP -> {
                val s = max(spec.width.toDouble() / srcW, spec.height.toDouble() / srcH)
                val newW = max(spec.width, Math.rint(srcW * s).toInt())
                val newH = max(spec.height, Math.rint(srcH * s).toInt())
                val offX = (newW - spec.width) / 2
                val offY = (newH - spec.height) / 2
                rows = axisWeights(srcH, newH).slice(offY, spec.height)
                cols = axisWeights(srcW, newW).slice(offX, spec.width)
                box = Letterbox(newW.toDouble() / srcW, newH.toDouble() / srcH, -offX.toDouble(), -offY.toDouble(), srcW, srcH)
            }
        }
        val outH = rows.low.size
        val outW = cols.low.size
        val n = outH * outW * 3
        val index = Array(4) { IntArray(n) }
        val weights = Array(4) { FloatArray(n) }
        val offsets = FloatArray(n)
        var i = 0
        for (y in 0 until outH) for (x in 0 until outW) {
            val wy = rows.weight[y]
            val wx = cols.weight[x]
            val corner = floatArrayOf((1f - wy) * (1f - wx), (1f - wy) * wx, wy * (1f - wx), wy * wx)
            val ys = intArrayOf(rows.low[y], rows.low[y], rows.high[y], rows.high[y])
            val xs = intArrayOf(cols.low[x], cols.high[x], cols.low[x], cols.high[x])
            for (c in 0 until 3) {
                for (k in 0 until 4) {
                    index[k][i] = (ys[k] * srcW + xs[k]) * 3 + c
                    weights[k][i] = (corner[k].toDouble() * sampleGain[c]).toFloat()
                }
                offsets[i] = sampleOffset[c].toFloat()
                i++
            }
        }
        val border = FloatArray(spec.height * spec.width * spec.channels) {
            (spec.padValue * gain[it % spec.channels] + offset[it % spec.channels]).toFloat()
        }
        return Plan(outH, outW, index, weights, offsets, box, top, left, finish(border))
    }

    /** float values -> the model's dtype (rounded half to even and clipped for quantized inputs). */
    private fun finish(values: FloatArray): Tensor {
        val shape = intArrayOf(values.size)
        if (!quantized) return Tensor(shape, dtype, floats = values)
        return Tensor(shape, dtype, ints = IntArray(values.size) {
            Math.rint(values[it].toDouble()).coerceIn(dtype.min.toDouble(), dtype.max.toDouble()).toInt()
        })
    }

    /**
     * [rgb]: height*width*3 bytes, RGB, row-major (see [Pixels]). Returns a
     * (1, H, W, C) or (1, C, H, W) tensor in the model's dtype, and the mapping
     * from model pixels back to the original image.
     */
    fun process(rgb: ByteArray, width: Int, height: Int): Pair<Tensor, Letterbox> {
        require(rgb.size == width * height * 3) { "an RGB frame of ${width}x$height needs ${width * height * 3} bytes; got ${rgb.size}" }
        val plan = plans.getOrPut((height.toLong() shl 32) or width.toLong()) { plan(height, width) }
        val n = plan.outH * plan.outW * 3
        val sampled = FloatArray(n)
        for (i in 0 until n) {
            var acc = (rgb[plan.index[0][i]].toInt() and 0xFF).toFloat() * plan.weights[0][i]
            acc += (rgb[plan.index[1][i]].toInt() and 0xFF).toFloat() * plan.weights[1][i]
            acc += (rgb[plan.index[2][i]].toInt() and 0xFF).toFloat() * plan.weights[2][i]
            acc += (rgb[plan.index[3][i]].toInt() and 0xFF).toFloat() * plan.weights[3][i]
            sampled[i] = acc + plan.offset[i]
        }
        val channels = spec.channels
        val values = if (channels == 3) sampled else FloatArray(plan.outH * plan.outW) {
            sampled[3 * it] + sampled[3 * it + 1] + sampled[3 * it + 2]
        }
        val finished = finish(values)
        val h = spec.height
        val w = spec.width
        val pasted = if (plan.outH == h && plan.outW == w) finished else paste(plan, finished)
        val shape = if (spec.layout == Layout.NHWC) intArrayOf(1, h, w, channels) else intArrayOf(1, channels, h, w)
        val out = if (spec.layout == Layout.NHWC) pasted else toChannelsFirst(pasted, h, w, channels)
        return Pair(Tensor(shape, dtype, out.floats, out.ints), plan.box)
    }

    private fun paste(plan: Plan, inner: Tensor): Tensor {
        val c = spec.channels
        val floats = plan.canvas.floats?.copyOf()
        val ints = plan.canvas.ints?.copyOf()
        for (y in 0 until plan.outH) {
            val dst = ((plan.top + y) * spec.width + plan.left) * c
            val src = y * plan.outW * c
            if (floats != null) System.arraycopy(inner.floats!!, src, floats, dst, plan.outW * c)
            else System.arraycopy(inner.ints!!, src, ints!!, dst, plan.outW * c)
        }
        return Tensor(plan.canvas.shape, dtype, floats, ints)
    }

    private fun toChannelsFirst(t: Tensor, h: Int, w: Int, c: Int): Tensor {
        val n = h * w * c
        fun source(i: Int): Int { val ch = i / (h * w); val pixel = i % (h * w); return pixel * c + ch }
        return if (t.floats != null) Tensor(t.shape, dtype, floats = FloatArray(n) { t.floats[source(it)] })
        else Tensor(t.shape, dtype, ints = IntArray(n) { t.ints!![source(it)] })
    }
}

/** Pixel format conversions for what Android hands over: ARGB ints (Bitmap.getPixels) and YUV_420_888. */
object Pixels {
    private const val R_V = 91881
    private const val G_U = 22554
    private const val G_V = 46802
    private const val B_U = 116130

    /** ARGB_8888 ints -> RGB bytes. */
    fun argbToRgb(argb: IntArray): ByteArray {
        val out = ByteArray(argb.size * 3)
        for (i in argb.indices) {
            out[3 * i] = (argb[i] shr 16).toByte(); out[3 * i + 1] = (argb[i] shr 8).toByte(); out[3 * i + 2] = argb[i].toByte()
        }
        return out
    }

    /**
     * YUV 4:2:0 planes with their row and pixel strides (as ImageProxy planes give
     * them) -> RGB bytes; BT.601 full range in 16.16 fixed point, identical to
     * device_runtime.preprocess.yuv420_to_rgb.
     */
    fun yuv420ToRgb(
        width: Int, height: Int, y: ByteArray, yRowStride: Int, u: ByteArray, v: ByteArray,
        uvRowStride: Int, uvPixelStride: Int,
    ): ByteArray {
        val out = ByteArray(width * height * 3)
        for (row in 0 until height) for (col in 0 until width) {
            val luma = y[row * yRowStride + col].toInt() and 0xFF
            val chroma = (row / 2) * uvRowStride + (col / 2) * uvPixelStride
            val cb = (u[chroma].toInt() and 0xFF) - 128
            val cr = (v[chroma].toInt() and 0xFF) - 128
            val i = (row * width + col) * 3
            out[i] = clamp(luma + ((R_V * cr + 32768) shr 16))
            out[i + 1] = clamp(luma + ((-G_U * cb - G_V * cr + 32768) shr 16))
            out[i + 2] = clamp(luma + ((B_U * cb + 32768) shr 16))
        }
        return out
    }

    /** RGB bytes rotated clockwise by 0/90/180/270 degrees (CameraX's rotationDegrees): (bytes, width, height). */
    fun rotate(rgb: ByteArray, width: Int, height: Int, degrees: Int): Triple<ByteArray, Int, Int> {
        require(degrees in listOf(0, 90, 180, 270)) { "rotation must be 0, 90, 180 or 270 degrees; got $degrees" }
        if (degrees == 0) return Triple(rgb, width, height)
        val (outW, outH) = if (degrees == 180) width to height else height to width
        val out = ByteArray(rgb.size)
        for (y in 0 until height) for (x in 0 until width) {
            val (nx, ny) = when (degrees) {
                90 -> (height - 1 - y) to x
                180 -> (width - 1 - x) to (height - 1 - y)
                else -> y to (width - 1 - x)
            }
            System.arraycopy(rgb, (y * width + x) * 3, out, (ny * outW + nx) * 3, 3)
        }
        return Triple(out, outW, outH)
    }

    private fun clamp(value: Int): Byte = value.coerceIn(0, 255).toByte()
}
