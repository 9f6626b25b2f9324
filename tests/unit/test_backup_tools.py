"""The backup health check and the NATS JetStream backup client of the backup roles."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from file_module import load_file

ROLES = Path(__file__).resolve().parents[2] / "roles"


check = load_file(
    "backup_check",
    ROLES / "backup_repository/files/usr/local/lib/venta-backup/backup_check.py",
)
nats = load_file(
    "nats_backup", ROLES / "backup_nats/files/usr/local/lib/venta-backup/nats_backup.py"
)

NOW = 1_800_000_000.0
HOUR = 3600


def _backup(label: str, kind: str, age_hours: float, error: bool = False) -> dict:
    stop = NOW - age_hours * HOUR
    return {
        "label": label,
        "type": kind,
        "error": error,
        "timestamp": {"start": stop - 60, "stop": stop},
    }


def _info(*backups: dict, code: int = 0) -> list[dict]:
    return [{"name": "venta", "status": {"code": code, "message": "ok"}, "backup": list(backups)}]


@pytest.mark.parametrize(
    ("backups", "expected"),
    [
        # fresh incremental on a recent full: both pass
        (
            (_backup("F", "full", 30), _backup("I", "incr", 1)),
            {"postgresql": True, "postgresql-full": True},
        ),
        # the newest backup failed: the good one before it is too old
        (
            (_backup("F", "full", 30), _backup("I", "incr", 1, error=True)),
            {"postgresql": False, "postgresql-full": True},
        ),
        # only a full backup older than a week
        ((_backup("F", "full", 200),), {"postgresql": False, "postgresql-full": False}),
        # recent differential but no full in the repository
        ((_backup("D", "diff", 1),), {"postgresql": True, "postgresql-full": False}),
    ],
)
def test_pgbackrest_ages(backups: tuple[dict, ...], expected: dict[str, bool]) -> None:
    results = check.check_pgbackrest_info(_info(*backups), NOW, 26, 192)
    assert {r["check"]: r["ok"] for r in results} == expected


def test_pgbackrest_without_backup_fails() -> None:
    results = check.check_pgbackrest_info(_info(code=2), NOW, 26, 192)
    assert [r["ok"] for r in results] == [False]
    assert "no good backup" in results[0]["message"]


def test_pgbackrest_bad_status_is_reported() -> None:
    results = check.check_pgbackrest_info(_info(_backup("F", "full", 1), code=99), NOW, 26, 192)
    assert results[-1] == {
        "check": "postgresql-status",
        "ok": False,
        "message": "stanza venta: ok",
    }


@pytest.mark.parametrize(
    ("row", "ok", "words"),
    [
        ("0|0|12|f|\n", True, "0 segment(s) waiting"),
        ("2|45|50|f|\n", True, "oldest 45 s"),
        ("7|900|950|f|\n", False, "the oldest for 900 s"),
        ("1|10|400|t|000000010000000000000009\n", False, "last archive attempt failed"),
        ("garbage\n", False, "unexpected answer"),
    ],
)
def test_wal_lag(row: str, ok: bool, words: str) -> None:
    result = check.check_wal(row, 300)
    assert result["ok"] is ok
    assert words in result["message"]


@pytest.mark.parametrize(
    ("status", "ok"),
    [
        (None, False),
        ({"ok": True, "finished": "2027-01-15T07:00:00Z"}, True),
        ({"ok": True, "finished": "2027-01-13T07:00:00Z"}, False),
        (
            {"ok": False, "finished": "2027-01-15T07:00:00Z", "summary": "checksum invalid: 1"},
            False,
        ),
    ],
)
def test_verify_result(status: dict | None, ok: bool) -> None:
    now = check.parse_time("2027-01-15T08:00:00Z")
    assert check.check_verify(status, now, 26)["ok"] is ok


def test_failed_verify_names_the_damage() -> None:
    status = {"ok": False, "finished": "x", "summary": "checksum invalid: 1"}
    assert "checksum invalid" in check.check_verify(status, NOW, 26)["message"]


@pytest.mark.parametrize(
    ("files", "ok"),
    [
        ([], False),
        ([("a.age", NOW - 2 * HOUR, 100)], True),
        ([("a.age", NOW - 30 * HOUR, 100)], False),
        # an empty newest file does not count
        ([("a.age", NOW - 30 * HOUR, 100), ("b.age", NOW - 1 * HOUR, 0)], False),
    ],
)
def test_shipped_files(files: list[tuple[str, float, int]], ok: bool) -> None:
    assert check.check_files("redis", "db1", files, NOW, 26)["ok"] is ok


def test_check_main_reports_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "redis" / "db1"
    store.mkdir(parents=True)
    config = tmp_path / "check.json"
    files = [
        {"store": "redis", "source": "db1", "max_age_hours": 26},
        {"store": "nats", "source": "venta", "max_age_hours": 26},
    ]
    config.write_text(
        json.dumps({"host": "b", "root": str(tmp_path), "postgresql": None, "files": files})
    )
    (store / "20270101T000000Z.redis-db1.rdb.age").write_bytes(b"age-encryption.org/v1\n")
    assert check.main(["--config", str(config), "--json"]) == 1
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert [r["ok"] for r in report["results"]] == [True, False]
    assert "<3>BACKUP CHECK FAILED: nats:venta" in err


def test_nats_headers() -> None:
    headers = nats.parse_headers(b"NATS/1.0 503\r\n\r\n")
    assert headers == {":status": "503"}
    headers = nats.parse_headers(b"NATS/1.0 408 Request Timeout\r\nNats-Foo: bar\r\n\r\n")
    assert headers == {":status": "408", ":description": "Request Timeout", "Nats-Foo": "bar"}
    assert nats.parse_headers(b"NATS/1.0\r\nA: b\r\n\r\n") == {"A": "b"}


def test_nats_bundle_round_trip(tmp_path: Path) -> None:
    bundle = tmp_path / "b.tar"
    with tarfile.open(bundle, "w:") as tar:
        nats.add_bytes(tar, "ORDERS.json", json.dumps({"config": {"name": "ORDERS"}}).encode())
        nats.add_bytes(tar, "ORDERS.snap", nats.S2_MAGIC + b"data")
        manifest = {"format": nats.BUNDLE_FORMAT, "streams": [{"name": "ORDERS"}]}
        nats.add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
    read, tar = nats.read_bundle(str(bundle))
    with tar:
        assert read["streams"] == [{"name": "ORDERS"}]
        member = tar.extractfile("ORDERS.snap")
        assert member is not None
        assert member.read().startswith(nats.S2_MAGIC)


def test_nats_bundle_rejects_other_tars(tmp_path: Path) -> None:
    bundle = tmp_path / "other.tar"
    with tarfile.open(bundle, "w:") as tar:
        info = tarfile.TarInfo("x")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(nats.NatsError, match="not a NATS backup bundle"):
        nats.read_bundle(str(bundle))


class _ScriptedSocket:
    """Hands out the bytes a NATS server would send; records what the client sends."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.sent = b""

    def recv(self, size: int) -> bytes:
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def settimeout(self, value: float) -> None:
        pass


