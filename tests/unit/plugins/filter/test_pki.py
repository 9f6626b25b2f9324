"""Unit tests of the subject_alt_names filter."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.venta.deploy.plugins.filter.pki import subject_alt_names


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        (["venta-registry1"], ["DNS:venta-registry1"]),
        (["127.0.0.1", "::1"], ["IP:127.0.0.1", "IP:::1"]),
        (["DNS:Edge.Example.COM", "IP:10.0.0.1"], ["DNS:edge.example.com", "IP:10.0.0.1"]),
        (["*.example.com"], ["DNS:*.example.com"]),
        (["localhost", "LOCALHOST", "DNS:localhost"], ["DNS:localhost"]),
        (["a", "127.0.0.1", "a"], ["DNS:a", "IP:127.0.0.1"]),
        ([], []),
    ],
)
def test_maps_names_and_addresses(entries: list[str], expected: list[str]) -> None:
    assert subject_alt_names(entries) == expected


@pytest.mark.parametrize(
    "entries",
    [
        ["bad name"],
        ["under_score.example"],
        ["IP:300.1.1.1"],
        ["a.*.example.com"],
        [""],
        [None],
        ["-leading.example"],
        ["x" * 64 + ".example"],
    ],
)
def test_rejects_invalid_entries(entries: list) -> None:
    with pytest.raises(AnsibleFilterError, match="subject_alt_names"):
        subject_alt_names(entries)


def test_rejects_a_non_list() -> None:
    with pytest.raises(AnsibleFilterError, match="expects a list"):
        subject_alt_names("venta-edge1")  # type: ignore[arg-type]
