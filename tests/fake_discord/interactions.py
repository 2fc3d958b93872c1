"""Interactions: the handle a test gets (`FakeInteraction`), and the bot's side of answering
one: the initial callback (within Discord's 3 s), follow-ups (the first after a "thinking"
defer replaces it), and edits and deletions of the original response and follow-ups."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .protocol import (
    _ALLOWED_CALLBACKS,
    CALLBACK_AUTOCOMPLETE,
    CALLBACK_DEFERRED_MESSAGE,
    CALLBACK_DEFERRED_UPDATE,
    CALLBACK_MESSAGE,
    CALLBACK_MODAL,
    CALLBACK_UPDATE_MESSAGE,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    INTERACTION_COMMAND,
    MESSAGE_CHAT_INPUT,
    MESSAGE_DEFAULT,
    DiscordAPIError,
    Json,
    _form_error,
    _unknown,
    _validate_components,
)
from .records import ResponseRecord
from .rest import _Request
from .world import FakeMessage

if TYPE_CHECKING:
    from .fake import FakeDiscord

log = logging.getLogger("fake_discord")


@dataclass(eq=False)
class FakeInteraction:
    """An interaction the fake sent to the bot, and everything the bot answered."""

    fake: FakeDiscord = field(repr=False)
    id: int
    token: str
    type: int
    user_id: int
    channel_id: int
    guild_id: int | None
    payload: Json = field(repr=False)
    created_at: float = field(default_factory=time.monotonic)
    source_message_id: int | None = None
    responses: list[ResponseRecord] = field(default_factory=list)
    response_type: int | None = None
    original_message_id: int | None = None
    followup_message_ids: list[int] = field(default_factory=list)
    modal: Json | None = None
    choices: list[Json] | None = None
    expired: bool = False

    @property
    def acknowledged(self) -> bool:
        return self.response_type is not None

    @property
    def callback(self) -> ResponseRecord | None:
        return next((r for r in self.responses if r.kind == "callback"), None)

    @property
    def original_message(self) -> FakeMessage | None:
        if self.original_message_id is None:
            return None
        return self.fake.messages.get(self.original_message_id)

    @property
    def followups(self) -> list[FakeMessage]:
        return [self.fake.messages[i] for i in self.followup_message_ids]

    @property
    def ephemeral(self) -> bool:
        """Whether the reply the user sees (the original response) is ephemeral."""
        message = self.original_message
        if message is not None:
            return message.ephemeral
        callback = self.callback
        return bool(callback and callback.ephemeral)

    async def wait_response(self, timeout: float = 5.0) -> ResponseRecord:
        """The initial callback, once the bot has sent it."""
        return await self.wait_for_response("callback", timeout=timeout)

    async def wait_for_response(self, kind: str | None = None, *,
                                predicate: Callable[[ResponseRecord], bool] | None = None,
                                timeout: float = 5.0) -> ResponseRecord:
        """The first response of `kind` (any kind if None) matching `predicate`."""

        def find() -> ResponseRecord | None:
            for record in self.responses:
                if (kind is None or record.kind == kind) and (predicate is None
                                                              or predicate(record)):
                    return record
            return None

        return await self.fake.wait_until(
            find, timeout=timeout, what=f"a {kind or 'any'} response to interaction {self.id}")

    async def wait_for_content(self, predicate: Callable[[str], bool], *,
                               timeout: float = 5.0) -> str:
        """Wait until the original response's content satisfies `predicate`, and return it."""

        def check() -> str | None:
            message = self.original_message
            if message is not None and not message.loading and predicate(message.content):
                return message.content
            return None

        return await self.fake.wait_until(check, timeout=timeout,
                                          what=f"the response to interaction {self.id}")


