// The Android demo: `app` (the APK) and `core` (pure Kotlin, no android.* imports, tested on any JVM).
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "edge-sdk-android-demo"
include(":app", ":core")
