"""Adapter operations: list, use, unbind, create, info, prompt, rollback."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from storage import previous_version

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

    async def list(self, caller: Caller) -> Reply:
        adapters = await self.db.list_adapters()
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
            lines.append(f"**{record.name}** — {state}; {where}{mark}")
        if here is None:
            lines.append("This channel answers with the base model.")
        return Reply("\n".join(lines))

    async def use(self, caller: Caller, name: str) -> Reply:
        require_admin(caller, "adapter use")
        if name == BASE_CHOICE and name not in await self.db.adapter_names():
            return await self.unbind(caller)  # (an adapter really called "base" wins)
        await self.db.bind_channel(caller.channel_id, name, guild_id=caller.guild_id,
                                   bound_by=caller.user_id)
        serving = await self.db.serving_version(name)
        version = f"v{serving.version}" if serving else "the base model until it is trained"
        return Reply(f"This channel now answers with **{name}** ({version}).", public=True)

    async def unbind(self, caller: Caller) -> Reply:
        require_admin(caller, "adapter unbind")
        bound = await self.db.resolve_adapter_for(caller.channel_id, caller.guild_id)
        await self.db.unbind_channel(caller.channel_id)
        was = f" (was **{bound.name}**)" if bound and bound.via == "channel" else ""
        now = await self.db.resolve_adapter_for(caller.channel_id, caller.guild_id)
        if now is not None:  # the server's default adapter answers where no channel is bound
            return Reply(f"This channel now answers with the server's adapter **{now.name}**"
                         f"{was}.", public=True)
        return Reply(f"This channel now answers with the base model{was}.", public=True)

    async def create(self, caller: Caller, name: str, base_on: str | None = None) -> Reply:
        require_admin(caller, "adapter create")
        parent = await self.db.require_adapter(base_on) if base_on else None
        source = await self.db.serving_version(base_on) if base_on else None
        await self.db.create_adapter(name, self.s.config.model.name, based_on=base_on,
                                     system_prompt=parent.system_prompt if parent else None,
                                     created_by=caller.user_id)
        text = f"Created adapter **{name}**."
        if source is not None:
            relative = await asyncio.to_thread(self._copy_version, source.path, name)
            await self.db.add_version(name, path=relative, status="serving",
                                      metrics={**source.metrics,
                                               "copied_from": f"{base_on} v{source.version}"},
                                      reason=f"copied from {base_on} v{source.version}")
            text += f" It starts from **{base_on}** v{source.version} (now its v1)."
        elif base_on is not None:
            text += f" **{base_on}** has no trained version yet, so it starts untrained."
        return Reply(text + f" Use it here with `/adapter use {name}`.")

    def _copy_version(self, stored: str, name: str) -> str:
        root = self.s.config.adapters_dir
        source = confined_adapter_path(root, stored)
        target = root / name / "v1"
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
            name = here.name
        record = await self.db.require_adapter(name)
        reply = Reply(record.description or "", title=f"Adapter {name}")
        versions = await self.db.versions(name)
        for version in versions[-10:]:
            seen = await self.db.version_pair_counts(name, version.version)
            data = (f"\ntrained on {seen.get('train', 0) + seen.get('validation', 0)} stored "
                    f"pairs, judged on {seen.get('held_out', 0)}" if seen else "")
            reply.fields.append((f"v{version.version} — {version.status}",
                                 f"{metrics_text(version.metrics)}\n{version.created_at[:16]}"
                                 + data + (f"\n{version.reason}" if version.reason else "")))
        if not versions:
            reply.fields.append(("versions", "none yet: approve pairs, then /train"))
        channels = await self.db.channels_of(name)
        reply.fields.append(("channels", ", ".join(map(channel_text, channels)) or "none"))
        if record.based_on:
            reply.fields.append(("based on", record.based_on))
        return reply

    async def prompt(self, caller: Caller, name: str, text: str | None) -> Reply:
        """`text` None (or "-") = the default system prompt again."""
        require_admin(caller, "adapter prompt")
        text = None if text is None or text.strip() in ("", "-") else text.strip()
        await self.db.set_system_prompt(name, text)
        which = "your system prompt" if text else "the default system prompt"
        return Reply(f"**{name}** now answers with {which}.")

    async def rollback_target(self, caller: Caller, name: str,
                              version: int | None = None) -> int:
        """The version a rollback serves (default: the one before the serving version),
        checked: quick, so a face can refuse before it shows that it is working."""
        require_admin(caller, "adapter rollback")
        if version is None:
            version = previous_version(await self.db.versions(name),
                                       await self.db.serving_version(name))
            if version is None:
                await self.db.require_adapter(name)
                raise Refused(f"**{name}** has no earlier version to roll back to.")
        if (await self.db.get_version(name, version)).status == "serving":
            raise Conflict(f"**{name}** v{version} is already serving.")
        return version

    async def rollback(self, caller: Caller, name: str, version: int | None = None) -> Reply:
        return await self.serve(caller, name, await self.rollback_target(caller, name, version))

    async def serve(self, caller: Caller, name: str, version: int, *, where: str = "") -> Reply:
        """Promote a candidate or go back to an older version, without a restart."""
        require_admin(caller, "adapter rollback")
        if (await self.db.get_version(name, version)).status == "serving":
            raise Conflict(f"**{name}** v{version} is already serving.")
        before = await self.db.serving_version(name)
        rolled_back = before is not None and version < before.version
        verb = "rolled back" if rolled_back else "promoted"
        await self.s.serve(name, version, reason=f"{verb} by {caller.label}{where}")
        was = f" (was v{before.version})" if before else ""
        return Reply(f"**{name}** now serves v{version}{was}.", public=True,
                     values={"was": before.version if before else None,
                             "rolled_back": rolled_back})
