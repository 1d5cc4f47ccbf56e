"""A plain Infor M3 MI REST client (no Dagster): sign-in, v2 calls, bulk calls, restart-key paging.

Authentication is either the ION API gateway, configured by an Infor ``.ionapi`` file (password grant
with the service-account keys ``saak``/``sask``, refresh grant, a fresh token on HTTP 401; API base
``{iu}/{ti}/M3``), or HTTP Basic against an on-premise M3 (``M3_BASE_URL``). Every call carries the
company and division (``cono``/``divi`` control parameters and ``CONO``/``DIVI`` input fields), goes
through ``VendorSession`` (request budget, bounded retries on 429/5xx/timeouts) and has its NOK
answers parsed in both v2 forms: HTTP 200 with the error in ``results[i]`` and HTTP 400 with it at
the top level (``terminationReason`` when a bulk call could not run). ``XRE0103`` "Record does not
exist" on a list or search transaction means an empty list. Values arrive as strings; amounts become
integer minor units through ``Decimal`` (``minor_units``) and go back as decimals (``money.major``).

Open items are read by a strategy that does not depend on whether this M3 treats a list
transaction's key inputs as start positions or as filters (``M3_OPEN_ITEMS_PAGING``, see
``open_invoices``), and the read is proven complete by a second route before anything is matched.

Posting sends many transactions per bulk call and must know the fate of each one (a duplicate batch
key is news, not a failure), so ``execute_each`` answers per transaction: its records or its
``M3Error``. Its bulk calls go one after another (a later call may depend on an earlier one) unless the
caller says they are independent (``in_flight``): the open-item read keeps up to ``read_concurrency``
bulk calls of its read-only transactions in flight (``M3_READ_CONCURRENCY``, never more than the
request budget's requests per second), so M3 works on one answer while the client parses another.
"""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import requests

from m3_recon import wire
from m3_recon.clients.http import TokenCache, VendorSession
from m3_recon.errors import VendorAuthError, VendorRequestError
from m3_recon.money import exponent

VENDOR = "M3"
PAGING_VARIABLE = "M3_OPEN_ITEMS_PAGING"
# payer: one LstInvByDivi answer per payer of the customer master, correct whether M3 reads PYNO as a start
# position or as a filter; restart: restart-key paging, correct only where the key inputs are start positions.
OPEN_ITEMS_PAGING = ("payer", "restart")
MAX_MAXRECS = 10_000  # M3's largest answer to one list transaction
IONAPI_VARIABLE = "M3_IONAPI_FILE"
BASIC_HINT = "M3_USERNAME / M3_PASSWORD"
IONAPI_KEYS = ("ti", "ci", "cs", "iu", "pu", "ot", "saak", "sask")
RECORD_DOES_NOT_EXIST = "XRE0103"
TOKEN_EXPIRY_MARGIN_SECONDS = 60
DEFAULT_TOKEN_SECONDS = 7_200
EXECUTE_PATH = "/m3api-rest/v2/execute"
# The output fields the open-item read uses of its list transactions (``returncols``): the invoice key, the
# transaction code and the restart and row keys of ``LstInvByDivi``. Only ``GetInvTotInfo`` is kept whole.
OPEN_LINE_COLUMNS = ("DIVI", "YEA4", "JRNO", "JSNO", "PYNO", "CUNO", "CINO", "INYR", "TRCD", "IVDT")
CUSTOMER_INVOICE_COLUMNS = ("PYNO", "CINO", "INYR", "TRCD")


class M3Error(VendorRequestError):
    """An MI transaction answered NOK (or a bulk call was terminated)."""

    def __init__(self, program: str, transaction: str, code: str, field: str, message: str, *,
                 status: int | None = None):
        where = f" in field {field}" if field else ""
        super().__init__(VENDOR, f"{program}/{transaction} answered {code or 'NOK'}{where}: {message}",
                         status=status)
        self.program, self.transaction, self.code, self.field, self.message = (
            program, transaction, code, field, message)


