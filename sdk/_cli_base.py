"""What every ``sdk`` command shares: one-line errors and exit codes, quiet native logs, progress.

Only the CLI turns exceptions into exit codes, here: 0 success, 1 conversion failure, 2 bad input (file,
flag, recipe, data), 130 interrupted. Errors print one line on stderr, never a traceback (``--debug``
shows it).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings
from typing import Callable, Iterator

import click

from converters.errors import ConversionError, UserInputError
from device_runtime.errors import ArgumentError, DeviceRuntimeError, InputError, ModelFormatError

EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130


def run(action: Callable[[], None], debug: bool) -> None:
    """Run ``action`` and map every failure to a one-line message and an exit code."""
    quiet, verbose, log_file = click.get_current_context().meta.get(OUTPUT_KEY, (False, False, None))
    try:
        with _native_logs(None if verbose else (log_file or os.devnull)):
            action()
    except (UserInputError, ModelFormatError, InputError, ArgumentError, click.BadParameter) as exc:
        fail(exc, EXIT_BAD_INPUT, debug)
    except (ConversionError, DeviceRuntimeError) as exc:
        fail(exc, EXIT_FAILURE, debug)
    except KeyboardInterrupt:
        click.echo("interrupted; no output was written", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # the last line of defence: still one line, never a wall
        fail(exc, EXIT_FAILURE, debug, prefix=f"internal error ({type(exc).__name__}): ",
              suffix=" (rerun with --debug for the traceback and please report it)")


OUTPUT_KEY = "sdk.output"


@contextlib.contextmanager
def _native_logs(path: str | None) -> Iterator[None]:
    """Send what TensorFlow, absl, XNNPACK and CUDA write to file descriptor 2 (and Python warnings) to ``path``.

    TensorFlow's C++ logging starts before absl is initialised, so no environment variable silences it; the
    descriptor itself is redirected, and this process's own messages go to the original stderr.  Only a real
    process is redirected: under a test runner, sys.stderr is not descriptor 2 and nothing changes.
    """
    try:
        real = path is not None and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        real = False
    if not real:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as exc:
        os.close(saved)
        raise UserInputError(f"cannot write log file {path}: {exc.strerror or exc}") from None
    os.dup2(target, 2)
    os.close(target)
    original = sys.stderr
    sys.stderr = open(saved, "w", buffering=1, encoding=original.encoding or "utf-8", errors="replace",
                      closefd=False)
    log = open(2, "w", buffering=1, closefd=False)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: log.write(
                warnings.formatwarning(message, category, filename, lineno, line))
            yield
    finally:
        log.close()
        sys.stderr.flush()
        sys.stderr.close()
        sys.stderr = original
        os.dup2(saved, 2)
        os.close(saved)


def with_output_options(command: click.Command) -> None:
    """Give ``command`` (and a group's commands) --quiet, --verbose and --log-file, read by ``run``."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            with_output_options(sub)
        return
    command.params += [
        click.Option(["-q", "--quiet"], is_flag=True, help="Print only the result (and errors): no progress."),
        click.Option(["-v", "--verbose"], is_flag=True,
                     help="Also show TensorFlow's, onnx2tf's and the interpreter's own logs on stderr."),
        click.Option(["--log-file"], type=click.Path(dir_okay=False),
                     help="Append those logs (and Python warnings) to this file instead of dropping them.")]
    callback = command.callback

    @functools.wraps(callback)
    def with_output(*args, quiet, verbose, log_file, **kwargs):
        if quiet and verbose:
            raise click.UsageError("--quiet and --verbose contradict each other; give one of them")
        click.get_current_context().meta[OUTPUT_KEY] = (quiet, verbose, log_file)
        return callback(*args, **kwargs)

    command.callback = with_output


def chatty(as_json: bool = False) -> bool:
    """Whether progress is shown: not with --quiet, and not under --json (stdout is for the JSON)."""
    quiet = click.get_current_context().meta.get(OUTPUT_KEY, (False, False, None))[0]
    return not (quiet or as_json)


def fail(exc: BaseException, code: int, debug: bool, prefix: str = "", suffix: str = "") -> None:
    if debug:
        import traceback

        traceback.print_exception(exc)
    from converters.errors import first_line

    message = first_line(exc, limit=2000)
    click.echo(f"error: {prefix}{message}{suffix}", err=True)
    sys.exit(code)


def stderr_progress(stage: str, done: int, total: int) -> None:
    """A one-line progress bar on stderr for calibration; drawn only on a terminal."""
    if not sys.stderr.isatty() or (done % max(total // 50, 1) and done != total):
        return
    width = 30
    filled = int(width * done / max(total, 1))
    click.echo(f"\r{stage:<10} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}",
               err=True, nl=done >= total)