def _connection(data: bytes) -> object:
    conn = object.__new__(nats.Connection)
    conn.sock = _ScriptedSocket(data)
    conn.buf = b""
    conn.sid = 0
    conn.pending = []
    conn.inbox_prefix = "_INBOX.t"
    return conn


def test_nats_request_skips_a_snapshot_chunk_that_arrives_before_the_reply() -> None:
    # The snapshot's deliver inbox is _INBOX.t.1 (subscribed first); the API reply goes to
    # _INBOX.t.3 (sids count inboxes and subscriptions). The server sends the first chunk before
    # the reply.
    chunk = nats.S2_MAGIC + b"data"
    reply = json.dumps({"config": {"name": "s"}, "state": {}}).encode()
    data = (
        b"MSG _INBOX.t.1 1 $JS.ACK.1 "
        + str(len(chunk)).encode()
        + b"\r\n"
        + chunk
        + b"\r\n"
        + b"PING\r\n"
        + b"MSG _INBOX.t.3 4 "
        + str(len(reply)).encode()
        + b"\r\n"
        + reply
        + b"\r\n"
        + b"MSG _INBOX.t.1 1 0\r\n\r\n"
    )
    conn = _connection(data)
    meta, snap = nats.snapshot_stream(conn, "s", timeout=1)
    assert meta["config"] == {"name": "s"}
    assert snap == chunk
    assert b"PONG\r\n" in conn.sock.sent
    assert b"PUB $JS.ACK.1 0\r\n" in conn.sock.sent
