#!/usr/bin/env bash
# Compile the pure-Kotlin core (android_demo/core) and run its JUnit tests on the JVM, without Gradle
# or Google's Maven repository: kotlinc comes from the npm registry, the JDK and JUnit 4 from Debian.
#   android_demo/core/test.sh [GOLDEN_FIXTURES.json]
# Exit 0: tests passed; 1: a test failed; 77: no JDK could be installed (the caller reports a skip).
set -euo pipefail
cd "$(dirname "$0")"
ROOT="$(cd ../.. && pwd)"
KOTLIN_VERSION=2.4.20
TOOLS="$ROOT/build/kotlin-$KOTLIN_VERSION"
OUT="$ROOT/build/android-core"
FIXTURES="${1:-}"

apt_install() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } >"$OUT.apt.log" 2>&1 || true
    fi
}

mkdir -p "$OUT"
if ! command -v javac >/dev/null || ! command -v java >/dev/null; then
    apt_install openjdk-17-jdk-headless
fi
if ! command -v javac >/dev/null; then
    echo "SKIP: no JDK (javac) and none could be installed; install OpenJDK 17 to run the Kotlin core tests" >&2
    exit 77
fi
JUNIT=/usr/share/java/junit4.jar
HAMCREST=/usr/share/java/hamcrest-core.jar
if [ ! -f "$JUNIT" ] || [ ! -f "$HAMCREST" ]; then
    apt_install junit4
fi
if [ ! -f "$JUNIT" ] || [ ! -f "$HAMCREST" ]; then
    echo "junit4 is not installed and could not be (apt-get install junit4)" >&2
    exit 1
fi
KOTLINC="$TOOLS/node_modules/kotlin-compiler/bin/kotlinc"
if [ ! -x "$KOTLINC" ]; then
    npm install --silent --no-audit --no-fund --prefix "$TOOLS" "kotlin-compiler@$KOTLIN_VERSION" >/dev/null
fi
STDLIB="$TOOLS/node_modules/kotlin-compiler/lib/kotlin-stdlib.jar"

rm -rf "$OUT/classes"
"$KOTLINC" -nowarn -jvm-target 17 -cp "$JUNIT:$HAMCREST" -d "$OUT/classes" src/main/kotlin src/test/kotlin
exec java -Dgolden.fixtures="$FIXTURES" -cp "$OUT/classes:$STDLIB:$JUNIT:$HAMCREST" org.junit.runner.JUnitCore \
    dev.edgesdk.core.CoreTest dev.edgesdk.core.GoldenTest
