"""Log lines as text for people or JSON for collectors (`log_format`).

A JSON line holds the time, level, logger, process id and message, and the request's fields when the
record has them: its id, tenant, route, and the routing decision (region, replica, reason)
or the outcome (status, duration). Access lines come from `app.access`, one per API request.
"""

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

__all__ = ["REQUEST_FIELDS", "JsonFormatter", "configure_logging"]

REQUEST_FIELDS = ("request_id", "tenant", "route", "model", "region", "replica", "reason", "status", "duration_ms")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,  # which worker, when there are several
            "message": record.getMessage(),
        }
        line |= {name: getattr(record, name) for name in REQUEST_FIELDS if hasattr(record, name)}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str, log_format: Literal["text", "json"]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
