"""Bank statements into the warehouse: ``raw_bank_statement_lines`` and the files they came from.

``import_statements`` reads BAI2 / camt.053 files (``statements.read_statement``) and stores their
lines once: a file whose content hash was imported before is skipped whole, and a line is unique by
bank account + statement id + line reference (a statement re-sent under another file name adds
nothing). All files of one call are read before anything is written, and are written in one
transaction. Files named explicitly (``m3-recon bank import``, a sensor run) must all be readable, or
nothing is imported and the error names each bad file. A scan of the bank folder (``M3_RECON_BANK_DIR``,
as every close does) imports the readable files and leaves an unreadable one where it is (a file still
being copied is read complete next time), failing the asset check ``statement_files_readable`` with
its name and defect, so one bad file never holds up the close.
"""

# No `from __future__ import annotations` here: Dagster reads the config annotation at runtime.
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pyarrow as pa
from dagster_duckdb import DuckDBResource

from m3_recon import settings
from m3_recon.defs.bank.statements import StatementError, file_hash, read_statement
from m3_recon.reconcile.banking import BANK_LINE_COLUMNS
from m3_recon.sql import create_table
from m3_recon.warehouse import naive_utc, rollback_quietly

GROUP = "bank"
OWNERS = ["team:finance-systems"]
STATEMENT_SUFFIXES = {".bai", ".bai2", ".txt", ".xml", ".camt", ".053"}
MAX_FILES_PER_RUN = 1_000
FILES_DDL = """CREATE TABLE IF NOT EXISTS raw_bank_statement_files (
    file_hash VARCHAR NOT NULL, file_name VARCHAR NOT NULL, format VARCHAR, lines BIGINT NOT NULL,
    new_lines BIGINT NOT NULL, imported_at_utc TIMESTAMP NOT NULL)"""

# Each line once by account + statement + the bank's reference, whatever file brings it (no key constraint:
# a DuckLake warehouse has none, so the insert itself leaves out what is there and repeats within a file).
NEW_LINES_INSERT = """INSERT INTO raw_bank_statement_lines BY NAME
    SELECT * FROM statement_lines s
    WHERE NOT EXISTS (SELECT 1 FROM raw_bank_statement_lines t WHERE t.bank_account = s.bank_account
                      AND t.statement_id = s.statement_id AND t.line_ref = s.line_ref)
    QUALIFY row_number() OVER (PARTITION BY bank_account, statement_id, line_ref) = 1"""


@dataclass(frozen=True)
class ImportResult:
    path: str
    file_hash: str
    lines: int
    new_lines: int
    duplicate_file: bool
    error: str | None = None  # why the file could not be read (then nothing of it was imported)


