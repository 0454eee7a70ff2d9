package dev.edgesdk.core

/** One input or output tensor as the model card describes it; [role] names what an output holds. */
data class TensorCard(
    val name: String, val shape: IntArray, val dtype: DType, val quantization: Quantization, val role: String,
)

data class DetectionCard(
    val format: String, // "ssd" | "yolo"
    val boxIndex: IntArray, val hasObjectness: Boolean, val normalized: Boolean?,
    val scoreThreshold: Double, val iouThreshold: Double, val maxDetections: Int,
)

/**
 * What `sdk export android` writes beside the model (model_card.json): all the
 * app needs to feed the model and read its answers, so that swapping in another
 * classifier or detector needs no code change.
 */
data class ModelCard(
    val task: String, // "image_classifier" | "object_detector"
    val name: String, val version: String, val modelFile: String, val labelsFile: String?,
    val labels: List<String>, val image: ImageSpec, val input: TensorCard, val outputs: List<TensorCard>,
    val detection: DetectionCard?, val sha256: String,
) {
    companion object {
        const val FORMAT = "edge-sdk-model-card"
        const val FORMAT_VERSION = 1
        val TASKS = listOf("image_classifier", "object_detector")

        fun parse(text: String): ModelCard {
            val root = Json.parse(text).asObject("a model card")
            if (root["format"] != FORMAT) throw ModelCardException("not a model card: 'format' must be '$FORMAT'")
            val version = root.num("format_version").toInt()
            if (version != FORMAT_VERSION) {
                throw ModelCardException("model card format_version $version is not supported; this app reads $FORMAT_VERSION")
            }
            val task = root.str("task")
            if (task !in TASKS) throw ModelCardException("task must be one of ${TASKS.joinToString()}; got '$task'")
            val input = root.obj("input")
            val image = ImageSpec(
                height = input.num("height").toInt(), width = input.num("width").toInt(),
                channels = input.num("channels").toInt(), layout = Layout.valueOf(input.str("layout")),
                mean = input.doubles("mean").toList(), std = input.doubles("std").toList(),
                resize = Resize.valueOf(input.str("resize").uppercase()),
            )
            val detection = root["detection"]?.asObject("'detection'")?.let {
                DetectionCard(
                    format = it.str("format"), boxIndex = it.ints("box_index"),
                    hasObjectness = it["has_objectness"] as? Boolean ?: false,
                    normalized = it["normalized"] as? Boolean,
                    scoreThreshold = it.num("score_threshold"), iouThreshold = it.num("iou_threshold"),
                    maxDetections = it.num("max_detections").toInt(),
                )
            }
            if (task == "object_detector" && detection == null) throw ModelCardException("a detector's card needs 'detection'")
            return ModelCard(
                task = task, name = root["name"] as? String ?: "", version = root["version"] as? String ?: "",
                modelFile = root.str("model_file"), labelsFile = root["labels_file"] as? String,
                labels = root.list("labels").map { it as String }, image = image, input = tensor(input),
                outputs = root.list("outputs").map { tensor(it.asObject("an output")) }, detection = detection,
                sha256 = root["sha256"] as? String ?: "",
            )
        }

        private fun tensor(json: Map<String, Any?>): TensorCard {
            val q = json["quantization"]?.asObject("'quantization'")
            return TensorCard(
                name = json.str("name"), shape = json.ints("shape"), dtype = DType.parse(json.str("dtype")),
                quantization = if (q == null) Quantization() else Quantization(q.num("scale"), q.num("zero_point").toInt()),
                role = json["role"] as? String ?: "",
            )
        }
    }
}

/** Everything between a camera frame and an answer, configured by a model card. */
class ModelPipeline(val card: ModelCard) {
    val preprocessor = ImagePreprocessor(card.image, card.input.quantization.scale, card.input.quantization.zeroPoint, card.input.dtype)

    /** RGB bytes -> the input tensor and the mapping back to the frame. */
    fun prepare(rgb: ByteArray, width: Int, height: Int): Pair<Tensor, Letterbox> = preprocessor.process(rgb, width, height)

    /** Top-k of the (single) scores output, dequantized. */
    fun classify(outputs: List<Tensor>, k: Int = 3): List<Classification> {
        val index = card.outputs.indexOfFirst { it.role == "scores" }.coerceAtLeast(0)
        return Postprocess.topK(outputs[index].toFloats(card.outputs[index].quantization), k, card.labels)
    }

    /** Detections in frame pixels, from SSD-style or YOLO-style outputs as the card says. */
    fun detect(outputs: List<Tensor>, letterbox: Letterbox, scoreThreshold: Double? = null): List<Detection> {
        val d = card.detection ?: throw IllegalStateException("the model card describes a ${card.task}, not a detector")
        val threshold = scoreThreshold ?: d.scoreThreshold
        if (d.format == "yolo") {
            return Postprocess.decodeYolo(outputs[0], letterbox, card.image.height, card.image.width, threshold,
                d.iouThreshold, d.maxDetections, d.hasObjectness, d.normalized, card.labels, card.outputs[0].quantization)
        }
        fun byRole(role: String): FloatArray {
            val i = card.outputs.indexOfFirst { it.role == role }
            if (i < 0) throw ModelCardException("an SSD card needs an output with role '$role'")
            return outputs[i].toFloats(card.outputs[i].quantization)
        }
        val count = byRole("number of detections")[0].toInt()
        return Postprocess.decodeSsd(byRole("location"), byRole("category"), byRole("score"), count, letterbox,
            card.image.height, card.image.width, threshold, card.labels, d.boxIndex)
    }
}
