package dev.edgesdk.demo

import android.content.Context
import android.graphics.Canvas
import android.graphics.Color
import android.graphics.Paint
import android.util.AttributeSet
import android.view.View
import dev.edgesdk.core.Detection
import dev.edgesdk.core.Postprocess

/** Draws detection boxes over the preview; the box mapping itself is the core's (tested) Postprocess.toView. */
class OverlayView(context: Context, attrs: AttributeSet?) : View(context, attrs) {
    private var detections: List<Detection> = emptyList()
    private var imageWidth = 1
    private var imageHeight = 1
    private var fill = true
    private val boxPaint = Paint().apply { style = Paint.Style.STROKE; strokeWidth = 6f; color = Color.GREEN }
    private val textPaint = Paint().apply { color = Color.GREEN; textSize = 40f }

    fun show(found: List<Detection>, width: Int, height: Int, fillCenter: Boolean) {
        detections = found; imageWidth = width; imageHeight = height; fill = fillCenter
        postInvalidate()
    }

    fun clear() = show(emptyList(), 1, 1, true)

    override fun onDraw(canvas: Canvas) {
        super.onDraw(canvas)
        for (d in detections) {
            val b = Postprocess.toView(d.box, imageWidth, imageHeight, width, height, fill)
            canvas.drawRect(b[0].toFloat(), b[1].toFloat(), b[2].toFloat(), b[3].toFloat(), boxPaint)
            canvas.drawText("${d.label} ${"%.2f".format(d.score)}", b[0].toFloat(), b[1].toFloat() - 8f, textPaint)
        }
    }
}
