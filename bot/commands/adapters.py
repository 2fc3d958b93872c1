"""Adapter operations: list, use, unbind, create, info, prompt, rollback.

Every name here is a label as people type it, looked up in the caller's scope only: an
adapter of another guild is unknown (it is not even listed in the error)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from storage import Adapter, previous_version

from ..routing import confined_adapter_path
from .base import Caller, Conflict, Refused, Reply, metrics_text, require_admin
from .services import Services

BASE_CHOICE = "base"  # `/adapter use base`: answer with the base model (same as unbind)


def channel_text(channel_id: int) -> str:
    return "the console" if channel_id == 0 else f"<#{channel_id}>"


class AdapterCommands:
    def __init__(self, services: Services):
        self.s = services
        self.db = services.db

    async def find(self, caller: Caller, name: str) -> Adapter:
        """The adapter of the caller's scope that people there call `name`."""
        return await self.db.adapter_in(name, caller.scope)

    async def labels(self, caller: Caller) -> list[str]:
        return [a.label for a in await self.db.list_adapters(caller.scope)]

    async def list(self, caller: Caller) -> Reply:
        adapters = await self.db.list_adapters(caller.scope)
        if not adapters:
            return Reply("No adapters yet. An admin can make one with `/adapter create`.")
        here = await self.db.resolve_adapter_for(caller.channel_id, caller.guild_id)
        lines = []
        for record in adapters:
            serving = await self.db.serving_version(record.name)
            state = f"v{serving.version} serving" if serving else "not trained yet"
            channels = await self.db.channels_of(record.name)
            where = ", ".join(channel_text(c) for c in channels[:5]) or "no channel"
            mark = " ← this channel" if here and here.name == record.name else ""
            lines.append(f"**{record.label}** — {state}; {where}{mark}")
        if here is None:
            lines.append("This channel answers with the base model.")
        return Reply("\n".join(lines))

    async def use(self, caller: Caller, name: str) -> Reply:
        require_admin(caller, "adapter use")
        if name == BASE_CHOICE and name not in await self.labels(caller):
            return await self.unbind(caller)  # (an adapter really called "base" wins)
        record = await self.find(caller, name)
        await self.db.bind_channel(caller.channel_id, record.name, guild_id=caller.guild_id,
                                   bound_by=caller.user_id)
        serving = await self.db.serving_version(record.name)
        version = f"v{serving.version}" if serving else "the base model until it is trained"
        return Reply(f"This channel now answers with **{name}** ({version}).", public=True)

    async def unbind(self, caller: Caller) -> Reply:
        require_admin(caller, "adapter unbind")
        bound = await self.db.resolve_adapter_for(caller.channel_id, caller.guild_id)
        await self.db.unbind_channel(caller.channel_id)
        was = f" (was **{bound.label}**)" if bound and bound.via == "channel" else ""
        now = await self.db.resolve_adapter_for(caller.channel_id, caller.guild_id)
        if now is not None:  # the server's default adapter answers where no channel is bound
            return Reply(f"This channel now answers with the server's adapter **{now.label}**"
                         f"{was}.", public=True)
        return Reply(f"This channel now answers with the base model{was}.", public=True)

    async def create(self, caller: Caller, name: str, base_on: str | None = None) -> Reply:
        require_admin(caller, "adapter create")
        parent = await self.find(caller, base_on) if base_on else None
        source = await self.db.serving_version(parent.name) if parent else None
        record = await self.db.create_adapter(
            name, self.s.config.model.name, scope=caller.scope,
            based_on=parent.name if parent else None,
            system_prompt=parent.system_prompt if parent else None, created_by=caller.user_id)
        text = f"Created adapter **{name}**."
        if source is not None:
            relative = await asyncio.to_thread(self._copy_version, source.path, record.name)
            await self.db.add_version(record.name, path=relative, status="serving",
                                      metrics={**source.metrics,
                                               "copied_from": f"{base_on} v{source.version}"},
                                      reason=f"copied from {base_on} v{source.version}")
            text += f" It starts from **{base_on}** v{source.version} (now its v1)."
        elif base_on is not None:
            text += f" **{base_on}** has no trained version yet, so it starts untrained."
        return Reply(text + f" Use it here with `/adapter use {name}`.")

    def _copy_version(self, stored: str, key: str) -> str:
        root = self.s.config.adapters_dir
        source = confined_adapter_path(root, stored)
        target = root / key / "v1"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".v1-", dir=target.parent))
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        tmp.rename(target)  # appears whole or not at all
        return str(target.relative_to(root))

    async def info(self, caller: Caller, name: str | None = None) -> Reply:
        if name is None:
            here = await self.db.resolve_adapter_for(caller.channel_id, caller.guild_id)
            if here is None:
                raise Refused("This channel answers with the base model; name an adapter "
                              "to see it.")
            name = here.label
        record = await self.find(caller, name)
        reply = Reply(record.description or "", title=f"Adapter {name}")
        versions = await self.db.versions(record.name)
        for version in versions[-10:]:
            seen = await self.db.version_pair_counts(record.name, version.version)
            data = (f"\ntrained on {seen.get('train', 0) + seen.get('validation', 0)} stored "
                    f"pairs, judged on {seen.get('held_out', 0)}" if seen else "")
            reply.fields.append((f"v{version.version} — {version.status}",
                                 f"{metrics_text(version.metrics)}\n{version.created_at[:16]}"
                                 + data + (f"\n{version.reason}" if version.reason else "")))
        if not versions:
            reply.fields.append(("versions", "none yet: approve pairs, then /train"))
        channels = await self.db.channels_of(record.name)
        reply.fields.append(("channels", ", ".join(map(channel_text, channels)) or "none"))
        if self.s.memory is not None:
            pairs, keys = await self.s.memory.size(record.name)
            reply.fields.append(("memory", f"{pairs} approved pairs, {keys} keys: answered "
                                 f"from at once, in other words too"))
        if record.based_on:
            parent = await self.db.get_adapter(record.based_on)
            reply.fields.append(("based on", parent.label if parent else record.based_on))
        if record.name != record.label:  # what the trainer's command line and the API take
            reply.fields.append(("key", f"`{record.name}`"))
        return reply

    async def prompt(self, caller: Caller, name: str, text: str | None) -> Reply:
        """`text` None (or "-") = the default system prompt again."""
        require_admin(caller, "adapter prompt")
        text = None if text is None or text.strip() in ("", "-") else text.strip()
        await self.db.set_system_prompt((await self.find(caller, name)).name, text)
        which = "your system prompt" if text else "the default system prompt"
        return Reply(f"**{name}** now answers with {which}.")

    async def rollback_target(self, caller: Caller, name: str,
                              version: int | None = None) -> int:
        """The version a rollback serves (default: the one before the serving version),
        checked: quick, so a face can refuse before it shows that it is working."""
        require_admin(caller, "adapter rollback")
        key = (await self.find(caller, name)).name
        if version is None:
            version = previous_version(await self.db.versions(key),
                                       await self.db.serving_version(key))
            if version is None:
                raise Refused(f"**{name}** has no earlier version to roll back to.")
        if (await self.db.get_version(key, version)).status == "serving":
            raise Conflict(f"**{name}** v{version} is already serving.")
        return version

    async def rollback(self, caller: Caller, name: str, version: int | None = None) -> Reply:
        return await self.serve(caller, name, await self.rollback_target(caller, name, version))

    async def serve(self, caller: Caller, name: str, version: int, *, where: str = "") -> Reply:
        """Promote a candidate or go back to an older version, without a restart."""
        require_admin(caller, "adapter rollback")
        key = (await self.find(caller, name)).name
        if (await self.db.get_version(key, version)).status == "serving":
            raise Conflict(f"**{name}** v{version} is already serving.")
        before = await self.db.serving_version(key)
        rolled_back = before is not None and version < before.version
        verb = "rolled back" if rolled_back else "promoted"
        await self.s.serve(key, version, reason=f"{verb} by {caller.label}{where}")
        was = f" (was v{before.version})" if before else ""
        return Reply(f"**{name}** now serves v{version}{was}.", public=True,
                     values={"was": before.version if before else None,
                             "rolled_back": rolled_back})
