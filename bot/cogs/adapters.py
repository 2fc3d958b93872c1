"""/adapter: list, use, create, info, rollback."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import discord
from discord import app_commands

from ..permissions import admin_only
from ..routing import confined_adapter_path
from ._common import SlashCog, adapter_names, reply


def metrics_text(metrics: dict) -> str:
    shown = []
    for key, value in metrics.items():
        if isinstance(value, float):
            shown.append(f"{key} {value:.4g}")
        elif isinstance(value, (int, str)):
            shown.append(f"{key} {value}")
    return ", ".join(shown[:6]) or "no metrics"


class Adapters(SlashCog):
    adapter = app_commands.Group(name="adapter", description="Adapters: which one answers "
                                 "in this channel, and their versions")

    @adapter.command(name="list", description="All adapters, their serving version and "
                     "channels")
    async def list_(self, interaction: discord.Interaction) -> None:
        adapters = await self.db.list_adapters()
        here = await self.db.resolve_adapter_for(interaction.channel_id, interaction.guild_id)
        if not adapters:
            await reply(interaction, "No adapters yet. An admin can make one with "
                        "`/adapter create`.")
            return
        lines = []
        for record in adapters:
            serving = await self.db.serving_version(record.name)
            state = f"v{serving.version} serving" if serving else "not trained yet"
            channels = await self.db.channels_of(record.name)
            where = ", ".join(f"<#{c}>" for c in channels[:5]) or "no channel"
            mark = " ← this channel" if here and here.name == record.name else ""
            lines.append(f"**{record.name}** — {state}; {where}{mark}")
        if here is None:
            lines.append("This channel answers with the base model.")
        await reply(interaction, "\n".join(lines))

    @adapter.command(name="use", description="Answer in this channel with an adapter")
    @app_commands.describe(name="The adapter (see /adapter list)")
    @app_commands.autocomplete(name=adapter_names)
    @app_commands.default_permissions(manage_guild=True)
    @admin_only()
    async def use(self, interaction: discord.Interaction, name: str) -> None:
        await self.db.bind_channel(interaction.channel_id, name, guild_id=interaction.guild_id,
                                   bound_by=interaction.user.id)
        serving = await self.db.serving_version(name)
        version = f"v{serving.version}" if serving else "the base model until it is trained"
        await reply(interaction, f"This channel now answers with **{name}** ({version}).",
                    ephemeral=False)

    @adapter.command(name="create", description="Create a new adapter")
    @app_commands.describe(name="Lower-case letters, digits, - and _ (e.g. support-faq)",
                           base_on="Start from this adapter's serving version")
    @app_commands.autocomplete(base_on=adapter_names)
    @app_commands.default_permissions(manage_guild=True)
    @admin_only()
    async def create(self, interaction: discord.Interaction, name: str,
                     base_on: str | None = None) -> None:
        parent = await self.db.require_adapter(base_on) if base_on else None
        source = await self.db.serving_version(base_on) if base_on else None
        await self.db.create_adapter(name, self.config.model.name, based_on=base_on,
                                     system_prompt=parent.system_prompt if parent else None,
                                     created_by=interaction.user.id)
        text = f"Created adapter **{name}**."
        if source is not None:
            await interaction.response.defer(ephemeral=True, thinking=True)
            relative = await asyncio.to_thread(self._copy_version, source.path, name)
            await self.db.add_version(name, path=relative, status="serving",
                                      metrics={**source.metrics,
                                               "copied_from": f"{base_on} v{source.version}"},
                                      reason=f"copied from {base_on} v{source.version}")
            text += f" It starts from **{base_on}** v{source.version} (now its v1)."
        elif base_on is not None:
            text += f" **{base_on}** has no trained version yet, so it starts untrained."
        await reply(interaction, text + f" Use it here with `/adapter use {name}`.")

    def _copy_version(self, stored: str, name: str) -> str:
        root = self.config.adapters_dir
        source = confined_adapter_path(root, stored)
        target = root / name / "v1"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".v1-", dir=target.parent))
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        tmp.rename(target)  # appears whole or not at all
        return str(target.relative_to(root))

    @adapter.command(name="info", description="Versions, metrics and channels of an adapter")
    @app_commands.describe(name="The adapter (default: this channel's)")
    @app_commands.autocomplete(name=adapter_names)
    async def info(self, interaction: discord.Interaction, name: str | None = None) -> None:
        name = name or await self.channel_adapter(
            interaction, "This channel answers with the base model; name an adapter to see it.")
        if name is None:
            return
        record = await self.db.require_adapter(name)
        embed = discord.Embed(title=f"Adapter {name}", description=record.description or None)
        versions = await self.db.versions(name)
        for version in versions[-10:]:
            seen = await self.db.version_pair_counts(name, version.version)
            data = (f"\ntrained on {seen.get('train', 0) + seen.get('validation', 0)} stored "
                    f"pairs, judged on {seen.get('held_out', 0)}" if seen else "")
            embed.add_field(name=f"v{version.version} — {version.status}",
                            value=f"{metrics_text(version.metrics)}\n{version.created_at[:16]}"
                                  + data + (f"\n{version.reason}" if version.reason else ""),
                            inline=False)
        if not versions:
            embed.add_field(name="versions", value="none yet: approve pairs, then /train")
        channels = await self.db.channels_of(name)
        embed.add_field(name="channels", value=", ".join(f"<#{c}>" for c in channels) or "none")
        if record.based_on:
            embed.add_field(name="based on", value=record.based_on)
        await reply(interaction, embed=embed)

    @adapter.command(name="rollback", description="Serve an earlier version again")
    @app_commands.describe(name="The adapter", version="Version to serve (default: the one "
                           "before the serving version)")
    @app_commands.autocomplete(name=adapter_names)
    @app_commands.default_permissions(manage_guild=True)
    @admin_only()
    async def rollback(self, interaction: discord.Interaction, name: str,
                       version: int | None = None) -> None:
        serving = await self.db.serving_version(name)
        if version is None:
            older = [v.version for v in await self.db.versions(name)
                     if serving is None or v.version < serving.version]
            if not older:
                await reply(interaction, f"**{name}** has no earlier version to roll back to.")
                return
            version = older[-1]
        await interaction.response.defer(thinking=True)  # loading the version takes a moment
        reason = f"rolled back by {interaction.user} ({interaction.user.id})"
        await self.bot.engine.promote(name, version, reason=reason)
        was = f" (was v{serving.version})" if serving else ""
        await reply(interaction, f"**{name}** now serves v{version}{was}.", ephemeral=False)


async def setup(bot) -> None:
    await bot.add_cog(Adapters(bot))
