package dev.edgesdk.core

import java.nio.ByteBuffer
import java.nio.ByteOrder

/** Element types the app exchanges with the interpreter. */
enum class DType(val bytes: Int, val min: Int, val max: Int) {
    FLOAT32(4, 0, 0), INT8(1, -128, 127), UINT8(1, 0, 255), INT16(2, -32768, 32767), INT32(4, Int.MIN_VALUE, Int.MAX_VALUE);

    companion object {
        fun parse(name: String): DType = entries.firstOrNull { it.name.equals(name, ignoreCase = true) }
            ?: throw ModelCardException("dtype must be one of ${entries.joinToString { it.name.lowercase() }}; got '$name'")
    }
}

/** Scale and zero point of a quantized tensor: real = (q - zeroPoint) * scale. A scale of 0 means float. */
data class Quantization(val scale: Double = 0.0, val zeroPoint: Int = 0) {
    val isQuantized: Boolean get() = scale != 0.0

    /** float -> stored integer, q = round(x / scale) + zeroPoint (ties to even), clipped to the type. */
    fun quantize(x: Float, type: DType): Int {
        val q = Math.rint((x / scale.toFloat()).toDouble()) + zeroPoint  // float32 division, as numpy does
        return q.coerceIn(type.min.toDouble(), type.max.toDouble()).toInt()
    }

    /** Stored integer -> float, in float32 as the Python runtime computes it. */
    fun dequantize(q: Int): Float = (q.toFloat() - zeroPoint) * scale.toFloat()
}

/**
 * A tensor as the app hands it to, or reads it from, the interpreter: float32
 * values in [floats], integer types in [ints] (the stored values).
 */
class Tensor(val shape: IntArray, val dtype: DType, val floats: FloatArray? = null, val ints: IntArray? = null) {
    val size: Int get() = shape.fold(1) { a, b -> a * b }

    init {
        val count = floats?.size ?: ints?.size ?: -1
        require((floats == null) != (ints == null)) { "a tensor holds either floats or ints" }
        require((dtype == DType.FLOAT32) == (floats != null)) { "float32 tensors hold floats, integer tensors ints" }
        require(count == size) { "shape ${shape.contentToString()} needs $size values; got $count" }
    }

    /** Values as float, dequantized with [quantization] for integer tensors. */
    fun toFloats(quantization: Quantization): FloatArray = floats ?: if (quantization.isQuantized) {
        FloatArray(size) { quantization.dequantize(ints!![it]) }
    } else {
        FloatArray(size) { ints!![it].toFloat() }
    }

    /** A direct buffer in native order, as the TFLite Java API wants inputs. */
    fun toByteBuffer(): ByteBuffer {
        val buffer = ByteBuffer.allocateDirect(size * dtype.bytes).order(ByteOrder.nativeOrder())
        when (dtype) {
            DType.FLOAT32 -> floats!!.forEach { buffer.putFloat(it) }
            DType.INT8, DType.UINT8 -> ints!!.forEach { buffer.put(it.toByte()) }
            DType.INT16 -> ints!!.forEach { buffer.putShort(it.toShort()) }
            DType.INT32 -> ints!!.forEach { buffer.putInt(it) }
        }
        buffer.rewind()
        return buffer
    }

    companion object {
        /** Reads an output buffer the interpreter filled (position 0, native order). */
        fun fromByteBuffer(shape: IntArray, dtype: DType, buffer: ByteBuffer): Tensor {
            val source = buffer.duplicate().order(ByteOrder.nativeOrder())
            source.rewind()
            val n = shape.fold(1) { a, b -> a * b }
            return when (dtype) {
                DType.FLOAT32 -> Tensor(shape, dtype, floats = FloatArray(n) { source.getFloat() })
                DType.INT8 -> Tensor(shape, dtype, ints = IntArray(n) { source.get().toInt() })
                DType.UINT8 -> Tensor(shape, dtype, ints = IntArray(n) { source.get().toInt() and 0xFF })
                DType.INT16 -> Tensor(shape, dtype, ints = IntArray(n) { source.getShort().toInt() })
                DType.INT32 -> Tensor(shape, dtype, ints = IntArray(n) { source.getInt() })
            }
        }
    }
}
