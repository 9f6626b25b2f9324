"""The backup roles stop on bad input before any change, naming the variable (as in
test_role_validation.py, whose helpers run each case)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_role_validation import _run_role, assert_stopped_without_change

RECIPIENT = "age1xqem2x93sh9u9ehfnx5ky7uagjc8kach2ajt2h5wt79w8ntrrdfsen3w6q"
REPOSITORY = {
    "pgbackrest_role": "repository",
    "pgbackrest_repo_host": "localhost",
    "pgbackrest_pg_hosts": ["venta-peer"],
    "pgbackrest_backup_standby": False,
}
PASSPHRASE = {"pgbackrest_repo1_cipher_pass": "a-passphrase-of-twenty-characters"}

CASES = [
    ("pgbackrest", {"pgbackrest_role": "standby"}, "pgbackrest_role"),
    ("pgbackrest", REPOSITORY, "pgbackrest_repo1_cipher_pass"),
    (
        "pgbackrest",
        {**REPOSITORY, "pgbackrest_repo1_cipher_pass": "short"},
        "pgbackrest_repo1_cipher_pass must be at least 20",
    ),
    (
        "pgbackrest",
        {**REPOSITORY, **PASSPHRASE, "pgbackrest_schedules": {"full": "", "incr": "hourly"}},
        "pgbackrest_schedules.full",
    ),
    (
        "pgbackrest",
        {**REPOSITORY, **PASSPHRASE, "pgbackrest_backup_standby": True},
        "pgbackrest_backup_standby",
    ),
    (
        "pgbackrest",
        {**REPOSITORY, **PASSPHRASE, "pgbackrest_repo2_enabled": True},
        "pgbackrest_repo2_s3_endpoint",
    ),
    (
        "pgbackrest",
        {
            "pgbackrest_role": "pg",
            "pgbackrest_repo_host": "venta-peer",
            "pgbackrest_pg_hosts": ["localhost"],
            "pgbackrest_backup_standby": False,
            "postgresql_archive_mode": "on",
            "postgresql_archive_command": "cp %p /mnt/wal/%f",
        },
        "postgresql_archive_command",
    ),
    ("backup_repository", {}, "backup_repository_age_recipient"),
    (
        "backup_repository",
        {"backup_repository_age_recipient": RECIPIENT, "backup_repository_keep_min": 0},
        "backup_repository_keep_min",
    ),
    (
        "backup_repository",
        {
            "backup_repository_age_recipient": RECIPIENT,
            "backup_repository_check_files": [{"store": "mysql", "source": "db1"}],
        },
        "backup_repository_check_files",
    ),
    ("backup_redis", {}, "backup_redis_repository_host"),
    (
        "backup_redis",
        {"backup_redis_repository_host": "venta-peer", "backup_redis_age_recipient": RECIPIENT},
        "backup_redis_password",
    ),
    (
        "backup_nats",
        {"backup_nats_repository_host": "venta-peer", "backup_nats_age_recipient": "age1nope"},
        "backup_nats_age_recipient",
    ),
    (
        "backup_nats",
        {
            "backup_nats_repository_host": "venta-peer",
            "backup_nats_age_recipient": RECIPIENT,
            "backup_nats_password": "a-password",
            "nats_accounts": [{"name": "APP", "jetstream": True, "users": [{"name": "app"}]}],
        },
        "backup_nats_user",
    ),
]


@pytest.mark.parametrize(
    ("role", "variables", "expected"),
    CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)],
)
def test_backup_role_bad_input_stops_before_any_change(
    role: str, variables: dict, expected: str, tmp_path: Path
) -> None:
    assert_stopped_without_change(_run_role(role, variables, tmp_path), expected)