class IncompleteReadError(VendorRequestError):
    """A list could not be shown to be complete; matching against it would shrink the close."""


def minor_units(value: str, currency: str) -> int:
    """An M3 amount string (``"1234.5"``, ``"-100"``, ``""`` = 0) as integer minor units of ``currency``."""
    try:
        return wire.minor_units(value, exponent(currency),
                                f"minor units of {currency.strip() or 'its currency'}") or 0
    except wire.WireValueError as exc:
        raise VendorRequestError(VENDOR, f"M3 amount {exc}") from None


def m3_date(value: str) -> date | None:
    """An MI date (``yyyyMMdd``); blank or ``0`` is no date."""
    value = value.strip()
    return None if value in ("", "0") else wire.calendar_date(value)


def _is_list(transaction: str) -> bool:
    return transaction.startswith(("Lst", "Sel", "Search"))


def _trimmed(record: Mapping[str, object]) -> dict[str, str]:
    """Values as strings without trailing blanks (M3 pads alphanumerics unless it honours ``rightTrim``)."""
    try:
        return {name: value.rstrip() for name, value in record.items()}
    except AttributeError:  # a value that is not a string: rare, so not paid for on every value
        return {name: str(value).rstrip() for name, value in record.items()}


def _send(session: VendorSession, method: str, path: str, **kwargs) -> requests.Response:
    """``session.request``, but a 400 answer is returned rather than raised: M3 v2 and the token
    endpoint both explain a rejection in the body of an HTTP 400."""
    rejected: list[requests.Response] = []

    def keep_rejection(response: requests.Response, *args, **kw) -> None:
        if response.status_code == 400:
            rejected.append(response)

    try:
        return session.request(method, path, hooks={"response": keep_rejection}, **kwargs)
    except VendorRequestError as exc:
        if exc.status == 400 and rejected:
            return rejected[-1]
        raise


def _body(response: requests.Response, what: str) -> dict:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise VendorRequestError(VENDOR, f"{what} answered with something that is not a JSON object "
                                 f"(HTTP {response.status_code})", status=response.status_code)
    return body


# -- authentication ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class IonApiConfig:
    """The parts of an Infor ``.ionapi`` file a backend service needs; secrets never print."""

    source: str  # the file, for messages
    tenant: str
    api_url: str  # iu
    token_base: str  # pu
    token_path: str  # ot
    client_id: str = field(repr=False)
    client_secret: str = field(repr=False)
    access_key: str = field(repr=False)  # saak
    secret_key: str = field(repr=False)  # sask

    @classmethod
    def load(cls, path: str | Path) -> "IonApiConfig":
        path = Path(path).expanduser()
        try:
            raw = json.loads(path.read_text(encoding="utf-8-sig"))
        except FileNotFoundError:
            raise VendorAuthError(VENDOR, f"{IONAPI_VARIABLE} points to {path}, which does not exist; download the "
                                  "backend-service .ionapi file from ION API > Authorized Apps") from None
        except (OSError, ValueError) as exc:
            raise VendorAuthError(VENDOR, f"{IONAPI_VARIABLE} points to {path}, which is not a readable .ionapi "
                                  f"JSON file ({type(exc).__name__})") from None
        missing = [key for key in IONAPI_KEYS if not isinstance(raw, dict) or not str(raw.get(key) or "").strip()]
        if missing:
            raise VendorAuthError(VENDOR, f"the .ionapi file {path} ({IONAPI_VARIABLE}) lacks {', '.join(missing)}; "
                                  "use the file of a 'Backend Service' authorized app, which carries saak/sask")
        return cls(source=str(path), tenant=raw["ti"], api_url=raw["iu"].rstrip("/"), token_base=raw["pu"],
                   token_path=raw["ot"], client_id=raw["ci"], client_secret=raw["cs"],
                   access_key=raw["saak"], secret_key=raw["sask"])

    @property
    def base_url(self) -> str:
        """Where M3 is behind the gateway: ``{iu}/{ti}/M3``."""
        return f"{self.api_url}/{self.tenant}/M3"


