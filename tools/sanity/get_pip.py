"""Offline stand-in for the get-pip bootstrap script that ansible-test downloads.

ansible-test fetches get-pip.py from a host this project cannot reach, caches it as
~/.ansible/test/cache/get_pip_<version>.py, and runs it inside each fresh sanity virtualenv with
pip's arguments (for example `--disable-pip-version-check pip==24.2 --no-setuptools`). This script
does the same job with what is reachable: ensurepip installs the pip bundled with Python, and that
pip installs the requested packages from PyPI. `make sanity` copies it into the cache.
"""

from __future__ import annotations

import ensurepip
import os
import subprocess
import sys

GET_PIP_ONLY_FLAGS = {"--no-setuptools", "--no-wheel"}


def main(argv: list[str]) -> int:
    # ensurepip points PIP_CONFIG_FILE at /dev/null in this process; the real install must see the
    # machine's pip configuration (index, proxy CA), so keep the environment from before.
    environment = dict(os.environ)
    ensurepip.bootstrap(upgrade=True, default_pip=True)
    pip_args = [arg for arg in argv if arg not in GET_PIP_ONLY_FLAGS]
    if not any(not arg.startswith("-") for arg in pip_args):
        return 0
    command = [sys.executable, "-m", "pip", "install", "--retries", "5", *pip_args]
    return subprocess.call(command, env=environment)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
