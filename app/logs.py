"""structlog setup: JSON lines by default, a readable console renderer on request."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(*, fmt: str = "json", level: str = "INFO") -> None:
    """Route structlog and the standard library (uvicorn included) through one pipeline."""
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
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
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
