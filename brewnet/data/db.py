"""LMDB databases of Datum records: opening, reading in key order, writing.

Caffe's ``Data`` layer reads an LMDB environment (a directory that contains
``data.mdb``) through a cursor in key order and starts again at the first record
when it reaches the end. :class:`LMDBReader` and :class:`RecordCursor` do the same
with the ``lmdb`` package; :class:`LMDBWriter` writes databases that Caffe reads.

LevelDB, Caffe's other backend, is not supported.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Iterable, Iterator

import lmdb

from brewnet.errors import DataError

logger = logging.getLogger(__name__)

LEVELDB_MESSAGE = (
    "LEVELDB databases are not supported; convert the database to LMDB (read each "
    "key and value with a LevelDB reader such as the plyvel package, write them "
    "with brewnet.data.db.LMDBWriter, or rebuild it with Caffe's convert_imageset "
    "--backend=lmdb) and set 'backend: LMDB' in data_param; a V0 net has no "
    "backend field, so run 'brewnet upgrade' on it first"
)

# Number of records per write transaction, as Caffe's convert tools commit.
_COMMIT_EVERY = 1000

# The lmdb package allows one open Environment per path and process, so readers of
# one path (a TRAIN and a TEST net, or a net built twice) share it: path -> [env, users].
_SHARED_ENVIRONMENTS: dict[str, list] = {}
_SHARED_LOCK = threading.Lock()


def resolve_source(source: str) -> str:
    """Return ``source`` as an absolute path; relative paths start at the working directory."""
    return os.path.abspath(os.path.expanduser(source))


class LMDBReader:
    """A read-only LMDB environment of Datum records.

    The environment is opened without LMDB's lock file (``lock=False``), so reading
    never writes to the database directory, which may be read-only or shared.
    NOTE: for the same reason no other process may write the database while it is
    being read.

    Raises:
        DataError: ``path`` is missing, is not an LMDB directory or cannot be opened.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        _check_lmdb_directory(path)
        self._key = os.path.realpath(path)
        self.env = _acquire_environment(self._key)
        self._closed = False
        logger.info("Opened lmdb %s", path)

    def num_records(self) -> int:
        """Return the number of records in the database."""
        return int(self.env.stat()["entries"])

    def first(self) -> tuple[bytes, bytes]:
        """Return the key and value of the first record in key order.

        Raises:
            DataError: the database has no records.
        """
        with self.env.begin(buffers=False) as txn:
            cursor = txn.cursor()
            if not cursor.first():
                raise DataError(
                    f"LMDB database '{self.path}' contains no records; fill it with "
                    f"Datum records before training"
                )
            return bytes(cursor.key()), bytes(cursor.value())

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Yield every (key, value) once, in key order."""
        with self.env.begin(buffers=False) as txn:
            for key, value in txn.cursor():
                yield bytes(key), bytes(value)

    def cursor(self) -> RecordCursor:
        """Return a new cursor at the first record; it wraps around at the end."""
        return RecordCursor(self)

    def close(self) -> None:
        """Release the environment; it closes when its last reader is closed."""
        if not self._closed:
            self._closed = True
            _release_environment(self._key)


class RecordCursor:
    """A position in an LMDB database that starts again at the first record at the end.

    Each cursor owns a read transaction; use it from one thread at a time.
    """

    def __init__(self, reader: LMDBReader) -> None:
        self.path = reader.path
        self._txn = reader.env.begin(buffers=False)
        self._cursor = self._txn.cursor()
        if not self._cursor.first():
            self.close()
            raise DataError(
                f"LMDB database '{self.path}' contains no records; fill it with Datum "
                f"records before training"
            )

    def current(self) -> tuple[bytes, bytes]:
        """Return the key and value at the cursor."""
        return bytes(self._cursor.key()), bytes(self._cursor.value())

    def advance(self) -> None:
        """Move to the next record, or back to the first after the last one."""
        if not self._cursor.next():
            logger.info("Restarting data prefetching from start.")
            self._cursor.first()

    def skip(self, count: int) -> None:
        """Advance ``count`` records, wrapping around at the end."""
        for _ in range(count):
            self.advance()

    def close(self) -> None:
        """End the read transaction."""
        if self._txn is not None:
            self._txn.abort()
            self._txn = None


class LMDBWriter:
    """Write (key, value) records into a new LMDB database, as Caffe's tools do.

    Records are committed in transactions of 1000 and at :meth:`close`. The memory
    map doubles whenever a transaction does not fit, so no size has to be guessed.

    Args:
        path: the database directory to create.
        overwrite: replace an existing database at ``path`` instead of raising.
        map_size: the initial size of the memory map in bytes.

    Raises:
        DataError: ``path`` already contains a database and ``overwrite`` is False.
    """

    def __init__(self, path: str, overwrite: bool = False, map_size: int = 1 << 26) -> None:
        self.path = path
        if os.path.realpath(path) in _SHARED_ENVIRONMENTS:
            raise DataError(
                f"LMDB database '{path}' is open for reading in this process; close "
                f"the nets that read it (layer.close()) before writing it"
            )
        if os.path.exists(os.path.join(path, "data.mdb")):
            if not overwrite:
                raise DataError(
                    f"LMDB database '{path}' already exists; remove it or pass "
                    f"overwrite=True"
                )
            for name in ("data.mdb", "lock.mdb"):
                if os.path.exists(os.path.join(path, name)):
                    os.remove(os.path.join(path, name))
        os.makedirs(path, exist_ok=True)
        self.env = lmdb.open(path, map_size=map_size, subdir=True)
        self._pending: list[tuple[bytes, bytes]] = []
        self.count = 0

    def put(self, key: bytes | str, value: bytes) -> None:
        """Add one record; a key written before is overwritten."""
        if isinstance(key, str):
            key = key.encode("ascii")
        self._pending.append((key, bytes(value)))
        self.count += 1
        if len(self._pending) >= _COMMIT_EVERY:
            self._flush()

    def put_many(self, records: Iterable[tuple[bytes | str, bytes]]) -> None:
        """Add every (key, value) of ``records``."""
        for key, value in records:
            self.put(key, value)

    def close(self) -> None:
        """Commit the remaining records and close the database."""
        if self.env is None:
            return
        self._flush()
        self.env.close()
        self.env = None
        logger.info("Processed %d files.", self.count)

    def __enter__(self) -> LMDBWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _flush(self) -> None:
        if not self._pending:
            return
        while True:
            txn = self.env.begin(write=True)
            try:
                for key, value in self._pending:
                    txn.put(key, value)
                txn.commit()
                break
            except lmdb.MapFullError:
                txn.abort()
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
        self._pending = []


def _acquire_environment(path: str) -> lmdb.Environment:
    """Return the shared read-only Environment of ``path``, opening it if needed."""
    with _SHARED_LOCK:
        entry = _SHARED_ENVIRONMENTS.get(path)
        if entry is None:
            try:
                env = lmdb.open(
                    path, readonly=True, lock=False, create=False, readahead=False,
                    max_readers=126,
                )
            except lmdb.Error as error:
                raise DataError(f"cannot open LMDB database '{path}': {error}") from None
            entry = _SHARED_ENVIRONMENTS[path] = [env, 0]
        entry[1] += 1
        return entry[0]


def _release_environment(path: str) -> None:
    with _SHARED_LOCK:
        entry = _SHARED_ENVIRONMENTS.get(path)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _SHARED_ENVIRONMENTS[path]
            entry[0].close()


def _check_lmdb_directory(path: str) -> None:
    if not os.path.exists(path):
        raise DataError(
            f"LMDB database '{path}' not found; check data_param.source (relative "
            f"paths start at the working directory, '{os.getcwd()}')"
        )
    if not os.path.isdir(path):
        raise DataError(
            f"'{path}' is a file, but an LMDB database is a directory that contains "
            f"data.mdb; point data_param.source at that directory"
        )
    if not os.path.exists(os.path.join(path, "data.mdb")):
        raise DataError(
            f"'{path}' has no data.mdb, so it is not an LMDB database. "
            f"{LEVELDB_MESSAGE}"
        )