class InteractionsMixin:
    """FakeDiscord's side of the interactions it sent."""

    # ----------------------------------------------------------------- interactions (REST)

    def _interaction_by_token(self, app_id: str, token: str) -> FakeInteraction:
        if int(app_id) != self.application_id:
            raise _unknown("Webhook")
        for interaction in self.interactions.values():
            if interaction.token == token:
                if not interaction.acknowledged:
                    raise _unknown("Webhook")  # no webhook until the interaction is answered
                age = time.monotonic() + self.clock_offset_s - interaction.created_at
                if age > self.webhook_token_ttl_s:
                    raise DiscordAPIError(401, 50027, "Invalid Webhook Token")
                return interaction
        raise _unknown("Webhook")

    async def _interaction_callback(self, req: _Request, interaction_id: str,
                                    token: str) -> Json | None:
        interaction = self.interactions.get(int(interaction_id))
        if interaction is None or interaction.token != token:
            raise _unknown("Interaction")
        if interaction.acknowledged:
            raise DiscordAPIError(400, 40060, "Interaction has already been acknowledged.")
        elapsed = time.monotonic() - interaction.created_at
        if self.interaction_deadline is not None and elapsed > self.interaction_deadline:
            interaction.expired = True
            log.warning("fake Discord: interaction %s answered after %.2fs (limit %.2fs)",
                        interaction.id, elapsed, self.interaction_deadline)
            raise _unknown("Interaction")
        body = req.json or {}
        rtype = int(body.get("type", 0))
        data = body.get("data") or {}
        if rtype not in _ALLOWED_CALLBACKS.get(interaction.type, set()):
            raise _form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID",
                              f"callback type {rtype} is invalid for interaction type "
                              f"{interaction.type}")
        channel = self.channels[interaction.channel_id]
        message: FakeMessage | None = None
        if rtype == CALLBACK_MESSAGE:
            message = self._create_message(
                channel, self.bot_user.id, data, req.files, interaction=interaction,
                type=MESSAGE_CHAT_INPUT if interaction.type == INTERACTION_COMMAND
                else MESSAGE_DEFAULT, flags=int(data.get("flags") or 0) & (FLAG_EPHEMERAL | 4))
        elif rtype == CALLBACK_DEFERRED_MESSAGE:
            flags = FLAG_LOADING | (int(data.get("flags") or 0) & FLAG_EPHEMERAL)
            message = self._create_message(channel, self.bot_user.id, {}, [], flags=flags,
                                           interaction=interaction, validate=False,
                                           type=MESSAGE_CHAT_INPUT
                                           if interaction.type == INTERACTION_COMMAND
                                           else MESSAGE_DEFAULT)
        elif rtype in (CALLBACK_DEFERRED_UPDATE, CALLBACK_UPDATE_MESSAGE):
            if interaction.source_message_id is None:
                raise _form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID",
                                  "this interaction has no message to update")
            message = self.messages[interaction.source_message_id]
        elif rtype == CALLBACK_AUTOCOMPLETE:
            choices = data.get("choices") or []
            if len(choices) > 25:
                raise _form_error("data", "BASE_TYPE_MAX_LENGTH", "25 choices at most.")
            interaction.choices = choices
        elif rtype == CALLBACK_MODAL:
            if len(data.get("title", "")) > 45:
                raise _form_error("data", "BASE_TYPE_MAX_LENGTH", "Modal title: 45 at most.")
            _validate_components(data.get("components") or [], "data.components")
            interaction.modal = data
            self._modals.append((interaction, data))
        interaction.response_type = rtype
        if message is not None:
            interaction.original_message_id = message.id
        interaction.responses.append(ResponseRecord(
            "callback", rtype, data, list(req.files), message.id if message else None,
            bool(int(data.get("flags") or 0) & FLAG_EPHEMERAL)))
        self._notify()
        if rtype == CALLBACK_UPDATE_MESSAGE and message is not None:
            await self._edit_message(message, data, req.files)
        elif rtype in (CALLBACK_MESSAGE, CALLBACK_DEFERRED_MESSAGE) and message is not None:
            await self._dispatch_message("MESSAGE_CREATE", message)
        if "with_response" not in req.query:
            return None
        resource: Json = {"type": rtype}
        callback: Json = {"id": str(interaction.id), "type": interaction.type}
        if message is not None:
            resource["message"] = self._message_payload(message)
            callback.update(response_message_id=str(message.id),
                            response_message_loading=message.loading,
                            response_message_ephemeral=message.ephemeral)
        return {"interaction": callback, "resource": resource}

    def _webhook_target(self, interaction: FakeInteraction, message_id: str) -> FakeMessage:
        if message_id == "@original":
            target_id = interaction.original_message_id
        else:
            target_id = int(message_id)
            if target_id not in (interaction.original_message_id,
                                 *interaction.followup_message_ids):
                raise _unknown("Message")
        message = self.messages.get(target_id) if target_id is not None else None
        if message is None or message.deleted:
            raise _unknown("Message")
        return message

    async def _post_followup(self, req: _Request, app_id: str, token: str) -> Json | None:
        interaction = self._interaction_by_token(app_id, token)
        body = req.json or {}
        original = interaction.original_message
        if (interaction.response_type == CALLBACK_DEFERRED_MESSAGE and original is not None
                and original.loading and not original.deleted):
            # The first follow-up after a "thinking" defer replaces it, and keeps the
            # defer's ephemerality whatever the follow-up's flags say.
            await self._edit_message(original, body, req.files)
            message = original
        else:
            channel = self.channels[interaction.channel_id]
            flags = int(body.get("flags") or 0) & (FLAG_EPHEMERAL | 4)
            message = self._create_message(channel, self.bot_user.id, body, req.files,
                                           flags=flags, interaction=interaction)
            interaction.followup_message_ids.append(message.id)
            await self._dispatch_message("MESSAGE_CREATE", message)
        interaction.responses.append(ResponseRecord(
            "followup", None, body, list(req.files), message.id, message.ephemeral))
        self._notify()
        if req.query.get("wait") in ("1", "true", "True"):
            return self._message_payload(message)
        return None

    async def _get_webhook_message(self, req: _Request, app_id: str, token: str,
                                   message_id: str) -> Json:
        interaction = self._interaction_by_token(app_id, token)
        return self._message_payload(self._webhook_target(interaction, message_id))

    async def _patch_webhook_message(self, req: _Request, app_id: str, token: str,
                                     message_id: str) -> Json:
        interaction = self._interaction_by_token(app_id, token)
        message = self._webhook_target(interaction, message_id)
        await self._edit_message(message, req.json or {}, req.files)
        kind = "edit_original" if message.id == interaction.original_message_id \
            else "edit_followup"
        interaction.responses.append(ResponseRecord(kind, None, req.json or {}, list(req.files),
                                                    message.id, message.ephemeral))
        self._notify()
        return self._message_payload(message)

    async def _delete_webhook_message(self, req: _Request, app_id: str, token: str,
                                      message_id: str) -> None:
        interaction = self._interaction_by_token(app_id, token)
        message = self._webhook_target(interaction, message_id)
        kind = "delete_original" if message.id == interaction.original_message_id \
            else "delete_followup"
        await self._remove_message(message)
        interaction.responses.append(ResponseRecord(kind, None, {}, [], message.id,
                                                    message.ephemeral))
        self._notify()
