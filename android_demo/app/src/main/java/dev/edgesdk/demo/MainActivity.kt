package dev.edgesdk.demo

import android.Manifest
import android.content.pm.PackageManager
import android.graphics.Bitmap
import android.graphics.ImageDecoder
import android.net.Uri
import android.os.Build
import android.os.Bundle
import android.os.SystemClock
import android.provider.MediaStore
import android.view.View
import android.widget.AdapterView
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.ImageView
import android.widget.Spinner
import android.widget.TextView
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import androidx.appcompat.app.AppCompatActivity
import androidx.camera.core.CameraSelector
import androidx.camera.core.ImageAnalysis
import androidx.camera.core.ImageProxy
import androidx.camera.core.Preview
import androidx.camera.lifecycle.ProcessCameraProvider
import androidx.camera.view.PreviewView
import androidx.core.content.ContextCompat
import dev.edgesdk.core.ModelCard
import dev.edgesdk.core.ModelPipeline
import dev.edgesdk.core.Pixels
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors

/**
 * Live camera classification or detection (whichever the model card says),
 * a gallery picker, and a status line with latency, accelerator and threads.
 */
class MainActivity : AppCompatActivity() {
    private lateinit var preview: PreviewView
    private lateinit var still: ImageView
    private lateinit var overlay: OverlayView
    private lateinit var results: TextView
    private lateinit var status: TextView
    private val worker: ExecutorService = Executors.newSingleThreadExecutor()
    private var pipeline: ModelPipeline? = null
    @Volatile private var runner: ModelRunner? = null
    private var accelerator = Accelerator.CPU
    private var threads = 2

