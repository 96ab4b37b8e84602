"""The one exception type a user can cause.

Anything raised as :class:`UserError` is printed by the CLIs as a single line
(no traceback) and the process exits with code 2. Library code raises it for bad
input a person can fix: a wrong recipe key, a missing folder, a corrupt image,
a checkpoint from another model.

It subclasses :class:`ValueError`, so a library caller that catches ``ValueError``
(as scikit-learn and POT users do around bad arguments) catches every bad-input
error of domaingap too.
"""


class UserError(ValueError):
    """Bad input from the user. ``str(err)`` is the whole one-line message.

    Examples
    --------
    >>> from adapt.errors import UserError
    >>> issubclass(UserError, ValueError)
    True
    >>> try:
    ...     raise UserError("alpha: must lie in (0, 1), got 2")
    ... except ValueError as err:
    ...     print(err)
    alpha: must lie in (0, 1), got 2
    """

    exit_code = 2


def exception_line(exc: BaseException) -> str:
    """``"TypeName: first line of the message"`` (or just the type name): a caught
    third-party exception, short enough to end a one-line :class:`UserError`."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def one_line(err: UserError) -> str:
    """The message a CLI prints for ``err``: always one line.

    A UserError raised inside a DataLoader worker (a file that fails to decode
    mid-training) comes back re-raised by torch with the worker's traceback in its
    message ("Caught UserError in DataLoader worker process 0.\\nOriginal Traceback
    ..."); its last line holds the original message.
    """
    text = str(err).strip()
    lines = text.splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught ") and "Traceback" in lines[1]:
        return lines[-1].split(": ", 1)[-1]
    return " ".join(line.strip() for line in lines)


def os_error_line(exc: OSError) -> str:
    """A failed file-system call (full disk, read-only folder, no permission) in one line,
    naming the file: ``"runs/x/metrics.json: No space left on device"``."""
    name = exc.filename if exc.filename is not None else ""
    name = str(name)
    if name:
        # an atomic write's temp file (".metrics.json.abc123.tmp") stands for the file it replaces
        import re  # late: this module is imported by everything, keep it lean

        m = re.fullmatch(r"(.*/)?\.(.+)\.[^./]+\.tmp", name)
        if m:
            name = (m.group(1) or "") + m.group(2)
    reason = exc.strerror or exception_line(exc)
    return f"{name}: {reason}" if name else f"file system: {reason}"
