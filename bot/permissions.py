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


def owner_ids(client: discord.Client, config: DiscordConfig) -> set[int]:
    """The bot's owners: `discord.owner_ids` and the application's owner — for a team,
    its admins and developers (as `commands.Bot.is_owner` counts them) — which
    discord.py reads at login."""
    owners = set(config.owner_ids)
    application = client.application
    if application is not None:
        team = application.team
        if team is not None:
            owners.update(m.id for m in team.members
                          if m.role in (discord.TeamMemberRole.admin,
                                        discord.TeamMemberRole.developer))
        elif application.owner is not None:
            owners.add(application.owner.id)
    return owners


def is_owner(interaction: discord.Interaction, config: DiscordConfig) -> bool:
    return interaction.user.id in owner_ids(interaction.client, config)


def is_admin(interaction: discord.Interaction, config: DiscordConfig) -> bool:
    """Admin where the interaction comes from: Manage Server or an admin role in this
    server; an owner everywhere, DMs (the direct scope) included."""
    if is_owner(interaction, config):
        return True
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


def may_talk(config: DiscordConfig, user_id: int, role_ids: set[int],
             channel_ids: set[int] | None) -> bool:
    """Whether the bot answers (and counts the votes of) this person here: the allow and
    deny lists of users, roles and channels. `channel_ids` None is a direct message:
    answered only with `allow_dms`, and no channel list applies."""
    users_ok = user_id not in config.denied_user_ids and (
        not config.allowed_user_ids or user_id in config.allowed_user_ids)
    if channel_ids is None:
        place_ok = config.allow_dms
    else:
        place_ok = not channel_ids & set(config.denied_channel_ids) and (
            not config.allowed_channel_ids or bool(channel_ids & set(config.allowed_channel_ids)))
    roles_ok = not role_ids & set(config.denied_role_ids) and (
        not config.allowed_role_ids or bool(role_ids & set(config.allowed_role_ids)))
    return users_ok and place_ok and roles_ok


def roles_in_shared_servers(client: discord.Client, user_id: int) -> set[int]:
    """The roles a person holds in the servers the bot shares with them, as far as the
    bot's cache knows them (for the role lists in direct messages)."""
    roles: set[int] = set()
    for guild in client.guilds:
        member = guild.get_member(user_id)
        if member is not None:
            roles.update(role.id for role in member.roles)
    return roles


def admin_only():
    """An app-command check: the cog must have `self.config` (the whole Config)."""

    async def predicate(interaction: discord.Interaction) -> bool:
        cog = interaction.command.binding if interaction.command else None
        if cog is not None and is_admin(interaction, cog.config.discord):
            return True
        raise NotAdmin(interaction.command.qualified_name if interaction.command else "?")

    return app_commands.check(predicate)
