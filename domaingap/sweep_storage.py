"""Where a sweep's study lives: an Optuna storage URL, checked before anything waits on it.

One machine: the default SQLite file in ``RUN_DIR/sweep/``, nothing to install or keep
running. A team: one database server every machine reaches, e.g.
``postgresql://USER:PASSWORD@HOST:5432/DB`` (driver: ``pip install 'domaingap[postgres]'``,
psycopg 3) or ``mysql://...``; each machine runs ``adapt-run RECIPE --sweep SWEEP.yaml
--storage URL`` and becomes one more worker of the same study (docs/scaleout.md).

Before the study is opened the URL is checked, each failure one line naming the culprit:
a scheme Optuna cannot store into; a database driver that is not installed (naming the
package to install); a server that does not answer within :data:`CONNECT_TIMEOUT_S`
seconds (down, a wrong host or port, a firewall that drops packets) — never a hang. A
bare ``postgresql://`` or ``mysql://`` uses whichever of its drivers is installed.
Passwords never reach a message.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from adapt.errors import UserError, exception_line

__all__ = ["CONNECT_TIMEOUT_S", "default_storage_url", "open_storage", "resolve_storage_url", "retry_callback",
           "shown"]

#: seconds a database server has to accept a connection before the sweep gives up
CONNECT_TIMEOUT_S = 10
#: the databases Optuna's RDBStorage stores studies in: scheme -> drivers to try for a bare
#: scheme, in order (SQLAlchemy's default first)
_DRIVERS: dict[str, tuple[str, ...]] = {"sqlite": ("pysqlite",), "postgresql": ("psycopg2", "psycopg"),
                                        "mysql": ("mysqldb", "pymysql")}
#: the module a driver imports -> how to install it
_INSTALL = {"psycopg": "pip install 'domaingap[postgres]' (psycopg)",
            "psycopg2": "pip install 'domaingap[postgres]' and use postgresql+psycopg://, or pip install psycopg2-binary",
            "MySQLdb": "pip install mysqlclient (or pymysql and use mysql+pymysql://)",
            "pymysql": "pip install pymysql"}
_MODULE = {"psycopg2": "psycopg2", "psycopg": "psycopg", "mysqldb": "MySQLdb", "pymysql": "pymysql",
           "pysqlite": "sqlite3"}


def default_storage_url(sweep_dir: Path) -> str:
    """The one-machine default: a SQLite file next to the sweep's outputs."""
    return f"sqlite:///{(Path(sweep_dir) / 'optuna.db').resolve()}"


def shown(url: Any) -> str:
    """The URL as messages show it: the password masked."""
    try:
        return _parse(str(url)).render_as_string(hide_password=True)
    except UserError:
        return str(url).split("@")[-1] if "@" in str(url) else str(url)


def _parse(url: str):
    # late: SQLAlchemy comes with optuna, an optional extra (.[sweep])
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except (ArgumentError, ValueError):
        raise UserError(f"--storage {url.split('@')[-1]!r}: not a database URL (expected e.g. sqlite:///FILE "
                        "or postgresql://USER@HOST:PORT/DB)") from None


def _installed(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def resolve_storage_url(url: str):
    """The SQLAlchemy URL with its driver chosen and installed, or a one-line UserError."""
    parsed = _parse(url)
    backend, _, driver = parsed.drivername.partition("+")
    if backend not in _DRIVERS:
        raise UserError(f"--storage {shown(url)}: '{parsed.drivername}' is not a database Optuna can store a "
                        f"study in (use {', '.join(s + '://' for s in _DRIVERS)})")
    if not driver:  # a bare scheme: the first driver that is installed
        driver = next((d for d in _DRIVERS[backend] if _installed(_MODULE[d])), _DRIVERS[backend][-1])
        parsed = parsed.set(drivername=f"{backend}+{driver}")
    try:
        parsed.get_dialect().import_dbapi()
    except ImportError as exc:
        module = (getattr(exc, "name", None) or _MODULE.get(driver, driver)).split(".")[0]
        hint = _INSTALL.get(module, f"pip install {module}")
        raise UserError(f"--storage {shown(url)}: the {backend} driver '{module}' is not installed: {hint}") from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy has no such dialect/driver
        raise UserError(f"--storage {shown(url)}: unknown database driver '{parsed.drivername}' "
                        f"({exception_line(exc)})") from None
    return parsed


def retry_callback():
    """Optuna's "queue a stale trial again" callback (renamed in Optuna 4.9)."""
    from optuna import storages  # late: an optional extra (.[sweep])

    return getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback


def close_storage(storage) -> None:
    """Close the connections an :func:`open_storage` storage holds (its session and its
    engine's pool): a worker that ends, or a sweep run from Python, leaves none open for the
    garbage collector to find ("connection deleted while still open")."""
    remove = getattr(storage, "remove_session", None)
    if callable(remove):
        remove()
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()


def open_storage(url: str, *, heartbeat_s: float, grace_s: float):
    """Optuna's RDBStorage on ``url`` with heartbeats (a killed worker's trial is failed after
    ``grace_s`` seconds without one, then queued again), or a one-line UserError."""
    from optuna.storages import RDBStorage  # late: an optional extra (.[sweep])

    parsed = resolve_storage_url(url)
    backend = parsed.drivername.partition("+")[0]
    # sqlite: several local workers share the file, wait for its lock instead of failing;
    # a server: give up on one that does not answer instead of waiting for the OS (minutes)
    connect = {"timeout": 60} if backend == "sqlite" else {"connect_timeout": CONNECT_TIMEOUT_S}
    kwargs: dict[str, Any] = {"engine_kwargs": {"connect_args": connect}}
    callback = retry_callback()(max_retry=3)
    if "heartbeat_stale_trial_callback" in RDBStorage.__init__.__code__.co_varnames:
        kwargs["heartbeat_stale_trial_callback"] = callback
    else:  # Optuna < 4.9
        kwargs["failed_trial_callback"] = callback
    try:
        return RDBStorage(parsed.render_as_string(hide_password=False), heartbeat_interval=heartbeat_s,
                          grace_period=grace_s, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a server that is down, refuses us, or has no such database
        raise UserError(f"--storage {shown(url)}: cannot open the study's database "
                        f"({exception_line(exc)[:300]})") from None
