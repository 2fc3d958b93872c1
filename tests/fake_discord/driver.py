"""The test's side: what users do in their Discord client. Post, edit and delete messages,
react, run slash commands, type into autocompleted options, click buttons, pick from
selects, submit modals. Mistakes a real client would not let a user make raise here."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from .interactions import FakeInteraction
from .protocol import (
    ALL_PERMISSIONS,
    INTERACTION_AUTOCOMPLETE,
    INTERACTION_COMMAND,
    INTERACTION_COMPONENT,
    INTERACTION_MODAL_SUBMIT,
    UPLOAD_LIMIT,
    Json,
    _id,
    _walk_components,
)
from .records import RecordedFile
from .world import FakeAttachment, FakeChannel, FakeGuild, FakeMessage


class DriverMixin:
    """FakeDiscord's methods for tests: each sends the bot what Discord would."""

    # ----------------------------------------------------------------- test driver: messages

    async def send_message(self, channel_id: int, author_id: int, content: str = "", *,
                           mentions_bot: bool = False, reply_to: int | None = None,
                           mention_replied: bool = True,
                           attachments: Sequence[tuple[str, bytes]] = (),
                           embeds: Sequence[Json] = ()) -> FakeMessage:
        """A user posts a message; the bot gets MESSAGE_CREATE.

        `mentions_bot` prefixes `<@bot>`; any `<@id>`/`<@&id>` in content are mentions too.
        `reply_to` makes it a reply (message_reference + referenced_message) that pings the
        replied author unless `mention_replied=False`. `attachments` are (filename, bytes).
        """
        channel = self.channels[_id(channel_id)]
        author_id = _id(author_id)
        if channel.guild_id is not None and author_id not in self.guilds[channel.guild_id].members:
            raise ValueError(f"user {author_id} is not a member of guild {channel.guild_id}")
        mention = f"<@{self.bot_user.id}>"
        if mentions_bot and mention not in content:
            content = f"{mention} {content}".rstrip()
        body: Json = {"content": content, "embeds": list(embeds)}
        if reply_to is not None:
            body["message_reference"] = {"message_id": str(_id(reply_to))}
            if not mention_replied:
                body["allowed_mentions"] = {"parse": ["users", "roles", "everyone"],
                                            "replied_user": False}
        files = [RecordedFile(f"files[{i}]", name, None, data)
                 for i, (name, data) in enumerate(attachments)]
        message = self._create_message(channel, author_id, body, files)
        await self._dispatch_message("MESSAGE_CREATE", message)
        return message

    async def send_dm(self, user_id: int, content: str, **kwargs: Any) -> FakeMessage:
        """A user DMs the bot (MESSAGE_CREATE without guild_id)."""
        channel = self._dm_channel(_id(user_id))
        return await self.send_message(channel.id, user_id, content, **kwargs)

    async def edit_message(self, message_id: int, content: str) -> FakeMessage:
        """A user edits their message; the bot gets MESSAGE_UPDATE."""
        message = self.messages[_id(message_id)]
        await self._edit_message(message, {"content": content}, [])
        return message

    async def delete_message(self, message_id: int) -> None:
        await self._remove_message(self.messages[_id(message_id)])

    async def add_reaction(self, user_id: int, channel_id: int, message_id: int,
                           emoji: str) -> None:
        """A user reacts; the bot gets MESSAGE_REACTION_ADD (with member in guilds)."""
        await self._react(_id(user_id), self._message(_id(channel_id), _id(message_id)),
                          emoji, True)

    async def remove_reaction(self, user_id: int, channel_id: int, message_id: int,
                              emoji: str) -> None:
        await self._react(_id(user_id), self._message(_id(channel_id), _id(message_id)),
                          emoji, False)

    # ----------------------------------------------------------------- test driver: interactions

    def _find_command(self, name: str, guild_id: int | None, type: int = 1) -> Json:
        scopes = [str(guild_id), None] if guild_id else [None]
        for scope in scopes:
            for command in self.commands.values():
                if (command["name"], command["type"], command["guild_id"]) == (name, type, scope):
                    return command
        registered = sorted(f"{c['name']} (guild {c['guild_id']})" for c in self.commands.values())
        raise LookupError(f"no command {name!r} registered for guild {guild_id}; the bot "
                          f"registered: {registered or 'nothing (did it sync its tree?)'}")

    def _option_value(self, definition: Json, value: Any, resolved: Json,
                      guild: FakeGuild | None) -> Any:
        kind = definition["type"]
        if kind == 3:
            return str(value)
        if kind == 4:
            return int(value)
        if kind == 10:
            return float(value)
        if kind == 5:
            return bool(value)
        if kind == 11:
            if isinstance(value, FakeAttachment):
                attachment = value
            else:
                filename, data = value
                channel_id = 0
                attachment = self._attachments_from(
                    channel_id, {}, [RecordedFile("files[0]", filename, None, data)])[0]
            resolved.setdefault("attachments", {})[str(attachment.id)] = attachment.payload()
            return str(attachment.id)
        target = _id(value)
        if kind in (6, 9) and target in self.users:
            resolved.setdefault("users", {})[str(target)] = self._user_payload(target)
            member = guild.members.get(target) if guild else None
            if member is not None:
                resolved.setdefault("members", {})[str(target)] = self._member_payload(
                    member, permissions=True)
        elif kind in (8, 9) and guild is not None and target in guild.roles:
            resolved.setdefault("roles", {})[str(target)] = guild.roles[target].payload()
        elif kind == 7 and target in self.channels:
            channel = self.channels[target]
            resolved.setdefault("channels", {})[str(target)] = self._channel_payload(
                channel, for_user=self.bot_user.id)
        else:
            raise ValueError(f"option {definition['name']!r}: nothing to resolve for {value!r}")
        return str(target)

    def _build_options(self, command: Json, values: Mapping[str, Any], *,
                       group: str | None, subcommand: str | None, focused: str | None,
                       guild: FakeGuild | None) -> tuple[list[Json], Json]:
        definitions = command.get("options") or []
        path: list[tuple[int, str]] = []
        for kind, wanted in ((2, group), (1, subcommand)):
            if wanted is None:
                continue
            option = next((o for o in definitions if o["type"] == kind
                           and o["name"] == wanted), None)
            if option is None:
                raise LookupError(f"/{command['name']} has no "
                                  f"{'group' if kind == 2 else 'subcommand'} {wanted!r}")
            path.append((kind, wanted))
            definitions = option.get("options") or []
        if any(o["type"] in (1, 2) for o in definitions):
            names = [o["name"] for o in definitions]
            raise LookupError(f"/{command['name']} needs a subcommand/group: {names}")
        by_name = {o["name"]: o for o in definitions}
        unknown = set(values) - set(by_name)
        if unknown:
            raise LookupError(f"/{command['name']} has no options {sorted(unknown)}; "
                              f"it has {sorted(by_name)}")
        if focused is None:
            missing = [n for n, o in by_name.items() if o.get("required") and n not in values]
            if missing:
                raise ValueError(f"/{command['name']}: required options missing: {missing}")
        resolved: Json = {}
        options: list[Json] = []
        for name, value in values.items():
            definition = by_name[name]
            if name == focused:
                options.append({"name": name, "type": definition["type"], "value": str(value),
                                "focused": True})
                continue
            converted = self._option_value(definition, value, resolved, guild)
            choices = definition.get("choices")
            if choices and converted not in [c["value"] for c in choices]:
                raise ValueError(f"option {name!r}={converted!r} is not one of the choices "
                                 f"{[c['value'] for c in choices]}")
            options.append({"name": name, "type": definition["type"], "value": converted})
        for kind, wanted in reversed(path):
            options = [{"name": wanted, "type": kind, "options": options}]
        return options, resolved

    def _command_visible(self, command: Json, user_id: int, channel: FakeChannel) -> None:
        if channel.guild_id is None:
            contexts = command.get("contexts")
            if command.get("dm_permission") is False or (contexts is not None
                                                         and 1 not in contexts):
                raise PermissionError(f"/{command['name']} is not available in DMs")
            return
        required = command.get("default_member_permissions")
        if required is not None:
            have = self.permissions_of(channel.guild_id, user_id)
            if int(required) & ~have:
                raise PermissionError(
                    f"user {user_id} lacks default_member_permissions={required} for "
                    f"/{command['name']}: Discord would not offer the command")

    async def _send_interaction(self, itype: int, data: Json, *, user_id: int, channel_id: int,
                                message: FakeMessage | None = None) -> FakeInteraction:
        channel = self.channels[_id(channel_id)]
        user_id = _id(user_id)
        guild = self.guilds.get(channel.guild_id) if channel.guild_id else None
        interaction_id = self._snowflake()
        token = f"aW50ZXJhY3Rpb24.{interaction_id}.{secrets.token_urlsafe(24)}"
        payload: Json = {
            "id": str(interaction_id), "application_id": str(self.application_id),
            "type": itype, "data": data, "token": token, "version": 1,
            "channel_id": str(channel.id),
            "channel": self._channel_payload(channel, for_user=user_id),
            "app_permissions": str(self.permissions_of(guild.id, self.bot_user.id)
                                   if guild else ALL_PERMISSIONS),
            "locale": "en-US", "entitlements": [], "attachment_size_limit": UPLOAD_LIMIT,
            "context": 0 if guild else 1,
            "authorizing_integration_owners": ({"0": str(guild.id)} if guild
                                               else {"1": str(user_id)}),
        }
        if guild is not None:
            member = guild.members.get(user_id)
            if member is None:
                raise ValueError(f"user {user_id} is not a member of guild {guild.id}")
            payload.update(guild_id=str(guild.id), guild_locale="en-US",
                           guild={"id": str(guild.id), "locale": "en-US", "features": []},
                           member=self._member_payload(member, with_user=True, permissions=True))
        else:
            payload["user"] = self._user_payload(user_id)
        if message is not None:
            payload["message"] = self._message_payload(message, gateway=True)
        interaction = FakeInteraction(self, interaction_id, token, itype, user_id, channel.id,
                                      guild.id if guild else None, payload,
                                      source_message_id=message.id if message else None)
        self.interactions[interaction_id] = interaction
        await self._dispatch("INTERACTION_CREATE", payload)
        return interaction

    async def invoke_command(self, name: str, options: Mapping[str, Any] | None = None, *,
                             user_id: int, channel_id: int, subcommand: str | None = None,
                             group: str | None = None, crafted: bool = False) -> FakeInteraction:
        """A user runs a slash command the bot registered (INTERACTION_CREATE type 2).

        `group` is a subcommand group (`/cmd group sub`), `subcommand` the subcommand.
        Option values are Python values; users, roles, channels (ids or fakes) are resolved,
        attachments are `(filename, bytes)`. Mistakes a Discord client would not let a user
        make (unknown or missing options, a value outside the choices, a command the user
        cannot see) raise here. `crafted=True` skips only the visibility check, as a
        hand-made request would: the bot's own server-side checks must refuse it.
        """
        channel = self.channels[_id(channel_id)]
        command = self._find_command(name, channel.guild_id)
        if not crafted:
            self._command_visible(command, _id(user_id), channel)
        guild = self.guilds.get(channel.guild_id) if channel.guild_id else None
        built, resolved = self._build_options(command, options or {}, group=group,
                                              subcommand=subcommand, focused=None, guild=guild)
        return await self._send_interaction(INTERACTION_COMMAND,
                                            _command_data(command, name, built, resolved),
                                            user_id=user_id, channel_id=channel.id)

    async def autocomplete(self, name: str, options: Mapping[str, Any], *, focused: str,
                           user_id: int, channel_id: int, subcommand: str | None = None,
                           group: str | None = None) -> FakeInteraction:
        """A user types into option `focused` (INTERACTION_CREATE type 4); the bot's choices
        land in `interaction.choices` (await `wait_response()` first)."""
        channel = self.channels[_id(channel_id)]
        command = self._find_command(name, channel.guild_id)
        guild = self.guilds.get(channel.guild_id) if channel.guild_id else None
        built, resolved = self._build_options(command, options, group=group,
                                              subcommand=subcommand, focused=focused,
                                              guild=guild)
        return await self._send_interaction(INTERACTION_AUTOCOMPLETE,
                                            _command_data(command, name, built, resolved),
                                            user_id=user_id, channel_id=channel.id)

    def _component(self, message: FakeMessage, custom_id: str) -> Json:
        for component in _walk_components(message.components):
            if component.get("custom_id") == custom_id:
                if component.get("disabled"):
                    raise ValueError(f"component {custom_id!r} is disabled")
                return component
        raise LookupError(f"message {message.id} has no component {custom_id!r}; it has "
                          f"{message.custom_ids()}")

    async def click_button(self, message_id: int, custom_id: str, *,
                           user_id: int) -> FakeInteraction:
        """A user clicks a button (INTERACTION_CREATE type 3, message included)."""
        message = self.messages[_id(message_id)]
        component = self._component(message, custom_id)
        if component["type"] != 2:
            raise ValueError(f"component {custom_id!r} is not a button")
        data = {"custom_id": custom_id, "component_type": 2}
        return await self._send_interaction(INTERACTION_COMPONENT, data, user_id=user_id,
                                            channel_id=message.channel_id, message=message)

    async def select(self, message_id: int, custom_id: str, values: Sequence[str], *,
                     user_id: int) -> FakeInteraction:
        """A user picks options of a select menu (string selects: option values)."""
        message = self.messages[_id(message_id)]
        component = self._component(message, custom_id)
        if component["type"] not in (3, 5, 6, 7, 8):
            raise ValueError(f"component {custom_id!r} is not a select menu")
        data = {"custom_id": custom_id, "component_type": component["type"],
                "values": [str(v) for v in values]}
        return await self._send_interaction(INTERACTION_COMPONENT, data, user_id=user_id,
                                            channel_id=message.channel_id, message=message)

    async def submit_modal(self, custom_id: str, values: Mapping[str, str], *, user_id: int,
                           channel_id: int | None = None) -> FakeInteraction:
        """A user fills in and submits the latest modal the bot opened with `custom_id`.

        `values` maps text inputs' custom_ids to what the user typed.
        """
        opened = next(((i, m) for i, m in reversed(self._modals)
                       if m.get("custom_id") == custom_id), None)
        if opened is None:
            shown = [m.get("custom_id") for _, m in self._modals]
            raise LookupError(f"the bot opened no modal {custom_id!r}; it opened {shown}")
        source, modal = opened
        inputs = {c["custom_id"]: c for c in _walk_components(modal.get("components", []))
                  if "custom_id" in c}
        unknown = set(values) - set(inputs)
        if unknown:
            raise LookupError(f"modal {custom_id!r} has no inputs {sorted(unknown)}; "
                              f"it has {sorted(inputs)}")

        def fill(components: Sequence[Json]) -> list[Json]:
            filled: list[Json] = []
            for component in components:
                kind = component["type"]
                if kind == 1:
                    filled.append({"type": 1, "components": fill(component["components"])})
                elif kind == 18:
                    filled.append({"type": 18, "id": component.get("id"),
                                   "component": fill([component["component"]])[0]})
                elif kind == 4:
                    value = values.get(component["custom_id"], component.get("value") or "")
                    if component.get("required", True) and not value:
                        raise ValueError(f"text input {component['custom_id']!r} is required")
                    if len(value) > component.get("max_length", 4000) or \
                            len(value) < component.get("min_length", 0):
                        raise ValueError(f"text input {component['custom_id']!r}: length "
                                         f"{len(value)} is out of bounds")
                    filled.append({"type": 4, "id": component.get("id"),
                                   "custom_id": component["custom_id"], "value": value})
                elif "custom_id" in component:
                    picked = values.get(component["custom_id"], [])
                    filled.append({"type": kind, "id": component.get("id"),
                                   "custom_id": component["custom_id"],
                                   "values": [picked] if isinstance(picked, str) else picked})
            return filled

        data = {"custom_id": custom_id, "components": fill(modal.get("components", []))}
        message = (self.messages.get(source.source_message_id)
                   if source.source_message_id else None)
        return await self._send_interaction(
            INTERACTION_MODAL_SUBMIT, data, user_id=user_id,
            channel_id=channel_id if channel_id is not None else source.channel_id,
            message=message)


def _command_data(command: Json, name: str, built: list[Json], resolved: Json) -> Json:
    """The `data` of a command or autocomplete interaction, as Discord sends it."""
    data: Json = {"id": command["id"], "name": name, "type": command["type"],
                  "options": built}
    if resolved:
        data["resolved"] = resolved
    if command["guild_id"]:
        data["guild_id"] = command["guild_id"]
    return data
