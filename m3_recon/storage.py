"""The warehouse resource: one DuckDB file (embedded) or a DuckLake (PostgreSQL catalog + Parquet files).

``M3_RECON_WAREHOUSE`` picks the backend; the assets never know which. Both resources are
``DuckDBResource``s and hand out a DuckDB connection from ``get_connection()`` whose default catalog
holds the warehouse tables:

* ``duckdb`` (default): the file at ``M3_RECON_DUCKDB_PATH``. One writing process at a time, and a
  reader holding the file open blocks every writer; fine on a laptop, with the ``duckdb_writer`` pool
  at 1. A lock that is still held after a few seconds fails the step at once, naming the process that
  holds it (``WarehouseLockedError``), instead of DuckDBResource's ~100 s of retries: a lock held by an
  analyst's session does not go away by itself.
* ``ducklake``: an in-memory DuckDB with a DuckLake attached and made the default catalog
  (``USE lake``). The catalog lives in PostgreSQL (``M3_RECON_DUCKLAKE_CATALOG``), the data as Parquet
  files under ``M3_RECON_DUCKLAKE_DATA_PATH``. Any number of processes, on any number of machines,
  read and write at once; a transaction commits whole or not at all, and one that conflicts with a
  concurrent commit to the same table fails cleanly (retry the step).

DuckDB cannot download extensions on machines without internet, so the DuckLake and postgres_scanner
extensions are loaded from the PyPI wheels that bundle them (``duckdb-extension-ducklake``,
``duckdb-extension-postgres-scanner``, built for exactly the pinned duckdb version).
"""

from __future__ import annotations

import os
import re
import threading
import time
from contextlib import contextmanager
from importlib import import_module, resources
from typing import Iterator

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field

from m3_recon import settings
from m3_recon.settings import SettingsError
from m3_recon.sql import literal

WAREHOUSE_VARIABLE = "M3_RECON_WAREHOUSE"
CATALOG_VARIABLE = "M3_RECON_DUCKLAKE_CATALOG"
DATA_PATH_VARIABLE = "M3_RECON_DUCKLAKE_DATA_PATH"
METADATA_SCHEMA_VARIABLE = "M3_RECON_DUCKLAKE_SCHEMA"
BACKENDS = ("duckdb", "ducklake")
DEFAULT_DUCKLAKE_DATA_PATH = str(settings.PROJECT_ROOT / "data" / "lake")
LAKE_NAME = "lake"
# (extension, the wheel's package) in load order: DuckLake reaches its PostgreSQL catalog through postgres_scanner.
BUNDLED_EXTENSIONS = (("postgres_scanner", "duckdb_extension_postgres_scanner"),
                      ("ducklake", "duckdb_extension_ducklake"))
OFFLINE = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
ATTACH_ATTEMPTS = 5
# Another writer of ours finishing a commit lets go of the file well within this; anything holding it longer
# is a session that will not let go by itself.
LOCK_WAIT_SECONDS = 5.0


class WarehouseUnavailableError(RuntimeError):
    """The warehouse cannot be opened; the message names the variable to fix and never holds a secret."""


def bundled_extension_path(extension: str, package: str) -> str:
    """The extension file shipped in its PyPI wheel, which must be built for the installed duckdb."""
    try:
        root = resources.files(import_module(package))
    except ImportError:
        raise WarehouseUnavailableError(
            f"the DuckDB extension {extension} is not installed; reinstall m3-recon (pip install -e .) so "
            f"{package.replace('_', '-')}=={duckdb.__version__} comes with it") from None
    path = root / "extensions" / f"v{duckdb.__version__}" / f"{extension}.duckdb_extension"
    if not path.is_file():
        raise WarehouseUnavailableError(
            f"{package.replace('_', '-')} does not bundle {extension} for duckdb {duckdb.__version__}; install "
            f"the version equal to duckdb's ({duckdb.__version__})")
    return str(path)