    private val pickImage = registerForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri ->
        uri?.let { runOnGalleryImage(it) }
    }
    private val askCamera = registerForActivityResult(ActivityResultContracts.RequestPermission()) { granted ->
        if (granted) startCamera() else results.setText(R.string.no_camera_permission)
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        preview = findViewById(R.id.preview)
        still = findViewById(R.id.still)
        overlay = findViewById(R.id.overlay)
        results = findViewById(R.id.results)
        status = findViewById(R.id.status)
        val card = try {
            assets.open("model_card.json").bufferedReader().use { ModelCard.parse(it.readText()) }
        } catch (e: java.io.FileNotFoundException) {
            results.setText(R.string.no_model); return
        } catch (e: IllegalArgumentException) {
            results.text = "model_card.json: ${e.message}"; return
        }
        pipeline = ModelPipeline(card)
        setUpControls()
        findViewById<Button>(R.id.source).setOnClickListener {
            if (still.visibility == View.VISIBLE) {
                still.visibility = View.GONE; preview.visibility = View.VISIBLE; overlay.clear()
                (it as Button).setText(R.string.gallery)
            } else {
                pickImage.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly))
            }
        }
        if (ContextCompat.checkSelfPermission(this, Manifest.permission.CAMERA) == PackageManager.PERMISSION_GRANTED) {
            startCamera()
        } else {
            askCamera.launch(Manifest.permission.CAMERA)
        }
    }

    private fun setUpControls() {
        val delegates = findViewById<Spinner>(R.id.delegate)
        delegates.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, Accelerator.entries.map { it.title })
        val threadChoices = listOf(1, 2, 4)
        val threadSpinner = findViewById<Spinner>(R.id.threads)
        threadSpinner.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, threadChoices.map { "$it threads" })
        threadSpinner.setSelection(threadChoices.indexOf(threads))
        val listener = object : AdapterView.OnItemSelectedListener {
            override fun onItemSelected(parent: AdapterView<*>?, view: View?, position: Int, id: Long) {
                accelerator = Accelerator.entries[delegates.selectedItemPosition]
                threads = threadChoices[threadSpinner.selectedItemPosition]
                worker.execute { rebuildRunner() }
            }
            override fun onNothingSelected(parent: AdapterView<*>?) = Unit
        }
        delegates.onItemSelectedListener = listener
        threadSpinner.onItemSelectedListener = listener
    }

    /** Runs on the worker thread, so a frame is never analysed by an interpreter being closed. */
    private fun rebuildRunner() {
        val card = pipeline?.card ?: return
        runner?.close()
        runner = try {
            ModelRunner(this, card, accelerator, threads)
        } catch (e: Exception) {
            runOnUiThread { results.text = "cannot load ${card.modelFile}: ${e.message}" }; null
        }
    }

    private fun startCamera() {
        val providerFuture = ProcessCameraProvider.getInstance(this)
        providerFuture.addListener({
            val provider = providerFuture.get()
            val shown = Preview.Builder().build().also { it.setSurfaceProvider(preview.surfaceProvider) }
            val analysis = ImageAnalysis.Builder()
                .setBackpressureStrategy(ImageAnalysis.STRATEGY_KEEP_ONLY_LATEST)
                .setOutputImageFormat(ImageAnalysis.OUTPUT_IMAGE_FORMAT_YUV_420_888)
                .build()
            analysis.setAnalyzer(worker) { frame -> frame.use { analyse(it) } }
            provider.unbindAll()
            provider.bindToLifecycle(this, CameraSelector.DEFAULT_BACK_CAMERA, shown, analysis)
        }, ContextCompat.getMainExecutor(this))
    }

    private fun analyse(frame: ImageProxy) {
        if (still.visibility == View.VISIBLE) return
        val (y, u, v) = frame.planes
        val rgb = Pixels.yuv420ToRgb(frame.width, frame.height, bytes(y.buffer), y.rowStride, bytes(u.buffer),
            bytes(v.buffer), u.rowStride, u.pixelStride)
        val rotation = frame.imageInfo.rotationDegrees
        val (upright, width, height) = Pixels.rotate(rgb, frame.width, frame.height, rotation)
        infer(upright, width, height, fillCenter = true)
    }

    private fun runOnGalleryImage(uri: Uri) {
        val bitmap = load(uri).copy(Bitmap.Config.ARGB_8888, false)
        still.setImageBitmap(bitmap)
        still.visibility = View.VISIBLE; preview.visibility = View.INVISIBLE
        findViewById<Button>(R.id.source).setText(R.string.camera)
        val argb = IntArray(bitmap.width * bitmap.height)
        bitmap.getPixels(argb, 0, bitmap.width, 0, 0, bitmap.width, bitmap.height)
        worker.execute { infer(Pixels.argbToRgb(argb), bitmap.width, bitmap.height, fillCenter = false) }
    }

    private fun infer(rgb: ByteArray, width: Int, height: Int, fillCenter: Boolean) {
        val pipe = pipeline ?: return
        val run = runner ?: return
        val started = SystemClock.elapsedRealtimeNanos()
        val (input, box) = pipe.prepare(rgb, width, height)
        val invokeStart = SystemClock.elapsedRealtimeNanos()
        val outputs = run.run(input)
        val invokeMs = (SystemClock.elapsedRealtimeNanos() - invokeStart) / 1e6
        val text: String
        if (pipe.card.task == "image_classifier") {
            text = pipe.classify(outputs, 3).joinToString("\n") { "${it.label}  ${"%.3f".format(it.score)}" }
            overlay.clear()
        } else {
            val found = pipe.detect(outputs, box)
            text = "${found.size} objects"
            overlay.show(found, width, height, fillCenter)
        }
        val totalMs = (SystemClock.elapsedRealtimeNanos() - started) / 1e6
        runOnUiThread {
            results.text = text
            status.text = "invoke %.1f ms, total %.1f ms | %s | %d threads".format(invokeMs, totalMs, run.accelerator.title, threads)
        }
    }

    private fun load(uri: Uri): Bitmap = if (Build.VERSION.SDK_INT >= 28) {
        ImageDecoder.decodeBitmap(ImageDecoder.createSource(contentResolver, uri)) { decoder, _, _ ->
            decoder.allocator = ImageDecoder.ALLOCATOR_SOFTWARE
        }
    } else {
        @Suppress("DEPRECATION") MediaStore.Images.Media.getBitmap(contentResolver, uri)
    }

    private fun bytes(buffer: java.nio.ByteBuffer): ByteArray {
        buffer.rewind()
        return ByteArray(buffer.remaining()).also { buffer.get(it) }
    }

    override fun onDestroy() {
        super.onDestroy()
        worker.execute { runner?.close(); runner = null }
        worker.shutdown()
    }
}
