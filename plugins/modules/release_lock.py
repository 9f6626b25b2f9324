#!/usr/bin/python
# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Take or release the release-wide lock record on an edge host."""

from __future__ import annotations

DOCUMENTATION = r"""
module: release_lock
author: venta.deploy developers (@venta-deploy)
version_added: "0.4.0"
short_description: Take or release the release-wide lock record on an edge host
description:
  - One lock for release, rollback, maintenance, reconcile and the edge writes of C(deploy.yml),
    so a second run is refused at once with a message naming the run that holds it. It is a
    record in a file (O(path)), not a flock, because runs are separate processes, often on
    different controllers. The C(venta.deploy.release_lock) role takes it on every edge, first
    edge first, and releases it; use the role rather than this module directly.
  - "The record is JSON, mode C(0600): C(holder) (C(user@controller)), C(controller),
    C(playbook), C(version) (may be null), C(started_at) (ISO 8601 UTC), C(run_id) and C(pid)
    (the controller's C(ansible-playbook), when given)."
  - "O(state=present): a free lock is created with C(O_CREAT|O_EXCL), so of two runs only one
    gets it. A lock already held by the same O(run_id) is left as it is (re-entrant,
    C(changed=false)). A lock held by another run fails the task with a message naming its
    holder, playbook, version, since when (and how long ago), its run id, and what to do: wait
    for it to finish, or, if that run is gone, run again with
    C(-e venta_release_break_lock=true). O(break_lock=true) replaces it atomically and returns it
    as RV(broken). An unreadable lock file is refused the same way unless O(break_lock=true)."
  - "O(state=absent): the lock is removed only when O(run_id) holds it. An absent lock is
    C(changed=false); another run's lock (or an unreadable one) is not touched, the module warns
    and returns it in RV(lock) without failing."
  - The directory of O(path) is created (C(0755)) when missing. The read, the decision and the
    write happen under a flock on C(<path>.guard), held for milliseconds.
  - The failure message does not name the edge (a module cannot know the inventory name); the
    role adds it.
attributes:
  check_mode:
    support: full
    description:
      - Reads the lock and predicts the result (also the failure when another run holds it);
        creates, replaces and removes nothing.
  diff_mode:
    support: none
    description: The record is returned in RV(lock) and RV(broken) instead.
  idempotent:
    support: full
    description:
      - Taking a lock this run holds and releasing a lock that is not held change nothing.
options:
  path:
    description: The lock file on the edge.
    type: path
    default: /var/lib/venta/release.lock
  state:
    description:
      - C(present) takes the lock for O(run_id), C(absent) releases it.
    type: str
    choices: [present, absent]
    default: present
  run_id:
    description:
      - The id of this run, the same on every edge and for every take and release of one
        C(ansible-playbook) run (the role makes it once, C(release_lock_run_id)).
    type: str
    required: true
  holder:
    description:
      - Who runs it, C(user@controller). Required with O(state=present).
    type: str
  controller:
    description:
      - The controller's host name; default the part of O(holder) after C(@).
    type: str
  playbook:
    description:
      - The playbook that takes the lock, e.g. C(release.yml). Required with O(state=present).
    type: str
  version:
    description:
      - The version the run deploys, if any.
    type: str
  pid:
    description:
      - The process id of the controller's C(ansible-playbook), if known.
    type: int
  break_lock:
    description:
      - Replace a lock held by another run (or an unreadable lock file) with this run's record.
        Only when that run is gone (killed, controller lost); the playbooks set it from
        C(venta_release_break_lock).
    type: bool
    default: false
notes:
  - Clocks of the controller and the edges need not agree; C(started_at) is the edge's time.
seealso:
  - module: venta.deploy.nginx_switch
"""

EXAMPLES = r"""
- name: Take the release lock on this edge
  venta.deploy.release_lock:
    run_id: "{{ release_lock_run_id }}"
    holder: "alice@ctl1"
    playbook: release.yml
    version: "1.2.0"

- name: Take it even though a dead run still holds it
  venta.deploy.release_lock:
    run_id: "{{ release_lock_run_id }}"
    holder: "alice@ctl1"
    playbook: rollback.yml
    break_lock: true
  register: __lock

- name: Say whose lock was broken
  ansible.builtin.debug:
    msg: "broke {{ __lock.broken }}"
  when: __lock.broken is not none

- name: Release it
  venta.deploy.release_lock:
    run_id: "{{ release_lock_run_id }}"
    state: absent
"""

RETURN = r"""
lock:
  description:
    - The record that holds the lock now (or would, in check mode); null when the lock is free.
    - With O(state=absent), another run's record that was left in place, else null.
  returned: always
  type: dict
  sample:
    holder: alice@ctl1
    controller: ctl1
    playbook: release.yml
    version: "1.2.0"
    started_at: "2025-01-01T12:00:00Z"
    run_id: k3j9q0x7m2p4a8w1
    pid: 4242
broken:
  description:
    - The record O(break_lock) replaced (C({unreadable, text}) for an unreadable file); null when
      nothing was broken.
  returned: always
  type: dict
  sample:
    holder: bob@ctl2
    controller: ctl2
    playbook: rollback.yml
    version: null
    started_at: "2025-01-01T09:00:00Z"
    run_id: 0f3kq8z1c5n2v7b4
    pid: null
msg:
  description: What was done, in words.
  returned: always
  type: str
  sample: took the release lock /var/lib/venta/release.lock
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.venta.deploy.plugins.module_utils.release_lock import (
    DEFAULT_PATH,
    LockHeld,
    ReleaseLockError,
    acquire,
    new_record,
    release,
)


def argument_spec() -> dict:
    return {
        "path": {"type": "path", "default": DEFAULT_PATH},
        "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        "run_id": {"type": "str", "required": True},
        "holder": {"type": "str"},
        "controller": {"type": "str"},
        "playbook": {"type": "str"},
        "version": {"type": "str"},
        "pid": {"type": "int"},
        "break_lock": {"type": "bool", "default": False},
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(),
        required_if=[("state", "present", ("holder", "playbook"))],
        supports_check_mode=True,
    )
    params = module.params
    try:
        if params["state"] == "present":
            record = new_record(
                run_id=params["run_id"],
                holder=params["holder"],
                playbook=params["playbook"],
                controller=params["controller"],
                version=params["version"],
                pid=params["pid"],
            )
            result = acquire(params["path"], record, params["break_lock"], module.check_mode)
        else:
            result = release(params["path"], params["run_id"], module.check_mode)
    except LockHeld as exc:
        module.fail_json(msg=str(exc), lock=exc.record, broken=None)
    except ReleaseLockError as exc:
        module.fail_json(msg=str(exc), lock=None, broken=None)
    if result.warning:
        module.warn(result.warning)
    module.exit_json(**result.as_dict())


if __name__ == "__main__":
    main()