def libpq_url(url: str) -> str:
    """A PostgreSQL URL as libpq reads it: a SQLAlchemy ``postgresql+psycopg2://`` URL (as the Dagster instance
    takes) works too, so one database URL can serve both."""
    driver_url = "postgresql+psycopg2://"
    return "postgresql://" + url[len(driver_url):] if url.startswith(driver_url) else url


class WarehouseLockedError(WarehouseUnavailableError):
    """Another process holds the DuckDB warehouse file; the message names it and where analysts should read."""


def lock_holder(error_text: str) -> str:
    """The process DuckDB's lock error names ("Conflicting lock is held in <program> (PID n)")."""
    found = re.search(r"lock is held in (.+?) \(PID (\d+)\)", error_text)
    return f"pid {found.group(2)} ({found.group(1)})" if found else "unknown (DuckDB did not say)"


def locked_message(path: str, error_text: str) -> str:
    return (f"the warehouse file {path} is held open by another process, {lock_holder(error_text)}. Close that "
            f"session; analysts should query the read-only copy {settings.analyst_duckdb_path()} "
            "(M3_RECON_ANALYST_DUCKDB_PATH), which each close replaces, never the working file (or set "
            f"{WAREHOUSE_VARIABLE}=ducklake for concurrent readers)")


def connect_file(path: str, config: dict | None = None, read_only: bool = False,
                 wait_seconds: float = LOCK_WAIT_SECONDS) -> duckdb.DuckDBPyConnection:
    """Open the DuckDB file, waiting at most ``wait_seconds`` for a lock held by another process."""
    deadline, delay = time.monotonic() + wait_seconds, 0.05
    while True:
        try:
            return duckdb.connect(path, read_only=read_only, config=config or {})
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            if time.monotonic() >= deadline:
                raise WarehouseLockedError(locked_message(path, str(exc))) from None
            time.sleep(min(delay, max(deadline - time.monotonic(), 0.01)))
            delay = min(delay * 2, 1.0)


class WarehouseFileResource(DuckDBResource):
    """The warehouse as one DuckDB file; a lock held by another process fails within seconds, naming it."""

    @classmethod
    def _is_dagster_maintained(cls) -> bool:
        return False

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        conn = connect_file(self.database, {"custom_user_agent": "m3-recon", **self.connection_config})
        try:
            yield conn
        finally:
            conn.close()


