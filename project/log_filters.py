"""Logging filters the LOGGING setting (project/settings.py) puts on noisy loggers."""

import logging


class OneLineWarning(logging.Filter):
    """Log a record as one WARNING line, without its traceback.

    For events a client can cause at will, such as a request for a host that is not ours
    (Django logs each as an ERROR with a 30-line traceback): a flood of them must not flood
    the log or page whoever watches for errors.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = record.stack_info = None
        return True
