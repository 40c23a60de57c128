"""structlog setup: JSON lines by default, a readable console renderer on request."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO, cast

import structlog


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written (loggers are cached on first use)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _NamedWriteLogger(structlog.WriteLogger):
    """structlog's file logger with the name ``add_logger_name`` reads."""

    def __init__(self, file: _Stderr, name: str) -> None:
        super().__init__(cast(TextIO, file))  # write and flush are all it uses
        self.name = name


def configure_logging(*, fmt: str = "json", level: str = "INFO") -> None:
    """One format for every line: the service's own lines are rendered and written by
    structlog directly (about half the CPU per line of a trip through the ``logging``
    module, and the request log is one line per request); the standard library's (uvicorn,
    libraries) go through ``logging`` and the same processors."""
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    stream = _Stderr()

    def named_logger(*args: Any) -> _NamedWriteLogger:
        return _NamedWriteLogger(stream, str(args[0]) if args else "")

    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        logger_factory=named_logger,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # The middleware's ``http_request`` line replaces uvicorn's access log, which writes the
    # query string (tokens included); with no handler at all uvicorn skips formatting it.
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
    _skip_unused_record_fields()
    # httpx logs every outbound request at INFO; the worker logs deliveries itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _skip_unused_record_fields() -> None:
    # No renderer shows the caller's file, the thread or the process, and looking them up costs
    # ~20 % of every line (one per request); the logging HOWTO's "Optimization" lists these.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