class DuckLakeResource(DuckDBResource):
    """A DuckDB engine in memory with the warehouse DuckLake attached as its default catalog."""

    database: str = Field(default=":memory:", description="The local DuckDB engine the lake is attached to.")
    catalog: str = Field(description=f"{CATALOG_VARIABLE}: the PostgreSQL database holding the DuckLake catalog, "
                                     "as a libpq string or postgresql:// URL; may hold a password, never logged.")
    data_path: str = Field(description=f"{DATA_PATH_VARIABLE}: where the Parquet data files live, reachable "
                                       "at the same path by every process that reads or writes.")
    metadata_schema: str = Field(default="", description=f"{METADATA_SCHEMA_VARIABLE}: PostgreSQL schema of the "
                                                         "catalog tables; empty = DuckLake's default.")

    @classmethod
    def _is_dagster_maintained(cls) -> bool:
        return False

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection whose default catalog is the lake; the attached engine is shared within the process."""
        conn = self._engine().cursor()
        try:
            conn.execute(f"USE {LAKE_NAME}")
            yield conn
        finally:
            conn.close()

    def _engine(self) -> duckdb.DuckDBPyConnection:
        """Loading the extensions and attaching the catalog costs ~0.2 s, so each process does it once per lake.
        Outside a run (a script, the doctor) the catalog's EnvVar is read here."""
        catalog = self.catalog.get_value() if isinstance(self.catalog, dg.EnvVar) else self.catalog
        if not catalog:
            raise WarehouseUnavailableError(f"{CATALOG_VARIABLE} is not set: name the PostgreSQL database of the "
                                            "DuckLake catalog")
        catalog = libpq_url(catalog)
        key = (self.database, catalog, self.data_path, self.metadata_schema, repr(sorted(self.connection_config.items())))
        with _ENGINES_LOCK:
            if key not in _ENGINES:
                engine = duckdb.connect(self.database, config={**OFFLINE, **self.connection_config})
                try:
                    for extension, package in BUNDLED_EXTENSIONS:
                        engine.load_extension(bundled_extension_path(extension, package))
                    self._attach(engine, catalog)
                except BaseException:
                    engine.close()
                    raise
                _ENGINES[key] = engine
            return _ENGINES[key]

    def _attach(self, conn: duckdb.DuckDBPyConnection, catalog: str) -> None:
        if "://" not in self.data_path:
            os.makedirs(self.data_path, exist_ok=True)
        options = [f"DATA_PATH {literal(self.data_path)}"]
        if self.metadata_schema:
            options.append(f"METADATA_SCHEMA {literal(self.metadata_schema)}")
        attach = (f"ATTACH {literal('ducklake:postgres:' + catalog)} AS {LAKE_NAME} ({', '.join(options)})")
        for attempt in range(1, ATTACH_ATTEMPTS + 1):
            try:
                conn.execute(attach)
                return
            except duckdb.Error as exc:
                reason = " ".join(str(exc).replace(catalog, f"<{CATALOG_VARIABLE}>").split())
                # Processes attaching a new lake at the same moment race to create its catalog tables.
                if attempt < ATTACH_ATTEMPTS and ("already exists" in reason or "duplicate key" in reason):
                    time.sleep(0.2 * attempt)
                    continue
                reason = reason.rpartition(f'"<{CATALOG_VARIABLE}>": ')[2] or reason
                raise WarehouseUnavailableError(
                    f"the DuckLake could not be attached: {reason}. Check {CATALOG_VARIABLE} (PostgreSQL reachable, "
                    f"database and role exist, password right) and {DATA_PATH_VARIABLE} ({self.data_path}).") from None


_ENGINES: dict[tuple, duckdb.DuckDBPyConnection] = {}
_ENGINES_LOCK = threading.Lock()


def warehouse_backend() -> str:
    """``M3_RECON_WAREHOUSE``: ``duckdb`` (one file, the default) or ``ducklake``."""
    backend = os.environ.get(WAREHOUSE_VARIABLE, "duckdb").strip().lower() or "duckdb"
    if backend not in BACKENDS:
        raise SettingsError(f"{WAREHOUSE_VARIABLE} must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def ducklake_data_path() -> str:
    """``M3_RECON_DUCKLAKE_DATA_PATH`` as an absolute directory ending in ``/`` (URLs unchanged): the path is
    stored in the catalog, so a relative one would mean something else in every working directory."""
    raw = os.environ.get(DATA_PATH_VARIABLE, "") or DEFAULT_DUCKLAKE_DATA_PATH
    if "://" in raw:
        return raw if raw.endswith("/") else raw + "/"
    return os.path.join(os.path.abspath(os.path.expanduser(raw)), "")


def warehouse_resource_from_env() -> DuckDBResource:
    """The warehouse the environment asks for, as the resource the assets know as ``duckdb``."""
    if warehouse_backend() == "duckdb":
        return WarehouseFileResource(database=settings.duckdb_path())
    if not os.environ.get(CATALOG_VARIABLE):
        raise SettingsError(f"{WAREHOUSE_VARIABLE}=ducklake needs {CATALOG_VARIABLE}: the PostgreSQL database for "
                            "the DuckLake catalog, e.g. postgresql://m3recon@db.internal:5432/m3_recon_lake")
    return DuckLakeResource(catalog=dg.EnvVar(CATALOG_VARIABLE), data_path=ducklake_data_path(),
                            metadata_schema=os.environ.get(METADATA_SCHEMA_VARIABLE, ""))
