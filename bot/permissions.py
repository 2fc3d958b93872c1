"""Who may run admin commands: checked on the server side for every invocation.

Default permissions only hide commands in Discord's UI; this check is what
refuses a non-admin, including one who crafts the interaction by hand.
"""

from __future__ import annotations

import discord
from discord import app_commands

from settings import DiscordConfig

from .commands.base import ADMIN_HELP


class NotAdmin(app_commands.CheckFailure):
    def __init__(self, command: str):
        super().__init__(f"Only {ADMIN_HELP} can use `/{command}`.")


def is_admin(interaction: discord.Interaction, config: DiscordConfig) -> bool:
    user = interaction.user
    if interaction.guild is None or not isinstance(user, discord.Member):
        return False  # no server, no server admin
    return interaction.permissions.manage_guild or has_admin_role(user, config)


def has_admin_role(member: discord.Member, config: DiscordConfig) -> bool:
    admin_roles = set(config.admin_role_ids)
    return any(role.id in admin_roles for role in member.roles)


def member_is_admin(member: discord.Member, config: DiscordConfig) -> bool:
    """The same rule outside an interaction (the web page checks it again)."""
    return member.guild_permissions.manage_guild or has_admin_role(member, config)


def admin_only():
    """An app-command check: the cog must have `self.config` (the whole Config)."""

    async def predicate(interaction: discord.Interaction) -> bool:
        cog = interaction.command.binding if interaction.command else None
        if cog is not None and is_admin(interaction, cog.config.discord):
            return True
        raise NotAdmin(interaction.command.qualified_name if interaction.command else "?")

    return app_commands.check(predicate)
