// Pure Kotlin/JVM: everything model-facing that can be tested without a phone.
// `./gradlew :core:test -Pgolden.fixtures=/path/golden.json` runs the golden tests too;
// without Gradle, ./test.sh compiles and runs the same tests with kotlinc (what CI does).
plugins {
    id("org.jetbrains.kotlin.jvm")
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    testImplementation("junit:junit:4.13.2")
}

tasks.test {
    project.findProperty("golden.fixtures")?.let { systemProperty("golden.fixtures", it.toString()) }
}
