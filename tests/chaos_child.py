"""Test-only launcher: the real `python -m bot` in a process of its own, on a fake Discord.

The chaos test (tests/test_chaos.py) and bench/chaos.py run the bot as a separate process
so that they can kill it with SIGKILL. discord.py takes its REST base and its gateway URL
from two class attributes; this module points them at the URLs in FAKE_DISCORD_API and
FAKE_DISCORD_GATEWAY, then runs the bot's own entry point unchanged, so bot/ knows nothing
of the fake::

    FAKE_DISCORD_API=http://127.0.0.1:PORT/api/v10 \\
    FAKE_DISCORD_GATEWAY=ws://127.0.0.1:PORT/gateway DISCORD_TOKEN=... \\
        python -m tests.chaos_child --config c.toml run
"""

from __future__ import annotations

import os
import sys

API_ENV = "FAKE_DISCORD_API"
GATEWAY_ENV = "FAKE_DISCORD_GATEWAY"


def point_discord_at(api: str, gateway: str) -> None:
    import yarl
    from discord.gateway import DiscordWebSocket
    from discord.http import Route

    Route.BASE = api
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)


def main(argv: list[str] | None = None) -> int:
    missing = [name for name in (API_ENV, GATEWAY_ENV) if not os.environ.get(name)]
    if missing:
        print(f"error: set {' and '.join(missing)} to the fake Discord's URLs (this launcher "
              f"is for tests; run the bot itself with `python -m bot`)", file=sys.stderr)
        return 2
    point_discord_at(os.environ[API_ENV], os.environ[GATEWAY_ENV])
    from bot.__main__ import main as bot_main

    return bot_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