class IonApiAuth(TokenCache):
    """Bearer tokens from the ION API token endpoint: password grant, refresh grant, renewal on 401.

    Renewed a minute before ``expires_in`` runs out (at once if the token lives less than that)."""

    def __init__(self, config: IonApiConfig, token_session: VendorSession,
                 monotonic: Callable[[], float] = time.monotonic):
        super().__init__(TOKEN_EXPIRY_MARGIN_SECONDS, 1.0, monotonic)
        self.config = config
        self.token_session = token_session
        self._refresh_token: str | None = None

    def _sign_in(self, session: VendorSession) -> tuple[str, float]:
        if self._refresh_token is not None:
            grant = self._grant({"grant_type": "refresh_token", "refresh_token": self._refresh_token},
                                raise_on_refusal=False)
            if grant is not None:
                return grant
        return self._grant({"grant_type": "password", "username": self.config.access_key,
                            "password": self.config.secret_key}, raise_on_refusal=True)

    def _grant(self, form: dict[str, str], raise_on_refusal: bool) -> tuple[str, float] | None:
        form = {**form, "client_id": self.config.client_id, "client_secret": self.config.client_secret}
        response = _send(self.token_session, "POST", "/" + self.config.token_path.lstrip("/"),
                         authenticated=False, data=form, headers={"Accept": "application/json"})
        body = _body(response, "the ION API token endpoint")
        if response.status_code == 400:
            if not raise_on_refusal:
                self._refresh_token = None
                return None
            reason = f"{body.get('error', 'refused')}: {body.get('error_description', '')}".rstrip(": ")
            raise VendorAuthError(
                VENDOR, f"the ION API sign-in refused the service account ({reason}); check saak/sask (and "
                f"ci/cs) in the .ionapi file named by {IONAPI_VARIABLE} ({self.config.source})", status=400)
        if not body.get("access_token"):
            raise VendorAuthError(VENDOR, "the ION API token endpoint answered without an access_token; "
                                  f"check pu/ot in {IONAPI_VARIABLE} ({self.config.source})")
        self._refresh_token = body.get("refresh_token") or self._refresh_token
        return body["access_token"], float(body.get("expires_in") or DEFAULT_TOKEN_SECONDS)


class BasicAuth:
    """HTTP Basic for an on-premise M3 (user names like ``DOMAIN\\USER`` pass through unchanged)."""

    def __init__(self, username: str, password: str):
        token = base64.b64encode(f"{username}:{password}".encode("utf-8")).decode("ascii")
        self._header = {"Authorization": f"Basic {token}"}

    def headers(self, session: VendorSession) -> dict[str, str]:
        return dict(self._header)

    def refresh(self, session: VendorSession) -> None:
        return None  # nothing to renew: a second 401 becomes a VendorAuthError naming M3_USERNAME / M3_PASSWORD


# Transactions per bulk POST. M3 documents no cap; the public clients send 150 (inforion) and 500, and
# 500 is the most this project sends (M3_BULK_SIZE may lower it).
DEFAULT_BULK_SIZE = MAX_BULK_SIZE = 500
DEFAULT_READ_CONCURRENCY = 4  # bulk calls of read-only transactions in flight at once


