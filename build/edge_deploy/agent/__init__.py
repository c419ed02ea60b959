"""The robot agent of pull mode: runs on the robot (a systemd service or a small container), follows a
signed channel in the fleet's registry and applies its release through the same deploy state machine as
SSH mode (``fleet.deploy.RobotReleases``) over a local connection (``agent.local``). No torch, no SSH.

``config`` reads the agent's YAML file, ``local`` is the connection, ``loop`` the poll/apply/report loop;
``edge-deploy agent run --config FILE [--once]`` (or ``python -m edge_deploy.agent``) starts it.
"""

from __future__ import annotations
