package dev.edgesdk.core

/**
 * A small JSON reader for model cards and test fixtures, so the core needs no
 * library beyond the Kotlin standard library (org.json exists on Android but
 * not on a plain JVM). Objects become Map<String, Any?>, arrays List<Any?>,
 * numbers Double, plus String, Boolean and null.
 */
object Json {
    fun parse(text: String): Any? {
        val reader = Reader(text)
        val value = reader.value()
        reader.skipSpace()
        if (reader.pos != text.length) reader.fail("unexpected text after the JSON value")
        return value
    }

    private class Reader(val text: String) {
        var pos = 0

        fun fail(why: String): Nothing = throw ModelCardException("invalid JSON at character $pos: $why")

        fun skipSpace() {
            while (pos < text.length && text[pos].isWhitespace()) pos++
        }

        fun value(): Any? {
            skipSpace()
            if (pos >= text.length) fail("unexpected end")
            return when (val c = text[pos]) {
                '{' -> obj()
                '[' -> array()
                '"' -> string()
                't' -> literal("true", true)
                'f' -> literal("false", false)
                'n' -> literal("null", null)
                else -> if (c == '-' || c.isDigit()) number() else fail("unexpected '$c'")
            }
        }

        fun literal(word: String, result: Any?): Any? {
            if (!text.startsWith(word, pos)) fail("expected $word")
            pos += word.length
            return result
        }

        fun obj(): Map<String, Any?> {
            val out = LinkedHashMap<String, Any?>()
            pos++
            skipSpace()
            if (text.getOrNull(pos) == '}') { pos++; return out }
            while (true) {
                skipSpace()
                if (text.getOrNull(pos) != '"') fail("expected a key")
                val key = string()
                skipSpace()
                if (text.getOrNull(pos) != ':') fail("expected ':'")
                pos++
                out[key] = value()
                skipSpace()
                when (text.getOrNull(pos)) {
                    ',' -> pos++
                    '}' -> { pos++; return out }
                    else -> fail("expected ',' or '}'")
                }
            }
        }

        fun array(): List<Any?> {
            val out = ArrayList<Any?>()
            pos++
            skipSpace()
            if (text.getOrNull(pos) == ']') { pos++; return out }
            while (true) {
                out.add(value())
                skipSpace()
                when (text.getOrNull(pos)) {
                    ',' -> pos++
                    ']' -> { pos++; return out }
                    else -> fail("expected ',' or ']'")
                }
            }
        }

        fun string(): String {
            val out = StringBuilder()
            pos++
            while (true) {
                if (pos >= text.length) fail("unterminated string")
                val c = text[pos++]
                when (c) {
                    '"' -> return out.toString()
                    '\\' -> {
                        if (pos >= text.length) fail("unterminated escape")
                        when (val e = text[pos++]) {
                            'n' -> out.append('\n'); 't' -> out.append('\t'); 'r' -> out.append('\r')
                            'b' -> out.append('\b'); 'f' -> out.append('\u000C')
                            'u' -> {
                                if (pos + 4 > text.length) fail("short \\u escape")
                                out.append(text.substring(pos, pos + 4).toInt(16).toChar())
                                pos += 4
                            }
                            else -> out.append(e)
                        }
                    }
                    else -> out.append(c)
                }
            }
        }

        fun number(): Double {
            val start = pos
            while (pos < text.length && (text[pos].isDigit() || text[pos] in "+-.eE")) pos++
            return text.substring(start, pos).toDoubleOrNull() ?: fail("bad number '${text.substring(start, pos)}'")
        }
    }
}

/** Typed access to parsed JSON with errors that name the missing or mistyped field. */
@Suppress("UNCHECKED_CAST")
fun Any?.asObject(what: String): Map<String, Any?> =
    this as? Map<String, Any?> ?: throw ModelCardException("$what must be a JSON object")

internal fun Map<String, Any?>.obj(key: String): Map<String, Any?> = this[key].asObject("'$key'")

internal fun Map<String, Any?>.str(key: String): String =
    this[key] as? String ?: throw ModelCardException("'$key' must be a string")

internal fun Map<String, Any?>.num(key: String): Double =
    this[key] as? Double ?: throw ModelCardException("'$key' must be a number")

internal fun Map<String, Any?>.list(key: String): List<Any?> =
    this[key] as? List<Any?> ?: throw ModelCardException("'$key' must be an array")

internal fun Map<String, Any?>.ints(key: String): IntArray = list(key).map { (it as Double).toInt() }.toIntArray()

internal fun Map<String, Any?>.doubles(key: String): DoubleArray = list(key).map { it as Double }.toDoubleArray()

class ModelCardException(message: String) : IllegalArgumentException(message)
