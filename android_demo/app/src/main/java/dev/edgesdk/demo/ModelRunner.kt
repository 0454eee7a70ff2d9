package dev.edgesdk.demo

import android.content.Context
import dev.edgesdk.core.DType
import dev.edgesdk.core.ModelCard
import dev.edgesdk.core.Tensor
import org.tensorflow.lite.DataType
import org.tensorflow.lite.Delegate
import org.tensorflow.lite.Interpreter
import org.tensorflow.lite.gpu.CompatibilityList
import org.tensorflow.lite.gpu.GpuDelegate
import org.tensorflow.lite.nnapi.NnApiDelegate
import java.io.FileInputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.MappedByteBuffer
import java.nio.channels.FileChannel

/** Where inference runs. XNNPACK is the CPU default; GPU and NNAPI fall back to it when unavailable. */
enum class Accelerator(val title: String) { CPU("CPU (XNNPACK)"), GPU("GPU"), NNAPI("NNAPI") }

/**
 * The LiteRT interpreter for the model in the app's assets. The only
 * Android-specific model code: everything else lives in the tested core.
 */
class ModelRunner(context: Context, val card: ModelCard, requested: Accelerator, threads: Int) : AutoCloseable {
    private val delegate: Delegate?
    private val interpreter: Interpreter
    val accelerator: Accelerator

    init {
        val options = Interpreter.Options().setNumThreads(threads).setUseXNNPACK(true)
        var chosen = Accelerator.CPU
        var created: Delegate? = null
        when (requested) {
            Accelerator.GPU -> if (CompatibilityList().isDelegateSupportedOnThisDevice) {
                created = GpuDelegate(CompatibilityList().bestOptionsForThisDevice); chosen = Accelerator.GPU
            }
            Accelerator.NNAPI -> if (android.os.Build.VERSION.SDK_INT >= 27) {
                created = NnApiDelegate(); chosen = Accelerator.NNAPI
            }
            Accelerator.CPU -> Unit
        }
        created?.let { options.addDelegate(it) }
        delegate = created
        accelerator = chosen
        interpreter = Interpreter(loadAsset(context, card.modelFile), options)
        check(interpreter.outputTensorCount == card.outputs.size) {
            "the model has ${interpreter.outputTensorCount} outputs but its card lists ${card.outputs.size}; re-run sdk export android"
        }
    }

    /** Runs one input tensor; returns every output in the interpreter's order, as the card lists them. */
    fun run(input: Tensor): List<Tensor> {
        val buffers = HashMap<Int, Any>()
        for (i in 0 until interpreter.outputTensorCount) {
            buffers[i] = ByteBuffer.allocateDirect(interpreter.getOutputTensor(i).numBytes()).order(ByteOrder.nativeOrder())
        }
        interpreter.runForMultipleInputsOutputs(arrayOf(input.toByteBuffer()), buffers)
        return (0 until interpreter.outputTensorCount).map { i ->
            val tensor = interpreter.getOutputTensor(i)
            Tensor.fromByteBuffer(tensor.shape(), dtype(tensor.dataType()), buffers[i] as ByteBuffer)
        }
    }

    override fun close() {
        interpreter.close()
        (delegate as? AutoCloseable)?.close()
    }

    private fun dtype(type: DataType): DType = when (type) {
        DataType.FLOAT32 -> DType.FLOAT32
        DataType.INT8 -> DType.INT8
        DataType.UINT8 -> DType.UINT8
        DataType.INT32 -> DType.INT32
        else -> throw IllegalArgumentException("output type $type is not supported by the demo")
    }

    companion object {
        fun loadAsset(context: Context, name: String): MappedByteBuffer =
            context.assets.openFd(name).use { fd ->
                FileInputStream(fd.fileDescriptor).channel.use {
                    it.map(FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength)
                }
            }
    }
}