def statement_files(folder: str | Path) -> list[Path]:
    """Statement files in ``folder`` (not hidden, known suffixes), oldest name first."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in STATEMENT_SUFFIXES)
    if len(found) > MAX_FILES_PER_RUN:
        raise StatementError(f"{root} holds {len(found)} statement files, more than {MAX_FILES_PER_RUN}; "
                             "archive imported ones (each is stored by content hash)")
    return found


def import_statements(conn, paths: list[str | Path], skip_unreadable: bool = False) -> list[ImportResult]:
    """Import ``paths``; returns one result per file. An unreadable file raises ``StatementError`` (nothing
    imported) unless ``skip_unreadable``, when its result carries the defect in ``error``."""
    conn.execute(FILES_DDL)
    conn.execute(create_table("raw_bank_statement_lines", BANK_LINE_COLUMNS))
    known = {h for (h,) in conn.execute("SELECT file_hash FROM raw_bank_statement_files").fetchall()}
    parsed, errors, results = [], [], []
    for path in map(Path, paths):
        data = path.read_bytes()
        digest = file_hash(data)
        if digest in known:
            results.append(ImportResult(str(path), digest, 0, 0, True))
            continue
        known.add(digest)  # the same content twice in one call is one file
        try:
            parsed.append((path, digest, read_statement(data, path.name)))
        except StatementError as exc:
            errors.append(str(exc))
            known.discard(digest)
            results.append(ImportResult(str(path), digest, 0, 0, False, str(exc)))
    if errors and not skip_unreadable:
        raise StatementError("nothing imported; fix or remove these files:\n  " + "\n  ".join(errors))
    now = naive_utc(datetime.now(timezone.utc))
    conn.execute("BEGIN TRANSACTION")
    try:
        for path, digest, lines in parsed:
            before = conn.execute("SELECT count(*) FROM raw_bank_statement_lines").fetchone()[0]
            if lines:
                conn.register("statement_lines", _lines_table(lines, digest, path.name, now))
                conn.execute(NEW_LINES_INSERT)
                conn.unregister("statement_lines")
            added = conn.execute("SELECT count(*) FROM raw_bank_statement_lines").fetchone()[0] - before
            conn.execute("INSERT INTO raw_bank_statement_files VALUES (?, ?, ?, ?, ?, ?)",
                         [digest, path.name, lines[0].format if lines else None, len(lines), added, now])
            results.append(ImportResult(str(path), digest, len(lines), added, False))
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)
        raise
    return results


def _lines_table(lines, digest: str, name: str, now: datetime) -> pa.Table:
    fields = ("format", "bank_account", "statement_id", "line_ref", "booking_date", "value_date", "amount_minor",
              "currency", "type_code", "description")
    table = {field: [getattr(line, field) for line in lines] for field in fields}
    table["amount_minor"] = pa.array(table["amount_minor"], pa.int64())
    table["value_date"] = pa.array(table["value_date"], pa.date32())
    n = len(lines)
    return pa.table({**table, "file_hash": [digest] * n, "file_name": [name] * n,
                     "loaded_at_utc": pa.array([now] * n, pa.timestamp("us"))})


class BankImportConfig(dg.Config):
    """Which statement files to import; empty means every file in the bank folder."""

    files: list[str] = []


@dg.asset(
    group_name=GROUP, owners=OWNERS, kinds={"duckdb"}, pool="duckdb_writer",
    check_specs=[dg.AssetCheckSpec("statement_files_readable", asset="raw_bank_statement_lines",
                                   description="Every statement file in the bank folder could be read.")],
    description="Bank statement lines from BAI2 and ISO 20022 camt.053 files (the bank folder, "
                "M3_RECON_BANK_DIR, or the files in run config): account, statement, the bank's line reference, "
                "booking date, signed amount in minor units, text. Each file once by content hash; each line once "
                "by account + statement + reference.",
)
def raw_bank_statement_lines(context: dg.AssetExecutionContext, config: BankImportConfig,
                             duckdb: DuckDBResource) -> dg.MaterializeResult:
    paths = config.files or statement_files(settings.bank_dir())
    with duckdb.get_connection() as conn:
        results = import_statements(conn, paths, skip_unreadable=not config.files)
        total, accounts, last = conn.execute("SELECT count(*), count(DISTINCT bank_account), max(booking_date) "
                                             "FROM raw_bank_statement_lines").fetchone()
    unreadable = [r for r in results if r.error]
    fresh = [r for r in results if not r.duplicate_file and not r.error]
    context.log.info(f"{len(fresh)} new statement file(s), {len(results) - len(fresh) - len(unreadable)} already "
                     f"imported, {len(unreadable)} unreadable")
    for result in unreadable:
        context.log.warning(f"not imported: {result.error}")
    readable = dg.AssetCheckResult(
        check_name="statement_files_readable", passed=not unreadable, severity=dg.AssetCheckSeverity.WARN,
        metadata={"unreadable": len(unreadable), "files": dg.MetadataValue.json([r.error for r in unreadable])})
    return dg.MaterializeResult(check_results=[readable], metadata={
        "files_imported": len(fresh), "files_already_imported": len(results) - len(fresh) - len(unreadable),
        "files_unreadable": len(unreadable),
        "lines_read": sum(r.lines for r in fresh), "lines_added": sum(r.new_lines for r in fresh),
        "lines_total": total, "bank_accounts": accounts, "statements_through": str(last)})