class _CallersThread(Executor):
    """Runs each call as it is submitted, on the caller's thread: one request at a time, and a failure raises at
    once, so nothing after it is sent."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


# -- the client ---------------------------------------------------------------------------------------
@dataclass
class M3Client:
    """MI calls for one company (``cono``) and division (``divi``)."""

    session: VendorSession
    cono: int
    divi: str
    page_size: int = 500  # maxrecs per list page
    max_pages: int = 200  # a list longer than page_size * max_pages is an error, never an endless loop
    bulk_size: int = DEFAULT_BULK_SIZE  # transactions per bulk POST
    open_items_paging: str = "payer"  # one of OPEN_ITEMS_PAGING
    read_concurrency: int = DEFAULT_READ_CONCURRENCY  # read-only bulk calls in flight at once

    def __post_init__(self) -> None:
        if self.open_items_paging not in OPEN_ITEMS_PAGING:
            raise VendorRequestError(VENDOR, f"{PAGING_VARIABLE}={self.open_items_paging!r} is not a paging strategy; "
                                     f"use one of {', '.join(OPEN_ITEMS_PAGING)}")
        if self.read_concurrency < 1:
            raise VendorRequestError(VENDOR, f"M3_READ_CONCURRENCY must be at least 1, got {self.read_concurrency}")

    @property
    def reads_in_flight(self) -> int:
        """Read-only bulk calls at once: ``read_concurrency``, never more than the budget's requests per second."""
        return max(1, min(self.read_concurrency, int(self.session.requests_per_second)))

    @classmethod
    def from_ionapi(cls, path: str | Path, cono: int, divi: str, *, page_size: int = 500, max_pages: int = 200,
                    bulk_size: int = DEFAULT_BULK_SIZE, open_items_paging: str = "payer",
                    read_concurrency: int = DEFAULT_READ_CONCURRENCY, **session_options) -> "M3Client":
        """Through the ION API gateway, as the backend service of an ``.ionapi`` file."""
        config = IonApiConfig.load(path)
        hint = f"saak/sask and ci/cs in the .ionapi file named by {IONAPI_VARIABLE}"
        token_session = VendorSession(VENDOR, config.token_base, hint, f"pu in {IONAPI_VARIABLE}",
                                      **session_options)
        session = VendorSession(VENDOR, config.base_url, hint, f"iu/ti in {IONAPI_VARIABLE}",
                                authenticator=IonApiAuth(config, token_session), **session_options)
        return cls(session, cono, divi, page_size, max_pages, bulk_size, open_items_paging, read_concurrency)

    @classmethod
    def on_premise(cls, base_url: str, username: str, password: str, cono: int, divi: str, *,
                   page_size: int = 500, max_pages: int = 200, bulk_size: int = DEFAULT_BULK_SIZE,
                   open_items_paging: str = "payer", read_concurrency: int = DEFAULT_READ_CONCURRENCY,
                   **session_options) -> "M3Client":
        """Directly to an on-premise M3 (``https://host:port``) with HTTP Basic."""
        if not base_url:
            raise VendorAuthError(VENDOR, f"set {IONAPI_VARIABLE} (ION API) or M3_BASE_URL with {BASIC_HINT} "
                                  "(on-premise) to say how to reach M3")
        if not username or not password:
            raise VendorAuthError(VENDOR, f"M3_BASE_URL is set but {BASIC_HINT} is not; set both")
        session = VendorSession(VENDOR, base_url, BASIC_HINT, "M3_BASE_URL",
                                authenticator=BasicAuth(username, password), **session_options)
        return cls(session, cono, divi, page_size, max_pages, bulk_size, open_items_paging, read_concurrency)

    # -- calls -----------------------------------------------------------------------------------------
    def _control(self, maxrecs: int | None, columns: Sequence[str] = ()) -> list[tuple[str, str]]:
        params = [("cono", str(self.cono)), ("divi", self.divi)]
        if maxrecs is not None:
            params.append(("maxrecs", str(maxrecs)))
        if columns:
            params.append(("returncols", ",".join(columns)))
        return params

    def _record(self, fields: Mapping[str, object]) -> dict[str, str]:
        return {"CONO": str(self.cono), "DIVI": self.divi, **{k: str(v) for k, v in fields.items()}}

    def execute(self, program: str, transaction: str, *, maxrecs: int | None = None, columns: Sequence[str] = (),
                **fields) -> list[dict]:
        """One transaction by v2 GET; returns its records (only ``columns``, if given) with trailing blanks trimmed."""
        path = f"{EXECUTE_PATH}/{program}/{transaction}"
        params = self._control(maxrecs, columns) + list(self._record(fields).items())
        response = _send(self.session, "GET", path, params=params, headers={"Accept": "application/json"})
        body = _body(response, f"GET {path}")
        if response.status_code == 400:
            return self._outcome(program, transaction, body, status=400)
        results = body.get("results") or []
        if len(results) != 1:
            raise VendorRequestError(VENDOR, f"GET {path} answered {len(results)} results for one transaction")
        return self._outcome(program, transaction, results[0], status=response.status_code)

    def execute_bulk(self, program: str, calls: Sequence[tuple[str, Mapping[str, object]]], *,
                     maxrecs: int | None = 0, columns: Sequence[str] = (), in_flight: int = 1) -> list[list[dict]]:
        """Many transactions of one program, ``bulk_size`` per POST; records per call, in order.
        The first transaction that answered NOK raises its ``M3Error``."""
        results = self.execute_each(program, calls, maxrecs=maxrecs, columns=columns, in_flight=in_flight)
        for result in results:
            if isinstance(result, M3Error):
                raise result
        return results

    def execute_each(self, program: str, calls: Sequence[tuple[str, Mapping[str, object]]], *,
                     maxrecs: int | None = 0, columns: Sequence[str] = (),
                     in_flight: int = 1) -> list[list[dict] | M3Error]:
        """Like ``execute_bulk``, but every transaction's own outcome: its records or its ``M3Error``.
        ``columns``: the output fields every transaction returns (``selectedColumns``); all when empty.

        The bulk calls go one after another, each sent when the one before has answered; ``in_flight`` > 1
        says they are independent of each other (read-only), and up to that many are in flight at once.
        Either way the outcomes come in the order of ``calls``. A bulk call M3 could not run at all, or one
        that kept failing, still raises (and no further bulk call is sent).
        """
        threads = min(in_flight, -(-len(calls) // self.bulk_size))
        with self._reads(threads if threads > 1 else 0) as reads:
            return [outcome for answer in self._submit(reads, program, calls, maxrecs, columns)
                    for outcome in answer.result()]

    @contextmanager
    def _reads(self, threads: int) -> Iterator[Executor]:
        """Where independent read-only bulk calls run: on ``threads`` threads, or for 0 on the caller's thread, one
        at a time. When the caller fails, calls not yet sent are dropped: nothing more is sent."""
        if threads == 0:
            yield _CallersThread()
            return
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="m3-read")
        try:
            yield pool
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, reads: Executor, program: str, calls: Sequence[tuple[str, Mapping[str, object]]],
                maxrecs: int | None = 0, columns: Sequence[str] = ()) -> list[Future]:
        """``calls`` as bulk calls of ``bulk_size`` handed to ``reads``: one future per bulk call, in order."""
        return [reads.submit(self._bulk_call, program, calls[start:start + self.bulk_size], maxrecs, columns)
                for start in range(0, len(calls), self.bulk_size)]

    @staticmethod
    def _records(answers: Iterable[Future]) -> Iterator[list[dict]]:
        """Each transaction's records from submitted bulk calls, in order; the first NOK raises its ``M3Error``."""
        for answer in answers:
            for outcome in answer.result():
                if isinstance(outcome, M3Error):
                    raise outcome
                yield outcome

    def _bulk_call(self, program: str, chunk: Sequence[tuple[str, Mapping[str, object]]], maxrecs: int | None,
                   columns: Sequence[str]) -> list[list[dict] | M3Error]:
        """One bulk POST: each transaction's records or ``M3Error``; a terminated call raises."""
        selected = {"selectedColumns": list(columns)} if columns else {}
        transactions = [{"transaction": name, "record": self._record(fields), **selected} for name, fields in chunk]
        payload = {"program": program, "cono": self.cono, "divi": self.divi, "excludeEmptyValues": False,
                   "rightTrim": True, "transactions": transactions}
        if maxrecs is not None:
            payload["maxReturnedRecords"] = maxrecs
        response = _send(self.session, "POST", EXECUTE_PATH, params=self._control(maxrecs), json=payload,
                         headers={"Accept": "application/json"})
        body = _body(response, f"POST {EXECUTE_PATH} ({program})")
        if response.status_code == 400 or str(body.get("wasTerminated")).lower() == "true":
            raise self._error(program, "(bulk)", body, response.status_code)
        results = body.get("results") or []
        if len(results) != len(chunk):
            raise VendorRequestError(VENDOR, f"POST {EXECUTE_PATH} ({program}) answered {len(results)} "
                                     f"results for {len(chunk)} transactions")
        out: list[list[dict] | M3Error] = []
        for (transaction, _), result in zip(chunk, results):
            try:
                out.append(self._outcome(program, transaction, result, status=response.status_code))
            except M3Error as error:
                out.append(error)
        return out

    @staticmethod
    def _outcome(program: str, transaction: str, result: dict, status: int) -> list[dict]:
        """Records of one result (or a top-level HTTP 400 answer): ``[]`` for XRE0103 on a list."""
        if status != 400 and not result.get("errorMessage") and not result.get("errorCode"):
            return [_trimmed(record) for record in result.get("records") or []]
        error = M3Client._error(program, transaction, result, status)
        if error.code == RECORD_DOES_NOT_EXIST and _is_list(transaction):
            return []
        raise error

    @staticmethod
    def _error(program: str, transaction: str, result: dict, status: int) -> M3Error:
        """Either v2 error form; ``terminationReason`` / ``terminationErrorType`` when a call was terminated."""
        kind = result.get("errorType") or result.get("terminationErrorType") or "NOK"
        message = result.get("errorMessage") or result.get("terminationReason") or kind
        return M3Error(program, transaction, str(result.get("errorCode") or "").strip(),
                       str(result.get("errorField") or "").strip(), str(message).strip(), status=status)

    def list_all(self, program: str, transaction: str, *, restart: Mapping[str, str], key: Sequence[str],
                 columns: Sequence[str] = (), **fields) -> list[dict]:
        """Every row of a list transaction, paged M3's way with restart keys (``list_pages``)."""
        return [row for page in self.list_pages(program, transaction, restart=restart, key=key, columns=columns,
                                                **fields) for row in page]

    def list_pages(self, program: str, transaction: str, *, restart: Mapping[str, str], key: Sequence[str],
                   columns: Sequence[str] = (), **fields) -> Iterator[list[dict]]:
        """The rows of a list transaction page by page, each page's rows not seen before, paged with restart keys.

        Each page asks for ``page_size`` rows starting at the key of the previous page's last row
        (``restart`` maps input field -> output field), so a page begins with rows already seen; those
        are dropped by ``key`` (the fields that identify a row). A short page is the last one.
        """
        seen: set[tuple] = set()
        inputs = dict(fields)
        for _ in range(self.max_pages):
            page = self.execute(program, transaction, maxrecs=self.page_size, columns=columns, **inputs)
            keys = [tuple(row.get(k) for k in key) for row in page]
            fresh = [row for row, row_key in zip(page, keys) if row_key not in seen]
            seen.update(keys)
            yield fresh
            if len(page) < self.page_size:
                return
            if not fresh:
                raise VendorRequestError(VENDOR, f"{program}/{transaction} returned a full page of rows already "
                                         f"seen; its restart keys {sorted(restart)} do not advance with "
                                         f"maxrecs={self.page_size}: raise M3_PAGE_SIZE")
            inputs.update({name: page[-1][column] for name, column in restart.items()})
        raise VendorRequestError(VENDOR, f"{program}/{transaction} has more than {self.max_pages} pages of "
                                 f"{self.page_size} rows; raise M3_PAGE_SIZE or M3_MAX_PAGES")

    # -- what the pipeline reads -----------------------------------------------------------------------
    def customers(self) -> list[dict]:
        """The customer master (``CRS610MI/LstByNumber``), paged by its start key ``CUNO``."""
        return self.list_all("CRS610MI", "LstByNumber", restart={"CUNO": "CUNO"}, key=("CUNO",))

    def open_invoices(self) -> list[dict]:
        """Open customer invoices of the division with their totals (``ARS200MI/GetInvTotInfo``), proven complete.

        The ledger lines of open invoices (``LstInvByDivi`` with ``AAC0=1``) are read by the strategy in
        ``open_items_paging``; the invoice lines (TRCD 10) name each invoice once, and a bulk of
        ``GetInvTotInfo`` gives its outstanding amount ``OCUA``. Invoices paid in between (``OCUA`` 0) are
        left out. Before that, ``LstInvoices`` per customer of the customer master lists the open invoices a
        second way; an invoice it lists that the read missed and that is still open fails the read with an
        ``IncompleteReadError`` saying what was read, what was expected and which setting to change. So does
        an M3 that answers fewer rows than ``maxrecs`` asks for while more exist (both routes would shrink).
        """
        return list(self.iter_open_invoices())

    def iter_open_invoices(self) -> Iterator[dict]:
        """``open_invoices`` one by one: once the read is proven complete, each invoice's totals as M3 answers
        them, so a caller can work on the first while M3 still answers the later ones. Until the last is taken a
        bulk of totals may still fail (an ``M3Error``), so a caller stores nothing before that."""
        customers = sorted({row["CUNO"] for row in self.customers() if row.get("CUNO")})
        # The caller's thread reads the first route; the second route, and the totals of each bulk of invoices as
        # soon as the first route has named them, are read beside it within the same number of calls in flight.
        with self._reads(self.reads_in_flight - 1) as reads:
            second_route = self._submit(reads, "ARS200MI", [("LstInvoices", {"AAC0": "1", "CUNO": customer})
                                                            for customer in customers],
                                        self.page_size, CUSTOMER_INVOICE_COLUMNS)
            invoices: dict[tuple[str, str, str, str], None] = {}  # in the order the lines name them
            totals, unread, lines = [], [], 0
            for page in self._open_line_pages(customers, reads):
                lines += len(page)
                for invoice in ((ln["PYNO"], ln["CINO"], ln["INYR"], ln["CUNO"]) for ln in page
                                if ln.get("TRCD") == "10"):
                    if invoice not in invoices:
                        invoices[invoice] = None
                        unread.append(invoice)
                whole = len(unread) - len(unread) % self.bulk_size  # whole bulk calls now, the rest at the end
                totals += self._submit(reads, "ARS200MI", [self._totals_call(invoice) for invoice in unread[:whole]])
                del unread[:whole]
            totals += self._submit(reads, "ARS200MI", [self._totals_call(invoice) for invoice in unread])
            expected = {(row["PYNO"], row["CINO"], row["INYR"], customer): customer for customer, rows in
                        self._single_pages("LstInvoices", "CUNO", customers, "customer", second_route)
                        for row in rows if row.get("TRCD") == "10"}
            self._check_answer_limit(max(lines, len(expected)))
            self._prove_complete(list(invoices), expected, lines, len(customers))
            for records in self._records(totals):
                if records and minor_units(records[0].get("OCUA", ""), records[0].get("CUCD", "")) != 0:
                    yield records[0]

    @staticmethod
    def _totals_call(invoice: tuple[str, str, str, str]) -> tuple[str, dict[str, str]]:
        payer, number, year, customer = invoice
        return "GetInvTotInfo", {"PYNO": payer, "CINO": number, "INYR": year, "CUNO": customer}

    def _open_line_pages(self, customers: Sequence[str], reads: Executor) -> Iterator[list[dict]]:
        """The ledger lines of open invoices (``LstInvByDivi``), read by ``open_items_paging``, as they come."""
        fields = {"FDIV": self.divi, "TDIV": self.divi, "AAC0": "1"}
        if self.open_items_paging == "restart":
            yield from self.list_pages("ARS200MI", "LstInvByDivi", restart={"PYNO": "PYNO", "IVDT": "IVDT"},
                                       key=("DIVI", "YEA4", "JRNO", "JSNO"), columns=OPEN_LINE_COLUMNS, **fields)
            return
        # once per payer: every payer is a customer of the customer master
        answers = self._submit(reads, "ARS200MI", [("LstInvByDivi", {**fields, "PYNO": payer}) for payer in customers],
                               self.page_size, OPEN_LINE_COLUMNS)
        for _, rows in self._single_pages("LstInvByDivi", "PYNO", customers, "payer", answers):
            yield rows

    def _single_pages(self, transaction: str, field_name: str, keys: Sequence[str], what: str,
                      answers: Sequence[Future]) -> Iterator[tuple[str, list[dict]]]:
        """Per key value, the rows of that value in its ``ARS200MI`` list answer of at most ``page_size`` rows
        (``answers``: the submitted bulk calls, one transaction per value, in the order of ``keys``).

        With the key input read as a start position, the value's rows come first and rows of later values
        may follow; read as a filter, only its rows come (a transaction whose output lacks the field, like
        ``LstInvoices`` without ``CUNO``, filters by it). Either way a full answer of the value's own rows
        may have more behind it, which one answer cannot show: that is an ``IncompleteReadError``.
        """
        for key, rows in zip(keys, self._records(answers)):
            own = [row for row in rows if row.get(field_name, key) == key]
            if len(own) == len(rows) >= self.page_size:
                raise IncompleteReadError(
                    VENDOR, f"ARS200MI/{transaction}: {what} {key} has at least {len(own)} open ledger lines, as many "
                    f"as one answer holds (M3_PAGE_SIZE={self.page_size}), so the read cannot show it has them all; "
                    f"raise M3_PAGE_SIZE (at most {MAX_MAXRECS})")
            yield key, own

    def _check_answer_limit(self, known: int) -> None:
        """An M3 that silently answers fewer rows than ``maxrecs`` makes a full answer look short, in every
        route alike. One unfiltered call shows it: fewer rows than asked for, though ``known`` lines exist."""
        answered = len(self.execute("ARS200MI", "LstInvByDivi", maxrecs=self.page_size, columns=("PYNO",),
                                    FDIV=self.divi, TDIV=self.divi, AAC0="1"))
        if answered < self.page_size and known > answered:
            raise IncompleteReadError(
                VENDOR, f"ARS200MI/LstInvByDivi answered {answered} rows when asked for up to {self.page_size} "
                f"(M3_PAGE_SIZE), yet the division has at least {known} open ledger lines: this M3 caps list "
                "answers below maxrecs, so a full answer cannot be told from a complete one. Nothing was matched "
                f"or posted; set M3_PAGE_SIZE={answered} (or less)")

    def _prove_complete(self, invoices: Sequence[tuple], expected: Mapping[tuple, str], lines: int,
                        customers: int) -> None:
        """Every invoice the second route listed was read, unless it has been paid since (``OCUA`` 0 now)."""
        read = set(invoices)
        missing = [key for key in expected if key not in read]
        if not missing:
            return
        totals = self.execute_each("ARS200MI", [self._totals_call(key) for key in missing],
                                   in_flight=self.reads_in_flight)
        still_open = [key for key, records in zip(missing, totals)
                      if isinstance(records, M3Error) or (records and minor_units(
                          records[0].get("OCUA", ""), records[0].get("CUCD", "")) != 0)]
        if not still_open:
            return
        hint = (f"set {PAGING_VARIABLE}=payer (restart-key paging reads everything only where M3 treats the key "
                "inputs PYNO/IVDT of LstInvByDivi as start positions, not as filters)"
                if self.open_items_paging == "restart"
                else f"check that LstInvByDivi lists every payer's open items, or set {PAGING_VARIABLE}=restart")
        examples = ", ".join(f"{number}/{year} (customer {customer})" for _, number, year, customer in still_open[:5])
        raise IncompleteReadError(
            VENDOR, f"the open-item read is incomplete: ARS200MI/LstInvByDivi "
            f"({PAGING_VARIABLE}={self.open_items_paging}, M3_PAGE_SIZE={self.page_size}) gave {len(read)} open "
            f"invoices in {lines} ledger lines, but ARS200MI/LstInvoices for the {customers} customers of CRS610MI "
            f"lists {len(expected)}; {len(still_open)} open invoice(s) were not read, e.g. {examples}. Nothing was "
            f"matched or posted; {hint}")
