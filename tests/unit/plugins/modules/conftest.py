"""Run a module's main() in-process with given arguments and collect its JSON result."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args


def run_module(
    main: Callable[[], None], args: dict[str, Any], capsys: pytest.CaptureFixture
) -> dict:
    with patch_module_args(args), pytest.raises(SystemExit):
        main()
    out = capsys.readouterr().out
    return json.loads(out)


@pytest.fixture
def module_runner(capsys: pytest.CaptureFixture) -> Callable[..., dict]:
    def runner(main: Callable[[], None], **args: Any) -> dict:
        return run_module(main, args, capsys)

    return runner
